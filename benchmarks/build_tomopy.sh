#!/usr/bin/env bash
# Build tomopy from source into a prefix outside this repository, for measurement only.
#
# tomopy is an optional backend (tomopy-gridrec, tomopy-fbp) detected at run time. It is
# published on conda-forge only (neither PyPI nor Debian), never a project dependency and
# never used in CI. This script is the recipe to get it on a plain Debian + venv machine:
#
#   benchmarks/build_tomopy.sh PREFIX [SOURCE_DIR]
#
#   PREFIX      where everything goes (must be outside the repository):
#                 PREFIX/src            tomopy's source (unless SOURCE_DIR is given)
#                 PREFIX/build          the CMake build tree
#                 PREFIX/lib            libtomo-{misc,prep,recon,gridrec}.so
#                 PREFIX/site-packages  the tomopy package plus numexpr and PyWavelets
#   SOURCE_DIR  an unpacked tomopy source tree; when absent or empty, tag $TOMOPY_TAG is
#               taken from $TOMOPY_GIT_DIR (a local clone or bare mirror) if set, else
#               cloned from https://github.com/tomopy/tomopy.
#
# Environment: PYTHON (default: $VIRTUAL_ENV's python, else the repo's .venv, else python3) is the
# interpreter that will import tomopy; wheels are chosen for it. JOBS (default 2)
# bounds the compile. TOMOPY_TAG defaults to 1.15.2.
#
# What is built: the C libraries with FFTW3 (single precision, Debian libfftw3-dev) for
# gridrec; no MKL, no CUDA, no OpenCV (so no libtomo-accel and no PTL submodule).
# Runtime dependencies go into PREFIX/site-packages with --no-deps, so they never
# replace the venv's numpy/scipy/scikit-image/tifffile, which tomopy also imports.
#
# Idempotent: re-running reuses the source and the build tree, rebuilds only what
# changed and reinstalls the Python parts in place. At the end it imports tomopy,
# runs one gridrec reconstruction, and prints the two exports to use it.
set -euo pipefail

usage() { echo "usage: $0 PREFIX [SOURCE_DIR]" >&2; exit 2; }
[[ $# -ge 1 && $# -le 2 ]] || usage

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
prefix=$(realpath -m "$1")
src=$(realpath -m "${2:-$prefix/src}")
tag=${TOMOPY_TAG:-1.15.2}
jobs=${JOBS:-2}
if [[ -z ${PYTHON:-} ]]; then
    if [[ -n ${VIRTUAL_ENV:-} ]]; then PYTHON=$VIRTUAL_ENV/bin/python
    elif [[ -x $repo/.venv/bin/python ]]; then PYTHON=$repo/.venv/bin/python
    else PYTHON=python3; fi
fi

case "$prefix/" in
    "$repo"/*) echo "error: PREFIX $prefix is inside the repository $repo; choose a path outside it" >&2; exit 2 ;;
esac

# -- build tools and FFTW ---------------------------------------------------------------
for tool in cmake pkg-config cc c++ git; do
    command -v "$tool" >/dev/null || { echo "error: $tool not found (Debian: apt-get install cmake pkgconf build-essential git)" >&2; exit 1; }
done
if ! pkg-config --exists fftw3f; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libfftw3-dev
    else
        echo "error: FFTW3 (single precision) not found; install Debian's libfftw3-dev" >&2
        exit 1
    fi
fi

# -- source --------------------------------------------------------------------------------
if [[ ! -f $src/CMakeLists.txt ]]; then
    mkdir -p "$src"
    if [[ -n ${TOMOPY_GIT_DIR:-} ]]; then
        git --git-dir="$TOMOPY_GIT_DIR" archive "$tag" | tar -x -C "$src"
    else
        tmp=$(mktemp -d)
        git clone --quiet --depth 1 --branch "$tag" https://github.com/tomopy/tomopy.git "$tmp/tomopy"
        git -C "$tmp/tomopy" archive HEAD | tar -x -C "$src"
        rm -rf "$tmp"
    fi
fi
# A git archive has no .git; CMake and setuptools-scm then read the version from
# .git_archival.txt / this variable instead of from whatever repository encloses $src.
export SETUPTOOLS_SCM_PRETEND_VERSION=$tag

# -- C libraries -------------------------------------------------------------------------------
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
if [[ ! -f $prefix/build/CMakeCache.txt ]]; then
    cmake -S "$src" -B "$prefix/build" "${generator[@]}" \
        -DCMAKE_BUILD_TYPE=Release \
        -DCMAKE_INSTALL_PREFIX="$prefix" \
        -DCMAKE_INSTALL_LIBDIR=lib \
        -DTOMOPY_USE_MKL=OFF \
        -DTOMOPY_USE_CUDA=OFF \
        -DTOMOPY_USE_OPENCV=OFF \
        -DTOMOPY_USE_TIMEMORY=OFF \
        -DTOMOPY_USE_ARCH=OFF
fi
cmake --build "$prefix/build" --parallel "$jobs"
cmake --install "$prefix/build"

# -- Python package and its pure runtime imports --------------------------------------------
site="$prefix/site-packages"
"$PYTHON" -m pip install --quiet --no-deps --upgrade --target "$site" "$src"
# tomopy imports numexpr (prep.normalize, misc.corr, util.mproc) and pywt (prep.stripe) at
# import time; scipy, scikit-image and tifffile must already be in $PYTHON's environment.
"$PYTHON" -m pip install --quiet --no-deps --upgrade --target "$site" "numexpr>=2.10" "PyWavelets>=1.6"
"$PYTHON" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("numpy", "scipy", "skimage", "tifffile") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"error: tomopy also needs {', '.join(missing)} in {sys.executable}'s environment")
EOF

# -- check -----------------------------------------------------------------------------------------
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$PYTHON" - <<'EOF'
import numpy as np
import tomopy

obj = tomopy.shepp3d(size=64)[30:32]
theta = tomopy.angles(90)
sino = tomopy.project(obj, theta, pad=False)
rec = tomopy.recon(sino, theta, algorithm="gridrec", ncore=1)
assert rec.shape == (2, 64, 64) and np.isfinite(rec).all(), rec.shape
print(f"ok: tomopy {tomopy.__version__} from {tomopy.__file__}, gridrec {rec.shape}")
EOF

cat <<EOF

# tomopy is built. To use it (e.g. tests, benchmarks/bench_recon.py):
export PYTHONPATH=$site\${PYTHONPATH:+:\$PYTHONPATH}
export LD_LIBRARY_PATH=$prefix/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}
EOF
