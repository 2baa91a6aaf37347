"""Reconstruction engines on the same 3D Shepp-Logan rows, and the live per-projection path.

Offline: every installed engine (ours ``fourier``, ``direct``, scikit-image
``iradon``, ASTRA CPU FBP, tomopy gridrec/FBP) reconstructs the same K rows of
an analytic Shepp-Logan scan at N = 256, 512, 1024 with A = round(pi/2 N)
angles over 180 degrees (1608 at 1024). Per engine: ms/slice
(best of the repeats, all K rows in one call), giga-updates/s (N*N*A/time),
SSIM and RMSE against the phantom inside the inscribed circle (what every
engine reconstructs; the corners are outside the field of view), the peak
memory of the call (each engine runs in its own process: peak RSS above the
loaded input, so C/C++ allocations count too) and the time relative to ours.
Slow engines (skimage, astra) get fewer rows and one repeat; skimage is
skipped above N = 512 unless asked for.

Volume (``--volume N A ROWS``): the end-of-scan path the reducer runs, an
(A, rows, N) angle-major sinogram read in place and ROWS slices of N x N written
straight into a preallocated volume, on every core of this machine. D distinct
rows of the analytic phantom stand for the sinogram (row r of the volume is
reconstructed from row r mod D, from its own memory); the first D slices are
scored against the phantom (SSIM, RMSE inside the circle). Prints seconds,
ms/slice, slices/s, the plan's batch memory and the process's peak RSS.

Live: adding one projection to K = 5 live slices (filter + ``backproject_into``)
at N = 512, 1024, 2048, and to a centre sweep of 11 candidates.

    python benchmarks/bench_recon.py [--sizes 256 512 1024] [--engines ...] [--repeats 3]

tomopy is on conda-forge only; without conda, ``benchmarks/build_tomopy.sh PREFIX``
builds it outside the repository and prints the two exports that make it importable.
Both tomopy engines filter with our filter on rows padded to 2N, as ours do; tomopy
does the backprojection (gridrec: gridding on a 2N x 2N frequency grid; fbp: ray
tracing), see ``streamtomo/pipeline/reconstruction/backends/tomopy_backend.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

SLOW = {"skimage": 2, "astra": 2, "direct": 4}  # rows reconstructed by the slow engines
SKIMAGE_MAX_N = 512


def inputs(n: int, rows: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64], npt.NDArray[np.float32]]:
    """(K, A, N) sinograms, angles, (K, N, N) phantom: the rows around z = -0.25."""
    from streamtomo.pipeline.simulation.phantom import shepp_logan_3d
    from streamtomo.pipeline.simulation.projector import project_shepp_logan_3d

    angles = np.linspace(0.0, 180.0, round(math.pi / 2 * n), endpoint=False)
    planes = np.arange(rows) + n // 2 - n // 8
    sino = project_shepp_logan_3d(n, n, angles, oversample=2, rows=planes)
    truth = shepp_logan_3d(n, oversample=2, planes=planes)
    return np.ascontiguousarray(sino.transpose(1, 0, 2)), angles, truth


def _status_kib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> float:
    """Reset the peak-RSS mark (Linux: clear_refs 5) and return the current RSS in MiB."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    current = _status_kib("VmRSS")
    return (current if current is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def peak_rss_mib() -> float:
    peak = _status_kib("VmHWM")
    return (peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024.0


def run_engine(engine: str, path: str, repeats: int, rows: int) -> dict[str, float]:
    """In a fresh process: time ``engine`` on the stored inputs, score it."""
    from streamtomo.pipeline.reconstruction.backends import get_backend

    data = np.load(path)
    sino, angles, truth = data["sino"][:rows], data["angles"], data["truth"][:rows]
    backend = get_backend(engine)
    n = truth.shape[-1]
    center = float(n // 2)
    warm = backend.reconstruct(sino[:1], angles, center)  # compile / plan caches
    del warm
    before = reset_peak_rss()  # the warm-up's own peak must not hide this one
    best = math.inf
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = backend.reconstruct(sino, angles, center)
        best = min(best, time.perf_counter() - start)
    assert result is not None
    peak = max(peak_rss_mib() - before, 0.0)
    yy, xx = np.mgrid[:n, :n]
    mask = (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= (n // 2) ** 2
    rmse = float(np.sqrt(np.mean((result[:, mask] - truth[:, mask]) ** 2)))
    ssim = math.nan
    try:
        from skimage.metrics import structural_similarity

        ssim = float(
            np.mean(
                [
                    structural_similarity(t * mask, r * mask, data_range=float(truth.max() - truth.min()))  # type: ignore[no-untyped-call]
                    for r, t in zip(result, truth, strict=True)
                ]
            )
        )
    except ImportError:
        pass
    per_slice = best / sino.shape[0]
    return {
        "ms": 1e3 * per_slice,
        "gups": n * n * angles.size / per_slice / 1e9,
        "ssim": ssim,
        "rmse": rmse,
        "mem": peak,
        "rows": float(sino.shape[0]),
    }


def offline(sizes: list[int], engines: list[str], repeats: int, rows: int, full_skimage: bool) -> None:
    from streamtomo.pipeline.reconstruction.backends import installed_backends

    present = [e for e in engines if e in installed_backends()]
    missing = [e for e in engines if e not in present]
    if missing:
        print(f"not installed here (skipped): {', '.join(missing)}")
    for n in sizes:
        sino, angles, truth = inputs(n, rows)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "inputs.npz")
            np.savez(path, sino=sino, angles=angles, truth=truth)
            results: dict[str, dict[str, float]] = {}
            for engine in present:
                if engine == "skimage" and n > SKIMAGE_MAX_N and not full_skimage:
                    print(f"  skimage skipped at N={n} (about 17 s/slice at 1024; --full-skimage to run it)")
                    continue
                k = SLOW.get(engine, rows)
                reps = 1 if engine in ("skimage", "astra") else repeats
                args = [sys.executable, __file__, "--worker", engine, path, str(reps), str(k)]
                out = subprocess.run(args, capture_output=True, text=True, check=False)
                if out.returncode != 0:
                    print(f"  {engine} failed at N={n}: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                results[engine] = json.loads(out.stdout.strip().splitlines()[-1])
            if "fourier" in present:  # one slice per call: what tomopy's 576 ms "unbatched" measures
                args = [sys.executable, __file__, "--worker", "fourier", path, str(repeats), "1"]
                out = subprocess.run(args, capture_output=True, text=True, check=False)
                if out.returncode == 0:
                    results["fourier K=1"] = json.loads(out.stdout.strip().splitlines()[-1])
        ours = results.get("fourier", results.get("direct", {})).get("ms", math.nan)
        print(f"\nN={n}, A={angles.size} angles over 180 deg, {rows} rows per call (slow engines fewer)")
        print(
            f"{'engine':<14}{'rows':>5}{'ms/slice':>11}{'Gupd/s':>8}{'SSIM':>7}{'RMSE':>8}{'peak MiB':>10}{'x ours':>8}"
        )
        for engine, r in results.items():
            print(
                f"{engine:<14}{int(r['rows']):>5}{r['ms']:>11.1f}{r['gups']:>8.2f}{r['ssim']:>7.3f}"
                f"{r['rmse']:>8.4f}{r['mem']:>10.0f}{r['ms'] / ours:>8.2f}"
            )
        # tomopy is compared only when it runs here, in this table: never with figures
        # remembered from another machine or day.


def best_ms(fn: Callable[..., object], *args: object, repeats: int = 5) -> float:
    fn(*args)  # warm-up: numba compile, page faults
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def live(sizes: list[int], k: int = 5) -> None:
    from streamtomo.pipeline.reconstruction.backprojection import backproject_into
    from streamtomo.pipeline.reconstruction.cor import StreamingCorSweep
    from streamtomo.pipeline.reconstruction.filters import ProjectionFilter

    print(f"\nLive: one projection into K={k} slices (filter + backproject_into, numba) and an 11-centre sweep")
    print(f"{'N':>6}{'filter ms':>11}{'backproject ms':>16}{'ms/slice':>10}{'Gupd/s':>8}{'sweep ms':>10}")
    rng = np.random.default_rng(0)
    for n in sizes:
        rows = rng.random((k, n)).astype(np.float32)
        filt = ProjectionFilter(n)
        filtered = filt.apply(rows)
        out = np.zeros((k, n, n), np.float32)
        t_filter = best_ms(filt.apply, rows)
        t_bp = best_ms(backproject_into, out, filtered, 33.3, n / 2.0)
        sweep = StreamingCorSweep(n, n / 2.0 + np.arange(-5.0, 6.0), slice_size=min(n, 512))
        t_sweep = best_ms(sweep.add, rows[0], 33.3, repeats=3)
        print(f"{n:>6}{t_filter:>11.2f}{t_bp:>16.2f}{t_bp / k:>10.2f}{k * n * n / t_bp / 1e6:>8.2f}{t_sweep:>10.1f}")
    print("(sweep: 11 candidate centres, slices of min(N, 512) px)")


def calibration(repeats: int) -> None:
    """Direct numba FBP at N=1024, 1608 angles: a figure to compare machines by."""
    from streamtomo.pipeline.reconstruction.backends import get_backend

    sino, angles, _ = inputs(1024, 2)
    backend = get_backend("direct")
    backend.reconstruct(sino[:1, :, :64], angles, 32.0)  # numba compile
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        backend.reconstruct(sino, angles, 512.0)
        best = min(best, time.perf_counter() - start)
    print(f"\nmachine check: direct FBP at N=1024, 1608 angles: {1e3 * best / 2:.0f} ms/slice")


def volume(n: int, n_angles: int, n_rows: int, distinct: int, threads: int | None) -> None:
    """The whole-volume path of the reducer's volume job, timed end to end."""
    from streamtomo.pipeline.reconstruction.backends.fourier import FourierBackend
    from streamtomo.pipeline.simulation.phantom import shepp_logan_3d
    from streamtomo.pipeline.simulation.projector import project_shepp_logan_3d
    from streamtomo.pipeline.streaming.prefault import prefaulted_zeros

    angles = np.linspace(0.0, 180.0, n_angles, endpoint=False)
    planes = np.linspace(n // 2 - n // 4, n // 2 + n // 8, distinct).round().astype(int)
    started = time.perf_counter()
    by_angle = project_shepp_logan_3d(n, n, angles, oversample=2, rows=planes)  # (A, D, N): the reducer's layout
    truth = shepp_logan_3d(n, oversample=2, planes=planes)
    print(
        f"\nvolume: N={n}, A={n_angles}, {n_rows} slices from {distinct} distinct rows (made in {time.perf_counter() - started:.1f} s)"
    )
    backend = FourierBackend()
    center = float(n // 2)
    before = reset_peak_rss()
    started = time.perf_counter()
    plan = backend.volume_plan(angles, n, center, "ramp", n, n_rows, threads)
    planned = time.perf_counter() - started
    plan.seconds = dict.fromkeys(plan.seconds, 0.0)
    # As the job's volume: a thread maps the pages ahead of the writes (np.zeros left them
    # to the unpack step, which then took 18 ms/slice at 2048^2 here in page faults).
    out = prefaulted_zeros((n_rows, n, n))
    step = 2 * plan.pairs
    started = time.perf_counter()
    for first in range(0, n_rows, step):
        last = min(n_rows, first + step)
        rows = [r % distinct for r in range(first, last)]
        backend.reconstruct_rows(plan, by_angle, rows, out[first:last])
        if last * 8 // n_rows != first * 8 // n_rows:  # progress: a cut-short run still gives a rate
            elapsed = time.perf_counter() - started
            print(f"volume: {last} slices in {elapsed:.1f} s ({1e3 * elapsed / last:.1f} ms/slice)", flush=True)
    seconds = time.perf_counter() - started
    peak = peak_rss_mib() - before
    yy, xx = np.mgrid[:n, :n]
    mask = (yy - n // 2) ** 2 + (xx - n // 2) ** 2 <= (n // 2) ** 2
    scored = min(distinct, n_rows)
    rmse = float(np.sqrt(np.mean((out[:scored, mask] - truth[:scored, mask]) ** 2)))
    ssim = math.nan
    with contextlib.suppress(ImportError):
        from skimage.metrics import structural_similarity

        span = float(truth.max() - truth.min())
        ssim = float(
            np.mean([structural_similarity(truth[i] * mask, out[i] * mask, data_range=span) for i in range(scored)])  # type: ignore[no-untyped-call]
        )
    print(
        f"volume: {n_rows} slices of {n}^2 from {n_angles} angles in {seconds:.1f} s "
        f"({1e3 * seconds / n_rows:.1f} ms/slice, {n_rows / seconds:.1f} slices/s) on {plan.threads} threads, "
        f"{plan.pairs} slice pairs per NUFFT batch; plan {planned:.2f} s"
    )
    stages = ", ".join(f"{name} {value:.1f} s" for name, value in plan.seconds.items())
    print(f"volume: stages (wall, all batches): {stages}")
    print(
        f"volume: plan holds {plan.memory_bytes() / 2**30:.2f} GiB; output {out.nbytes / 2**30:.2f} GiB; "
        f"peak RSS above the inputs {peak / 1024:.2f} GiB; SSIM {ssim:.3f} RMSE {rmse:.4f} (first {scored} slices)"
    )
    print(
        f"volume_line: n={n} angles={n_angles} slices={n_rows} seconds={seconds:.2f} ms_per_slice={1e3 * seconds / n_rows:.2f} "
        f"threads={plan.threads} ssim={ssim:.4f} peak_gib={peak / 1024:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument(
        "--engines", nargs="+", default=["fourier", "direct", "skimage", "astra", "tomopy-gridrec", "tomopy-fbp"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=8, help="rows per call for the fast engines")
    parser.add_argument("--live-sizes", type=int, nargs="*", default=[512, 1024, 2048])
    parser.add_argument("--full-skimage", action="store_true")
    parser.add_argument("--no-calibration", action="store_true")
    parser.add_argument(
        "--volume", nargs=3, type=int, metavar=("N", "ANGLES", "ROWS"), help="time a whole volume (the reducer's path)"
    )
    parser.add_argument("--distinct", type=int, default=8, help="--volume: distinct phantom rows")
    parser.add_argument("--threads", type=int, default=None, help="--volume: threads (default: every CPU)")
    parser.add_argument("--worker", nargs=4, metavar=("ENGINE", "INPUTS", "REPEATS", "ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        engine, path, reps, rows = args.worker
        print(json.dumps(run_engine(engine, path, int(reps), int(rows))))
        return
    if args.volume:
        volume(*args.volume, distinct=args.distinct, threads=args.threads)
        return
    print(f"bench_recon on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (shared machine: best of runs)")
    offline(args.sizes, args.engines, args.repeats, args.rows, args.full_skimage)
    if args.live_sizes:
        live(args.live_sizes)
    if not args.no_calibration:
        calibration(args.repeats)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
