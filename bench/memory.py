"""A process's own peak resident set, for benches that run each side in a child process.

``getrusage(RUSAGE_SELF).ru_maxrss`` is no good for that: Linux keeps the largest RSS the
process ever had across ``fork`` and ``exec`` (``signal->maxrss``), so a child started by a
parent that once held 500 MiB reports at least the parent's RSS at the fork. ``VmHWM`` in
``/proc/self/status`` is the high-water mark of the process's current address space, which
``exec`` starts afresh: the child's own peak, interpreter and imports included.
"""

from __future__ import annotations

from pathlib import Path


def peak_rss_bytes(status: Path = Path("/proc/self/status")) -> int:
    """VmHWM of this process, in bytes."""
    for line in status.read_text(encoding="ascii").splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"VmHWM in {unit!r}, expected kB")
            return int(value) * 1024
    raise ValueError(f"no VmHWM line in {status}")
