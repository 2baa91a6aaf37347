"""Recordings checked before a replay, and what a short replay's recordings hold: CBOR
sequences and dranspose's pickled ``.pkls`` alike, each item a dranspose message."""

from __future__ import annotations

import gzip
import io
import json
import pickle
from pathlib import Path
from typing import Any

import cbor2
import pytest

from streamtomo.app.cli import main
from streamtomo.app.recording_checks import RecordingError, check_recording, cut_short
from streamtomo.app.recordings import synthetic_scan, write_recordings


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny scan's (detector, angle) recordings, as the ingesters write them."""
    out = tmp_path_factory.mktemp("scan")
    detector, angle = write_recordings(synthetic_scan(n_darks=1, n_flats=1, n_projections=4, rows=2, cols=8), out)
    return detector, angle


def _messages(path: Path) -> list[Any]:
    from dranspose.replay import get_internals

    return list(get_internals(path))


def _pickled(path: Path, items: list[Any]) -> Path:
    with path.open("wb") as f:
        for item in items:
            pickle.dump(item, f)
    return path


def test_a_pickled_recording_is_read_like_a_cbor_one(tmp_path: Path, recorded: tuple[Path, Path]) -> None:
    messages = _messages(recorded[0])
    good = _pickled(tmp_path / "detector.pkls", messages)
    assert check_recording(good) == frozenset({"detector"})  # its streams, as for .cbors
    assert cut_short(good) is None
    zipped = tmp_path / "detector.pkls.gz"
    zipped.write_bytes(gzip.compress(good.read_bytes()))
    assert check_recording(zipped) == frozenset({"detector"})
    assert cut_short(zipped) is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        # dranspose's replay raised UnpicklingError from its reader thread: a traceback.
        (b"not a pickle at all", "not a dranspose recording (invalid load key"),
        (b"", "empty, or cut inside its first message"),
        (pickle.dumps({"event_number": 0}), "not a dranspose recording (its first item is a dict)"),
        (json.dumps([{"name": "rows", "data": "1"}]).encode(), "not a dranspose recording"),
    ],
    ids=["garbage", "empty", "a dict", "json"],
)
def test_a_pkls_that_is_no_recording_is_refused(tmp_path: Path, content: bytes, message: str) -> None:
    """It was only checked not empty: a replay of it ended in a traceback."""
    path = tmp_path / "bad.pkls"
    path.write_bytes(content)
    with pytest.raises(RecordingError, match=f"^{path}: ") as caught:
        check_recording(path)
    assert message in str(caught.value)


def test_an_item_that_is_no_message_is_named_where_it_is(tmp_path: Path, recorded: tuple[Path, Path]) -> None:
    """dranspose asserts each item is a message: the replay failed with a bare
    'AssertionError()' and, the recording not found cut, the CLI re-raised it (exit 1)."""
    messages = _messages(recorded[0])
    pickled = _pickled(tmp_path / "extra.pkls", [*messages[:2], {"not": "a message"}, *messages[2:]])
    assert check_recording(pickled) == frozenset({"detector"})  # its first message is one
    why = cut_short(pickled)
    assert why is not None and why.startswith(f"{pickled} holds a dict as item 3, at byte ")
    assert why.endswith("not a dranspose message")

    data = recorded[0].read_bytes()
    stream = io.BytesIO(data)
    cbor2.load(stream)
    first = stream.tell()  # the first message's length
    cbor = tmp_path / "extra.cbors"
    cbor.write_bytes(data[:first] + cbor2.dumps(7) + data[first:])
    why = cut_short(cbor)
    assert why == f"{cbor} holds an int as item 2, at byte {first}: not a dranspose message"


def test_a_pkls_cut_or_garbled_after_its_first_message_is_named(tmp_path: Path, recorded: tuple[Path, Path]) -> None:
    messages = _messages(recorded[0])
    data = _pickled(tmp_path / "whole.pkls", messages).read_bytes()
    cut = tmp_path / "cut.pkls"
    cut.write_bytes(data[: len(data) * 2 // 3])
    why = cut_short(cut)
    assert why is not None and why.startswith(str(cut)), why
    garbled = tmp_path / "garbled.pkls"
    garbled.write_bytes(pickle.dumps(messages[0]) + b"not a pickle")
    assert cut_short(garbled) == f"{garbled} does not decode after message 1: invalid load key, 'n'."


def test_replay_of_a_pkls_that_is_no_recording_is_one_line_and_exit_2(
    tmp_path: Path, recorded: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``replay -f garbage.pkls angle.cbors``: RuntimeError/ReplayFailed: UnpicklingError (exit 1)."""
    bad = tmp_path / "garbage.pkls"
    bad.write_bytes(b"not a pickle at all")
    assert main(["replay", "-f", str(bad), str(recorded[1])]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"streamtomo: error: {bad}: not a dranspose recording"), err
    assert "Traceback" not in err
