"""Recordings checked before a replay starts, and a cut one named after it ends short.

dranspose's replay opens each recording in a thread of its own and stops at the first
item it cannot decode: a missing file, a directory or a file that is not a recording
ended the CLI with a traceback (``FileNotFoundError``; ``RuntimeError: replay failed:
AssertionError()``). A recording cut inside its last message (a copy that stopped, a
full disk) is worse: cbor2 raises ``CBORDecodeEOF``, an ``EOFError``, which dranspose
takes for the end of the file, and the scan just ends short. An item that is not a
message (in a ``.cbors`` or a ``.pkls``, dranspose's older pickled recordings) fails its
reader's ``assert isinstance(..., InternalWorkerMessage)``, and a ``.pkls`` that is no
pickle raised ``UnpicklingError``: both were tracebacks (``ReplayFailed``).

:func:`check_recording` reads what a replay needs to start (the file, its first
message) and raises :class:`RecordingError` with the reason; :func:`cut_short` reads a
whole recording and says where it ends inside a message or holds what is not one (run it
only when a replay came up short: it decodes every frame). A ``.pkls`` is unpickled, as
dranspose's replay itself does right after: give only recordings you trust.
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, cast


class RecordingError(ValueError):
    """A recording a replay cannot use, and why."""


@contextmanager
def _opened(path: Path) -> Iterator[IO[bytes]]:
    """The recording's bytes, as dranspose's replay reads them (``.gz``: decompressed)."""
    if path.name.endswith(".gz"):
        with gzip.open(path, "rb") as unzipped:
            yield cast(IO[bytes], unzipped)
    else:
        with path.open("rb") as f:
            yield f


def _is_cbor(path: Path) -> bool:
    """As dranspose's replay reads it: every file but a ``.pkls`` (pickles) is a CBOR
    sequence, whatever its name (a ``.nxs`` or ``.json`` given with -f was taken for one)."""
    return not path.name.removesuffix(".gz").endswith(".pkls")


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _load(f: IO[bytes], cbor: bool = True) -> Any:
    """The next item of a recording, as dranspose's replay reads it (CBOR, or a pickle)."""
    if not cbor:
        import pickle

        return pickle.load(f)  # what dranspose's replay does with the file next
    import cbor2
    from dranspose.replay import message_tag_hook  # type: ignore[import-untyped,unused-ignore]

    return cbor2.load(f, tag_hook=message_tag_hook)


def _what(item: Any) -> str:
    name = type(item).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def check_recording(path: str | os.PathLike[str]) -> frozenset[str]:
    """Raise :class:`RecordingError` unless ``path`` is a readable recording whose first
    item decodes (CBOR, or a pickle for ``.pkls``) to a dranspose message; returns the
    streams that message carries."""
    from dranspose.event import InternalWorkerMessage  # type: ignore[import-untyped,unused-ignore]

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise RecordingError(f"{path}: {error.strerror or error}") from None
    if not stat.S_ISREG(mode):
        raise RecordingError(f"{path}: not a file")
    cbor = _is_cbor(path)
    try:
        with _opened(path) as f:
            if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                raise RecordingError(f"{path}: an HDF5 file, not a dranspose recording: replay it with --nexus")
            f.seek(0)
            first = _load(f, cbor)
    except RecordingError:
        raise
    except OSError as error:
        raise RecordingError(f"{path}: {error.strerror or error}") from None
    except EOFError:
        if path.name.removesuffix(".gz").endswith((".cbors", ".pkls")):
            raise RecordingError(f"{path}: empty, or cut inside its first message") from None
        # Not named as one: most likely not one at all (a parameter file given with -f).
        raise RecordingError(f"{path}: not a dranspose recording (no CBOR message in it)") from None
    except Exception as error:  # cbor2 and pickle raise several kinds for bytes that are neither
        raise RecordingError(f"{path}: not a dranspose recording ({error})") from None
    if not isinstance(first, InternalWorkerMessage):
        raise RecordingError(f"{path}: not a dranspose recording (its first item is {_what(first)})")
    return frozenset(str(name) for name in first.streams)


def check_streams(recordings: list[tuple[Path, frozenset[str]]], detector_stream: str, angle_stream: str = "") -> None:
    """Raise :class:`RecordingError` when two recordings hold one stream (dranspose's
    replay asserts: 'Cannot merge data with duplicate streams'; a second scan simulated
    into the same folder), or when none holds the detector stream (the scan received 0
    frames and said no more) or the angle stream (``angle_stream``, '' for none: every
    projection was refused as missing_angle, with advice about shifted PandA rows)."""
    seen: dict[str, Path] = {}
    for path, streams in recordings:  # a list: the same file given twice holds its streams twice
        for stream in sorted(streams):
            if stream in seen:
                raise RecordingError(
                    f"{seen[stream]} and {path} both hold stream {stream!r}: give one recording per stream"
                )
            seen[stream] = path
    # Only recordings that name their streams (each one's first message) say what is missing.
    named = bool(seen) and all(streams for _, streams in recordings)
    if named and detector_stream not in seen:
        raise RecordingError(
            f"no recording holds the detector stream {detector_stream!r} (detector_stream); they hold "
            f"{', '.join(repr(s) for s in sorted(seen))}: set detector_stream in the parameter file"
        )
    if named and angle_stream and angle_stream not in seen:
        raise RecordingError(
            f"no recording holds the angle stream {angle_stream!r} (angle_stream); they hold "
            f"{', '.join(repr(s) for s in sorted(seen))}: give the PandA's recording too, or set angle_stream "
            'to "" in the parameter file for the angles the frame positions give'
        )


def cut_short(path: str | os.PathLike[str]) -> str | None:
    """Where ``path`` ends inside a message, stops decoding or holds an item that is not a
    dranspose message (a sentence); None when it ends cleanly after its last message."""
    from dranspose.event import InternalWorkerMessage  # type: ignore[import-untyped,unused-ignore]

    path = Path(path)
    cbor = _is_cbor(path)
    count = 0
    try:
        with _opened(path) as f:
            while True:
                start = f.tell()
                try:
                    item = _load(f, cbor)
                except EOFError:  # cbor2's CBORDecodeEOF; pickle's "Ran out of input"
                    if f.tell() > start or f.read(1):
                        return f"{path} ends inside message {count + 1}, at byte {start}: the recording is cut short"
                    return None
                if not isinstance(item, InternalWorkerMessage):
                    return f"{path} holds {_what(item)} as item {count + 1}, at byte {start}: not a dranspose message"
                count += 1
    except (OSError, EOFError) as error:
        return f"{path} cannot be read after message {count}: {error}"
    except Exception as error:  # neither CBOR nor a pickle from here on
        return f"{path} does not decode after message {count}: {error}"


def check_recordings(paths: Sequence[Path], detector_stream: str, angle_stream: str = "") -> None:
    """:func:`check_recording` of each, then :func:`check_streams` of them together: what
    ``replay``, ``play -f`` and ``check --data`` ask of their recordings before a scan."""
    check_streams([(path, check_recording(path)) for path in paths], detector_stream, angle_stream)


def cuts(paths: Sequence[Path]) -> list[str]:
    """:func:`cut_short` of each recording that does not decode to its end."""
    return [why for why in map(cut_short, paths) if why is not None]
