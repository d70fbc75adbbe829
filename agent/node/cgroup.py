"""Which pod a process belongs to, read from its ``/proc/<pid>/cgroup``.

Used for shared and time-sliced GPUs, where NVML names processes, not containers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

# The kubelet names a pod's cgroup after the pod UID. A UID is a dashed UUID, except for
# static pods read from files, whose UID is the manifest's 32-hex-digit hash.
_HASH_UID: Final = r"[0-9a-f]{32}"


def _uuid(sep: str) -> str:
    return sep.join(f"[0-9a-f]{{{n}}}" for n in (8, 4, 4, 4, 12))


# cgroupfs driver: .../kubepods/[burstable|besteffort/]pod<uid>/<container id>
_CGROUPFS_POD: Final = re.compile(rf"pod({_uuid('-')}|{_HASH_UID})", re.IGNORECASE)

# systemd driver: .../kubepods[-<qos>]-pod<uid with dashes as underscores>.slice/<scope>;
# guaranteed pods have no QoS level in the name. A slice name repeats its parents', so a
# kubelet with --cgroup-root=/kubelet (kind) writes kubelet-kubepods-...-pod<uid>.slice.
_SYSTEMD_POD: Final = re.compile(
    rf"(?:[\w.-]+-)?kubepods(?:-[a-z]+)?-pod({_uuid('_')}|{_HASH_UID})\.slice", re.IGNORECASE
)


def _pod_uid_in_path(path: str) -> str | None:
    # Match whole path components, innermost first: a node that is itself a container
    # (kind, nested runtimes) has the pod's cgroup inside the node's.
    for component in reversed(path.split("/")):
        match = _CGROUPFS_POD.fullmatch(component) or _SYSTEMD_POD.fullmatch(component)
        if match:
            return match.group(1).replace("_", "-").lower()
    return None


def parse_pod_uid(cgroup_text: str) -> str | None:
    """The pod UID (with dashes) in a ``/proc/<pid>/cgroup`` text, or None for a non-pod process.

    Handles cgroup v1 (``ID:controllers:path`` per hierarchy) and v2 (``0::path``), the
    cgroupfs and systemd drivers, every QoS class, any runtime's scope name, and paths
    relative to the reader's cgroup namespace (``/../../kubepods-...``).
    """
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        uid = _pod_uid_in_path(parts[2].strip())
        if uid is not None:
            return uid
    return None


def pod_uid_for_pid(pid: int, *, proc_root: Path = Path("/proc")) -> str | None:
    """The pod UID of process ``pid``, or None if it is not in a pod or cannot be read.

    Never raises for a process that exited since NVML listed it, or whose cgroup file this
    agent may not read: attribution is best effort and a scrape must not fail over it.
    """
    if pid <= 0:
        return None
    try:
        raw = (proc_root / str(pid) / "cgroup").read_bytes()
    except OSError:
        # OSError covers ENOENT/ESRCH (exited), EACCES/EPERM (hidepid, no CAP_SYS_PTRACE).
        return None
    return parse_pod_uid(raw.decode("utf-8", errors="replace"))
