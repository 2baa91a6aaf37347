"""How a scan played to a deployment ended, as its live domain says.

``play`` returns once the controller reports the scan finished: every event reduced.
That says nothing of what the reducer made of them: a scan whose every frame was
refused (a wrong ``frame_base``) finishes too, and ``play`` printed it as a success
and exited 0 while the domain and the final file said ``failed``. The reducer writes
``state`` and ``reason`` under ``/entry/status`` of its live domain (README "Domain
layout"); this reads them the way any reader does, through h5pyd.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

UNDER_WAY = ("waiting", "running")  # the states before the scan's end is published
FAILED = "failed"


BASE_DOUBTED = "frame_base_suspect"  # the notice that puts the lost positions in doubt


@dataclass(frozen=True)
class ScanOutcome:
    state: str
    reason: str
    lost_frames: tuple[tuple[int, int], ...] = ()  # [first, last] ranges that never reached the reducer
    mirror_dropped: int = 0  # updates the HSDS mirror could not deliver (publisher_dropped)
    base_doubted: bool = False  # frame_base_suspect was noticed: the lost positions may be no loss

    @property
    def failed(self) -> bool:
        return self.state == FAILED


def scan_outcome(endpoint: str, domain: str, timeout: float = 15.0, attempts: int = 20) -> ScanOutcome | None:
    """The scan's ``state`` and ``reason`` once the reducer has published its end (any
    state but 'waiting' or 'running', 'reconstructing' included: the volume follows);
    None where the domain cannot be read or the end is not published within ``timeout``
    seconds (logged: ``play`` then says only what it sent)."""
    import h5pyd

    deadline = time.monotonic() + timeout
    try:
        with h5pyd.File(domain, "r", endpoint=endpoint) as f:
            status = f["entry/status"]
            while True:
                outcome = _consistent(status, attempts)
                if outcome is not None and outcome.state not in UNDER_WAY:
                    return outcome
                if time.monotonic() > deadline:
                    logger.warning(
                        "the live domain %s at %s did not show the scan's end within %.0f s", domain, endpoint, timeout
                    )
                    return None
                time.sleep(0.1)
    except (OSError, KeyError, ValueError) as error:  # h5pyd's HTTP errors are IOErrors
        logger.warning("cannot read the scan's state from %s at %s: %s", domain, endpoint, error)
        return None


def _consistent(status: Any, attempts: int) -> ScanOutcome | None:
    """``state`` and ``reason`` of one publish: the reducer writes both and then bumps
    ``generation``, but a reader's requests are separate, so they are read until
    ``generation`` is the same before and after."""
    for _ in range(attempts):
        before = _text(status["generation"][()])
        dropped = int(status["publisher_dropped"][()]) if "publisher_dropped" in status else 0
        outcome = ScanOutcome(
            _text(status["state"][()]),
            _text(status["reason"][()]),
            _ranges(_text(status["lost_frames"][()])),
            dropped,
            BASE_DOUBTED in _counts(_text(status["rejected"][()])) if "rejected" in status else False,
        )
        if _text(status["generation"][()]) == before:
            return outcome
    return None


def _ranges(text: str) -> tuple[tuple[int, int], ...]:
    try:
        return tuple((int(first), int(last)) for first, last in json.loads(text))
    except (ValueError, TypeError):  # not what the reducer writes: said as unreadable
        logger.warning("/entry/status/lost_frames is not a list of [first, last] ranges: %.100r", text)
        return ()


def _counts(text: str) -> dict[str, Any]:
    """``rejected``: counts per reason and notice (JSON); unreadable: none."""
    try:
        counts = json.loads(text)
    except ValueError:
        return {}
    return counts if isinstance(counts, dict) else {}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# The final file is written after the scan has ended: after the HSDS mirror's close
# (up to 60 s with HSDS down) and its own write (seconds for gigabytes).
FINAL_FILE_WAIT_S = 180.0


@dataclass(frozen=True)
class FinalFileOutcome:
    path: str
    written: bool
    error: str  # why it was not written
    pending: bool = False  # still being written when the wait ended


def final_file_outcome(
    endpoint: str, domain: str, scan: str, timeout: float = FINAL_FILE_WAIT_S
) -> FinalFileOutcome | None:
    """Where the scan's final file is and how its writing ended, as the live domain's
    ``final_file`` and (made once the writing has ended) ``final_file_written`` and
    ``final_file_error`` say, waiting up to ``timeout`` for the last two. None where the
    deployment writes no final file, the domain cannot be read, or it holds another
    scan's status now (the file's name holds the scan's id, ``scan``)."""
    import h5pyd

    deadline = time.monotonic() + timeout
    announced = False
    try:
        while True:
            # Opened afresh each time: a file object caches its groups' members.
            with h5pyd.File(domain, "r", endpoint=endpoint) as f:
                status = f["entry/status"]
                path = _text(status["final_file"][()])
                if not path or (scan and scan not in Path(path).name):
                    return None
                if "final_file_written" in status:
                    written = int(_text(status["final_file_written"][()])) == 1
                    return FinalFileOutcome(path, written, "" if written else _text(status["final_file_error"][()]))
            if time.monotonic() > deadline:
                return FinalFileOutcome(path, False, "", pending=True)
            if not announced:
                logger.info("waiting for the final file %s", path)
                announced = True
            time.sleep(0.5)
    except (OSError, KeyError, ValueError) as error:  # KeyError: a reducer of an older version
        logger.warning("cannot read the final file's state from %s at %s: %s", domain, endpoint, error)
        return None
