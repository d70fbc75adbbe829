"""The idle-GPU job on shared GPUs: a tenant judged by its own use, with evidence as complete
as for a whole GPU.

A GPU is shared when its holders' current shares (``steward_gpu_pod_allocated_ratio``) are
not one exclusive holder: time-slicing or MPS replicas, KAI or HAMi fractions, several
holders. While the GPU as a whole is idle, its tenants are judged as a whole GPU's holder is
(``steward_gpu_utilization_ratio``): every one of them is idle. While it is busy, a tenant is
idle only when its own use (``steward_gpu_pod_utilization_ratio``), as a part of its share,
stayed under the floor in every raw sample of the span, those samples cover the span (the
same gap tolerance as for a GPU), and what the node agent could not attribute to any pod
(``steward_gpu_unattributed_utilization_ratio``, summed over its reasons) stayed under the
floor of that share too, in samples that cover the span: use nobody can be given might be
this tenant's, and unknown is never idle.

A tenant judged by its own use on a busy GPU is only notified, never scaled or deleted: its
neighbours keep the GPU busy, and its idleness rests on per-process attribution. KAI
Scheduler's reservation pods hold a GPU for its fractions and are never judged themselves.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from agent.clients.kubernetes.gpus import is_reservation_pod
from agent.clients.prometheus import Sample, Series

__all__ = ["SHARED_NOTE", "TenantEvidence", "is_reservation_pod"]

Key = tuple[str, str, str, str]  # namespace, pod, hostname, UUID
GpuKey = tuple[str, str]  # hostname, UUID
SHARED_NOTE: Final = ("it shares the GPU with other tenants and was judged by its own use: "
                      "only notified")
RESERVATION_REASON: Final = ("KAI Scheduler's reservation pod: it holds the GPU for fractional "
                             "pods, which are judged by their own use")
_PER_POD = "steward_gpu_pod_utilization_ratio"
_RATIO = "steward_gpu_pod_allocated_ratio"
_UNATTRIBUTED = "steward_gpu_unattributed_utilization_ratio"


class CoverageLike(Protocol):
    """The idle-GPU job's ``Coverage``: how completely samples cover the span."""

    @property
    def largest_gap(self) -> float: ...

    def gap_text(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...


Covers = Callable[[Iterable[float]], CoverageLike]


def share_queries(*, span: str, recent: str) -> dict[str, str]:
    """Instant queries: each holder's current share and mode, each tenant's peak own use."""
    return {
        "shares": f"max by (namespace, pod, hostname, UUID, GPU_I_ID, gpu, modelName, mode) "
                  f"(last_over_time({_RATIO}[{recent}]))",
        "tenant_peak": f"max by (namespace, pod, hostname, UUID) "
                       f"(max_over_time({_PER_POD}[{span}]))",
    }


def sample_metrics() -> tuple[str, ...]:
    """Raw samples the tenant evidence needs, beside the GPU's utilization and allocation."""
    return (_PER_POD, _RATIO, _UNATTRIBUTED)


@dataclass
class TenantEvidence:
    """Shares now, peaks over the span, raw samples of the GPUs that may hold idle tenants."""

    shares: dict[Key, tuple[float, str]] = field(default_factory=dict)  # (ratio, mode)
    peak: dict[Key, float] = field(default_factory=dict)
    use: dict[Key, list[tuple[float, float]]] = field(default_factory=dict)
    ratio_times: dict[Key, list[float]] = field(default_factory=dict)
    unattributed: dict[GpuKey, dict[float, float]] = field(default_factory=dict)
    _holders: dict[GpuKey, list[tuple[str, str, float, str]]] | None = field(
        default=None, repr=False)

    @classmethod
    def of(cls, answers: Mapping[str, list[Sample]]) -> TenantEvidence:
        evidence = cls()
        for sample in answers.get("shares", []):
            labels = sample.labels
            if labels.get("GPU_I_ID"):
                continue  # MIG instances have no per-instance use: never judged by it
            key = _key(labels)
            ratio, _ = evidence.shares.get(key, (0.0, ""))
            evidence.shares[key] = (ratio + sample.value, labels.get("mode", ""))
        for sample in answers.get("tenant_peak", []):
            key = _key(sample.labels)
            evidence.peak[key] = max(evidence.peak.get(key, 0.0), sample.value)
        return evidence

    def holders(self) -> dict[GpuKey, list[tuple[str, str, float, str]]]:
        """(namespace, pod, share, mode) per GPU; built once (shares are read once)."""
        if self._holders is None:
            out: dict[GpuKey, list[tuple[str, str, float, str]]] = defaultdict(list)
            for (namespace, pod, hostname, uuid), (ratio, mode) in self.shares.items():
                out[(hostname, uuid)].append((namespace, pod, ratio, mode))
            self._holders = dict(out)
        return self._holders

    def shared(self, gpu: GpuKey) -> bool:
        held = self.holders().get(gpu, [])
        return len(held) > 1 or any(mode != "exclusive" or ratio < 1 - 1e-9
                                    for _, _, ratio, mode in held)

    def share(self, key: Key) -> float | None:
        found = self.shares.get(key)
        return found[0] if found is not None else None

    def looks_idle(self, key: Key, floor: float) -> bool:
        share, peak = self.share(key), self.peak.get(key)
        return share is not None and share > 0 and peak is not None and peak / share < floor

    def collect(self, series: Series) -> bool:
        """Keep ``series`` if it is tenant evidence; False when it is not."""
        labels = series.labels
        name = labels.get("__name__")
        if name not in sample_metrics() or labels.get("GPU_I_ID"):
            return False
        if name == _UNATTRIBUTED:
            per_time = self.unattributed.setdefault(
                (labels.get("hostname", ""), labels.get("UUID", "")), {})
            # Reasons are separate series: their sum at a moment is what nobody was given.
            for t, v in series.points:
                per_time[t] = per_time.get(t, 0.0) + v
            return True
        key = _key(labels)
        if name == _PER_POD:
            self.use.setdefault(key, []).extend(series.points)
        else:
            self.ratio_times.setdefault(key, []).extend(t for t, v in series.points if v > 0)
        return True

    def judge(self, key: Key, *, floor: float, where: str, covers: Covers, max_gap: float,
              limit: str) -> str | dict[str, Any]:
        """Why the tenant ``key`` is not (shown) idle on its shared GPU, or its coverage."""
        share = self.share(key)
        who = f"{key[0]}/{key[1]}"
        if share is None or share <= 0:
            return f"evidence incomplete: no share of {where} for {who} (steward_gpu_pod_" \
                   "allocated_ratio)"
        peak = self.peak.get(key)
        if peak is None:
            return (f"evidence incomplete: no per-pod utilization of {who} on {where} within "
                    "the window (steward_gpu_pod_utilization_ratio)")
        if peak / share >= floor:
            return (f"in use: {who}'s own peak use of {where} was {peak / share:.1%} of its "
                    f"{share:.0%} share, at or above the floor {floor:.1%}")
        points = self.use.get(key, [])
        use = covers(t for t, _ in points)
        if use.largest_gap > max_gap:
            return f"evidence incomplete: {who}'s own use of {where}: {use.gap_text()} ({limit})"
        over = [v for _, v in points if v / share >= floor]
        if over:
            return (f"evidence incomplete: {who}'s own use of {where} reached "
                    f"{max(over) / share:.1%} of its share in its raw samples")
        unattributed = self.unattributed.get((key[2], key[3]), {})
        lost = covers(unattributed)
        if lost.largest_gap > max_gap:
            return (f"evidence incomplete: unattributed use of {where}: {lost.gap_text()} "
                    f"({limit})")
        most = max(unattributed.values(), default=0.0)
        if most >= floor * share:
            return (f"evidence incomplete: {most:.1%} of the use of {where} could not be "
                    f"attributed to any pod within the window, and might be {who}'s")
        held = covers(self.ratio_times.get(key, []))
        if held.largest_gap > max_gap:
            return f"evidence incomplete: share of {where} held by {who}: {held.gap_text()} " \
                   f"({limit})"
        return {"share": round(share, 6), "mode": self.shares[key][1],
                "peak_use_of_share": round(peak / share, 6), "judged_by": "own use",
                "own_use": use.to_json(), "unattributed": lost.to_json(),
                "peak_unattributed": round(most, 6)}


def _key(labels: Mapping[str, str]) -> Key:
    return (labels.get("namespace", ""), labels.get("pod", ""), labels.get("hostname", ""),
            labels.get("UUID", ""))
