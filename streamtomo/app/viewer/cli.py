"""``streamtomo view``: serve the live viewer for one domain until Ctrl-C.

``register(subparsers)`` is called by :mod:`streamtomo.app.cli`; the server is imported
only when the command runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
from urllib.parse import urlsplit

from streamtomo.app.cli_types import http_url, http_url_or_none, port
from streamtomo.hsds_bridge.host_names import WILDCARD_HOSTS

logger = logging.getLogger("streamtomo")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``view`` subcommand to ``streamtomo``'s subparsers."""
    view = subparsers.add_parser(
        "view",
        help="serve the live slice viewer (a web page) for a domain",
        description=(
            "Serve a web page that shows a live domain: slices, sinograms, progress, and "
            "centre/filter controls. HSDS credentials (read-only) come from "
            "STREAMTOMO_VIEWER_USERNAME and STREAMTOMO_VIEWER_PASSWORD (or STREAMTOMO_VIEWER_PASSWORD_FILE)."
        ),
    )
    view.add_argument(
        "--endpoint",
        required=True,
        type=http_url,
        help="HDF REST endpoint: the reducer's server or an HSDS, e.g. http://127.0.0.1:8100",
    )
    view.add_argument("--domain", default="/streamtomo/live.h5", help="domain name (default /streamtomo/live.h5)")
    view.add_argument("--port", type=port, default=8200, help="port of the page (default 8200; 0: a free port)")
    view.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    view.add_argument(
        "--control",
        default="",
        type=http_url_or_none,
        help="URL of the pipeline's control API (the reducer's control listener, not the endpoint); default: none, a read-only page",
    )
    view.add_argument(
        "--control-token-file",
        default="",
        help="file holding the control token (default: $STREAMTOMO_CONTROL_TOKEN_FILE); never pass the token itself",
    )
    view.add_argument(
        "--origin",
        action="append",
        default=None,
        help="public origin of this page (e.g. https://tomo.example.org behind an authenticating proxy); loopback is always allowed",
    )
    view.add_argument(
        "--remote-control",
        action="store_true",
        help="serve the controls on a --host other than loopback: whoever reaches the port may change centre and "
        "filter (the server attaches the token), so only where the network admits an authenticating proxy or "
        "trusted peers alone (the chart: its NetworkPolicy)",
    )
    view.set_defaults(func=cmd_view)
    return view


def machine_name() -> str:
    """This machine's name as others would use it: its FQDN, else its host name; a
    placeholder where both say only "localhost" (a container without a name)."""
    for name in (socket.getfqdn(), socket.gethostname()):
        if name and not name.startswith("localhost") and not name.startswith("127."):
            return name
    return "THIS-MACHINE"


def other_machines_note(host: str, url: str, controls: bool, origins: tuple[str, ...]) -> str | None:
    """On an address of every interface, how other machines reach the page: the URL
    printed is this machine's loopback one, which means nothing to a browser elsewhere;
    and the page's controls answer only its own origins (loopback and ``--origin``)."""
    if host not in WILDCARD_HOSTS:
        return None
    address = f"http://{machine_name()}:{urlsplit(url).port}"
    note = f"viewer: listening on every interface; from another machine open {address}/"
    if controls and address not in origins:
        note += f" (its controls answer a browser there only with --origin {address})"
    return note


def cmd_view(args: argparse.Namespace) -> int:
    from streamtomo.app.viewer.server import ViewerAssetsMissing, control_token_file, start_viewer

    control = None if args.control.lower() in ("", "none") else args.control
    try:
        token = control_token_file(args.control_token_file) if control and args.control_token_file else None
        origins = tuple(o.rstrip("/") for o in args.origin) if args.origin else None
        server = start_viewer(
            args.endpoint,
            args.domain,
            host=args.host,
            port=args.port,
            control=control,
            control_token=token,
            origins=origins,
            remote_control=args.remote_control,
        )
    except ViewerAssetsMissing as error:
        print(f"streamtomo: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:
        print(f"streamtomo: error: {error}", file=sys.stderr)
        return 2
    # Before the URL is printed: whoever read it may stop the viewer at once, and a
    # SIGTERM before the handler killed it with 143 (seen under load in the tests).
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"viewer: {server.url}", flush=True)
    note = other_machines_note(args.host, server.url, control is not None, origins or ())
    if note:
        print(note, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
