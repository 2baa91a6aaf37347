"""``streamtomo``: the command line.

Subcommands: ``demo`` (simulate, stream through dranspose, serve the live domain),
``replay`` (the same for dranspose recordings), ``simulate`` (write recordings),
``config`` (print a parameter file to start from) and ``check`` (validate one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import select
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from streamtomo.app.cli_types import (
    folder_path,
    http_url,
    int_at_least,
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
)
from streamtomo.pipeline.config import ConfigError, PipelineConfig

if TYPE_CHECKING:  # heavy (h5py, dranspose): imported where a command needs them
    from streamtomo.app.data_check import DataSurvey
    from streamtomo.app.nexus_source import NexusScan

logger = logging.getLogger("streamtomo")


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""


# Exit status of a scan that ran but failed or reduced no projection (the final file
# and domain say why in /entry/status/state and reason); 2 stays for user errors.
SCAN_FAILED = 3
USAGE_ERROR = 2  # README: a bad value or option, a path that cannot be made or written
# After Ctrl-C: how long the scan may take to end with what it has (one event, finish).
INTERRUPT_WAIT_S = 10.0


def _load_config(path: str | None, overrides: dict[str, Any]) -> PipelineConfig:
    from streamtomo.app.parameter_files import load_config

    try:
        return load_config(path, overrides)
    except ValueError as error:  # ParameterFileError, ConfigError
        raise CliError(str(error)) from None


DEMO_SECONDS = 20.0  # a paced demo: long enough to watch the slices grow, short enough to wait for


def on_terminal() -> bool:
    """A person at a terminal (stdin and stdout both TTYs), not CI or a script."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def _serve_until_interrupted(stop: threading.Event, enter_stops: bool = False) -> None:
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if enter_stops:
        print("serving; press Enter (or Ctrl-C) to stop", flush=True)
    else:
        print("serving; press Ctrl-C to stop", flush=True)
    try:
        while not stop.is_set():
            if enter_stops:
                # select, not a blocking readline: SIGTERM must still end the loop.
                readable, _, _ = select.select([sys.stdin], [], [], 0.5)
                if readable:
                    sys.stdin.readline()
                    break
            else:
                stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    stop.set()
    print("stopped", flush=True)


def _run(
    recordings: Sequence[Path],
    config: PipelineConfig,
    args: argparse.Namespace,
    total_frames: int | None,
    *,
    rate_hz: float | None = None,
    enter_stops: bool = False,
    intro: str = "",
) -> int:
    """Stream ``recordings``; ``rate_hz`` defaults to ``--rate``, and ``enter_stops``
    keeps serving after the scan until Enter or Ctrl-C (as ``--serve`` does until Ctrl-C)."""
    from streamtomo.app.recording_checks import cuts
    from streamtomo.app.runner import Progress, ReplayFailed, ReplayRun
    from streamtomo.app.scan_outcome import UNDER_WAY
    from streamtomo.hsds_bridge.http_thread import EnvironmentSettingError

    # With --hsds the reducer mirrors the domain there; credentials come from the
    # environment or a file (streamtomo.hsds_bridge.credentials), never from the command line.
    if args.hsds:
        from streamtomo.hsds_bridge.credentials import CredentialsError, load_credentials

        try:
            load_credentials()
        except CredentialsError as error:  # asked for: not a warning the scan runs past
            raise CliError(f"--hsds {args.hsds}: {error}") from None
        _check_hsds_answers(args.hsds)
    stop = threading.Event() if args.serve or enter_stops else None
    run = ReplayRun(
        recordings,
        config,
        workers=args.workers,
        http_port=args.port,
        rate_hz=args.rate if rate_hz is None else rate_hz,
        keep_serving=stop,
        hsds_endpoint=args.hsds or "",
    )
    viewer = None
    if args.out:
        nexus = getattr(args, "nexus", None)
        _check_out(args.out, [*recordings, *([Path(nexus)] if nexus else [])])
    try:
        try:
            reducer = run.start()
        except EnvironmentSettingError as error:  # the user's environment, not a bug
            raise CliError(str(error)) from None
        # The viewer first: it is what a person opens, before the first frame comes.
        viewer = _start_viewer(reducer.endpoint, reducer.domain.name, reducer.control)
        print(f"endpoint: {reducer.endpoint}", flush=True)
        print(f"domain: {reducer.domain.name}", flush=True)
        print(f"control: {reducer.control.url} (token in {reducer.control.token_file})", flush=True)
        progress = Progress(total_frames)
        try:
            # Inside: a Ctrl-C or SIGTERM right after the intro (a person, or a script
            # that waits for it) stopped go() and reached main's bare "interrupted".
            if intro:
                print(intro, flush=True)
            run.go()
            run.wait(on_progress=progress)
        except ReplayFailed as error:
            progress.close()
            cut_short = cuts(recordings)
            if not cut_short:
                raise  # not the recordings: a bug (exit 1; -v shows where)
            raise CliError("; ".join([str(error), *cut_short])) from None  # a recording cut part-way
        except KeyboardInterrupt as interrupt:  # Ctrl-C (or SIGTERM, see main): stop now, tidy up
            progress.close()
            run.interrupt()
            ended = True
            try:
                run.wait(timeout=INTERRUPT_WAIT_S)
            except TimeoutError:
                ended = False
            except ReplayFailed:  # the summary says what came
                pass
            interrupted = run.summary()
            print(f"interrupted: {interrupted.describe()}", file=sys.stderr, flush=True)
            if args.out:
                # The scan ended with what it had: its file too, as a deployment's scan
                # that play ends early keeps its own (nothing was written, and nothing said).
                if not ended:
                    unwritten = f"the scan had not ended {INTERRUPT_WAIT_S:.0f} s after the interrupt"
                elif interrupted.state in UNDER_WAY:
                    unwritten = f"the scan did not end ({interrupted.state})"
                else:
                    try:
                        unwritten = _write_out(args.out, reducer)
                    except KeyboardInterrupt:  # a second Ctrl-C: the part written is removed
                        unwritten = "interrupted again while it was written"
                if unwritten:
                    print(
                        f"streamtomo: error: --out {args.out} was not written: {unwritten}", file=sys.stderr, flush=True
                    )
            return _interrupted_status(interrupt)
        progress.close()
        summary = run.summary()
        cut: list[str] = []
        if total_frames is not None and summary.frames < total_frames:
            # dranspose ends a recording cut inside a message as if it ended there.
            cut = cuts(recordings)
        if getattr(reducer, "hsds", None) is not None:
            print(f"hsds domain: {reducer.hsds.domain_name} at {args.hsds}", flush=True)
        unwritten = _write_out(args.out, reducer) if args.out else ""
        if unwritten:
            unwritten = f"--out {args.out} was not written: {unwritten}"
        print(f"summary: {summary.describe()}", flush=True)
        if summary.failed:
            # On stderr and as the exit status, so scripts and CI see it too.
            print(f"scan {summary.state}: {summary.reason}", file=sys.stderr, flush=True)
        for why in cut:  # the scan is what the recordings held up to their cut: not the scan
            print(f"scan incomplete: {why}", file=sys.stderr, flush=True)
        if unwritten:  # after what the scan was: a failed or cut scan keeps its own status
            print(f"streamtomo: error: {unwritten}", file=sys.stderr, flush=True)
        if stop is not None:
            _serve_until_interrupted(stop, enter_stops)
    finally:
        if viewer is not None:
            viewer.close()
        run.close()
    if summary.failed or cut:
        return SCAN_FAILED
    return USAGE_ERROR if unwritten else 0


def _check_hsds_answers(url: str, timeout: float = 5.0) -> None:
    """An HSDS that does not answer ``/about`` is refused before the scan: the reducer
    waited 60 s for it, as long as the replay waits for the reducer, and the run ended
    "the reducer did not start" with nothing about HSDS."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/about", timeout=timeout) as answer:
            answer.read(1 << 16)
    except urllib.error.HTTPError:
        return  # it answers (an error status for a request without credentials is an answer)
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise CliError(f"--hsds {url} does not answer ({reason}): is HSDS running there?") from None


def _check_out(out: str, inputs: Sequence[Path] = ()) -> None:
    """Refuse an ``--out`` that cannot be written, before the scan: it was found only once
    the whole scan had run, and the result was lost. Nor one of the scan's ``inputs``:
    the raw data were replaced by the result."""
    path = Path(out)
    if path.is_dir():
        raise CliError(f"--out {out} is a folder: name a file in it (e.g. {path / 'scan.nxs'})")
    for given in inputs:
        if path.exists() and given.exists() and path.samefile(given):  # links and other names too
            raise CliError(f"--out {out} is the scan's own input {given}: it would be replaced by the result")
    for folder in [path.parent, *path.parent.parents]:  # the nearest that exists is made in
        if folder.exists():
            if not folder.is_dir():
                raise CliError(f"--out {out}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise CliError(f"--out {out}: this user cannot write in {folder}")
            try:  # what os.access does not see: a read-only mount, a full disk, root in /proc
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".streamtomo-out-check-"):
                    pass
            except OSError as error:
                raise CliError(f"--out {out}: cannot write in {folder} ({error.strerror or error})") from None
            return


def _start_viewer(endpoint: str, domain: str, control: Any) -> Any:
    from streamtomo.app.viewer.server import ViewerAssetsMissing, start_viewer

    try:
        # The viewer holds the control token; the page never sees it.
        viewer = start_viewer(
            endpoint, domain, host="127.0.0.1", port=0, control=control.url, control_token=control.tokens
        )
    except ViewerAssetsMissing as error:
        print(f"viewer: not available ({error})", flush=True)
        return None
    print(f"viewer: {viewer.url}", flush=True)
    return viewer


def cmd_demo(args: argparse.Namespace) -> int:
    from streamtomo.app.recordings import write_recordings
    from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec

    # A person at a terminal watches the slices grow and looks at them afterwards;
    # CI and scripts (no terminal) get the scan at full speed and an exit.
    interactive = on_terminal()
    if interactive and not args.verbose:
        # Log lines would break up the progress bar and push the viewer URL off the
        # screen; warnings still show, -v shows everything.
        logging.getLogger().setLevel(logging.WARNING)
    spec = SimulationSpec(rows=args.rows, cols=args.cols, angles=args.angles, order=args.order, seed=args.seed)
    config = spec.config(domain=args.domain)
    with tempfile.TemporaryDirectory(prefix="streamtomo-demo-") as tmp:
        simulator = ScanSimulator(spec)
        frames = list(simulator.frames())
        recordings = write_recordings(
            frames, Path(tmp), counts_per_degree=config.counts_per_degree, encoder_field=config.encoder_field
        )
        logger.info("simulated %d frames of %dx%d", len(frames), spec.rows, spec.cols)
        pace = DEMO_SECONDS if args.pace is None and interactive else (args.pace or 0.0)
        rate, intro = args.rate, ""
        if rate is None and pace > 0:
            rate = len(frames) / pace
            intro = f"pacing the scan to about {pace:g} s ({rate:.1f} frames/s): open the viewer to watch it"
        return _run(recordings, config, args, len(frames), rate_hz=rate, enter_stops=interactive, intro=intro)


def cmd_replay(args: argparse.Namespace) -> int:
    from streamtomo.app.recording_checks import RecordingError, check_recordings

    refuse_nexus_paths_without_nexus(args)
    if args.nexus:
        return _replay_nexus(args)
    config = _load_config(args.parameters, {"domain": args.domain})
    recordings = [Path(f) for f in args.files]
    try:
        check_recordings(recordings, config.detector_stream, config.angle_stream)
    except RecordingError as error:
        raise CliError(str(error)) from None
    return _run(recordings, config, args, total_frames=config.expected_frames())


def _replay_nexus(args: argparse.Namespace) -> int:
    """An NXtomo file streamed as the beamline would have: its frames in file order,
    kinds in the image headers, measured angles on the PandA stream."""
    from streamtomo.app.recordings import write_recordings

    with (
        nexus_scan(args, {"domain": args.domain}) as (config, scan),
        tempfile.TemporaryDirectory(prefix="streamtomo-nexus-") as tmp,
    ):
        recordings = write_recordings(scan.frames(), Path(tmp), **_nexus_stream_options(config, scan))
        return _run(recordings, config, args, total_frames=scan.n_frames)


@contextlib.contextmanager
def nexus_scan(
    args: argparse.Namespace, overrides: dict[str, Any], announce: TextIO | None = None
) -> Iterator[tuple[PipelineConfig, NexusScan]]:
    """``args.nexus`` open, with the scan's configuration: the parameter file's values,
    the angle grid from the file's angles unless set there, ``overrides``.
    ``replay --nexus`` streams it, ``check --nexus`` surveys it, ``config --nexus``
    prints it: all see the same scan. ``announce``: where its line goes (stdout)."""
    from streamtomo.app.nexus_source import FULL_TURN, GRID_KEYS, NexusError, NexusScan
    from streamtomo.app.parameter_files import read_config_values

    try:
        values = read_config_values(args.parameters) if args.parameters else {}
        scan = NexusScan(args.nexus, args.nexus_data, args.nexus_keys, args.nexus_angles)
    except (ValueError, NexusError) as error:  # ParameterFileError, NexusError
        raise CliError(str(error)) from None
    with scan:
        # The file names each frame's kind, whatever the order (DIAD: flats, darks,
        # projections, flats, darks), so the kinds travel in the headers. Another rule
        # from the parameter file would count kinds by position instead: a file with 5
        # darks and 5 flats read as 10 of each, and 10 projections used as flats,
        # without a word.
        rule = str(values.get("kind_rule", "header"))
        if rule != "header":
            raise CliError(
                f"--nexus takes each frame's kind from the file's image_key (kind_rule 'header'); "
                f"{args.parameters} sets kind_rule {rule!r}: leave it out"
            )
        values["kind_rule"] = "header"
        # The file's frames are streamed numbered from 0: another base shifted every
        # projection onto its neighbour's angle, with nothing said.
        base = str(values.get("frame_base", "auto")).strip().lower()
        if base not in ("auto", "0"):
            raise CliError(
                f"--nexus streams the file's frames numbered from 0 (frame_base 0 or 'auto'); "
                f"{args.parameters} sets frame_base {base!r}: leave it out"
            )
        try:
            projections = scan.projection_angles().size
            grid = scan.grid()
        except NexusError as error:  # no projections, angles that are not finite
            raise CliError(str(error)) from None
        if grid.angle_range > FULL_TURN and "angle_range" not in values:
            if not _positive(values.get("angle_step")):
                raise CliError(
                    f"the projections' angles in {args.nexus} span more than a turn "
                    f"({grid.angle_range - grid.angle_range / grid.n_projections:.6g} degrees): give the grid of "
                    f"one turn with -p (angle_range 360 and n_projections, the projections in one turn)"
                )
            grid = dataclasses.replace(grid, angle_range=FULL_TURN)  # not used: angle_step sets the grid
        for key in GRID_KEYS:
            given = values.setdefault(key, getattr(grid, key))  # from the file unless given
            if _differs(given, getattr(grid, key)):
                # A parameter file with every default (`streamtomo config`) replaced the
                # file's grid without a word: 150 of 180 slots empty, and check said ok.
                print(
                    f"warning: {args.parameters} sets {key} {given}, the file's angles give {getattr(grid, key):g}: "
                    f"the scan takes {given} (leave {key} out to take the file's)",
                    file=sys.stderr,
                    flush=True,
                )
        values.update(overrides)
        config = _load_config_values(values)
        print(
            f"nexus: {scan.n_frames} frames from {scan.paths.data}, {projections} projections, "
            f"angles {config.angle_start:g} + {config.slot_step:.6g} x i deg from {scan.paths.rotation_angle}",
            file=announce or sys.stdout,
            flush=True,
        )
        yield config, scan


def _positive(value: Any) -> bool:
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def _differs(given: Any, found: float) -> bool:
    try:
        return not math.isclose(float(given), float(found), rel_tol=1e-9, abs_tol=1e-9)
    except (TypeError, ValueError):  # not a number: the configuration refuses it next
        return False


def _nexus_stream_options(config: PipelineConfig, scan: NexusScan) -> dict[str, Any]:
    """How the file's frames become a detector and a PandA stream (:func:`scan_to_internals`)."""
    return {
        "counts_per_degree": config.counts_per_degree,
        "offset_deg": config.encoder_offset,
        "encoder_field": config.encoder_field,
        "detector_stream": config.detector_stream,
        "angle_stream": config.angle_stream or "angle",
        "filename": scan.path.name,
    }


def _load_config_values(values: dict[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.from_mapping(values)
    except ConfigError as error:
        raise CliError(str(error)) from None


def cmd_simulate(args: argparse.Namespace) -> int:
    from streamtomo.app.parameter_files import write_parameter_file
    from streamtomo.app.recordings import write_recordings
    from streamtomo.pipeline.simulation.simulator import ScanSimulator, SimulationSpec

    spec = SimulationSpec(
        rows=args.rows,
        cols=args.cols,
        angles=args.angles,
        order=args.order,
        seed=args.seed,
        n_flats_after=args.flats_after,
    )
    out = Path(args.out)
    config = spec.config()  # a size the pipeline refuses: before the folder is made
    out.mkdir(parents=True, exist_ok=True)
    paths = write_recordings(
        ScanSimulator(spec).frames(),
        out,
        compression=args.compression,
        counts_per_degree=config.counts_per_degree,
        encoder_field=config.encoder_field,
    )
    params = write_parameter_file(config, out / "parameters.json")
    for path in [*paths, params]:
        print(path)
    print(f"replay with: streamtomo replay -f {' '.join(str(p) for p in paths)} -p {params}")
    return 0


def cmd_hsds(args: argparse.Namespace) -> int:
    from streamtomo.app.hsds_admin import HsdsStartError
    from streamtomo.app.hsds_proxy import parse_origins
    from streamtomo.app.local_hsds import LocalHsds

    try:
        origins = parse_origins(args.cors_origin or ["http://127.0.0.1"])
    except ValueError as error:
        raise CliError(str(error)) from None
    from streamtomo.app.processes import HOST, port_unused

    if args.port and not port_unused(HOST, args.port):  # was HSDS's traceback "address already in use"
        raise CliError(f"--port {args.port} is taken: another program listens there (0: a free port)")
    server = LocalHsds(args.root, port=args.port, cors_origins=origins)
    try:
        server.start()
    except HsdsStartError as error:
        raise CliError(f"HSDS did not start: {error}") from None
    print(f"hsds endpoint: {server.url}", flush=True)
    print(f"browser origins allowed (CORS): {', '.join(origins)}", flush=True)
    for user in (server.writer_user, server.viewer_user):
        print(f"credentials of {user}: {server.credentials_file(user)}", flush=True)
    print(
        f"publish with: STREAMTOMO_HSDS_CREDENTIALS={server.credentials_file(server.writer_user)} streamtomo demo --hsds {server.url}",
        flush=True,
    )
    server.run_forever()  # Ctrl-C: flush, then stop
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from streamtomo.app.parameter_files import parameter_list

    refuse_nexus_paths_without_nexus(args)
    if args.explain:
        for f in fields(PipelineConfig):
            print(f"{f.name:20} {f.default!s:22} {f.metadata.get('help', '')}")
        return 0
    if args.nexus:
        # The defaults with what the file decides (its kinds in image_key, the angle grid
        # of its projections): the defaults' kind_rule and grid made replay --nexus refuse
        # the file, or take 180 slots where it has 1800 projections.
        args.parameters = None
        with nexus_scan(args, {}, announce=sys.stderr) as (config, _scan):
            print(json.dumps(parameter_list(config), indent=1))
        return 0
    print(json.dumps(parameter_list(PipelineConfig()), indent=1))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """The parameter file, and with ``--rows/--cols`` what the reducer checks at a scan's
    first frame: the binned detector's centre, rows and slices, and the memory the scan
    needs against the budget (before, a file passed that the scan then refused). With
    ``--data`` the scan's recordings too, read by the workers' own rules
    (:mod:`streamtomo.app.data_check`); the detector's shape then comes from them.
    ``--nexus``: an NXtomo file, surveyed as the streams ``replay --nexus`` would
    record, made in memory."""
    from streamtomo.pipeline.messages import DetectorInfo
    from streamtomo.pipeline.streaming.live_geometry import LiveSliceGeometry
    from streamtomo.pipeline.streaming.memory_budget import (
        MemoryBudgetError,
        budget_bytes,
        check_memory_budget,
        size_text,
    )

    refuse_nexus_paths_without_nexus(args)
    if args.nexus:
        from streamtomo.app.data_check import survey_events
        from streamtomo.app.recordings import internal_events

        # The file's own angle grid, unless the parameter file sets one: as replay --nexus
        # runs it. Its frames go to the survey as the streams replay would record, in
        # memory: no copy of a file of gigabytes on disk first.
        with nexus_scan(args, {}) as (config, scan):
            _check_volume_backend(args, config)
            events = internal_events(scan.frames(), **_nexus_stream_options(config, scan))
            args.rows, args.cols = _report_survey(args, config, survey_events(events, config), "--nexus")
    else:
        config = _load_config(args.parameters, {})
        _check_volume_backend(args, config)
        if args.data:
            args.rows, args.cols = _check_data(args, config, [Path(p) for p in args.data])
    if bool(args.rows) != bool(args.cols):  # one alone checked nothing and said "ok"
        raise CliError(f"give both --rows and --cols (got only {'--rows' if args.rows else '--cols'})")
    if not (args.rows and args.cols):
        print(f"{args.parameters}: ok (give --rows and --cols, or --data, to check it against a detector too)")
        return 0
    # The workers bin each frame before anything else: the scan sees the binned detector.
    detector = DetectorInfo(args.rows // config.bin, args.cols // config.bin, "uint16")
    binned = f" (bin {config.bin}: {detector.rows} x {detector.cols})" if config.bin > 1 else ""
    try:
        if detector.rows < 1 or detector.cols < 1:
            raise ConfigError(f"bin {config.bin} leaves no pixel of a {args.rows} x {args.cols} detector")
        total = check_memory_budget(config, detector, LiveSliceGeometry(config, detector))
    except (ConfigError, MemoryBudgetError) as error:
        raise CliError(f"{args.parameters} on a {args.rows} x {args.cols} detector{binned}: {error}") from None
    print(
        f"{args.parameters}: ok on a {args.rows} x {args.cols} detector{binned}; the reducer will hold "
        f"{size_text(total)} of {size_text(budget_bytes(config))} (memory_budget_gb"
        + (")" if config.memory_budget_gb > 0 else ": half of this machine's memory)")
    )
    return 0


def _check_volume_backend(args: argparse.Namespace, config: PipelineConfig) -> None:
    if config.volume:
        from streamtomo.pipeline.reconstruction.backends import BackendNotInstalledError, get_backend

        try:
            get_backend(config.backend)
        except BackendNotInstalledError as error:  # the scan ran, and ended without its volume
            raise CliError(f"{args.parameters}: the end-of-scan volume: {error}") from None


def _check_data(args: argparse.Namespace, config: PipelineConfig, recordings: list[Path]) -> tuple[int, int]:
    """Survey ``--data``, the scan's recordings (checked first as recordings); see
    :func:`_report_survey`."""
    from streamtomo.app.data_check import survey_recordings
    from streamtomo.app.recording_checks import RecordingError, check_recordings, cuts

    try:
        check_recordings(recordings, config.detector_stream, config.angle_stream)
    except RecordingError as error:
        raise CliError(f"--data: {error}") from None
    # A recording cut part-way or corrupt inside: the survey reads up to there (or fails
    # there), and said "ok", or blamed the parameter file, without naming the cut.
    cut = cuts(recordings)
    try:
        survey = survey_recordings(recordings, config)
    except Exception:
        if not cut:
            raise  # not the recordings: a bug (exit 1; -v shows where)
        raise CliError(f"--data: {'; '.join(cut)}") from None
    try:
        shape = _report_survey(args, config, survey, "--data")
    except CliError as error:
        if not cut:
            raise
        raise CliError(f"{error}; and --data: {'; '.join(cut)}") from None
    if cut:
        raise CliError(f"--data: {'; '.join(cut)} (the survey above is of the messages before)")
    return shape


def _report_survey(
    args: argparse.Namespace, config: PipelineConfig, survey: DataSurvey, option: str
) -> tuple[int, int]:
    """Print what the data (``option``: ``--data`` or ``--nexus``) hold and what the
    scan would refuse; the detector's (rows, cols). A scan that would reduce no
    projection is refused here."""
    from streamtomo.app.data_check import describe, usable_projections
    from streamtomo.pipeline.scan import ImageKey

    projections = survey.projection_angles(config)
    lines, warnings = describe(survey, config, projections)
    for line in lines:
        print(line, flush=True)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr, flush=True)
    shape = survey.shape
    if shape is None and survey.rejected:
        raise CliError(f"{args.parameters}: no frame of the data would be used, each is refused (see the warnings)")
    if shape is None:
        raise CliError(f"{option}: no detector image in stream {config.detector_stream!r} (detector_stream)")
    if (args.rows or args.cols) and (args.rows, args.cols) != shape:
        raise CliError(f"--rows/--cols {args.rows} x {args.cols} but the data's detector is {shape[0]} x {shape[1]}")
    if not config.keep_references and not any(frame.key == ImageKey.FLAT for frame in survey.frames):
        # Every projection then fails as no_references: "ok" here, "scan failed" in replay.
        raise CliError(
            f"{args.parameters}: no frame of the data is a flat under these parameters (kind_rule "
            f"{config.kind_rule}), and projections are corrected with flats: no projection would be reduced "
            "(a scan whose flats are an earlier scan's sets keep_references)"
        )
    if not projections.angles:  # no warning says so: the frames are all darks and flats, or none came
        raise CliError(
            f"{args.parameters}: no frame of the data is a projection under these parameters "
            f"(kind_rule {config.kind_rule}): no projection would be reduced"
        )
    if not usable_projections(projections, config):
        raise CliError(f"{args.parameters}: no projection of the data would be reduced (see the warnings above)")
    return shape


def refuse_nexus_paths_without_nexus(args: argparse.Namespace) -> None:
    given = [f"--nexus-{name}" for name in ("data", "keys", "angles") if getattr(args, f"nexus_{name}")]
    if given and not args.nexus:
        raise CliError(f"{', '.join(given)} name datasets of the file given with --nexus, and there is none")


def add_nexus_path_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nexus-data", metavar="PATH", help="--nexus: dataset of the frames (default: looked up)")
    p.add_argument("--nexus-keys", metavar="PATH", help="--nexus: dataset of the image_key per frame")
    p.add_argument("--nexus-angles", metavar="PATH", help="--nexus: dataset of the rotation angle per frame, degrees")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-w", "--workers", type=positive_int, default=2, help="dranspose workers (default 2)")
    p.add_argument("--port", type=port, default=0, help="HTTP port of the live domain (default: a free port)")
    p.add_argument(
        "--rate",
        type=positive_float,
        default=None,
        help="frames per second to replay at (default: as fast as possible)",
    )
    p.add_argument("--serve", action="store_true", help="keep serving the domain until Ctrl-C")
    p.add_argument("--out", help="write the final NeXus file here")
    p.add_argument("--domain", default="/streamtomo/live.h5", help="live domain name")
    p.add_argument(
        "--hsds",
        metavar="URL",
        type=http_url,
        help="also publish to this HSDS (credentials: STREAMTOMO_HSDS_USERNAME/_PASSWORD or STREAMTOMO_HSDS_CREDENTIALS=file)",
    )


def _add_sim_options(p: argparse.ArgumentParser, rows: int, cols: int, angles: int) -> None:
    # The simulator's own limits (streamtomo.pipeline.simulation.simulator.SimulationSpec):
    # below them it raised a traceback.
    p.add_argument("--rows", type=positive_int, default=rows, help=f"detector rows (default {rows})")
    p.add_argument("--cols", type=int_at_least(8), default=cols, help=f"detector columns, at least 8 (default {cols})")
    p.add_argument(
        "--angles",
        type=int_at_least(2),
        default=angles,
        help=f"projections over 180 degrees, at least 2 (default {angles})",
    )
    p.add_argument(
        "--order", choices=("sequential", "golden"), default="sequential", help="acquisition order of the angles"
    )
    p.add_argument("--seed", type=int, default=0, help="noise seed")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamtomo", description="Streaming tomography reduction on dranspose.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="simulate a scan and stream it through the pipeline (on a terminal: paced, then served until Enter)",
    )
    _add_sim_options(demo, rows=64, cols=256, angles=360)
    _add_run_options(demo)
    demo.add_argument(
        "--pace",
        type=non_negative_float,
        metavar="SECONDS",
        help=f"spread the scan over about this long (default on a terminal {DEMO_SECONDS:g}, else 0: "
        "as fast as possible); --rate wins",
    )
    demo.set_defaults(func=cmd_demo)

    replay = sub.add_parser("replay", help="stream dranspose recordings or an NXtomo file through the pipeline")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("-f", "--files", nargs="+", help="dranspose recordings (.cbors)")
    source.add_argument(
        "--nexus",
        metavar="FILE",
        help="an NXtomo file (image_key, rotation angles, frames; external links followed) or an APS Data "
        "Exchange file (/exchange/data, data_white, data_dark, theta: darks, flats, then projections); "
        "angle_start, angle_range and n_projections come from its angles unless the parameter file sets them",
    )
    add_nexus_path_options(replay)
    replay.add_argument("-p", "--parameters", help="parameter file (JSON)")
    _add_run_options(replay)
    replay.set_defaults(func=cmd_replay)

    simulate = sub.add_parser("simulate", help="write a simulated scan as dranspose recordings")
    simulate.add_argument("--out", required=True, type=folder_path, help="output directory")
    simulate.add_argument("--compression", choices=("none", "bslz4"), default="none")
    simulate.add_argument("--flats-after", type=non_negative_int, default=0, help="flat frames after the projections")
    _add_sim_options(simulate, rows=16, cols=128, angles=180)
    simulate.set_defaults(func=cmd_simulate)

    hsds = sub.add_parser("hsds", help="run a local HSDS (POSIX storage, loopback only) until Ctrl-C")
    hsds.add_argument("--root", required=True, type=folder_path, help="storage directory (kept between runs)")
    hsds.add_argument("--port", type=port, default=5101, help="loopback port (0: a free one)")
    hsds.add_argument(
        "--cors-origin",
        action="append",
        metavar="ORIGIN",
        help="browser origin allowed to read, e.g. http://localhost:5173 (repeatable or a comma list; "
        "default http://127.0.0.1)",
    )
    hsds.set_defaults(func=cmd_hsds)

    config = sub.add_parser("config", help="print a parameter file with the defaults")
    config.add_argument("--explain", action="store_true", help="list the parameters with their meaning")
    config.add_argument(
        "--nexus",
        metavar="FILE.nxs",
        help="the parameters for this NXtomo file: kinds from its image_key, the angle grid from its angles",
    )
    add_nexus_path_options(config)
    config.set_defaults(func=cmd_config)

    check = sub.add_parser("check", help="validate a parameter file")
    check.add_argument("parameters", help="parameter file (JSON)")
    check.add_argument("--rows", type=non_negative_int, default=0, help="detector rows, to check row selections")
    check.add_argument("--cols", type=non_negative_int, default=0, help="detector columns, to check the centre")
    data = check.add_mutually_exclusive_group()
    data.add_argument(
        "--data",
        nargs="+",
        metavar="REC",
        help="the scan's dranspose recordings (.cbors, one per stream): read by the workers' rules (frame numbers, "
        "kinds, angles), they give the detector's shape and show what the scan would refuse",
    )
    data.add_argument(
        "--nexus",
        metavar="FILE",
        help="an NXtomo file, checked as replay --nexus would stream it (its own angle grid unless the parameter "
        "file sets one)",
    )
    add_nexus_path_options(check)
    check.set_defaults(func=cmd_check)

    from streamtomo.app.cli_distributed import register as register_distributed
    from streamtomo.app.viewer.cli import register as register_view

    register_distributed(sub)
    register_view(sub)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: the same tidy stop (the temporary folders,
    the control token's among them, were left behind by the signal's default action)."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def _write_out(out: str, reducer: Any) -> str:
    """The scan's ``--out`` file, as a deployment's final file (the scan it is and when it
    ended, the volume as its default); prints where, or returns why it was not written
    ("" when it was)."""
    from streamtomo.reducer.final_metadata import write_final_file

    identifier, ended = str(reducer.mapping_uuid or Path(out).stem), time.time()
    try:
        path = write_final_file(reducer.domain, out, identifier, ended)
    except OSError as error:  # checked before the scan, but a disk fills up meanwhile
        where = f" ({error.filename})" if error.filename else ""
        return f"{error.strerror or error}{where}"
    print(f"final file: {path}", flush=True)
    return ""


def _interrupted_status(interrupt: KeyboardInterrupt) -> int:
    """As a shell reports a process its signal stopped: 128 + the signal."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("dranspose", "aiohttp.access", "uvicorn", "dranspose.replay"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    # For every subcommand (`up` stops on it too; --serve puts its own in place). SIGINT as
    # Ctrl-C even in a job a shell started in the background (it starts them with SIGINT ignored).
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.func(args))
    except KeyboardInterrupt as interrupt:  # before or after the scan (its own is handled in _run)
        print("interrupted", file=sys.stderr, flush=True)
        return _interrupted_status(interrupt)
    except (CliError, ConfigError) as error:  # a value the pipeline refuses is a usage error too
        print(f"streamtomo: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a path that cannot be made or read, a port that is taken
        if args.verbose:
            raise  # -v: the traceback, for a bug report
        print(f"streamtomo: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
