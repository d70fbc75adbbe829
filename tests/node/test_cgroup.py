"""PID -> pod UID through /proc/<pid>/cgroup, on fake /proc trees built in tmp_path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.node.cgroup import parse_pod_uid, pod_uid_for_pid
from tests.support.privileges import as_unprivileged

UID = "0b5a3c8e-1f2d-4c3b-9a8e-7d6c5b4a3f21"
UID_ = UID.replace("-", "_")
STATIC_UID = "5c8e8e1f0a3b4c6d9e2f7a1b3c5d7e9f"  # static pods: the manifest's hash
CID = "5d1c0a9e8f7b6a5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d"

V1_CONTROLLERS = [
    "hugetlb", "memory", "cpuset", "devices", "pids", "net_cls,net_prio", "freezer",
    "blkio", "perf_event", "cpu,cpuacct", "misc", "rdma",
]


def v1_file(path: str, *, systemd_path: str | None = None, rdma_root: bool = True) -> str:
    """A full cgroup v1 file as a kernel writes it: 13 hierarchies, highest id first."""
    lines = []
    for number, controller in zip(range(13, 1, -1), V1_CONTROLLERS, strict=True):
        # rdma and misc are often not delegated to the container: they sit at the root.
        at_root = rdma_root and controller in {"rdma", "misc"}
        lines.append(f"{number}:{controller}:{'/' if at_root else path}")
    lines.append(f"1:name=systemd:{systemd_path or path}")
    lines.append("0::/")  # hybrid hierarchy: the unified mount exists but is unused
    return "\n".join(lines) + "\n"


POD_CGROUPS = {
    # cgroup v1, cgroupfs driver, one per QoS class
    "v1 cgroupfs burstable containerd": v1_file(f"/kubepods/burstable/pod{UID}/{CID}"),
    "v1 cgroupfs besteffort docker": v1_file(f"/kubepods/besteffort/pod{UID}/{CID}"),
    "v1 cgroupfs guaranteed": v1_file(f"/kubepods/pod{UID}/{CID}"),
    # cgroup v1, systemd driver
    "v1 systemd burstable docker": v1_file(
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        f"/docker-{CID}.scope"),
    "v1 systemd besteffort cri-o": v1_file(
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        f"/crio-{CID}.scope"),
    "v1 systemd guaranteed containerd": v1_file(
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope"),
    "v1 systemd, name=systemd elsewhere": v1_file(
        f"/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope",
        systemd_path="/system.slice/containerd.service"),
    # cgroup v2
    "v2 systemd besteffort containerd":
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        f"/cri-containerd-{CID}.scope\n",
    "v2 systemd burstable cri-o":
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        f"/crio-{CID}.scope\n",
    "v2 systemd cri-o conmon":
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
        f"/crio-conmon-{CID}.scope\n",
    "v2 systemd guaranteed docker":
        f"0::/kubepods.slice/kubepods-pod{UID_}.slice/docker-{CID}.scope\n",
    "v2 cgroupfs guaranteed": f"0::/kubepods/pod{UID}/{CID}\n",
    "v2 cgroupfs burstable": f"0::/kubepods/burstable/pod{UID}/{CID}\n",
    "v2 cgroupfs besteffort": f"0::/kubepods/besteffort/pod{UID}/{CID}\n",
    # read from inside the agent's own cgroup namespace: ancestors show as ..
    "v2 systemd, relative to the reader's cgroupns":
        f"0::/../../kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
    "v2 cgroupfs, relative to the reader's cgroupns":
        f"0::/../../../besteffort/pod{UID}/{CID}\n",
    # the node is itself a container (kind): kubelet --cgroup-root=/kubelet
    "kind, systemd":
        f"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
        f"/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{CID}.scope\n",
    "kind, cgroupfs":
        f"0::/system.slice/docker-{'ab' * 32}.scope/kubelet/kubepods/burstable"
        f"/pod{UID}/{CID}\n",
    "pod-level cgroup (pause or a hook), no container": f"0::/kubepods/burstable/pod{UID}\n",
    "upper-case hex": f"0::/kubepods/pod{UID.upper()}/{CID}\n",
    "no trailing newline": f"0::/kubepods/pod{UID}/{CID}",
}

HOST_CGROUPS = {
    "v2 root": "0::/\n",
    "v2 systemd service": "0::/system.slice/nvidia-persistenced.service\n",
    "v2 containerd itself": "0::/system.slice/containerd.service\n",
    "v2 user session": "0::/user.slice/user-1000.slice/session-3.scope\n",
    "v2 init": "0::/init.scope\n",
    "v2 docker container outside Kubernetes": f"0::/system.slice/docker-{CID}.scope\n",
    "v2 podman pod": f"0::/machine.slice/machine-libpod_pod_{CID}.slice/libpod-{CID}.scope\n",
    "v2 QoS slice, no pod": "0::/kubepods.slice/kubepods-burstable.slice\n",
    "v1 host service": v1_file("/system.slice/nvidia-dcgm.service"),
    "v1 kubepods root": v1_file("/kubepods/burstable"),
    "truncated uid": f"0::/kubepods/burstable/pod{UID[:-1]}/{CID}\n",
    "uid not a whole component": f"0::/kubepods/burstable/xpod{UID}/{CID}\n",
    "systemd uid with dashes": f"0::/kubepods.slice/kubepods-pod{UID}.slice/x.scope\n",
    "empty": "",
    "garbage": "not a cgroup file\n\x00\x01\n",
}


@pytest.mark.parametrize("text", POD_CGROUPS.values(), ids=POD_CGROUPS.keys())
def test_parse_pod_uid_of_pod_processes(text: str) -> None:
    assert parse_pod_uid(text) == UID


@pytest.mark.parametrize("text", HOST_CGROUPS.values(), ids=HOST_CGROUPS.keys())
def test_parse_pod_uid_of_other_processes(text: str) -> None:
    assert parse_pod_uid(text) is None


@pytest.mark.parametrize(
    "text",
    [
        f"0::/kubepods/burstable/pod{STATIC_UID}/{CID}\n",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{STATIC_UID}.slice"
        f"/cri-containerd-{CID}.scope\n",
    ],
    ids=["cgroupfs", "systemd"],
)
def test_static_pod_hash_uid(text: str) -> None:
    assert parse_pod_uid(text) == STATIC_UID


def test_innermost_pod_wins() -> None:
    # A pod cgroup nested in another pod's (a node running inside a pod, e.g. kind in CI).
    other = "11111111-2222-4333-8444-555555555555"
    assert parse_pod_uid(f"0::/kubepods/pod{other}/{CID}/kubepods/burstable/pod{UID}/x\n") == UID


def make_proc(root: Path, cgroups: dict[int, str]) -> Path:
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
    return root


def test_pod_uid_for_pid_reads_each_process(tmp_path: Path) -> None:
    other = "9f8e7d6c-5b4a-4321-8fed-cba987654321"
    proc = make_proc(tmp_path / "proc", {
        101: POD_CGROUPS["v1 cgroupfs burstable containerd"],
        202: f"0::/kubepods.slice/kubepods-pod{other.replace('-', '_')}.slice/crio-{CID}.scope\n",
        303: HOST_CGROUPS["v2 systemd service"],
    })
    assert pod_uid_for_pid(101, proc_root=proc) == UID
    assert pod_uid_for_pid(202, proc_root=proc) == other
    assert pod_uid_for_pid(303, proc_root=proc) is None


def test_vanished_or_unreadable_process_is_none(tmp_path: Path) -> None:
    proc = make_proc(tmp_path / "proc", {1: POD_CGROUPS["v2 cgroupfs guaranteed"]})
    (proc / "7").mkdir()  # exited between listing and reading: the directory lingers empty
    (proc / "8").mkdir()
    (proc / "8" / "cgroup").mkdir()  # not a file: EISDIR
    (proc / "9").mkdir()
    (proc / "9" / "cgroup").symlink_to(proc / "gone")  # dangling
    (proc / "10").mkdir()
    (proc / "10" / "cgroup").write_bytes(b"0::/kubepods/pod" + UID.encode() + b"/\xff\xfe\n")

    assert pod_uid_for_pid(1, proc_root=proc) == UID
    for pid in (2, 7, 8, 9, 0, -1):
        assert pod_uid_for_pid(pid, proc_root=proc) is None, pid
    assert pod_uid_for_pid(10, proc_root=proc) == UID  # undecodable bytes do not raise
    assert pod_uid_for_pid(1, proc_root=tmp_path / "no-proc-here") is None


@pytest.fixture
def open_dir() -> Iterator[Path]:
    # Traversable by everyone, unlike pytest's tmp_path (its parents are 0700): only the
    # cgroup file itself is closed in the test below.
    path = Path(tempfile.mkdtemp(prefix="steward-cgroup-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_permission_denied_is_none(open_dir: Path) -> None:
    """hidepid=2 or a cgroup file of another user's process, read without privileges.

    Root reads a chmod 000 file anyway, so under root a forked child drops to uid 65534.
    """
    proc = make_proc(open_dir / "proc", {42: POD_CGROUPS["v2 cgroupfs burstable"]})
    for folder in (proc, proc / "42"):
        folder.chmod(0o755)
    (proc / "42" / "cgroup").chmod(0o000)

    def ask() -> str:
        try:
            return repr(pod_uid_for_pid(42, proc_root=proc))
        except Exception as exc:
            return f"raised {exc!r}"

    assert as_unprivileged(ask) == "None"
    assert pod_uid_for_pid(42, proc_root=proc) == UID  # root could read it: the file is fine


def test_real_proc_exited_process_is_none() -> None:
    if not Path("/proc/self/cgroup").exists():
        pytest.skip("no /proc on this platform")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    # Reaped: its /proc entry is gone, as for a GPU process that ended after NVML listed it.
    assert pod_uid_for_pid(child.pid) is None
    # Our own process reads without error; what it returns depends on where the tests run.
    own = pod_uid_for_pid(os.getpid())
    assert own is None or parse_pod_uid(Path("/proc/self/cgroup").read_text()) == own
