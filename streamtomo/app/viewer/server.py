"""The viewer's HTTP server: the built page plus a proxy to one endpoint.

Why a proxy: the page then talks to its own origin only, so the HDF REST endpoint
needs no CORS settings and the browser never sees credentials. A real HSDS needs
HTTP basic auth; the server adds it from ``STREAMTOMO_VIEWER_USERNAME`` /
``STREAMTOMO_VIEWER_PASSWORD`` (read-only account; never the command line, where
``ps`` would show it).

Routes:

* ``GET /`` the page, ``GET /assets/...`` its bundle (built by Vite from ``viewer/``)
* ``GET /viewer.json`` what the page needs to know: domain, endpoint, control
* ``GET /hdf/{path}`` the HDF REST API of the endpoint, pinned to the one domain
  (read-only: GET only; of the query, only what the page's reads use goes on, so
  neither another domain nor another bucket can be asked for), streamed through
* ``GET /control/parameters``, ``POST /control/parameters/{name}`` (JSON body
  ``{"value": ...}``) the pipeline's control API, with the control token attached

Who may change parameters: whoever can load this page from an allowed origin. The
server holds the control token (``STREAMTOMO_CONTROL_TOKEN_FILE`` or
``--control-token-file``; never in the page, a URL or a log) and attaches it. A
change must come as ``application/json`` (another site cannot send that without a
CORS preflight, which this server never grants), with an ``Origin`` and ``Host`` of
the page's own (loopback by default, ``STREAMTOMO_VIEWER_ORIGINS`` adds the public
address behind an authenticating Ingress): forged cross-site requests get 403/415.

Who may read: every route, the page and its reads too, answers only a ``Host`` this
server may be known by (:func:`served_names`); another name is a DNS-rebinding site
that pointed its own name at this address, which would read the live scan through a
user's browser with the viewer's read credentials (403).

Upstream failures are answered as JSON ``{"status", "message"}`` (502 for an
endpoint that does not answer), which the page shows as they are. Answers are
streamed through (a 250 MiB slab read by a slow client held 250 MiB here until it was
read, for each such client).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aiohttp
from aiohttp import web
from yarl import URL

from streamtomo.hsds_bridge.control_api import TokenFile, read_token_file
from streamtomo.hsds_bridge.credentials import CredentialsError, password_from
from streamtomo.hsds_bridge.host_names import known_host, served_names
from streamtomo.hsds_bridge.http_thread import BackgroundHttpServer, BodyError, read_limited

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().with_name("static")
ENV_USERNAME = "STREAMTOMO_VIEWER_USERNAME"
ENV_PASSWORD = "STREAMTOMO_VIEWER_PASSWORD"
ENV_PASSWORD_FILE = "STREAMTOMO_VIEWER_PASSWORD_FILE"
ENV_ORIGINS = "STREAMTOMO_VIEWER_ORIGINS"
ENV_CONTROL_TOKEN_FILE = "STREAMTOMO_CONTROL_TOKEN_FILE"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
BUILD_COMMANDS = "npm ci --prefix viewer && npm run build --prefix viewer"
# From a request to the endpoint's first byte of answer, and then from each piece of a
# streamed answer to the next (aiohttp's sock_read; not while a slow page holds us back).
UPSTREAM_TIMEOUT_S = 10.0
# A page must take each piece of a streamed answer within this: one that stops reading
# holds the endpoint's connection (on our server, one of its slots for large reads).
PAGE_TIMEOUT_S = 10.0
MAX_ERROR_TEXT = 4096  # of a non-JSON error answer: the message shows 500 characters
# The query parameters the page's reads use (viewer/src/api.ts), by their HSDS names:
# nothing else goes upstream. HSDS also takes a bucket, a domain under other names
# ("host") and paging; a deny-list of "domain" and "host" let ?bucket=, ?Domain= and
# ?HOST= through, and with the bucket another bucket's domain of that name was read.
FORWARDED_QUERY = ("select", "getobjs", "include_attrs", "include_links")
MAX_PARAMETER_BODY = 1024
PARAMETER_NAME = re.compile(r"[a-z][a-z_]{0,63}")  # what the control API names: center, slice_rows...


class ViewerAssetsMissing(RuntimeError):
    """The page was not built: the message says how to build it."""


def check_assets(static_dir: Path | None = None) -> Path:
    static_dir = static_dir or STATIC_DIR  # looked up at call time: tests point it elsewhere
    index = static_dir / "index.html"
    if not index.is_file():
        raise ViewerAssetsMissing(
            f"the viewer page is not built ({index} is missing). From a source checkout, build it with "
            f"`{BUILD_COMMANDS}` (needs Node.js 20 and npm), then reinstall or restart; "
            "a wheel built after that step ships the page."
        )
    return static_dir


def basic_auth_from_env(env: Mapping[str, str] = os.environ) -> str | None:
    """``Authorization`` header value for the endpoint, or None without credentials.
    The password may come from a file (``STREAMTOMO_VIEWER_PASSWORD_FILE``, the chart's
    way: no password in the process's environment)."""
    try:
        password = password_from(env, ENV_PASSWORD, ENV_PASSWORD_FILE)
    except CredentialsError as error:
        raise ValueError(str(error)) from None
    user = env.get(ENV_USERNAME, "")
    if not user and not password:
        return None
    if not user or not password or ":" in user:
        raise ValueError(f"set both {ENV_USERNAME} and {ENV_PASSWORD} (a username without ':')")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def normalise_domain(name: str) -> str:
    return name if name.startswith("/") else "/" + name


@dataclass(frozen=True)
class ViewerTarget:
    """What one viewer shows: a domain on an endpoint, and where its pipeline listens."""

    endpoint: str
    domain: str
    control: str | None = None  # base URL of the control API; None: read-only page
    authorization: str | None = field(default=None, repr=False)  # never logged
    # The token, or what gives it as of now (a TokenFile: a rotated token applies
    # without a restart); never logged, never sent to the page.
    control_token: str | Callable[[], str | None] | None = field(default=None, repr=False)
    origins: tuple[str, ...] = ()  # browser origins of this page besides loopback ones

    def upstream(self, path: str) -> URL:
        base = URL(self.endpoint.rstrip("/"))
        return base.with_path(base.path.rstrip("/") + "/" + path.lstrip("/"))


TARGET_KEY: web.AppKey[ViewerTarget] = web.AppKey("target", ViewerTarget)
STATIC_KEY: web.AppKey[Path] = web.AppKey("static", Path)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SESSION_KEY: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
STATE_KEY: web.AppKey[dict[str, bool]] = web.AppKey("reachable", dict)


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"status": status, "message": message}, status=status, headers={"Cache-Control": "no-store"}
    )


def _note_reachable(app: web.Application, what: str, ok: bool, why: str = "") -> None:
    # Log transitions only: the page polls every 250 ms while an endpoint is away.
    state = app[STATE_KEY]
    if state.get(what, True) != ok:
        if ok:
            log.info("%s is reachable again", what)
        else:
            log.warning("%s does not answer: %s", what, why)
    state[what] = ok


def _why(error: BaseException) -> str:
    """A short reason for a failed upstream request (aiohttp's own text names ssl contexts)."""
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):
            return "connection refused"
        return error.os_error.strerror or str(error.os_error)
    if isinstance(error, TimeoutError):
        return f"no answer within {UPSTREAM_TIMEOUT_S:.0f} s"  # to its first byte, or between two pieces
    return str(error) or type(error).__name__


async def _relay(
    request: web.Request, method: str, url: URL, what: str, headers: dict[str, str], body: bytes | None = None
) -> web.StreamResponse:
    """One upstream request, its answer streamed through as it comes (memory: a few
    pieces per request, whatever its size); errors before the answer starts become JSON
    the page can show."""
    session = request.app[SESSION_KEY]
    try:
        async with session.request(method, url, headers=headers, data=body, allow_redirects=False) as upstream:
            content_type = upstream.headers.get("Content-Type", "application/octet-stream")
            if upstream.status >= 400 and "json" not in content_type:
                # aiohttp's HTTPException bodies are "400: reason"; HSDS may answer HTML.
                text = (await _read_some(upstream, MAX_ERROR_TEXT)).decode("utf-8", "replace").strip()
                _note_reachable(request.app, what, True)
                return _upstream_refusal(what, upstream.status, upstream.reason or "", text)
            _note_reachable(request.app, what, True)
            return await _stream(request, upstream, what, content_type)
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        why = _why(error)
        _note_reachable(request.app, what, False, why)
        return _error(502, f"{what} does not answer ({why})")


async def _read_some(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """The answer's first ``limit`` bytes, or all of a shorter one (one ``read`` gives
    what has come so far: perhaps one TCP segment)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit and (chunk := await upstream.content.read(limit - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _upstream_refusal(what: str, status: int, reason: str, text: str) -> web.Response:
    message = reason if reason and reason not in ("Bad Request", "Not Found", "Forbidden") else text or reason
    if status in (401, 403) and what.startswith("HDF"):
        message += f" (the viewer reads with the account in {ENV_USERNAME}/{ENV_PASSWORD})"
    return _error(status, message[:500])


async def _stream(
    request: web.Request, upstream: aiohttp.ClientResponse, what: str, content_type: str
) -> web.StreamResponse:
    response = web.StreamResponse(
        status=upstream.status, headers={"Content-Type": content_type, "Cache-Control": "no-store"}
    )
    if upstream.content_length is not None and not upstream.headers.get("Content-Encoding"):
        # The length as sent; a compressed answer arrives decompressed, so goes chunked.
        response.content_length = upstream.content_length
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    while True:
        try:
            chunk = await upstream.content.readany()
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            # The status is sent: the page can only learn of it by a connection closed
            # short of the length (or of the chunked end).
            log.warning("%s stopped in the middle of an answer (%s): cut short", what, _why(error))
            if request.transport is not None:
                request.transport.abort()
            return response
        if not chunk:
            break
        try:
            # Waits while the page reads slowly; the endpoint's connection waits with it.
            async with asyncio.timeout(PAGE_TIMEOUT_S):
                await response.write(chunk)
        except ConnectionError:  # the page went away: nothing to answer
            return response
        except TimeoutError:
            log.info("viewer: a client took nothing of an answer for %.0f s: cut short", PAGE_TIMEOUT_S)
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write_eof()
    return response


# -- handlers ---------------------------------------------------------------------------
async def index(request: web.Request) -> web.StreamResponse:
    # no-cache: a rebuilt page (new asset hashes) is picked up on reload.
    return web.FileResponse(request.app[STATIC_KEY] / "index.html", headers={"Cache-Control": "no-cache"})


async def viewer_json(request: web.Request) -> web.Response:
    target = request.app[TARGET_KEY]
    return web.json_response(
        {"domain": target.domain, "endpoint": target.endpoint, "control": target.control is not None},
        headers={"Cache-Control": "no-store"},
    )


def _forwarded_query(request: web.Request, target: ViewerTarget) -> dict[str, str]:
    """The query for the endpoint: the page's parameters (case aside, the first of
    each), then the one domain. Pinned: the viewer grants no access to anything else."""
    query: dict[str, str] = {}
    for key, value in request.query.items():
        name = key.lower()
        if name in FORWARDED_QUERY and name not in query:
            query[name] = value
    query["domain"] = target.domain
    return query


async def hdf(request: web.Request) -> web.StreamResponse:
    target = request.app[TARGET_KEY]
    path = request.match_info["path"]
    if ".." in path.split("/"):
        return _error(400, "invalid path")
    query = _forwarded_query(request, target)
    headers = {"Accept": request.headers.get("Accept", "application/json")}
    if target.authorization:
        headers["Authorization"] = target.authorization
    url = target.upstream(path).with_query(query)
    return await _relay(request, "GET", url, f"HDF REST endpoint {target.endpoint}", headers)


def _own_origins(request: web.Request, target: ViewerTarget) -> set[str]:
    """This page's origins: loopback on the port it listens on, and the configured ones."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
    own = {f"http://{host}:{port}" for host in LOOPBACK_HOSTS} if port is not None else set()
    return own | set(target.origins)


def _foreign_host(request: web.Request, names: frozenset[str]) -> web.Response | None:
    """A 403 for a ``Host`` this page is not known by (DNS rebinding: :func:`known_host`),
    else None. No Host at all is no browser."""
    for host in request.headers.getall("Host", []):
        if not known_host(host, names):
            return _error(403, f"host {host!r} is not this viewer's address (if it is, give it as --origin)")
    return None


def _forgery(request: web.Request, target: ViewerTarget) -> web.Response | None:
    """Why this request must not reach the control API, or None when it may."""
    own = _own_origins(request, target)
    hosts = {URL(origin).raw_authority for origin in own}
    if request.host not in hosts:
        # DNS rebinding: another site's name pointed at this address is not this page.
        return _error(403, f"host {request.host!r} is not this viewer's address")
    origin = request.headers.get("Origin")
    if origin is not None and origin not in own:
        log.info("viewer: refused a parameter change from origin %r", origin)
        return _error(403, f"origin {origin!r} may not change the pipeline")
    return None


def _control_headers(target: ViewerTarget, extra: dict[str, str]) -> dict[str, str]:
    headers = dict(extra)
    token = target.control_token() if callable(target.control_token) else target.control_token
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return headers


async def get_parameters(request: web.Request) -> web.StreamResponse:
    target = request.app[TARGET_KEY]
    if target.control is None:
        return _error(404, "this viewer has no pipeline control URL")
    refused = _forgery(request, target)
    if refused is not None:
        return refused
    url = URL(target.control.rstrip("/")) / "streamtomo" / "parameters"
    return await _relay(
        request,
        "GET",
        url,
        f"pipeline control at {target.control}",
        _control_headers(target, {"Accept": "application/json"}),
    )


async def post_parameter(request: web.Request) -> web.StreamResponse:
    target = request.app[TARGET_KEY]
    if target.control is None:
        return _error(403, "this viewer has no pipeline control URL: parameters are read-only")
    refused = _forgery(request, target)
    if refused is not None:
        return refused
    if request.content_type != "application/json":
        # A text/plain or form POST needs no preflight: only JSON can be trusted to be ours.
        return _error(415, 'send {"value": ...} as application/json')
    try:
        body = await read_limited(request, MAX_PARAMETER_BODY)
    except BodyError as error:  # "gzip" that is not (was a bare 500), or too slow: the client's fault
        refused = _error(error.status, str(error))
        refused.force_close()  # where this request ends is unknown: no next one on this connection
        return refused
    if len(body) > MAX_PARAMETER_BODY:
        return _error(413, f"a parameter value is at most {MAX_PARAMETER_BODY} bytes")
    name = request.match_info["name"]
    if not PARAMETER_NAME.fullmatch(name):
        # The name goes into the control URL with the token: "..%2F..%2Fadmin" reached
        # another path of the control host (yarl resolves the decoded dots).
        return _error(400, f"{name!r} is not a parameter name")
    url = URL(target.control.rstrip("/")) / "streamtomo" / "parameters" / name
    log.info("viewer: setting pipeline parameter %s to %s", name, body.decode("utf-8", "replace"))
    headers = _control_headers(target, {"Content-Type": "application/json", "Accept": "application/json"})
    return await _relay(request, "POST", url, f"pipeline control at {target.control}", headers, body)


async def _open_session(app: web.Application) -> None:
    # No total: a large answer to a slow page takes as long as the page reads. A total
    # cut such answers and called the endpoint one that "does not answer".
    timeout = aiohttp.ClientTimeout(total=None, connect=3.0, sock_read=UPSTREAM_TIMEOUT_S)
    app[SESSION_KEY] = aiohttp.ClientSession(timeout=timeout, auto_decompress=True)


async def _close_session(app: web.Application) -> None:
    await app[SESSION_KEY].close()


# Another site may not frame the page: its controls post same-origin JSON, so a page
# that framed it and led a user's clicks would pass every cross-site check. And the
# page runs only its own scripts and talks only to its own origin: the strings it shows
# (a scan's reason, parameters) come from the detector's and PandA's streams, which are
# network input; should one ever reach the DOM as markup, no injected script or
# exfiltrating request runs. 'unsafe-eval': its ndarray library compiles accessors
# with new Function; React sets styles through the CSSOM, its CSS file is its own.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-eval'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
FRAMING_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


async def _add_framing_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in FRAMING_HEADERS.items():
        response.headers.setdefault(name, value)


NAMES_KEY: web.AppKey[frozenset[str]] = web.AppKey("names", frozenset)


@web.middleware
async def _host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route, reads and the page too (they carry the live scan and the read
    credentials' reach): only to a Host this page is known by."""
    refused = _foreign_host(request, request.app[NAMES_KEY])
    return refused if refused is not None else await handler(request)


def build_app(
    target: ViewerTarget, static_dir: Path | None = None, names: frozenset[str] | None = None
) -> web.Application:
    """``names``: the host names the page is served as (:func:`served_names`; default
    those of loopback and ``target.origins``)."""
    static_dir = check_assets(static_dir)
    app = web.Application(client_max_size=MAX_PARAMETER_BODY * 4, middlewares=[_host_guard])
    app[NAMES_KEY] = served_names("localhost", target.origins) if names is None else names
    app.on_response_prepare.append(_add_framing_headers)
    app[TARGET_KEY] = target
    app[STATIC_KEY] = static_dir
    app[STATE_KEY] = {}
    app.on_startup.append(_open_session)
    app.on_cleanup.append(_close_session)
    app.router.add_get("/", index)
    app.router.add_get("/index.html", index)
    app.router.add_get("/viewer.json", viewer_json)
    app.router.add_get("/hdf/{path:.*}", hdf)
    app.router.add_get("/control/parameters", get_parameters)
    app.router.add_post("/control/parameters/{name}", post_parameter)
    app.router.add_static("/assets", static_dir / "assets")
    return app


# -- running it in a background thread -------------------------------------------------
class ViewerServer:
    """The viewer app on its own event loop thread; ``url`` once started."""

    def __init__(
        self, target: ViewerTarget, host: str = "127.0.0.1", port: int = 0, static_dir: Path | None = None
    ) -> None:
        self.target = target
        app = build_app(target, static_dir, served_names(host, target.origins))  # raises ViewerAssetsMissing early
        self._http = BackgroundHttpServer(lambda: app, host, port, "viewer server", shutdown_timeout=1.0)
        self._closed = False

    @property
    def url(self) -> str:
        return self._http.url() + "/"

    def start(self) -> ViewerServer:
        self._http.start()
        log.info("viewer for %s at %s serving %s", self.target.domain, self.target.endpoint, self.url)
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._http.close(timeout)

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def control_token_file(path: str | Path) -> TokenFile:
    """The token in ``path`` for each request, re-read when the file changes (a rotated
    Secret applies without a restart; a file emptied sends none). The reducer's rule
    (:func:`~streamtomo.hsds_bridge.control_api.read_token_file`): raises ``ValueError``
    when the file holds no valid token at start."""
    return TokenFile(Path(path), read=read_token_file)


def start_viewer(
    endpoint: str,
    domain: str,
    host: str = "127.0.0.1",
    port: int = 0,
    control: str | None = None,
    control_token: str | Callable[[], str | None] | None = None,
    origins: tuple[str, ...] | None = None,
    remote_control: bool = False,
) -> ViewerServer:
    """Serve the live viewer for ``domain`` on ``endpoint``; returns the started server.

    ``control``: base URL of the pipeline's control API (the reducer's control
    listener); ``None`` (default) a read-only page. ``control_token``: its token, or
    what gives it for each request (:func:`control_token_file`); default: the file
    named by ``STREAMTOMO_CONTROL_TOKEN_FILE``, followed as it changes. ``origins``: public
    origins of the page besides loopback (default ``STREAMTOMO_VIEWER_ORIGINS``).
    ``remote_control``: the page's controls may be served on an address other than
    loopback (``host``); without it that is refused (``ValueError``): the server
    attaches the token for whoever reaches it, and its Host and Origin checks stop
    browsers on other sites, not a client that sends the headers it likes. Say it
    only where the network in front admits an authenticating proxy or trusted peers
    alone (the chart: its NetworkPolicy).
    Raises :class:`ViewerAssetsMissing` when the page was not built.
    """
    if control is not None and not remote_control and host not in (*LOOPBACK_HOSTS, "::1"):
        raise ValueError(
            f"the page's controls on {host}: whoever reaches that address could change the scan (this server "
            "attaches the control token for them). Listen on 127.0.0.1, leave --control out for a read-only "
            "page, or, where only an authenticating proxy or trusted peers reach this port, add --remote-control"
        )
    if control is not None and control_token is None:
        token_file = os.environ.get(ENV_CONTROL_TOKEN_FILE, "")
        if not token_file:
            raise ValueError(
                f"a control URL needs the control token: set {ENV_CONTROL_TOKEN_FILE} or pass --control-token-file"
            )
        control_token = control_token_file(token_file)
    if origins is None:
        origins = tuple(o.strip().rstrip("/") for o in os.environ.get(ENV_ORIGINS, "").split(",") if o.strip())
    target = ViewerTarget(
        endpoint=endpoint.rstrip("/"),
        domain=normalise_domain(domain),
        control=control.rstrip("/") if control else None,
        authorization=basic_auth_from_env(),
        control_token=control_token,
        origins=origins,
    )
    return ViewerServer(target, host, port).start()
