#!/usr/bin/env bash
# The figures taken on a machine with real NVIDIA GPUs (no network there: pydantic and its
# needs travel as wheels in .whl/, see README "Benchmarks"). Results land in $OUT (or ./out).
set -euo pipefail
OUT="${OUT:-out}"; mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD"
fi
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$OUT/gpus.txt"
python3 bench/nvml_collection.py --runs 200 --json "$OUT/nvml.json" 2>&1 | tee "$OUT/nvml.txt"
# The real agent on real GPUs: /metrics, /readyz, its log.
python3 -m agent.cli node --gpu-backend nvml --listen 127.0.0.1:9400 2> "$OUT/node.log" &
agent=$!
for _ in $(seq 50); do
  python3 - <<'PY' && break || sleep 0.2
import urllib.request; urllib.request.urlopen("http://127.0.0.1:9400/readyz", timeout=1)
PY
done
sleep 12  # one XID-collector round and a second GPU collection at the default 10 s interval
python3 - "$OUT" <<'PY'
import sys, urllib.request
out = sys.argv[1]
body = urllib.request.urlopen("http://127.0.0.1:9400/metrics", timeout=5).read()
open(f"{out}/metrics.txt", "wb").write(body)
print(urllib.request.urlopen("http://127.0.0.1:9400/readyz", timeout=5).read().decode().strip())
PY
kill "$agent"; wait "$agent" || true
python3 bench/scrape_cost.py --gpu-backend nvml --window 60 --json "$OUT/scrape_nvml.json" \
  2>&1 | tee "$OUT/scrape_nvml.txt"
python3 bench/scrape_cost.py --gpu-backend sim --window 60 --json "$OUT/scrape_sim.json" \
  2>&1 | tee "$OUT/scrape_sim.txt"
