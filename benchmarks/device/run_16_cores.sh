#!/usr/bin/env bash
# Issues 10 and 15 on a lent 16-core machine without network, in one call: the volume
# engine against the session-start one, the whole 2048^3 volume, the pipeline's scaling
# with workers at 1024^2, and 2048^2 with bin 2. Each step has its own time limit and
# leaves its whole log under $OUT.
#
# The machine lacks our dependencies: `bash benchmarks/device/bundle.sh` makes them
# here (.whl/ with setup_remote.sh, .deb/ with redis-server, .devrun/; all git-ignored)
# and `CHECK=1 bash benchmarks/device/bundle.sh` tries them with a local Python 3.12
# first. The device call carries .whl, .deb and .devrun. LOCAL=1 runs the same steps
# small, with .venv; SMALL=1 small, with the bundle (what CHECK=1 does).
set -u
OUT=${OUT:-/tmp/out16}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
if [ -n "${LOCAL:-}" ]; then
  PY=.venv/bin/python
else
  source .whl/setup_remote.sh > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
  tail -3 "$OUT/setup.log"; PY=python3
fi
if [ -n "${LOCAL:-}${SMALL:-}" ]; then
  VC="512 804 8"; VOL="512 804 64"
  S1="--rows 256 --cols 256 --angles 60 --workers 1 2"; S2="--rows 512 --cols 512 --angles 30 --workers 2"
else
  VC="2048 3217 32"; VOL="2048 3217 2048"
  S1="--rows 1024 --cols 1024 --angles 300 --workers 1 2 4 8 12"; S2="--rows 2048 --cols 2048 --angles 130 --workers 14"
fi
git show da87d2e:streamtomo/pipeline/reconstruction/backends/fourier.py > /tmp/old_fourier.py 2>/dev/null \
  || cp .devrun/old_fourier.py /tmp/old_fourier.py  # the lent machine gets no .git: carry the file
clean() { [ -n "${LOCAL:-}${SMALL:-}" ] && return; pkill -f streamtomo.app.services; pkill -f redis-server; sleep 1; }
step() {  # name seconds command...
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s, at $(( $(date +%s) - T0 ))s)"
  timeout -k 10 -s INT "$limit" "$@" > "$OUT/$name.log" 2>&1; echo "rc=$?" >> "$OUT/$name.log"
  grep -v -E "^\s*$" "$OUT/$name.log" | tail -n "${TAIL:-14}"
  clean > /dev/null 2>&1
}
step engine_against_old 45 $PY benchmarks/device/engine_against_old.py /tmp/old_fourier.py $VC
for threads in 1 4 16; do
  step "stages_$threads" 45 $PY benchmarks/device/engine_stages.py ${VC% *} $((2 * threads)) $threads
done
TAIL=8 step volume 150 $PY benchmarks/bench_recon.py --volume $VOL --distinct 2
TAIL=16 step scale1024 200 $PY benchmarks/bench_scale.py $S1 --repeats 2
TAIL=10 step scale2048_bin2 60 $PY benchmarks/bench_scale.py $S2 --bin 2 --repeats 1 --no-noop
echo "total $(( $(date +%s) - T0 ))s"
