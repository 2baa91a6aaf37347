"""``streamtomo up`` and ``streamtomo play``: a real dranspose deployment on this machine.

``streamtomo.app.cli`` calls :func:`register` to add both subcommands::

    streamtomo up [--workers N] [--redis URL]        # Ctrl-C stops everything
    streamtomo play [--simulate | -f RECORDING...]   # in another terminal

``up`` writes the deployment's addresses to a state file (default
``$XDG_RUNTIME_DIR/streamtomo/deployment.json``) that ``play`` reads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from streamtomo.app.cli_types import (
    folder_path,
    http_url,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from streamtomo.app.departed_workers import STALL_TIMEOUT_S
from streamtomo.pipeline.config import ConfigError

if TYPE_CHECKING:
    from streamtomo.app.deployment import LocalDeployment

logger = logging.getLogger("streamtomo")


def cmd_up(args: argparse.Namespace) -> int:
    from streamtomo.app.deployment import LocalDeployment
    from streamtomo.app.deployment_state import DeploymentError, default_state_path, running_deployment
    from streamtomo.app.run_dir_lock import RunDirInUse
    from streamtomo.controller_client import ControllerError
    from streamtomo.hsds_bridge.http_thread import EnvironmentSettingError

    state_path = Path(args.state) if args.state else default_state_path()
    if state_path.is_dir():
        # Found only once every service had started: up then stopped them all again.
        print(f"streamtomo: error: --state {state_path} is a directory: name the state file", file=sys.stderr)
        return 2
    other = running_deployment(state_path)
    if other is not None:
        # Its addresses would be overwritten: `play` would go to this one, and the other's
        # state would be lost for good (its stop leaves a file that is no longer its own).
        print(
            f"streamtomo: error: a deployment is running (run dir {other.run_dir}, controller "
            f"{other.controller_url}) and {state_path} holds its addresses: stop it first, or give "
            "this one its own --state FILE",
            file=sys.stderr,
        )
        return 2
    deployment = LocalDeployment(
        workers=args.workers,
        redis_url=args.redis,
        run_dir=args.run_dir,
        detector_format=args.detector_format,
        dump_prefix="" if args.no_record else None,
        stream_timeout=args.stream_timeout,
    )
    code = 0
    wrote_state = False  # the file is removed at the end only if this up wrote it
    try:
        with deployment:
            state = deployment.state
            state.write(state_path)
            wrote_state = True
            print(f"controller: {state.controller_url}", flush=True)
            print(f"endpoint: {state.live_endpoint}", flush=True)
            print(f"domain: {state.domain}", flush=True)
            print(f"detector upstream (ZeroMQ PUSH, {state.detector_format}): {state.detector_upstream}", flush=True)
            print(f"PandA upstream (TCP): {state.angle_upstream}", flush=True)
            print(f"logs: {deployment.log_dir}", flush=True)
            print(f"final results: {deployment.results_dir}/scan-<uuid>.nxs", flush=True)
            if state.dump_prefix:
                print(f"recordings: {state.dump_prefix}*.cbors", flush=True)
            print(f"state: {state_path}", flush=True)
            print("ready; play a scan with `streamtomo play --simulate`; Ctrl-C stops everything", flush=True)
            last = ""
            while True:
                problem = _tend(deployment)
                if problem is not None:
                    print(f"streamtomo: error: {problem}", flush=True)
                    code = 3
                    break
                pids = {name: service.pid for name, service in deployment.processes.items() if service.alive()}
                if pids != state.pids:  # a service replaced: the state file names the running one
                    state.pids = pids
                    state.write(state_path)
                try:
                    p = deployment.controller.progress(timeout=5)
                    line = f"scan: {p['completed_events']}/{p['total_events']} events" + (
                        " (finished)" if p["finished"] else ""
                    )
                except (OSError, ControllerError) as error:
                    line = f"controller unreachable: {error}"
                if line != last:
                    logger.info("%s", line)
                    last = line
                time.sleep(1.0)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (streamtomo.app.cli.main raises it as one)
        print("stopping", flush=True)
    except (RunDirInUse, EnvironmentSettingError) as error:  # nothing was started
        print(f"streamtomo: error: {error}", file=sys.stderr, flush=True)
        if args.run_dir is None:  # the temporary one made for it, still empty: not left behind
            with contextlib.suppress(OSError):
                deployment.run_dir.rmdir()
        return 2
    except DeploymentError as error:
        print(f"streamtomo: error: {error}", file=sys.stderr, flush=True)
        code = 3
    finally:
        if wrote_state and state_path.exists():
            try:
                if json.loads(state_path.read_text()).get("run_dir") == str(deployment.run_dir):
                    state_path.unlink()
            except (OSError, ValueError):
                pass
    return code


# Services nothing can replace mid-scan: Redis holds every registration and queue, the
# controller the scan's assignments, an ingester its stream's connection.
_FATAL = ("redis", "controller", "detector-ingester", "angle-ingester")


# How long a dead worker's replacement waits for the scan under way to end, at most.
REPLACEMENT_WAIT_MAX_S = 120.0


def _tend(deployment: LocalDeployment) -> str | None:
    """Notice dead services: replace a worker or the reducer; None, or why ``up`` must stop.

    A reducer that died takes what it had reduced with it: its successor marks the
    scan it was in failed, and the controller is told to end that scan so that the
    next one is not refused.
    """
    from streamtomo.app.deployment_state import DeploymentError
    from streamtomo.app.redis_service import redis_url_ping
    from streamtomo.controller_client import ControllerError

    dead = deployment.dead()
    if not dead:
        return None

    def exited(name: str) -> str:
        service = deployment.processes[name]
        return f"{name} exited (status {service.popen.returncode}); its log: {service.log}"

    fatal = [name for name in _FATAL if name in dead]
    if fatal:
        return f"{exited(fatal[0])}: the deployment cannot go on without it; stopping everything"
    try:
        if not redis_url_ping(deployment.state.redis_url):
            raise OSError("no answer")
    except OSError as error:
        return f"{exited(dead[0])}, and Redis at {deployment.state.redis_url} does not answer ({error}); stopping"
    try:
        for name in dead:
            if name == "reducer":
                logger.warning("%s: starting a new reducer", exited(name))
                # Lost only while the controller's scan was under way (replace_reducer asks
                # it), and a dead reducer cannot finish it since.
                lost = deployment.replace_reducer()
                if lost:
                    deployment.controller.stop()
                    logger.warning("scan %s ended as failed: what the dead reducer had reduced is lost", lost)
                logger.info("new reducer ready: the next scan can start")
            else:
                # A worker that joins mid-scan never saw the scan's headers (the PandA's
                # names its values): it refused every frame it was given as
                # pcap_header_missing (86 of 300 in a helper's probe). The scan goes on
                # with the others; the new worker starts when it has ended, or after
                # REPLACEMENT_WAIT_MAX_S (the controller calls the scan finished once
                # the dead worker is forgotten: streamtomo.app.departed_workers; this
                # bounds the wait should it not).
                since = deployment.replacements_waiting.get(name)
                if deployment.scan_under_way() and (since is None or time.monotonic() - since < REPLACEMENT_WAIT_MAX_S):
                    if since is None:
                        deployment.replacements_waiting[name] = time.monotonic()
                        logger.warning("%s: a new worker starts when the scan has ended", exited(name))
                    continue
                deployment.replacements_waiting.pop(name, None)
                logger.warning("%s: starting a new worker", exited(name))
                logger.info("%s started in place of %s", deployment.replace_worker(name), name)
    except (DeploymentError, OSError, ControllerError) as error:
        return f"could not replace {', '.join(dead)}: {error}; stopping everything"
    return None


def cmd_play(args: argparse.Namespace) -> int:
    from streamtomo.app.beamline_events import frame_events, recorded_events
    from streamtomo.app.cli import (  # as demo and replay: the scan ran and failed; --nexus as replay reads it
        SCAN_FAILED,
        CliError,
        nexus_scan,
        refuse_nexus_paths_without_nexus,
    )
    from streamtomo.app.deployment_state import (
        DeploymentError,
        DeploymentState,
        default_state_path,
        running_deployment,
    )
    from streamtomo.app.parameter_files import load_config, read_config_values, write_parameter_file
    from streamtomo.app.play import PlayError, PlayRefused, play
    from streamtomo.app.recording_checks import RecordingError, check_recordings, cuts
    from streamtomo.app.scan_outcome import FINAL_FILE_WAIT_S, final_file_outcome, scan_outcome
    from streamtomo.controller_client import ControllerError
    from streamtomo.pipeline.streaming.admission import describe_lost

    state_path = Path(args.state) if args.state else default_state_path()
    try:
        state = DeploymentState.read(state_path)
    except DeploymentError as error:
        if not (args.controller and args.detector and args.panda):
            print(f"streamtomo: error: {error}", file=sys.stderr)
            return 2
        state = DeploymentState(args.controller, "", "", "", args.detector, args.panda)
    else:
        if not args.controller and state.pids and running_deployment(state_path) is None:
            # A file left by an `up` that is gone: "Connection refused" said nothing of it.
            print(
                f"streamtomo: error: the deployment of {state_path} is not running (none of its services is): "
                "start one with `streamtomo up`, or give --controller, --detector and --panda",
                file=sys.stderr,
            )
            return 2
    if args.controller and args.controller != state.controller_url:
        state.pids = {}  # the file's services are not the deployment played to
    state.controller_url = args.controller or state.controller_url
    state.detector_upstream = args.detector or state.detector_upstream
    state.angle_upstream = args.panda or state.angle_upstream
    try:
        refuse_nexus_paths_without_nexus(args)
        if args.nexus:
            # The file's frames and angles, with the configuration replay --nexus gives
            # them (kinds from image_key, the angle grid from the file unless -p sets it).
            with nexus_scan(args, {}) as (config, scan):
                events = frame_events(scan.frames(), config, state.detector_format, args.compression)
        elif args.files:
            config = load_config(args.parameters)
            # As replay checks them: a file that is no recording, lacks the detector's
            # stream, or is cut or corrupt inside was a traceback, a 30 s wait for an
            # ingester, or a scan played up to the cut and reported as done.
            recordings = [Path(f) for f in args.files]
            check_recordings(recordings, config.detector_stream, config.angle_stream)
            cut = cuts(recordings)
            if cut:
                raise RecordingError("; ".join(cut))
            events = recorded_events(args.files, config)
        else:
            from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec

            spec = SimulationSpec(rows=args.rows, cols=args.cols, angles=args.angles, seed=args.seed)
            config = spec.config(**(read_config_values(args.parameters) if args.parameters else {}))
            events = frame_events(ScanSimulator(spec).frames(), config, state.detector_format, args.compression)
    except (OSError, ValueError, ConfigError, RecordingError, CliError) as error:
        print(f"streamtomo: error: {error}", file=sys.stderr)
        return 2
    prefix = "" if args.no_record else args.record_prefix
    frames = sum(1 for e in events if e.frame is not None)
    print(
        f"playing {frames} frames to {state.controller_url}" + (f" at {args.rate} Hz" if args.rate else ""), flush=True
    )
    try:
        result = play(
            state,
            events,
            config,
            rate_hz=args.rate,
            max_frames=args.max_frames,
            dump_prefix=prefix,
            stall_timeout=args.stall_timeout,
        )
    except PlayRefused as error:  # nothing was changed: a usage error
        print(f"streamtomo: error: {error}", file=sys.stderr)
        return 2
    except (PlayError, DeploymentError, ControllerError, OSError) as error:
        print(f"streamtomo: error: {error}", file=sys.stderr)
        return 1
    rate = result.frames_sent / result.seconds if result.seconds > 0 else 0.0
    print(
        f"scan {result.mapping_uuid}: {result.frames_sent} frames, {result.bytes_sent / 1e6:.1f} MB in "
        f"{result.seconds:.2f} s ({rate:.1f} frames/s){'; ended by stop' if result.ended_by_stop else ''}",
        flush=True,
    )
    if state.live_endpoint:
        print(f"endpoint: {state.live_endpoint}\ndomain: {config.domain}", flush=True)
    recordings = [p for p in result.recordings((state.detector_stream, state.angle_stream)) if p.exists()]
    if recordings:
        params = write_parameter_file(
            result.recorded_config(), Path(f"{result.dump_prefix}replay-parameters-{result.mapping_uuid}.json")
        )
        print(f"replay with: streamtomo replay -f {' '.join(map(str, recordings))} -p {params}", flush=True)
    # What the reducer made of the scan: a scan whose every frame was refused finished
    # too, and was reported as done with exit 0.
    outcome = scan_outcome(state.live_endpoint, config.domain) if state.live_endpoint else None
    if outcome is None:
        return 0
    print(f"state: {outcome.state}" + (f" ({outcome.reason})" if outcome.reason else ""), flush=True)
    lost = describe_lost(list(outcome.lost_frames), outcome.base_doubted)
    if lost and lost not in outcome.reason:  # the reducer's reason says it in the same words
        print(lost, flush=True)
    if outcome.mirror_dropped:
        # An HSDS mirror that failed after the start: said only in the reducer's log.
        print(
            f"HSDS mirror: {outcome.mirror_dropped} updates not delivered (/entry/status/publisher_dropped; "
            "the reducer's log says why)",
            flush=True,
        )
    # Where the scan's final file is, once written: one that could not be (a full disk,
    # the folder gone) showed only in the reducer's log.
    unwritten = ""
    if outcome.state == "reconstructing":  # the file follows the volume: not waited for
        final = final_file_outcome(state.live_endpoint, config.domain, result.mapping_uuid, timeout=0.0)
        if final is not None:
            print(f"final file: {final.path} (written once the volume is done)", flush=True)
    else:
        final = final_file_outcome(state.live_endpoint, config.domain, result.mapping_uuid)
        if final is not None and final.written:
            print(f"final file: {final.path}", flush=True)
        elif final is not None and final.pending:  # HSDS's flush, a big file: not a failure
            print(
                f"final file: {final.path} (still being written {FINAL_FILE_WAIT_S:.0f} s after the scan)", flush=True
            )
        elif final is not None:
            unwritten = final.error
            print(f"final file: {final.path} NOT WRITTEN: {unwritten}", flush=True)
    if outcome.failed:
        print(f"scan failed: {outcome.reason}", file=sys.stderr, flush=True)
        return SCAN_FAILED
    if unwritten:
        print(f"streamtomo: error: the scan's final file was not written: {unwritten}", file=sys.stderr, flush=True)
        return 1
    return 0


def redis_url(text: str) -> str:
    """An argparse type: a URL redis-py can connect by. 'garbage' was retried for the
    whole readiness wait (60 s) and ended as a service that did not start (exit 3). The
    URL is not echoed: it may hold Redis's password."""
    from redis.connection import parse_url

    try:
        parse_url(text)  # type: ignore[no-untyped-call]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a Redis URL: {error}") from None
    return text


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``up`` and ``play`` to ``streamtomo``'s subcommands."""
    up = subparsers.add_parser(
        "up", help="start a local dranspose deployment (Redis, controller, ingesters, workers, reducer)"
    )
    up.add_argument("-w", "--workers", type=positive_int, default=2, help="number of workers (default 2)")
    up.add_argument(
        "--redis", type=redis_url, help="use this Redis (redis://HOST:PORT/DB) instead of starting redis-server"
    )
    up.add_argument(
        "--run-dir", type=folder_path, help="directory for logs and recordings (default: a new temporary directory)"
    )
    up.add_argument(
        "--state",
        help="where to write the deployment's addresses (default: $XDG_RUNTIME_DIR/streamtomo/deployment.json)",
    )
    up.add_argument(
        "--detector-format",
        choices=("stins", "eiger_legacy"),
        default="stins",
        help="detector stream: stins (MAX IV receiver) or eiger_legacy (Dectris Stream v1)",
    )
    up.add_argument("--no-record", action="store_true", help="do not record scans (dump_prefix)")
    up.add_argument(
        "--stream-timeout",
        type=non_negative_float,
        default=30.0,
        help="end a scan with no event for this many seconds while frames are still expected (default 30; 0: never)",
    )
    up.set_defaults(func=cmd_up)

    play = subparsers.add_parser("play", help="act as the beamline: send a scan to a running deployment")
    source = play.add_mutually_exclusive_group()
    source.add_argument("--simulate", action="store_true", help="a simulated Shepp-Logan scan (the default)")
    source.add_argument("-f", "--files", nargs="+", help="dranspose recordings (.cbors) to re-send")
    source.add_argument(
        "--nexus",
        metavar="FILE.nxs",
        help="an NXtomo (or APS Data Exchange) file, streamed as replay --nexus streams it (kinds from image_key "
        "or the datasets, its angles on the PandA)",
    )
    play.add_argument("-p", "--parameters", help="parameter file (JSON) for the scan")
    from streamtomo.app.cli import add_nexus_path_options  # cli imports this module's register

    add_nexus_path_options(play)
    play.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        help="frames per second (default: as fast as the pipeline takes them)",
    )
    play.add_argument("--rows", type=positive_int, default=16, help="simulated detector rows (default 16)")
    play.add_argument("--cols", type=positive_int, default=128, help="simulated detector columns (default 128)")
    play.add_argument("--angles", type=positive_int, default=180, help="simulated projections (default 180)")
    play.add_argument("--seed", type=int, default=0, help="noise seed")
    play.add_argument("--compression", choices=("none", "bslz4"), default="none", help="detector data compression")
    play.add_argument(
        "--max-frames",
        type=non_negative_int,
        default=None,
        help="stop the stream after this many frames (a stream that ends early)",
    )
    play.add_argument(
        "--stall-timeout",
        type=positive_float,
        default=STALL_TIMEOUT_S,
        help=f"end the scan after this many seconds without progress (default {STALL_TIMEOUT_S:g})",
    )
    play.add_argument("--state", help="deployment state file written by `streamtomo up`")
    play.add_argument("--controller", type=http_url, help="controller URL (default: from the state file)")
    play.add_argument("--detector", help="where to bind the detector's ZeroMQ PUSH (default: from the state file)")
    play.add_argument("--panda", help="where to serve the PandA's TCP data (default: from the state file)")
    record = play.add_mutually_exclusive_group()
    record.add_argument(
        "--record-prefix", default=None, help="dump_prefix for this scan's recordings (default: the deployment's)"
    )
    record.add_argument("--no-record", action="store_true", help="do not record this scan")
    play.set_defaults(func=cmd_play)
