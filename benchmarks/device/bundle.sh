#!/usr/bin/env bash
# What run_16_cores.sh needs on a lent machine that reaches no network, made here
# in one command (the lent machine's minutes are too few to work it out there):
#
#   bash benchmarks/device/bundle.sh            # -> .whl/ .deb/ .devrun/ (git-ignored locally)
#
# * .whl/: wheels for the machine's Python (3.12, x86-64) of every package our
#   services and benchmarks import that its image lacks, at the versions of this
#   checkout's .venv (the ones the tests passed with); the image's list is DEVICE_HAS
#   below, from the device tool's KINDS.md (2026-11-17);
# * .deb/: redis-server and the libraries it loads, unpacked there (no root needed);
# * .whl/setup_remote.sh: installs both there (pip --target /tmp/site, dpkg -x) and
#   puts redis-server on PATH through a wrapper that sets LD_LIBRARY_PATH for it alone;
# * .devrun/old_fourier.py: the volume engine the first step compares with (the lent
#   machine gets no .git).
#
# Then, in one device call (carry .whl .deb .devrun):
#   bash benchmarks/device/run_16_cores.sh
# CHECK=1 tries the bundle here first: a Python 3.12 virtual environment with the
# image's packages from PyPI, the wheels installed over it as run_16_cores.sh does, and
# run_16_cores.sh's steps at small sizes (SMALL=1) with that Python.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV_PY=.venv/bin/python
for ignored in /.whl/ /.deb/ /.devrun/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
rm -rf .whl .deb .devrun && mkdir -p .whl .deb .devrun

# What the image has (KINDS.md: "Python packages already there"), of what we import.
DEVICE_HAS="aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs certifi charset-normalizer click
cython frozenlist h11 h5py idna llvmlite msgpack multidict numba numpy packaging propcache psutil pyyaml
requests scipy setuptools six typing-extensions urllib3 yarl"

# The closure of our runtime dependencies (pyproject's, and hiredis, which redis-py
# uses when it is there) as this .venv resolved them, less the image's.
$VENV_PY - "$DEVICE_HAS" > .whl/requirements.txt <<'EOF'
import importlib.metadata as md, re, sys
from packaging.markers import Marker
from packaging.requirements import Requirement
has = set(sys.argv[1].split())
env = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "platform_system": "Linux",
       "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython",
       "platform_python_implementation": "CPython", "extra": ""}
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
todo = [Requirement(r).name for r in md.requires("streamtomo") or [] if "extra ==" not in r] + ["hiredis"]
pinned = {}
while todo:
    name = norm(todo.pop())
    if name in pinned or name in has:
        continue
    dist = md.distribution(name)
    pinned[name] = dist.version
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            todo.append(req.name)
for name, version in sorted(pinned.items()):
    print(f"{name}=={version}")
EOF
# Only for the first step: the volume engine it compares with (da87d2e's) used FINUFFT.
echo "finufft==2.5.1" >> .whl/requirements.txt
echo "wheels: $(tr '\n' ' ' < .whl/requirements.txt)"
PLATFORMS=()
for tag in manylinux_2_39 manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 manylinux_2_24 \
    manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
$VENV_PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --abi abi3 --abi none "${PLATFORMS[@]}" --platform any -d .whl -r .whl/requirements.txt

(cd .deb && apt-get download -q redis-server redis-tools libjemalloc2 liblzf1 libatomic1 > /dev/null)

cat > .whl/setup_remote.sh <<'EOF'
# Sourced on the lent machine from the repository's root (run_16_cores.sh does).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD
mkdir -p /tmp/redis-root /tmp/redis-bin
for deb in .deb/*.deb; do dpkg -x "$deb" /tmp/redis-root || return 1; done
libs=$(dirname "$(find /tmp/redis-root -name 'libjemalloc.so*' | head -1)")
printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec /tmp/redis-root/usr/bin/redis-server "$@"\n' "$libs" > /tmp/redis-bin/redis-server
chmod +x /tmp/redis-bin/redis-server
export PATH=/tmp/redis-bin:$PATH
redis-server --version
python3 -c "import dranspose, h5pyd, ducc0, zmq, redis; print('python', __import__('sys').version.split()[0], 'dranspose', dranspose.__version__ if hasattr(dranspose, '__version__') else 'ok')"
EOF

git show da87d2e:streamtomo/pipeline/reconstruction/backends/fourier.py > .devrun/old_fourier.py
du -sh .whl .deb .devrun
echo "tree that travels: $(git ls-files -z | du -ch --files0-from=- | tail -1 | cut -f1) tracked, plus the three folders"

if [ -n "${CHECK:-}" ]; then
  CHECK_DIR=$(mktemp -d /tmp/device-check.XXXXXX)
  trap 'rm -rf "$CHECK_DIR"' EXIT
  PY312=${PY312:-}
  for candidate in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    [ -z "$PY312" ] && "$candidate" -c '' 2> /dev/null && PY312=$candidate
  done
  [ -n "$PY312" ] || { echo "CHECK=1 needs a Python 3.12 (set PY312)"; exit 1; }
  "$PY312" -m venv "$CHECK_DIR/venv"
  # The image's packages (its versions differ: these are PyPI's newest for 3.12).
  PIP_ROOT_USER_ACTION=ignore "$CHECK_DIR/venv/bin/python" -m pip install -q $DEVICE_HAS
  # python3 on PATH is that environment's (a link would not find its pyvenv.cfg).
  mkdir -p "$CHECK_DIR/bin" && printf '#!/bin/sh\nexec %s "$@"\n' "$CHECK_DIR/venv/bin/python" > "$CHECK_DIR/bin/python3"
  chmod +x "$CHECK_DIR/bin/python3"
  (cd "$ROOT" && PATH="$CHECK_DIR/bin:$PATH" SMALL=1 OUT="$CHECK_DIR/out" bash benchmarks/device/run_16_cores.sh)
fi
