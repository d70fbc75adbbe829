#!/usr/bin/env bash
# Regenerate the kubelet PodResources v1 Python stubs from agent/node/podresources/api.proto.
#
#   scripts/gen-podresources.sh           rewrite api_pb2.py, api_pb2.pyi, api_pb2_grpc.py
#   scripts/gen-podresources.sh --check   exit 1 if the committed stubs are stale
#
# Needs grpcio-tools (the `test` extra). PYTHON overrides the interpreter
# (default: .venv/bin/python when present, else python3).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pkg="agent/node/podresources"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# -I is the package folder so the descriptor is registered as plain "api.proto" with
# package "v1", as the kubelet's own is; the import grpcio-tools then writes is fixed below.
cd "$root"
"$PYTHON" -m grpc_tools.protoc \
    -I "$pkg" \
    --python_out="$out" \
    --pyi_out="$out" \
    --grpc_python_out="$out" \
    "$pkg/api.proto"

# grpcio-tools writes `import api_pb2 as api__pb2`, which only works with the folder on
# sys.path; the package needs a relative import.
sed -i 's/^import api_pb2 as api__pb2$/from . import api_pb2 as api__pb2/' "$out/api_pb2_grpc.py"
grep -q '^from \. import api_pb2 as api__pb2$' "$out/api_pb2_grpc.py" \
    || { echo "gen-podresources: generated import not found; grpcio-tools output changed" >&2; exit 1; }

stale=0
for f in api_pb2.py api_pb2.pyi api_pb2_grpc.py; do
    if [[ $check -eq 1 ]]; then
        if ! cmp -s "$out/$f" "$pkg/$f"; then
            echo "gen-podresources: $pkg/$f is stale; run scripts/gen-podresources.sh" >&2
            stale=1
        fi
    else
        cp "$out/$f" "$pkg/$f"
    fi
done
exit $stale
