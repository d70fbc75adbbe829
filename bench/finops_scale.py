"""The weekly FinOps report against a synthetic fleet in a real Prometheus: time and memory as
the fleet grows, raw samples against the hourly recording rules, and VictoriaMetrics.

Run: ``.venv/bin/python bench/finops_scale.py [--gpus 1000,4000,10000] [--dir DIR]
[--victoria 1000]``

For each fleet size the bench writes one week of samples (ISO week 2026-W45) as OpenMetrics,
turns them into TSDB blocks with ``promtool tsdb create-blocks-from openmetrics``, starts a
Prometheus on them and runs ``steward finops-report``'s own entry point
(``run_finops_report``, Slack off) in a fresh child process, so its wall time and peak RSS
(VmHWM, bench/memory.py) are its own. Then it backfills the shipped recording rules
(``alerts/finops-recording-rules.yaml``) over the week with ``promtool tsdb
create-blocks-from rules`` against that Prometheus, restarts it with those blocks too, and
runs the report again: it now reads the recorded hours (the report's source line says for
how many chunks).

The fleet: 8 GPUs per node, three models, one pod per GPU per day (a new name each day:
series churn as pods are replaced), every tenth GPU time-sliced by two pods (half each), a
fifth of the pods idle. Samples every 15 minutes at hh:07:30, hh:22:30 ... (none on a step
boundary): ``steward_gpu_info``, ``steward_gpu_pod_allocated_ratio``,
``steward_gpu_pod_utilization_ratio`` per GPU and pod, ``up`` per node. A 30 s scrape has 30x
the samples: Prometheus's share of the work grows with them, the report's (168 hourly points
per series) does not.

Printed per size: GPU-hours, report seconds and peak RSS (raw, recorded), seconds per 1,000
GPU-hours and the ratio of each size's time to the smallest size's scaled by GPU-hours
(1.00 = linear), plus the cost of generating and backfilling. ``--victoria N`` imports the
size-N fleet into VictoriaMetrics (``/api/v1/import/prometheus``) and runs the same report
against its Prometheus query API; any query it refuses is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.localnet import stop_process  # noqa: E402 - after the path above
from bench.memory import peak_rss_bytes  # noqa: E402

WEEK = "2026-W45"
T0 = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp())
NOW = datetime(2026, 11, 20, 12, tzinfo=UTC)
HOURS = 168
OFFSETS = (450, 1350, 2250, 3150)  # seconds into each hour
MODELS = {"NVIDIA H100 80GB HBM3": 4.0, "NVIDIA A100-SXM4-80GB": 2.0, "NVIDIA L40S": 1.2}
MODEL_NAMES = list(MODELS)
RULES = ROOT / "alerts" / "finops-recording-rules.yaml"
MIB = 1 << 20


# --- the fleet ------------------------------------------------------------------------------


def _labels(**labels: str) -> str:
    return ",".join(f'{k}="{v}"' for k, v in labels.items())


def _times(day: int | None = None) -> list[int]:
    hours = range(HOURS) if day is None else range(day * 24, day * 24 + 24)
    return [T0 + h * 3600 + m for h in hours for m in OFFSETS]


def fleet_series(gpus: int) -> Iterator[tuple[str, str, list[int], str | list[str]]]:
    """(family, labels, times, value or values per time), family by family."""
    week = _times()
    days = [_times(d) for d in range(7)]
    job = "steward-node"

    def gpu(i: int) -> dict[str, str]:
        node = i // 8
        return {"job": job, "instance": f"n{node:05d}:9400", "hostname": f"n{node:05d}",
                "UUID": f"GPU-{i:08x}", "gpu": str(i % 8),
                "modelName": MODEL_NAMES[node % len(MODEL_NAMES)]}

    def pods(i: int, day: int) -> list[tuple[str, str, float, str]]:
        namespace = f"ns-{i % 40:02d}"
        if i % 10 == 0:
            return [(namespace, f"ts-{i}-{day}-{k}", 0.5, "time_sliced") for k in (0, 1)]
        return [(namespace, f"p-{i}-{day}", 1.0, "exclusive")]

    def use(i: int, day: int, k: int) -> float:
        if (i + day + k) % 5 == 0:
            return 0.0  # a fifth of the pods idle
        return ((i * 37 + day * 11 + k * 7) % 90 + 5) / 100

    for i in range(gpus):
        yield "steward_gpu_info", _labels(**gpu(i)), week, "1"
    for i in range(gpus):
        for day, times in enumerate(days):
            for namespace, pod, share, mode in pods(i, day):
                yield ("steward_gpu_pod_allocated_ratio",
                       _labels(**gpu(i), namespace=namespace, pod=pod, mode=mode), times,
                       f"{share:g}")
    for i in range(gpus):
        for day, times in enumerate(days):
            for k, (namespace, pod, share, _) in enumerate(pods(i, day)):
                own = use(i, day, k) * share
                values = [f"{own * (0.9 + 0.2 * ((t // 900) % 2)):.4f}" for t in times]
                yield ("steward_gpu_pod_utilization_ratio",
                       _labels(**gpu(i), namespace=namespace, pod=pod), times, values)
    for node in range((gpus + 7) // 8):
        yield "up", _labels(job=job, instance=f"n{node:05d}:9400"), week, "1"


def write_fleet(out: IO[str], gpus: int, *, millis: bool = False) -> int:
    """OpenMetrics (seconds) or, ``millis``, the Prometheus text format VictoriaMetrics
    imports (milliseconds, no ``# EOF``). Returns the number of samples."""
    family, count = "", 0
    for name, labels, times, value in fleet_series(gpus):
        if name != family and not millis:
            out.write(f"# TYPE {name} gauge\n")
        family = name
        prefix = f"{name}{{{labels}}} "
        scale = 1000 if millis else 1
        if isinstance(value, str):
            out.write("".join(f"{prefix}{value} {t * scale}\n" for t in times))
        else:
            out.write("".join(f"{prefix}{v} {t * scale}\n" for t, v in zip(times, value,
                                                                           strict=True)))
        count += len(times)
    if not millis:
        out.write("# EOF\n")
    return count


# --- servers --------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{what} not ready after 600 s: {log.read_text()[-2000:]}")


def start_prometheus(data: Path) -> tuple[str, subprocess.Popen[bytes]]:
    config = data.parent / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1h}\n", encoding="utf-8")
    port = _free_port()
    log = data.parent / "prometheus.log"
    process = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
         f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=10y",
         "--query.max-samples=500000000"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/-/ready", process, "prometheus", log)
    return url, process


def stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, grace=60)  # a TSDB with a week of blocks can take a while


def start_victoria(data: Path) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    log = data.parent / "victoria.log"
    process = subprocess.Popen(
        ["victoria-metrics", f"-storageDataPath={data}", f"-httpListenAddr=127.0.0.1:{port}",
         "-retentionPeriod=100y", "-search.latencyOffset=0s", "-search.disableCache",
         "-search.maxPointsPerTimeseries=100000", "-search.maxUniqueTimeseries=10000000"],
        stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(f"{url}/health", process, "victoria-metrics", log)
    return url, process


# --- the report, in a child ---------------------------------------------------------------


def child_report(url: str, out: Path) -> None:
    from agent.config import StewardConfig
    from agent.finops.report import run_finops_report

    config = StewardConfig.model_validate({
        "prometheus": {"url": url, "timeout_seconds": 600},
        "finops": {"prices": MODELS},
        "state": {"url": "sqlite:////nonexistent/steward-state.db"}})
    started = time.perf_counter()
    code = run_finops_report(config, week=WEEK, out_dir=out, slack=False, parquet=None,
                             now=NOW)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {}
    if (out / "summary.json").is_file():
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    markdown = (out / "report.md").read_text(encoding="utf-8") if (out / "report.md").is_file() \
        else ""
    source = next((line for line in markdown.splitlines() if "Source:" in line), "")
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_bytes": peak_rss_bytes(),
                      "cpu_seconds": usage.ru_utime + usage.ru_stime,
                      "totals": summary.get("totals", {}), "source": source}))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (a server's share of the work, on a loaded machine the
    steadier figure than wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_report(url: str, out: Path, server: int | None = None) -> dict[str, Any]:
    before = _cpu_seconds(server) if server is not None else 0.0
    result = subprocess.run([sys.executable, __file__, "--child", url, "--out", str(out)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"report failed ({result.returncode}):\n{result.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    if server is not None:
        report["server_cpu_seconds"] = _cpu_seconds(server) - before
    report["stderr"] = result.stderr[-2000:]
    return report


# --- one size -------------------------------------------------------------------------------


def measure(gpus: int, folder: Path, *, rules: bool) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    source = folder / "fleet.om"
    out: dict[str, Any] = {"gpus": gpus, "gpu_hours": gpus * HOURS}
    started = time.perf_counter()
    with source.open("w", encoding="utf-8", buffering=1 << 22) as handle:
        out["samples"] = write_fleet(handle, gpus)
    out["generate_s"] = time.perf_counter() - started
    out["file_mib"] = source.stat().st_size / MIB
    started = time.perf_counter()
    # 54h blocks: promtool reads the whole file once per block; fewer passes, bounded memory.
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--quiet",
                    "--max-block-duration=54h", str(source), str(data)], check=True)
    out["backfill_s"] = time.perf_counter() - started
    source.unlink()
    url, prometheus = start_prometheus(data)
    try:
        out["raw"] = run_report(url, folder / "raw", prometheus.pid)
        if rules:
            blocks = folder / "rule-blocks"
            started = time.perf_counter()
            subprocess.run(["promtool", "tsdb", "create-blocks-from", "rules", "--quiet",
                            f"--start={T0}", f"--end={T0 + (HOURS + 1) * 3600 + 60}",
                            f"--url={url}", f"--output-dir={blocks}", str(RULES)], check=True)
            out["rules_backfill_s"] = time.perf_counter() - started
    finally:
        stop(prometheus)
    if rules:
        for block in (folder / "rule-blocks").iterdir():
            if (block / "meta.json").is_file():
                shutil.move(str(block), str(data / block.name))
        url, prometheus = start_prometheus(data)
        try:
            out["recorded"] = run_report(url, folder / "recorded", prometheus.pid)
        finally:
            stop(prometheus)
    return out


def measure_victoria(gpus: int, folder: Path) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    url, victoria = start_victoria(folder / "vm-data")
    out: dict[str, Any] = {"gpus": gpus}
    try:
        started = time.perf_counter()
        source = folder / "fleet.prom"
        with source.open("w", encoding="utf-8", buffering=1 << 22) as handle:
            out["samples"] = write_fleet(handle, gpus, millis=True)
        subprocess.run(["curl", "-sf", "--data-binary", f"@{source}",
                        f"{url}/api/v1/import/prometheus"], check=True)
        source.unlink()
        urllib.request.urlopen(f"{url}/internal/force_flush", timeout=60).read()
        out["import_s"] = time.perf_counter() - started
        out["report"] = run_report(url, folder / "report", victoria.pid)
    finally:
        stop(victoria)
    return out


def _cpu(report: dict[str, Any]) -> float:
    return float(report.get("cpu_seconds", 0.0) + report.get("server_cpu_seconds", 0.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="1000,4000,10000")
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--no-rules", action="store_true")
    parser.add_argument("--victoria", type=int, default=0, metavar="GPUS")
    parser.add_argument("--child")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        child_report(args.child, args.out)
        return 0
    root = args.dir or Path(tempfile.mkdtemp(prefix="steward-finops-scale-"))
    sizes = [int(n) for n in args.gpus.split(",")]
    results = []
    for gpus in sizes:
        result = measure(gpus, root / f"{gpus}", rules=not args.no_rules)
        results.append(result)
        print(json.dumps({k: v for k, v in result.items()}, default=str), flush=True)
        shutil.rmtree(root / f"{gpus}", ignore_errors=True)
    base = results[0]
    print(f"\nFinOps weekly report, {WEEK}, 15-minute samples; cores: {os.cpu_count()}")
    print("vs linear: (time / smallest's time) / (GPU-hours / smallest's GPU-hours), 1.00 = "
          "linear; marginal: extra seconds per extra 1k GPU-hours over the smallest size")
    print("cpu: the report's and Prometheus's CPU seconds for it (steadier than wall time "
          "on a loaded machine)")
    print(f"{'GPUs':>6} {'GPU-h':>9} {'samples':>11} {'raw s':>8} {'s/1k GPU-h':>10} "
          f"{'vs linear':>9} {'marginal':>8} {'cpu s':>7} {'cpu vs lin':>10} "
          f"{'raw RSS MiB':>11} {'rec s':>7} {'rec RSS MiB':>11} {'rec/raw':>7}")
    for r in results:
        raw, rec = r["raw"], r.get("recorded")
        per_k = raw["seconds"] / (r["gpu_hours"] / 1000)
        linear = (raw["seconds"] / base["raw"]["seconds"]) / (r["gpu_hours"] / base["gpu_hours"])
        extra = (r["gpu_hours"] - base["gpu_hours"]) / 1000
        marginal = f"{(raw['seconds'] - base['raw']['seconds']) / extra:.3f}" if extra else "-"
        cpu = _cpu(raw)
        cpu_linear = (cpu / _cpu(base["raw"])) / (r["gpu_hours"] / base["gpu_hours"])
        print(f"{r['gpus']:>6} {r['gpu_hours']:>9} {r['samples']:>11} {raw['seconds']:>8.1f} "
              f"{per_k:>10.3f} {linear:>9.2f} {marginal:>8} {cpu:>7.1f} {cpu_linear:>10.2f} "
              f"{raw['peak_rss_bytes'] / MIB:>11.0f} "
              + (f"{rec['seconds']:>7.1f} {rec['peak_rss_bytes'] / MIB:>11.0f} "
                 f"{rec['seconds'] / raw['seconds']:>7.2f}" if rec else ""))
    if args.victoria:
        vm = measure_victoria(args.victoria, root / f"vm-{args.victoria}")
        print(json.dumps(vm, default=str))
        prom = next((r for r in results if r["gpus"] == args.victoria), None)
        if prom is not None:
            print(f"VictoriaMetrics {args.victoria} GPUs: {vm['report']['seconds']:.1f} s, "
                  f"Prometheus {prom['raw']['seconds']:.1f} s; totals equal: "
                  f"{vm['report']['totals'] == prom['raw']['totals']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
