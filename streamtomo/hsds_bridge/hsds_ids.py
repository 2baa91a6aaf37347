"""Names and object ids the HSDS writer chooses itself.

HSDS (schema v2) lets a client pick the ids of the objects it creates, as long as
they share the root group's prefix. Choosing them here makes every creation request
idempotent: a request whose answer was lost can be repeated, and a domain that a
crashed server lost can be rebuilt with the same ids readers already hold.
"""

from __future__ import annotations

import uuid
from typing import Literal

MAX_VERSIONS = 999  # scan.h5, scan_v2.h5 ... scan_v999.h5, then give up


def _fmt_id(prefix: str, hexchars: str) -> str:
    h = hexchars
    return f"{prefix}-{h[0:8]}-{h[8:16]}-{h[16:20]}-{h[20:26]}-{h[26:32]}"


def new_root_id() -> str:
    """A root group id: 16 random hex chars, then the same rotated by 8 (HSDS's rule)."""
    head = uuid.uuid4().hex[:16]
    return _fmt_id("g", head + "".join(format((int(c, 16) + 8) % 16, "x") for c in head))


def new_object_id(root_id: str, collection: Literal["groups", "datasets"]) -> str:
    """An object id in the domain of ``root_id`` (shares its first 16 hex chars)."""
    root_hex = "".join(root_id.split("-")[1:])
    return _fmt_id("g" if collection == "groups" else "d", root_hex[:16] + uuid.uuid4().hex[:16])


def versioned_name(name: str, version: int) -> str:
    """``/a/scan.h5`` -> ``/a/scan_v2.h5`` (version >= 2)."""
    folder, _, leaf = name.rpartition("/")
    stem, dot, ext = leaf.rpartition(".")
    if not dot or not stem:
        stem, ext = leaf, ""
    return f"{folder}/{stem}_v{version}" + (f".{ext}" if ext else "")
