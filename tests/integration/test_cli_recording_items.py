"""``streamtomo replay`` of recordings that hold something other than dranspose messages."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

CLI = str(Path(sys.executable).with_name("streamtomo"))


def _simulate(folder: Path) -> tuple[Path, Path, Path]:
    subprocess.run(
        [CLI, "simulate", "--out", str(folder), "--rows", "4", "--cols", "32", "--angles", "4"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    detector = next(folder.glob("*detector*.cbors"))
    angle = next(folder.glob("*angle*.cbors"))
    return detector, angle, folder / "parameters.json"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["cbors", "pkls"])
def test_an_item_that_is_no_message_after_the_first_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    """dranspose's reader asserts each item is a message: the replay ended in a traceback
    (``ReplayFailed: AssertionError()``, exit 1) that named no file."""
    from dranspose.replay import get_internals

    detector, angle, parameters = _simulate(tmp_path / "scan")
    bad = tmp_path / f"detector.{kind}"
    if kind == "cbors":
        data = detector.read_bytes()
        stream = io.BytesIO(data)
        cbor2.load(stream)
        bad.write_bytes(data[: stream.tell()] + cbor2.dumps(7) + data[stream.tell() :])
        expected = f"{bad} holds an int as item 2, at byte {stream.tell()}: not a dranspose message"
    else:
        messages = list(get_internals(detector))
        with bad.open("wb") as f:
            for item in [messages[0], {"not": "a message"}, *messages[1:]]:
                pickle.dump(item, f)
        expected = f"{bad} holds a dict as item 2, at byte "
    done = subprocess.run(
        [CLI, "replay", "-f", str(bad), str(angle), "-p", str(parameters)],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("streamtomo: error: replay failed: ") and expected in last, done.stderr
