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

A browser page of the controller's own origin may read, not change: the controller's
status page only reads, and it shows the services' log lines unescaped (``innerHTML``),
among them request paths and stream input that anyone may put there. One request from
another site (refused, but logged with its path) planted a script that ran in the
controller's origin when someone opened the page, and its same-origin POST changed the
centre or stopped the scan. So every change a browser sends is refused, the page is
served with a Content-Security-Policy that runs only its own script (by hash: no
injected handler runs) and submits no form, and a browser's read must name this
controller's Host (a DNS-rebound name read the logs and parameters).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from streamtomo.hsds_bridge.host_names import known_host, served_names

log = logging.getLogger(__name__)

ENV_ORIGINS = "STREAMTOMO_CONTROLLER_ORIGINS"
CROSS_SITE = frozenset({"cross-site", "same-site"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
READS = frozenset({"GET", "HEAD", "OPTIONS"})

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
    """Why a browser sent this request for another site, or a change ('' where neither).
    ``allowed_origins``: the controller's own origins besides loopback and IP addresses
    (an Ingress's ``https://NAME``); a page there may read, as on loopback, not change."""
    headers = _headers(scope)
    fetch_site = headers.get("sec-fetch-site", "").strip().lower()
    origin = headers.get("origin")
    if origin is None and not fetch_site:
        return ""  # not a browser: the pipeline's own clients, curl
    if fetch_site in CROSS_SITE:
        return f"a browser sent this request from another site (Sec-Fetch-Site: {fetch_site})"
    method = str(scope.get("method", "GET")).upper()
    if method not in READS:
        return (
            f"a browser page sent this {method}: the controller's pages only read (its status page "
            "shows log lines anyone can put there); change a scan through the viewer or the control API"
        )
    allowed = frozenset(allowed_origins)
    host = headers.get("host", "")
    if not known_host(host, served_names("localhost", allowed)):
        return f"a browser asked for host {host!r}, not a name of this controller (a DNS-rebound name?)"
    if origin is None:
        return ""
    origin = origin.strip()
    if origin in allowed:
        return ""
    parts = urlsplit(origin)
    own = f"{scope.get('scheme', 'http')}://{host}"
    if origin.lower() != own.lower() or parts.hostname is None or not _own_name(parts.hostname):
        return f"a browser sent this request from the page of {origin!r}, not this controller's own"
    return ""


def page_policy(index_html: str) -> str:
    """The Content-Security-Policy of the controller's status page ``index_html``: its
    own inline scripts by hash (an injected ``onerror`` needs 'unsafe-inline'), fetches
    to its own origin, no form, no frame, no plugin."""
    scripts = re.findall(r"<script>(.*?)</script>", index_html, flags=re.DOTALL)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in scripts)
    return (
        f"default-src 'none'; script-src {hashes or chr(39) + 'none' + chr(39)}; connect-src 'self'; "
        "style-src 'unsafe-inline'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class CrossSiteGuard:
    """ASGI middleware: requests a browser sent for another site, and changes any page
    sent, get 403; the status page (``/``) comes with :attr:`page_policy` (see module)."""

    def __init__(self, app: App, allowed_origins: Iterable[str] = (), page_policy: str = "") -> None:
        self.app = app
        self.allowed_origins = frozenset(o.strip().rstrip("/") for o in allowed_origins if o.strip())
        self.page_policy = page_policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        why = refusal(scope, self.allowed_origins)
        if not why:
            await self.app(scope, receive, self._with_policy(scope, send))
            return
        # The path as repr: it is a stranger's text, and this line goes to the status page.
        log.warning("refused %s %r: %s", scope.get("method"), scope.get("path"), why)
        body = json.dumps({"detail": f"{why}: the dranspose controller takes no requests from web pages"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _with_policy(self, scope: Scope, send: Send) -> Send:
        """``send`` with the page's policy added to the status page's answer."""
        if scope.get("path") != "/" or not self.page_policy:
            return send
        policy = self.page_policy.encode()

        async def send_with_policy(message: Message) -> None:
            if message.get("type") == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-security-policy"]
                headers += [(b"content-security-policy", policy), (b"x-content-type-options", b"nosniff")]
                message = {**message, "headers": headers}
            await send(message)

        return send_with_policy


def allowed_origins_from_env(env: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    text = (os.environ if env is None else env).get(ENV_ORIGINS, "")
    return tuple(o.strip() for o in text.split(",") if o.strip())


def install() -> None:
    """In the controller's process, before its app starts: the guard outside every other
    middleware (dranspose's CORS one included, so a foreign preflight is refused too)."""
    import dranspose.controller

    index = Path(dranspose.controller.__file__).parent / "frontend" / "index.html"
    try:
        policy = page_policy(index.read_text(encoding="utf-8"))
    except OSError:  # no page in this dranspose: nothing to serve it with
        policy = page_policy("")
    dranspose.controller.app.add_middleware(
        CrossSiteGuard, allowed_origins=allowed_origins_from_env(), page_policy=policy
    )
