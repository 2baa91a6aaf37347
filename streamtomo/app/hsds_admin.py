"""What the local HSDS's admin does over HTTP: folders, listing and flushing domains.

Synchronous and standard library only, for :class:`streamtomo.app.local_hsds.LocalHsds`
before and after its servers run (the writer in ``streamtomo.hsds_bridge`` has its own
asynchronous client).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from streamtomo.hsds_bridge.credentials import Credentials

log = logging.getLogger(__name__)


class HsdsStartError(RuntimeError):
    """HSDS did not come up; the message carries the tail of its log."""


def hsds_request(
    url: str,
    method: str,
    path: str,
    *,
    auth: Credentials | None,
    body: Any = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """One HTTP request: ``(status, body)``; error statuses are answers, not exceptions."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth is not None:
        req.add_header("Authorization", auth.authorization_header())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def ensure_folder(url: str, admin: Credentials, folder: str, owner: str, deadline: float) -> None:
    """Create ``folder`` (owned by ``owner``) unless it exists; retries 5xx until ``deadline``."""
    domain = folder.rstrip("/")
    delay = 0.05
    while True:
        status, body = hsds_request(url, "GET", f"/?domain={domain}", auth=admin)
        if status == 200:
            return
        if status == 404:
            status, body = hsds_request(
                url, "PUT", f"/?domain={domain}", auth=admin, body={"folder": True, "owner": owner}
            )
            if status in (201, 409):
                log.info("created folder %s (owner %s)", folder, owner)
                return
        # Right after READY the first write sometimes gets a 500 (seen in ~1 of 3
        # starts); 5xx are transient, anything else is a real refusal.
        if status < 500 or time.monotonic() > deadline:
            raise HsdsStartError(f"cannot create folder {folder}: {status} {body[:200]!r}")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


def walk_domains(url: str, admin: Credentials, folder: str = "/") -> Iterator[str]:
    """Every domain under ``folder``, recursively."""
    status, body = hsds_request(url, "GET", f"/domains?domain={folder}", auth=admin)
    if status != 200:
        return
    for item in json.loads(body).get("domains", []):
        if item.get("class") == "folder":
            yield from walk_domains(url, admin, item["name"])
        else:
            yield item["name"]


def flush_all(url: str, admin: Credentials) -> int:
    """Flush every domain; returns how many were flushed."""
    count = 0
    for domain in walk_domains(url, admin):
        status, _ = hsds_request(url, "PUT", f"/?domain={domain}&flush=1", auth=admin)
        if status in (200, 204):
            count += 1
        else:
            log.warning("flush of %s answered %d", domain, status)
    return count
