"""The settings our reducer class takes, built in one place by the application layer.

dranspose constructs the reducer itself (``reducer_class(parameters=, context=,
state=)``), in a service process or in ``dranspose replay``'s thread, so the reducer
cannot be handed an object: it reads its settings from environment variables
(``streamtomo.reducer.tomo_reducer.ReducerSettings.from_env``). That is the one
boundary where we pass settings through the environment; this object is what the
app decides, and :meth:`ReducerEnvironment.to_env` is its only translation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ReducerEnvironment:
    """Where the reducer serves the live domain and where else it publishes."""

    http_host: str = "127.0.0.1"
    http_port: int = 0  # 0: a free port
    hsds_endpoint: str = ""  # also mirror the domain to this HSDS; credentials: streamtomo.hsds_bridge.credentials
    control_port: int | None = None  # the live-parameter listener; None: the reducer's default
    control_host: str = ""  # where it listens; empty: the reducer's default (or what the environment says)
    control_token_file: str = ""  # where the reducer writes the control token (0600); empty: its default
    stream_timeout: float | None = None  # end a scan whose streams stopped after this long; None: its default
    final_dir: str = ""  # where each scan's final NeXus file goes; empty: none written
    lost_scan: str = ""  # mapping uuid of the scan the previous reducer died in

    def to_env(self) -> dict[str, str]:
        env = {"STREAMTOMO_HTTP_HOST": self.http_host, "STREAMTOMO_HTTP_PORT": str(self.http_port)}
        if self.hsds_endpoint:
            env["STREAMTOMO_HSDS_ENDPOINT"] = self.hsds_endpoint
        if self.control_port is not None:
            env["STREAMTOMO_CONTROL_PORT"] = str(self.control_port)
        if self.control_host:
            env["STREAMTOMO_CONTROL_HOST"] = self.control_host
        if self.control_token_file:
            env["STREAMTOMO_CONTROL_TOKEN_FILE"] = self.control_token_file
        if self.stream_timeout is not None:
            env["STREAMTOMO_STREAM_TIMEOUT"] = str(self.stream_timeout)
        if self.final_dir:
            env["STREAMTOMO_FINAL_DIR"] = self.final_dir
        if self.lost_scan:
            env["STREAMTOMO_LOST_SCAN"] = self.lost_scan
        return env

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """For a reducer built in this process (replay): set the variables while the
        reducer is constructed, and restore what was there afterwards."""
        env = self.to_env()
        saved = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
