"""What a running local deployment is: its addresses, written by ``streamtomo up``
and read by ``streamtomo play`` (and by anyone who wants to talk to it)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


class DeploymentError(RuntimeError):
    """A service did not start or did not become ready; the message says which."""


def default_state_path() -> Path:
    """Where ``up`` writes and ``play`` reads the deployment's addresses."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(tempfile.gettempdir()) / f"streamtomo-{os.getuid()}"
    return base / "streamtomo" / "deployment.json"


@dataclass
class DeploymentState:
    """Addresses of a running deployment: written by ``up``, read by ``play``."""

    controller_url: str
    redis_url: str
    live_endpoint: str
    domain: str
    detector_upstream: str  # tcp://HOST:PORT the detector (play) binds, PUSH
    angle_upstream: str  # tcp://HOST:PORT the PandA (play) listens on
    detector_format: str = "stins"
    detector_stream: str = "detector"
    angle_stream: str = "angle"
    workers: list[str] = field(default_factory=list)
    run_dir: str = ""
    dump_prefix: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> DeploymentState:
        return cls(**json.loads(text))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        try:
            tmp.write_text(self.to_json())
            tmp.replace(path)  # readers never see half a file
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def read(cls, path: Path) -> DeploymentState:
        try:
            return cls.from_json(path.read_text())
        except FileNotFoundError:
            raise DeploymentError(f"no deployment state at {path}: run `streamtomo up` first or pass --state") from None
        except (OSError, ValueError, TypeError) as error:  # a folder, not JSON, not up's fields
            raise DeploymentError(f"{path} is no deployment state written by `streamtomo up`: {error}") from None


def running_deployment(path: Path) -> DeploymentState | None:
    """The deployment whose addresses ``path`` holds, if one of its services still runs
    (a file left by one that crashed, or unreadable, is no deployment). A service is a
    process running :data:`SERVICE_MODULE`: a pid the system gave since to a shell or
    an editor whose command line merely names streamtomo made ``up`` refuse to start,
    and ``play`` send to the dead deployment's addresses (to be refused there)."""
    try:
        state = DeploymentState.read(path)
    except (DeploymentError, OSError, ValueError, TypeError):
        return None
    return state if any(runs_our_service(pid) for pid in state.pids.values()) else None


SERVICE_MODULE = "streamtomo.app.services"  # what up's services run (python -m)


def runs_our_service(pid: int) -> bool:
    """Whether ``pid`` is one of our services, by its command line (which holds
    :data:`SERVICE_MODULE`): a pid the system gave to another program since is not
    ours, nor is ``play``, its shell or an editor whose command line names streamtomo."""
    try:
        return SERVICE_MODULE.encode() in Path(f"/proc/{int(pid)}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
