"""dranspose's controller refuses what a browser sends it from another site.

The controller answers CORS with ``allow_origins=["*"]`` and credentials, and its
POSTs (``/api/v1/stop``, ``/api/v1/parameter/{name}``, ``/api/v1/sequence``) take any
body: a page on any site a person had open could stop the running scan or set its
parameters with a plain ``fetch`` (a "simple" request: no preflight), through the
loopback port of ``streamtomo up``, a ``kubectl port-forward``, or a chart's Ingress
whose basic auth the browser attaches by itself. Its own clients (ingesters, workers,
the reducer, ``play``, ``curl``) send neither ``Origin`` nor ``Sec-Fetch-Site``; a
browser sends one or both with every such request.

Installed in the controller's process (:func:`install`, from
:func:`streamtomo.app.services.install_mends`, here and in the chart's pods), an ASGI
middleware outside dranspose's own refuses (403) a request that a browser sent for
another site: ``Sec-Fetch-Site`` ``cross-site`` or ``same-site``, or an ``Origin`` that
is not the request's own scheme and Host, or is, under a name other sites may own (a
DNS-rebound name: only loopback names, IP addresses and the origins of
``STREAMTOMO_CONTROLLER_ORIGINS``, comma separated, are this controller's). The
controller's own status page (same origin, on loopback or an allowed origin) still
reads its progress.

A browser page of the controller's own origin may read, not change: dranspose's status
page showed the services' log lines as markup, among them request paths and stream
input that anyone may put there, and a script planted so stopped the scan. So every
change a browser sends is refused, the status page (``/``) is streamtomo's own
(:mod:`streamtomo.app.controller_page`: text only, under a Content-Security-Policy), and
every request must name the controller by a Host it is known by
(:func:`streamtomo.hsds_bridge.host_names.known_host`: loopback, IP addresses, the
machine's names, ``STREAMTOMO_CONTROLLER_NAMES`` and the hosts of
``STREAMTOMO_CONTROLLER_ORIGINS``): a DNS-rebound name read the logs and parameters, and a
browser sends a rebound page's same-origin reads with no Origin and, over http, no
``Sec-Fetch-Site`` either.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from streamtomo.app.controller_page import PAGE, POLICY
from streamtomo.hsds_bridge.host_names import known_host, local_or_address, names_from_env, served_names

log = logging.getLogger(__name__)

ENV_ORIGINS = "STREAMTOMO_CONTROLLER_ORIGINS"
ENV_NAMES = "STREAMTOMO_CONTROLLER_NAMES"
CROSS_SITE = frozenset({"cross-site", "same-site"})
READS = frozenset({"GET", "HEAD", "OPTIONS"})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def refusal(scope: Scope, allowed_origins: Iterable[str] = (), names: frozenset[str] | None = None) -> str:
    """Why this request is refused ('' where it is not): a Host the controller is not
    known by, a browser's request for another site, or a change a browser sent.
    ``allowed_origins``: the controller's own origins besides loopback and IP addresses
    (an Ingress's ``https://NAME``); a page there may read, as on loopback, not change.
    ``names``: the Host names it answers to besides loopback and IP addresses (default:
    this machine's and the origins')."""
    headers = _headers(scope)
    allowed = frozenset(allowed_origins)
    host = headers.get("host", "")
    if not known_host(host, served_names("", allowed) if names is None else names):
        return (
            f"host {host!r} is not a name of this controller (a DNS-rebound name? its names are given in {ENV_NAMES})"
        )
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    origin = headers.get("origin")
    if origin is None and not fetch_site:
        return ""  # no browser's cross-origin request or change: the pipeline's own clients, curl
    if fetch_site in CROSS_SITE:
        return f"a browser sent this request from another site (Sec-Fetch-Site: {fetch_site})"
    method = str(scope.get("method", "GET")).upper()
    if method not in READS:
        return (
            f"a browser page sent this {method}: the controller's pages only read; change a scan through "
            "the viewer or the control API"
        )
    if origin is None:
        return ""
    origin = origin.strip()
    if origin in allowed:
        return ""
    parts = urlsplit(origin)
    own = f"{scope.get('scheme', 'http')}://{host}"
    if origin.lower() != own.lower() or parts.hostname is None or not local_or_address(parts.hostname):
        return f"a browser sent this request from the page of {origin!r}, not this controller's own"
    return ""


class CrossSiteGuard:
    """ASGI middleware: refused requests (:func:`refusal`) get 403; the status page
    (``GET /``) is :data:`streamtomo.app.controller_page.PAGE` (see module)."""

    def __init__(self, app: App, allowed_origins: Iterable[str] = (), names: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_origins = frozenset(o.strip().rstrip("/") for o in allowed_origins if o.strip())
        self.names = served_names("", self.allowed_origins, names)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        why = refusal(scope, self.allowed_origins, self.names)
        if why:
            # The path as repr: it is a stranger's text.
            log.warning("refused %s %r: %s", scope.get("method"), scope.get("path"), why)
            body = json.dumps({"detail": why})
            await _answer(send, 403, "application/json", body.encode())
            return
        if scope.get("path") == "/" and scope.get("method") in ("GET", "HEAD"):
            page = PAGE.encode()
            await _answer(
                send, 200, "text/html; charset=utf-8", b"" if scope["method"] == "HEAD" else page, len(page), POLICY
            )
            return
        await self.app(scope, receive, send)


async def _answer(
    send: Send, status: int, content_type: str, body: bytes, length: int | None = None, policy: str = ""
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body) if length is None else length).encode()),
        (b"x-content-type-options", b"nosniff"),
    ]
    if policy:
        headers.append((b"content-security-policy", policy.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def allowed_origins_from_env(env: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    text = (os.environ if env is None else env).get(ENV_ORIGINS, "")
    return tuple(o.strip() for o in text.split(",") if o.strip())


def install() -> None:
    """In the controller's process, before its app starts: the guard outside every other
    middleware (dranspose's CORS one included, so a foreign preflight is refused too)."""
    import dranspose.controller

    dranspose.controller.app.add_middleware(
        CrossSiteGuard,
        allowed_origins=allowed_origins_from_env(),
        names=names_from_env(os.environ.get(ENV_NAMES, "")),
    )
