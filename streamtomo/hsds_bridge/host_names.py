"""The names a browser may know one of our HTTP servers by, against DNS rebinding.

A site that rebinds its own name to 127.0.0.1 (or a beamline address) becomes, to the
browser, the same origin as our server: its page may read what the server answers.
What gives it away is the ``Host`` header, its own name. So a browser's request must
name the server as localhost, an IP address (which no other site can be: a browser
sends an address as Host only to that address), or a name the server is given. The
live domain's port, the viewer and the controller's guard share this rule.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

WILDCARD_HOSTS = ("", "0.0.0.0", "::", "[::]")


def host_name(host: str) -> str | None:
    """The name of a ``Host`` header, lower case, without its port and final dot; None
    when it is not name[:port] ("a:b:c", "[::1" are not)."""
    if host.startswith("["):
        name, bracket, port = host[1:].partition("]")
        if not bracket:
            return None
    else:
        name, colon, port = host.partition(":")
        port = colon + port
    if not re.fullmatch(r"(?::[0-9]*)?", port) or not re.fullmatch(r"[A-Za-z0-9._:-]+", name):
        return None  # a name's letters (an IPv6 address's in brackets): not "@", "%", a space
    return name.lower().removesuffix(".")


def served_names(host: str, origins: Iterable[str] = (), names: Iterable[str] = ()) -> frozenset[str]:
    """The host names a browser may know a server by, besides localhost and any IP
    address: ``host`` (where it listens) when it is a name, this machine's names when it
    listens on every interface, the names of ``origins`` (URLs) and ``names``."""
    found = {socket.gethostname(), socket.getfqdn()} if host in WILDCARD_HOSTS else {host}
    found |= {urlsplit(origin.strip()).hostname or "" for origin in origins}
    found |= {name.strip() for name in names}
    return frozenset(name.lower().removesuffix(".") for name in found if name)


def known_host(host: str, names: frozenset[str]) -> bool:
    """Whether the ``Host`` header ``host`` names the server: localhost, an IP address
    or one of ``names`` (the port is not compared: a rebinding site's name is what gives
    it away, and a port-forward shows the server on a port of its own)."""
    name = host_name(host)
    if name is None:
        return False
    return name in names or local_or_address(name)


def local_or_address(name: str) -> bool:
    """Whether ``name`` (a host name, no port; an IPv6 address with or without its
    brackets) is one no other site can be: localhost or an IP address. An address with
    a zone ("::1%25evil.example") is no address of ours. The Host check above and the
    controller's check of a page's origin share it (they were two copies, and the
    origin's took zoned addresses)."""
    name = name.lower().removesuffix(".")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name.removeprefix("[").removesuffix("]"))
    except ValueError:
        return False
    return getattr(address, "scope_id", None) is None


def names_from_env(text: str) -> tuple[str, ...]:
    """A comma-separated list of host names (``STREAMTOMO_HTTP_NAMES``)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
