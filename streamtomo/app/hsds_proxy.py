"""A loopback-only HTTP reverse proxy in front of HSDS's unix-domain socket.

Why: the ``hsds`` launcher's TCP mode binds every node to all interfaces (and fixed
DN ports 6101..), whatever ``--host`` says. In ``--socket_dir`` mode it only listens
on unix sockets in a 0700 directory, which no other user can reach. This proxy is
then the single TCP listener, bound to ``127.0.0.1`` only, so the service node is
reachable from this machine and nowhere else; the data nodes (which do no
authentication at all) are not reachable over TCP.

Run as its own process (``python -m streamtomo.app.hsds_proxy``) so that its CPU work
does not compete for the GIL with the writer or the readers, and so that it lives
in the HSDS process group: stopping or killing the group stops it too.

CORS is answered here, not by HSDS: HSDS's ``cors_domain`` takes one origin, and a
viewer is often served from several (a dev server, the beamline's page). Only the
listed origins get ``Access-Control-Allow-Origin`` (with credentials: HSDS requests
carry Basic auth, so ``*`` is refused by :func:`check_origin`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

log = logging.getLogger("streamtomo.app.hsds_proxy")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
# Hop-by-hop headers (RFC 9110 7.6.1) plus those aiohttp recomputes itself.
_DROP_HEADERS = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
CLIENT_KEY = web.AppKey("client", aiohttp.ClientSession)
ORIGINS_KEY = web.AppKey("cors_origins", frozenset)
ALLOW_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # reads: what any origin may send
STREAM_CHUNK_BYTES = 1 << 20


def check_origin(origin: str) -> str:
    """``origin`` if it is a browser origin (``scheme://host[:port]``), else ValueError."""
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query or parts.fragment:
        raise ValueError(f"CORS origin {origin!r} must look like http://host[:port] (no path, no '*')")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"CORS origin {origin!r} has a bad port") from None
    return origin


def parse_origins(values: Iterable[str]) -> tuple[str, ...]:
    """Origins from repeated and comma-separated values, checked, in order, once each."""
    found = [check_origin(o.strip()) for value in values for o in value.split(",") if o.strip()]
    return tuple(dict.fromkeys(found))


def _allowed_origin(request: web.Request) -> str | None:
    origin = request.headers.get("Origin")
    return origin if origin is not None and origin in request.app[ORIGINS_KEY] else None


def _cors_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "Content-Length, Content-Type",
        "Vary": "Origin",
    }


def _preflight(request: web.Request) -> web.Response:
    origin = _allowed_origin(request)
    if origin is None:
        return web.Response(status=403, text=f"403: origin {request.headers.get('Origin')!r} is not allowed")
    headers = _cors_headers(origin)
    headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
    headers["Access-Control-Allow-Headers"] = request.headers.get(
        "Access-Control-Request-Headers", "Authorization, Content-Type"
    )
    headers["Access-Control-Max-Age"] = "600"
    return web.Response(status=204, headers=headers)


def _forward_headers(headers: aiohttp.typedefs.LooseHeaders) -> dict[str, str]:
    return {k: v for k, v in dict(headers).items() if k.lower() not in _DROP_HEADERS}


async def _proxy(request: web.Request) -> web.StreamResponse:
    # DNS-rebinding guard: a browser page on this machine could resolve its own
    # name to 127.0.0.1; refusing foreign Host headers keeps it out.
    if request.url.host not in LOOPBACK_HOSTS:
        return web.Response(status=403, text="403: host not allowed")
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return _preflight(request)
    origin = _allowed_origin(request)
    if request.method not in SAFE_METHODS and (
        (request.headers.get("Origin") is not None and origin is None)
        or request.headers.get("Sec-Fetch-Site") == "cross-site"
    ):
        # A page of another site may send a "simple" POST (text/plain, a form) without a
        # preflight, and the browser attaches the Basic auth it has cached for this
        # address: a change HSDS would take as the user's. Browsers name their Origin.
        return web.Response(status=403, text=f"403: a change from origin {request.headers.get('Origin')!r}")
    client = request.app[CLIENT_KEY]
    body = await request.read()
    try:
        async with client.request(
            request.method,
            "http://localhost" + request.rel_url.raw_path_qs,
            headers=_forward_headers(request.headers),
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            headers = {
                k: v
                for k, v in _forward_headers(upstream.headers).items()
                if not k.lower().startswith("access-control-")
            }
            if origin is not None:
                headers.update(_cors_headers(origin))
            # Passed on as it comes: a whole answer held here (a sinogram read is
            # gigabytes) was this process's memory, once per reader at a time.
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_chunked(STREAM_CHUNK_BYTES):
                    await response.write(chunk)
            except ConnectionError:  # the client went away (a viewer cancelled its read)
                return response
            except (TimeoutError, aiohttp.ClientError) as exc:
                # HSDS's answer ended short: the client's connection is closed, so that it
                # sees the answer cut (a chunked one would otherwise end as if whole).
                log.warning("HSDS's answer to %s %s was cut short (%s)", request.method, request.path, exc)
                if request.transport is not None:
                    request.transport.close()
                return response
            await response.write_eof()
            return response
    except (TimeoutError, aiohttp.ClientConnectionError) as exc:
        # HSDS is down or restarting: 502 tells clients to retry, not to give up.
        return web.Response(status=502, text=f"502: HSDS unreachable ({type(exc).__name__})")


async def _make_app(socket_path: str, cors_origins: Iterable[str] = ()) -> web.Application:
    app = web.Application(client_max_size=1024**3)
    app[ORIGINS_KEY] = frozenset(cors_origins)

    async def _client_ctx(app: web.Application):  # type: ignore[no-untyped-def]
        connector = aiohttp.UnixConnector(path=socket_path, limit=128)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False) as session:
            app[CLIENT_KEY] = session
            yield

    app.cleanup_ctx.append(_client_ctx)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="ascii")
    os.replace(tmp, path)  # atomic: the parent never reads a half-written port


async def serve(socket_path: str, port: int, port_file: Path | None, cors_origins: Iterable[str] = ()) -> None:
    """Serve until SIGTERM/SIGINT; the listener is bound to 127.0.0.1 only."""
    app = await _make_app(socket_path, cors_origins)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
    await site.start()
    bound = runner.addresses[0][1]
    log.info("proxy listening on 127.0.0.1:%d -> %s", bound, socket_path)
    if port_file is not None:
        _write_port_file(port_file, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="HSDS service node unix socket")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here")
    parser.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        help="browser origin allowed to read (repeatable, or a comma list)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        origins = parse_origins(args.cors_origin)
    except ValueError as error:
        parser.error(str(error))
    asyncio.run(serve(args.socket, args.port, args.port_file, origins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
