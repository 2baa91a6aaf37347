"""Run scans through the real dranspose replay (worker + reducer classes) in tests."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import numpy as np
from dranspose.event import InternalWorkerMessage, message_encoder

from streamtomo.app.recordings import scan_to_internals, write_recordings
from streamtomo.app.runner import ReplayRun
from streamtomo.pipeline.config import PipelineConfig
from streamtomo.pipeline.scan import Frame

Mutator = Callable[
    [InternalWorkerMessage, InternalWorkerMessage], tuple[InternalWorkerMessage | None, InternalWorkerMessage | None]
]


def record(frames: Iterable[Frame], out: Path, config: PipelineConfig, mutate: Mutator | None = None) -> list[Path]:
    """Write recordings; ``mutate`` may alter or drop (None) each event's messages."""
    options: dict[str, Any] = {"counts_per_degree": config.counts_per_degree, "encoder_field": config.encoder_field}
    if mutate is None:
        return write_recordings(frames, out, **options)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "detector.cbors", out / "angle.cbors"]
    det_gen, ang_gen = scan_to_internals(frames, **options)
    with paths[0].open("wb") as det, paths[1].open("wb") as ang:
        for d, a in zip(det_gen, ang_gen, strict=True):
            d2, a2 = mutate(d, a)
            if d2 is not None:
                cbor2.dump(cbor2.CBORTag(55799, d2), det, default=message_encoder)
            if a2 is not None:
                cbor2.dump(cbor2.CBORTag(55799, a2), ang, default=message_encoder)
    return paths


def replay(
    recordings: list[Path], config: PipelineConfig, workers: int, rate_hz: float | None = None
) -> Iterator[ReplayRun]:
    """Generator-style context: yields a started run (paused before frame 1)."""
    run = ReplayRun(recordings, config, workers=workers, http_port=0, rate_hz=rate_hz)
    try:
        run.start()
        yield run
    finally:
        run.close()


def domain_arrays(reducer: Any) -> dict[str, np.ndarray]:
    """Every dataset of the reducer's domain, copied under its lock."""
    from streamtomo.hsds_bridge.domain import DomainDataset

    with reducer.lock:
        return {n.path: np.array(n.array) for n in reducer.domain.walk() if isinstance(n, DomainDataset)}


def run_to_end(recordings: list[Path], config: PipelineConfig, workers: int) -> dict[str, np.ndarray]:
    run = ReplayRun(recordings, config, workers=workers, http_port=0)
    try:
        run.start()
        run.go()
        run.wait(timeout=300)
        reducer = run.reducer
        reducer.timer()  # one more publish after finish, as the timer thread would
        return domain_arrays(reducer)
    finally:
        run.close()


def keep_messages(recording: Path, count: int) -> None:
    """Cut a recording after its first ``count`` messages: a clean end, no series end
    (a copy cut inside a message is another case: the replay names the cut)."""
    import cbor2

    with recording.open("rb") as stream:
        for _ in range(count):
            cbor2.load(stream)
        end = stream.tell()
    recording.write_bytes(recording.read_bytes()[:end])
