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
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ENV_ORIGINS = "STREAMTOMO_CONTROLLER_ORIGINS"
CROSS_SITE = frozenset({"cross-site", "same-site"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _own_name(host: str) -> bool:
    """A Host name only this machine answers to: loopback names and IP addresses (a
    browser sends an address as Host only to that address)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def refusal(scope: Scope, allowed_origins: Iterable[str] = ()) -> str:
    """Why a browser sent this request for another site ('' where it did not)."""
    headers = _headers(scope)
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    if fetch_site in CROSS_SITE:
        return f"a browser sent this request from another site (Sec-Fetch-Site: {fetch_site})"
    origin = headers.get("origin")
    if origin is None:
        return ""  # not a browser's cross-origin request: the pipeline's own clients, curl
    origin = origin.strip()
    if origin in allowed_origins:
        return ""
    parts = urlsplit(origin)
    own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}"
    if origin.lower() != own.lower() or parts.hostname is None or not _own_name(parts.hostname):
        return f"a browser sent this request from the page of {origin!r}, not this controller's own"
    return ""


class CrossSiteGuard:
    """ASGI middleware: requests a browser sent for another site get 403 (see module)."""

    def __init__(self, app: App, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed_origins = frozenset(o.strip().rstrip("/") for o in allowed_origins if o.strip())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        why = refusal(scope, self.allowed_origins)
        if not why:
            await self.app(scope, receive, send)
            return
        log.warning("refused %s %s: %s", scope.get("method"), scope.get("path"), why)
        body = json.dumps({"detail": f"{why}: the dranspose controller takes no requests from web pages"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def allowed_origins_from_env(env: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    text = (os.environ if env is None else env).get(ENV_ORIGINS, "")
    return tuple(o.strip() for o in text.split(",") if o.strip())


def install() -> None:
    """In the controller's process, before its app starts: the guard outside every other
    middleware (dranspose's CORS one included, so a foreign preflight is refused too)."""
    import dranspose.controller

    dranspose.controller.app.add_middleware(CrossSiteGuard, allowed_origins=allowed_origins_from_env())
