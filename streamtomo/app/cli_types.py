"""Argument types for the command line: a value out of range is argparse's usage
error (exit 2, one line naming the option), not a traceback from deep inside."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

_N = TypeVar("_N", int, float)


def _checked(kind: type[_N], accept: Callable[[_N], bool], refusal: str) -> Callable[[str], _N]:
    """An argparse type: ``text`` as ``kind`` (floats finite), kept where ``accept``
    holds, else ``refusal`` (formatted with the value as ``{0}``)."""

    def parse(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if not accept(value):
            raise argparse.ArgumentTypeError(refusal.format(value))
        return value

    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer of at least ``low``."""
    return _checked(int, lambda v: v >= low, f"{{0}} is not at least {low}")


positive_int = int_at_least(1)
non_negative_int = _checked(int, lambda v: v >= 0, "{0} is negative")
positive_float = _checked(float, lambda v: v > 0, "{0:g} is not above 0")
non_negative_float = _checked(float, lambda v: v >= 0, "{0:g} is negative")
# A TCP port, or 0 for a free one.
port = _checked(int, lambda v: 0 <= v <= 65535, "{0} is not a port (0 to 65535; 0: a free one)")


def http_url(text: str) -> str:
    """An http:// or https:// URL with a host. 'garbage' for an endpoint was taken and
    every request then answered 502; 'http://[::1' a traceback per request; an HSDS
    'ftp://x' a traceback, 'garbage' a warning and a scan that published nowhere."""
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - parses the port: a bad one raises ValueError here
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a URL: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s)://HOST[:PORT] URL")
    return text


def http_url_or_none(text: str) -> str:
    """:func:`http_url`, or '' / 'none' for none."""
    return text if text.lower() in ("", "none") else http_url(text)


def folder_path(text: str) -> str:
    """A folder to use or make: refused where it, or a folder above it, is a file
    ('[Errno 17] File exists' from deep inside named neither the option nor why)."""
    path = Path(text)
    for part in [path, *path.parents]:
        if part.exists():
            if not part.is_dir():
                raise argparse.ArgumentTypeError(
                    f"{text} is a file, not a folder" if part == path else f"{text}: {part} is a file, not a folder"
                )
            break
    return text
