"""The control API: live parameter changes, on a listener of its own.

The HDF REST listener is read-only and may be public; changing a running scan is a
different right, so it lives here, on another port, behind a token:

* ``GET /streamtomo/parameters``: the parameters that may change live, with values.
* ``POST /streamtomo/parameters/{name}``: body ``{"value": ...}`` (``application/json``).
  The sink validates the value (400 with the reason, nothing stored) and stores it;
  the slow part (rebuilding slices) happens later, off the request path, so the
  answer is ``202 Accepted``.

Every request needs ``Authorization: Bearer <token>`` (401 without, compared in
constant time). Why a header and JSON: a page on another origin can send a
``text/plain`` POST without asking (no CORS preflight) but cannot set
``Authorization`` or ``Content-Type: application/json`` without a preflight, which
only the configured origins pass. A request that carries an ``Origin`` outside them
is refused (403) before anything else. The token comes from a file (mode 0600,
created at start when missing; in Kubernetes a mounted Secret); it is never put in
a URL and never logged. The file is the token: one replaced in it (a rotated Secret)
applies from the next request, without a restart, and a file that holds no valid token
(emptied, removed) lets no request through until it does (:class:`TokenFile`).

Settings (environment, read by :meth:`ControlSettings.from_env`):
``STREAMTOMO_CONTROL_HOST`` (default 127.0.0.1), ``STREAMTOMO_CONTROL_PORT`` (default
0: a free port), ``STREAMTOMO_CONTROL_TOKEN_FILE`` (default: a new file in a private
temporary folder), ``STREAMTOMO_CONTROL_ORIGINS`` (comma separated browser origins
allowed to call it directly; default none: browsers go through the viewer's server).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from aiohttp import web

from streamtomo.hsds_bridge.credentials import open_to_others
from streamtomo.hsds_bridge.http_thread import BackgroundHttpServer, BodyError, env_port, read_limited

log = logging.getLogger(__name__)

LIVE_PARAMETERS = ("center", "filter", "slice_rows", "slice_size")
MAX_BODY = 1024
MAX_VALUE_CHARS = 256
TOKEN_BYTES = 32
MIN_TOKEN_CHARS = 16
JSON = "application/json"
ENV_HOST = "STREAMTOMO_CONTROL_HOST"
ENV_PORT = "STREAMTOMO_CONTROL_PORT"
ENV_TOKEN_FILE = "STREAMTOMO_CONTROL_TOKEN_FILE"
ENV_ORIGINS = "STREAMTOMO_CONTROL_ORIGINS"


class ParameterError(ValueError):
    """The sink refused a value; the message names value and what is allowed."""


# The sink validates and stores; it returns what will happen next (shown to the caller).
ParameterSink = Callable[[str, str], str | None]
ParameterSource = Callable[[], Mapping[str, str]]


# -- the token ------------------------------------------------------------------------
def create_token_file(path: Path) -> str:
    """A new random token in ``path``, created 0600 (never wider, even for a moment)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def read_token_file(path: Path) -> str:
    """The one token in ``path``: what the control API checks, and what the viewer sends
    (one rule for both: the viewer took a five-character or two-line file, and a
    two-line one made every control request a 500)."""
    token = path.read_text().strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"control token file {path} must hold one token of at least {MIN_TOKEN_CHARS} characters")
    if open_to_others(path.stat()):
        log.warning("control token file %s is readable by other users: chmod 600 it", path)
    return token


def load_or_create_token(path: Path) -> str:
    """The token in ``path``; a new one (0600) when the file does not exist yet."""
    try:
        return create_token_file(path)
    except FileExistsError:
        return read_token_file(path)


class TokenFile:
    """The token its file holds now, for each request: called, it returns it.

    Re-read when the file is another (device, inode) or was written (mtime, size)
    since: Kubernetes rotates a mounted Secret by swapping a symlink, ``up`` users by
    writing the file. A file that cannot be read or holds no valid token gives
    ``None``, which matches no request (closed, not the last token kept: emptying the
    file is how one locks everybody out at once), until it holds one again.
    """

    def __init__(self, path: Path, read: Callable[[Path], str] = read_token_file) -> None:
        self.path, self._read = path, read
        self._lock = threading.Lock()
        # The file's identity before its token: a rotation between the two is seen at
        # the next request. Read the other way round, a token read before a rotation
        # was kept against the new file's identity, for good.
        self._identity = self._stat()
        self._token: str | None = read(path)

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def __call__(self) -> str | None:
        identity = self._stat()
        with self._lock:
            if identity != self._identity:
                self._identity = identity
                try:
                    if identity is None:
                        raise FileNotFoundError(f"{self.path} is gone")
                    self._token = self._read(self.path)
                    log.info("control token file %s changed: its token applies from now on", self.path)
                except (OSError, ValueError) as error:
                    self._token = None
                    log.warning(
                        "control token file %s changed and holds no valid token (%s): no request passes",
                        self.path,
                        error,
                    )
            return self._token


# -- settings -------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlSettings:
    host: str = "127.0.0.1"
    port: int = 0
    token_file: str = ""  # empty: a new token in a private temporary folder
    origins: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ControlSettings:
        origins = tuple(o.strip() for o in env.get(ENV_ORIGINS, "").split(",") if o.strip())
        return cls(
            host=env.get(ENV_HOST, "127.0.0.1"),
            port=env_port(env, ENV_PORT, 0),
            token_file=env.get(ENV_TOKEN_FILE, ""),
            origins=origins,
        )


# -- the application ------------------------------------------------------------------
@dataclass
class _Control:
    token: Callable[[], str | None] = field(repr=False)  # the token as of now (TokenFile)
    origins: frozenset[str]
    sink: ParameterSink
    source: ParameterSource
    # One at a time, off the event loop: the sink takes the scan's lock and may post
    # to the dranspose controller; reads of /about and friends never wait for it.
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="control"))


CONTROL_KEY: web.AppKey[_Control] = web.AppKey("control", _Control)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    reason = "".join(c if c.isprintable() else " " for c in message)[:200].encode("ascii", "replace").decode()
    return web.json_response({"status": status, "message": message}, status=status, reason=reason, headers=headers)


def _authorised(request: web.Request, token: str | None) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # aiohttp decodes header bytes as UTF-8 with surrogate escapes: a header that is not
    # UTF-8 (b"Bearer \xff") turns back into its own bytes here, not a UnicodeEncodeError (a 500).
    offered = given.strip().encode("utf-8", "surrogateescape")
    if token is None:  # the token file holds none (TokenFile): nobody
        return False
    return scheme.lower() == "bearer" and hmac.compare_digest(offered, token.encode())


@web.middleware
async def guard_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Origin first, then the token: nothing else runs for a refused request."""
    control = request.app[CONTROL_KEY]
    origin = request.headers.get("Origin")
    if origin is not None and origin not in control.origins:
        log.info("control: refused %s %s from origin %r", request.method, request.path, origin)
        return _error(403, f"origin {origin!r} may not change this pipeline")
    if request.method == "OPTIONS" and origin is not None:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "GET, POST",
                "Access-Control-Allow-Headers": "Authorization, Content-Type",
                "Access-Control-Max-Age": "600",
            },
        )
    if not _authorised(request, control.token()):
        log.info("control: refused %s %s without a valid token from %s", request.method, request.path, request.remote)
        return _error(
            401, "a valid control token is required (Authorization: Bearer ...)", {"WWW-Authenticate": "Bearer"}
        )
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin in request.app[CONTROL_KEY].origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


async def get_parameters(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    values = await asyncio.get_running_loop().run_in_executor(control.executor, control.source)
    return web.json_response(
        {"parameters": {k: v for k, v in values.items() if k in LIVE_PARAMETERS}, "writable": True}
    )


def _value_text(body: Any) -> str:
    if not isinstance(body, dict) or set(body) != {"value"}:
        raise ParameterError('the body must be a JSON object {"value": ...}')
    value = body["value"]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ParameterError("value must be a string or a number")
    text = value.strip() if isinstance(value, str) else json.dumps(value)
    if len(text) > MAX_VALUE_CHARS:
        raise ParameterError(f"value is longer than {MAX_VALUE_CHARS} characters")
    return text


async def post_parameter(request: web.Request) -> web.Response:
    control = request.app[CONTROL_KEY]
    name = request.match_info["name"]
    if name not in LIVE_PARAMETERS:
        return _error(400, f"parameter {name!r} cannot be changed live; allowed: {list(LIVE_PARAMETERS)}")
    if request.content_type != JSON:
        return _error(415, f'send the value as {JSON}: {{"value": ...}}')
    try:
        body = await read_limited(request, MAX_BODY)
    except BodyError as error:  # "gzip" that is not (was a bare 500), or too slow: the client's fault
        refused = _error(error.status, str(error))
        refused.force_close()  # where this request ends is unknown: no next one on this connection
        return refused
    if len(body) > MAX_BODY:
        return _error(413, f"a parameter change is at most {MAX_BODY} bytes")
    try:
        value = _value_text(json.loads(body))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # the last: "[[[[..." nested deep
        return _error(400, "the body is not JSON")
    except ParameterError as error:
        return _error(400, str(error))
    try:
        outcome = await asyncio.get_running_loop().run_in_executor(control.executor, control.sink, name, value)
    except ValueError as error:  # ParameterError, ConfigError: the reason, and nothing was stored
        log.info("control: %s=%r refused: %s", name, value, error)
        return _error(400, str(error).replace("\n", " ")[:300])
    except ConnectionError as error:  # the pipeline (its controller) did not take it: nothing changed
        log.warning("control: %s=%r not taken: %s", name, value, error)
        return _error(503, str(error).replace("\n", " ")[:300])
    log.info("control: %s set to %r", name, value)
    return web.json_response({"name": name, "value": value, "accepted": True, "next": outcome or ""}, status=202)


def build_control_app(
    token: str | Callable[[], str | None], origins: Sequence[str], sink: ParameterSink, source: ParameterSource
) -> web.Application:
    """``token``: the token, or what gives it for each request (a :class:`TokenFile`)."""
    app = web.Application(middlewares=[guard_middleware], client_max_size=MAX_BODY * 4)
    tokens = token if callable(token) else (lambda: token)
    control = _Control(tokens, frozenset(origins), sink, source)
    app[CONTROL_KEY] = control
    app.on_response_prepare.append(_cors)

    async def stop_executor(app: web.Application) -> None:
        control.executor.shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_executor)
    app.router.add_get("/streamtomo/parameters", get_parameters, allow_head=False)
    app.router.add_post("/streamtomo/parameters/{name}", post_parameter)
    return app


class ControlServer:
    """The control API on its own listener (and thread); ``url`` and ``token_file`` once started."""

    def __init__(self, settings: ControlSettings, sink: ParameterSink, source: ParameterSource) -> None:
        self.settings = settings
        self._tmp: str | None = None
        if settings.token_file:
            self.token_file = Path(settings.token_file)
        else:
            self._tmp = tempfile.mkdtemp(prefix="streamtomo-control-")  # 0700
            self.token_file = Path(self._tmp) / "token"
        load_or_create_token(self.token_file)  # made, or checked, before the listener opens
        self.tokens = TokenFile(self.token_file)
        self._http = BackgroundHttpServer(
            lambda: build_control_app(self.tokens, settings.origins, sink, source),
            settings.host,
            settings.port,
            "control API",
        )
        self._closed = False

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"ControlServer(url={self.url!r}, token_file={str(self.token_file)!r})"

    @property
    def token(self) -> str | None:
        """The token as of now (its file's)."""
        return self.tokens()

    @property
    def url(self) -> str:
        return self._http.url()

    def start(self) -> ControlServer:
        try:
            self._http.start()
        except BaseException:  # a port that is taken: no token folder left behind
            self.close()
            raise
        log.info("control API at %s (token in %s)", self.url, self.token_file)
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._http.close(timeout)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
