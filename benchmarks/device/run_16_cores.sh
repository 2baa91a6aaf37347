#!/usr/bin/env bash
# Issues 10 and 15 on a lent 16-core machine without network, in one call: the volume
# engine against the session-start one, the whole 2048^3 volume, the pipeline's scaling
# with workers at 1024^2, and 2048^2 with bin 2. Each step has its own time limit and
# leaves its whole log under $OUT.
#
# The machine lacks our dependencies: carry them (both folders are git-ignored):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#       dranspose==0.2.0 cbor2==5.7.1 h5pyd==1.0.0 ducc0==0.42.0 finufft==2.5.1 bitshuffle==0.5.2 ...  (and their
#       requirements the machine lacks: pydantic, fastapi, uvicorn, pyzmq, redis, hiredis, ...;
#       finufft only for the old engine the first step compares with)
#   (cd .deb && apt-get download redis-server redis-tools libjemalloc2 liblzf1 libatomic1)
# and a .whl/setup_remote.sh that pip-installs the wheels to /tmp/site (PYTHONPATH) and
# unpacks the debs with dpkg -x (redis-server on PATH through a wrapper that sets
# LD_LIBRARY_PATH for redis only). LOCAL=1 runs the same steps small, with .venv.
set -u
OUT=${OUT:-/tmp/out16}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
if [ -n "${LOCAL:-}" ]; then
  PY=.venv/bin/python; VC="512 804 8"; VOL="512 804 64"
  S1="--rows 256 --cols 256 --angles 60 --workers 1 2"; S2="--rows 512 --cols 512 --angles 30 --workers 2"
else
  source .whl/setup_remote.sh > "$OUT/setup.log" 2>&1; tail -3 "$OUT/setup.log"; PY=python3
  VC="2048 3217 32"; VOL="2048 3217 2048"
  S1="--rows 1024 --cols 1024 --angles 300 --workers 1 2 4 8 12"; S2="--rows 2048 --cols 2048 --angles 130 --workers 14"
fi
git show da87d2e:streamtomo/pipeline/reconstruction/backends/fourier.py > /tmp/old_fourier.py 2>/dev/null \
  || cp .devrun/old_fourier.py /tmp/old_fourier.py  # the lent machine gets no .git: carry the file
clean() { [ -n "${LOCAL:-}" ] && return; pkill -f streamtomo.app.services; pkill -f redis-server; sleep 1; }
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
