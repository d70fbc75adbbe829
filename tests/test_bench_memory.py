"""The benches' peak RSS is the measured process's own, not its parent's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.memory import peak_rss_bytes

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
CHILD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
from bench.memory import peak_rss_bytes
print(json.dumps({"vmhwm": peak_rss_bytes(),
                  "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def test_a_child_reports_its_own_peak_not_its_parents() -> None:
    ballast = bytearray(400 * MIB)  # the parent's peak, touched so that it is resident
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1
    assert peak_rss_bytes() >= 400 * MIB
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT)], capture_output=True,
                         text=True, check=True)
    child = json.loads(out.stdout)
    # ru_maxrss carries the parent's RSS at the fork across exec: the defect.
    assert child["ru_maxrss"] >= 400 * MIB
    # A bare interpreter's own peak is a few tens of MiB.
    assert child["vmhwm"] < 100 * MIB
    del ballast


def test_the_status_line_is_read_in_kib(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t  9999 kB\nVmHWM:\t    1234 kB\n")
    assert peak_rss_bytes(status) == 1234 * 1024
