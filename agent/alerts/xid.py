"""The XID table: what each NVIDIA XID means and the action it calls for.

One table feeds GpuXidCritical / GpuXidErrors (which XIDs page, the action named in the
description) and the table embedded in the GpuXidCritical runbook.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

XID_CATALOG_URL: Final = "https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html"

TABLE_START_MARKER: Final = "<!-- xid-table:start -->"
TABLE_END_MARKER: Final = "<!-- xid-table:end -->"


class XidAction(StrEnum):
    """What the on-call engineer does; the value is the alert's `action` label."""

    RESTART_APP = "restart-app"
    RESET_GPU = "reset-gpu"
    REBOOT_NODE = "reboot-node"
    DRAIN_AND_RMA = "drain-and-rma"
    NONE = "none"

    @property
    def text(self) -> str:
        return _ACTION_TEXT[self]

    @property
    def critical(self) -> bool:
        """Whether the GPU is unusable until someone acts on it (GpuXidCritical pages)."""
        return self in _CRITICAL_ACTIONS


_ACTION_TEXT: Final[dict[XidAction, str]] = {
    XidAction.RESTART_APP: "restart the application",
    XidAction.RESET_GPU: "drain the GPU's pods and reset the GPU",
    XidAction.REBOOT_NODE: "drain and reboot the node",
    XidAction.DRAIN_AND_RMA: "drain the node and RMA the GPU",
    XidAction.NONE: "no action needed by itself",
}

_CRITICAL_ACTIONS: Final = frozenset(
    {XidAction.RESET_GPU, XidAction.REBOOT_NODE, XidAction.DRAIN_AND_RMA}
)


@dataclass(frozen=True)
class XidInfo:
    """One XID. ``nvidia_bucket`` is the catalog's "Resolution Bucket (Immediate Action)"."""

    xid: int
    mnemonic: str
    meaning: str
    nvidia_bucket: str
    action: XidAction
    note: str = ""


# From NVIDIA's Xid catalog for Ampere and newer GPUs (XID_CATALOG_URL, catalog sheet,
# "Resolution Bucket (Immediate Action)"). The action follows the bucket: RESTART_APP ->
# restart the application, RESET_GPU -> reset the GPU, RESTART_BM -> reboot the node,
# IGNORE -> none. Where the bucket is a WORKFLOW_* the action is the workflow's first step,
# explained in the note. Unused and display-only XIDs are left out; an XID that is not here
# still alerts through GpuXidErrors when it repeats. NVLink5 XIDs 144-150 are left out on
# purpose: their severity depends on the intrinfo sub-code, which the metric does not carry.
XID_TABLE: Final[tuple[XidInfo, ...]] = (
    XidInfo(8, "ROBUST_CHANNEL_FIFO_ERROR_IDLE_TIMEOUT", "GPU stopped processing",
            "RESTART_APP", XidAction.RESTART_APP),
    XidInfo(13, "ROBUST_CHANNEL_GR_EXCEPTION", "graphics engine exception",
            "RESTART_APP", XidAction.RESTART_APP,
            "Usually an application bug (out-of-range access, illegal instruction)."),
    XidInfo(31, "ROBUST_CHANNEL_FIFO_ERROR_MMU_ERR_FLT", "GPU memory page fault",
            "RESTART_APP", XidAction.RESTART_APP,
            "Usually an application bug (illegal memory access)."),
    XidInfo(32, "ROBUST_CHANNEL_PBDMA_ERROR", "invalid or corrupted push buffer stream",
            "RESTART_APP", XidAction.RESTART_APP),
    XidInfo(43, "ROBUST_CHANNEL_RESETCHANNEL_VERIF_ERROR", "GPU stopped processing",
            "IGNORE", XidAction.NONE,
            "Logged when an application's channel is torn down after its own fault."),
    XidInfo(45, "ROBUST_CHANNEL_PREEMPTIVE_REMOVAL", "preemptive cleanup after earlier errors",
            "WORKFLOW_XID_45", XidAction.NONE,
            "Follow the XID logged before it; alone, it follows a killed process."),
    XidInfo(46, "ROBUST_CHANNEL_GPU_TIMEOUT_ERROR", "GPU stopped processing",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(48, "ROBUST_CHANNEL_GPU_ECC_DBE", "double-bit ECC error",
            "WORKFLOW_XID_48", XidAction.RESET_GPU,
            "The reset activates the pending row remap; if remapping fails (XID 64), RMA."),
    XidInfo(62, "PMU_HALT_ERROR", "internal micro-controller halt",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(63, "INFOROM_DRAM_RETIREMENT_EVENT", "GPU memory row remapping event",
            "IGNORE", XidAction.NONE,
            "The remap takes effect at the next GPU reset."),
    XidInfo(64, "INFOROM_DRAM_RETIREMENT_FAILURE", "GPU memory row remapping failure",
            "RESET_GPU", XidAction.DRAIN_AND_RMA,
            "NVIDIA's row-remapping RMA policy: a remapping failure qualifies for RMA."),
    XidInfo(68, "ROBUST_CHANNEL_NVDEC0_ERROR", "video decoder exception",
            "RESTART_APP", XidAction.RESTART_APP),
    XidInfo(69, "ROBUST_CHANNEL_GR_CLASS_ERROR", "graphics engine class error",
            "RESTART_APP", XidAction.RESTART_APP),
    XidInfo(74, "NVLINK_ERROR", "NVLink error",
            "WORKFLOW_NVLINK_ERR", XidAction.RESET_GPU,
            "If link errors come back after the reset, contact NVIDIA support (RMA)."),
    XidInfo(79, "ROBUST_CHANNEL_GPU_HAS_FALLEN_OFF_THE_BUS", "GPU has fallen off the bus",
            "RESTART_BM", XidAction.REBOOT_NODE,
            "If it happens again after the reboot, RMA the GPU."),
    XidInfo(92, "EXCESSIVE_SBE_INTERRUPTS", "high single-bit ECC error rate",
            "IGNORE", XidAction.NONE),
    XidInfo(94, "ROBUST_CHANNEL_CONTAINED_ERROR", "contained memory error",
            "RESTART_APP", XidAction.RESTART_APP,
            "Only the application that hit the bad memory was affected."),
    XidInfo(95, "ROBUST_CHANNEL_UNCONTAINED_ERROR", "uncontained memory error",
            "RESET_GPU", XidAction.RESET_GPU,
            "Every application on the GPU was affected."),
    XidInfo(109, "ROBUST_CHANNEL_CTXSW_TIMEOUT_ERROR", "context switch timeout",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(110, "SEC_FAULT_ERROR", "security fault",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(119, "GSP_RPC_TIMEOUT", "GSP RPC timeout",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(120, "GSP_ERROR", "GSP error",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(136, "ALI_TRAINING_FAIL", "NVLink link training failed",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(140, "UNRECOVERABLE_ECC_ERROR_ESCAPE", "unrecovered ECC error",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(143, "GPU_INIT_ERROR", "GPU initialization error",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(154, "GPU_RECOVERY_ACTION_CHANGED", "GPU recovery action changed",
            "XID_154", XidAction.NONE,
            "Informational: the recovery action it names refers to another XID."),
    XidInfo(155, "NVLINK_SW_DEFINED_ERROR", "NVLink software-defined error",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(156, "RESOURCE_RETIREMENT_EVENT", "resource retirement event",
            "RESET_GPU", XidAction.RESET_GPU),
    XidInfo(158, "GPU_FATAL_TIMEOUT", "GPU fatal timeout",
            "RESET_GPU", XidAction.RESET_GPU),
)


def critical_xids() -> tuple[int, ...]:
    """XIDs whose action leaves the GPU unusable until someone acts: GpuXidCritical."""
    return tuple(info.xid for info in XID_TABLE if info.action.critical)


def xids_with_action(action: XidAction) -> tuple[int, ...]:
    return tuple(info.xid for info in XID_TABLE if info.action is action)


def xid_regex(xids: tuple[int, ...]) -> str:
    """A PromQL label regex (fully anchored by Prometheus) matching exactly ``xids``."""
    return "|".join(str(xid) for xid in xids)


def render_xid_table_markdown() -> str:
    """The table the GpuXidCritical runbook embeds between the xid-table markers."""
    lines = [
        "| XID | Meaning | NVIDIA immediate action | What to do | Alert | Note |",
        "|---|---|---|---|---|---|",
    ]
    for info in XID_TABLE:
        alert = "GpuXidCritical" if info.action.critical else "GpuXidErrors (when repeating)"
        lines.append(
            f"| {info.xid} | {info.meaning} (`{info.mnemonic}`) | `{info.nvidia_bucket}` "
            f"| {info.action.text} | {alert} | {info.note} |"
        )
    lines.append("")
    lines.append(
        f"Source: NVIDIA's [Xid catalog]({XID_CATALOG_URL}), column \"Resolution Bucket "
        "(Immediate Action)\". An XID that is not listed alerts as GpuXidErrors when it repeats."
    )
    return "\n".join(lines)


_TABLE_SECTION = re.compile(
    re.escape(TABLE_START_MARKER) + r"(?P<body>.*?)" + re.escape(TABLE_END_MARKER),
    re.DOTALL,
)


def embedded_xid_table(text: str) -> str | None:
    """The table between the markers in a runbook's ``text``, or None without markers."""
    match = _TABLE_SECTION.search(text)
    return None if match is None else match.group("body").strip()


def with_xid_table(text: str, *, where: str = "runbook") -> str:
    """``text`` with its marked table section replaced by the current XID table.

    Raises ValueError when there are no markers: there is nowhere safe to write.
    """
    if _TABLE_SECTION.search(text) is None:
        raise ValueError(
            f"{where}: no {TABLE_START_MARKER} ... {TABLE_END_MARKER} section for the XID table"
        )
    section = f"{TABLE_START_MARKER}\n{render_xid_table_markdown()}\n{TABLE_END_MARKER}"
    # A function replacement, so that a backslash in the table is never read as a group
    # reference by re.sub.
    return _TABLE_SECTION.sub(lambda _match: section, text, count=1)


def sync_xid_table(runbook: Path) -> bool:
    """Rewrite the marked table section of ``runbook``; True when the file changed."""
    text = runbook.read_text(encoding="utf-8")
    updated = with_xid_table(text, where=str(runbook))
    if updated == text:
        return False
    runbook.write_text(updated, encoding="utf-8")
    return True
