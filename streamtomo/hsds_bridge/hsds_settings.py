"""How the HSDS writer behaves: one settings object instead of twenty arguments."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

OnExists = Literal["version", "overwrite", "fail"]

GENERATION_PATH = "/entry/status/generation"
STATUS_PREFIX = "/entry/status/"

# HDF5 filters HSDS applies to chunks it stores (lz4 is fast enough to keep up with
# a detector; gzip level 1 for sites whose readers lack the lz4 plugin).
FILTERS: dict[str, dict[str, Any]] = {
    "lz4": {"class": "H5Z_FILTER_LZ4", "id": 32004, "name": "lz4"},
    "gzip": {"class": "H5Z_FILTER_DEFLATE", "id": 1, "name": "deflate", "level": 1},
}


@dataclass(frozen=True)
class HsdsWriterSettings:
    """Tuning of :class:`~streamtomo.hsds_bridge.hsds_writer.HsdsWriter`; the defaults suit a beamline."""

    # Bytes of chunk copies the writer may hold; beyond it an update is handed back
    # to the domain (still dirty there) and counted as dropped.
    max_backlog_bytes: int = 1 << 30
    reader_accounts: tuple[str, ...] = ("viewer",)  # may read the domain
    public_read: bool = False  # every other authenticated user may read too
    on_exists: OnExists = "version"  # a domain of that name exists: _v2, replace it, or refuse
    compression: str | None = "lz4"  # a key of FILTERS, or None
    max_concurrency: int = 16  # requests in flight at once
    merge_bytes: int = 4 << 20  # adjacent changed boxes are merged up to this size
    # Flush HSDS's write-back cache before each generation: durable, ~1 s per update.
    flush_before_generation: bool = False
    flush_interval: float = 1.0  # otherwise a background flush at least this often
    probe_interval: float = 1.0  # GET /about while idle: notices a restarted server
    retry_initial: float = 0.05  # first backoff (s), doubling up to retry_max
    retry_max: float = 2.0
    request_timeout: float = 60.0
    start_timeout: float = 60.0  # start() waits this long for setup, then goes on in the background
    generation_path: str = GENERATION_PATH  # written last, after its update's data
    status_prefix: str = STATUS_PREFIX  # written after the data, before the generation
    drop_log_every: int = 100  # log every n-th dropped update (all are counted)
    # Before close() says "complete", read the domain back as h5pyd does and repair
    # what a reader would miss; give up (an ERROR) after this many rounds.
    verify_rounds: int = 5
    # close() returned before HSDS answered: keep finishing the domain in the
    # background this long (a stall of any shorter length still ends complete).
    give_up_after: float = 3600.0

    def __post_init__(self) -> None:
        if self.on_exists not in ("version", "overwrite", "fail"):
            raise ValueError(f"on_exists must be version, overwrite or fail, not {self.on_exists!r}")
        if self.compression is not None and self.compression not in FILTERS:
            raise ValueError(f"compression must be one of {sorted(FILTERS)} or None")
        if self.drop_log_every < 1:
            object.__setattr__(self, "drop_log_every", 1)
        object.__setattr__(self, "reader_accounts", tuple(self.reader_accounts))

    def is_tail(self, path: str) -> bool:
        """Status and generation: published only after their update's data."""
        return path.startswith(self.status_prefix) or path == self.generation_path
