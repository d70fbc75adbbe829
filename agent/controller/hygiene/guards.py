"""The engine's guards, the same for every job: the kill switch, the blast-radius caps and
the exemptions configured by namespace and name.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.config import HygieneJobConfig
from agent.controller.hygiene.model import Candidate, Scan, Skipped
from agent.controller.hygiene.plan import iso_time
from agent.controller.hygiene.store import OwnerHold

EXEMPT_KEY = "steward.io/exempt"
_TRUE = frozenset({"true", "yes", "1"})


class KillSwitchUnknown(Exception):
    """The ConfigMap flag could not be read: an apply run must not guess."""


class KillSwitch:
    """``hygiene.kill_switch`` in the config, or ``kill_switch: "true"`` in the ConfigMap
    ``hygiene.kill_switch_configmap`` of the controller's namespace, read at every run so
    that flipping it needs no restart."""

    def __init__(self, *, configured: bool, configmap: str | None, namespace: str,
                 api_client: Any | None) -> None:
        self._configured = configured
        self._configmap = configmap
        self._namespace = namespace
        self._api_client = api_client

    def engaged(self) -> str | None:
        """Why the switch is on, or None. Raises KillSwitchUnknown when it cannot tell."""
        if self._configured:
            return "kill switch on: hygiene.kill_switch is true in the configuration"
        if self._api_client is None or not self._configmap:
            return None
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            config_map = client.CoreV1Api(self._api_client).read_namespaced_config_map(
                self._configmap, self._namespace, _request_timeout=15)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise KillSwitchUnknown(
                f"cannot read ConfigMap {self._namespace}/{self._configmap}: HTTP {exc.status}"
            ) from exc
        except Exception as exc:
            raise KillSwitchUnknown(
                f"cannot read ConfigMap {self._namespace}/{self._configmap}: {exc}") from exc
        value = str((config_map.data or {}).get("kill_switch", "")).strip().lower()
        if value in _TRUE:
            return (f"kill switch on: kill_switch={value!r} in ConfigMap "
                    f"{self._namespace}/{self._configmap}")
        return None


@dataclass(frozen=True)
class CapVerdict:
    tripped: bool
    reason: str | None = None


def check_caps(actions: int, looked_at: int, *, settings: HygieneJobConfig,
               key: str) -> CapVerdict:
    """At most ``max_actions`` actions per run, and at most ``max_percent`` % of the
    resources the scan looked at (candidates and skipped). The percentage always allows one
    action: a single resource is no blast radius, and small fleets would otherwise never
    reach the first one."""
    if actions > settings.max_actions:
        return CapVerdict(True, f"{actions} actions planned, more than {key}.max_actions="
                                f"{settings.max_actions}; acted on nothing")
    allowed = max(1, math.floor(looked_at * settings.max_percent / 100.0))
    if settings.max_percent < 100 and actions > allowed:
        share = 100.0 * actions / max(1, looked_at)
        return CapVerdict(True, f"{actions} actions planned on {looked_at} resources looked at "
                                f"({share:.0f}%), more than {key}.max_percent="
                                f"{settings.max_percent:g}%; acted on nothing")
    return CapVerdict(False)


def namespace_of(candidate: Candidate) -> str | None:
    return candidate.kube_object[2] if candidate.kube_object else None


def exempt_by_config(scan: Scan, settings: HygieneJobConfig, *, key: str) -> Scan:
    """Move candidates in ``exempt_namespaces`` or matching ``exempt_names`` (glob patterns
    on the resource) to ``skipped``, naming the guard."""
    kept: list[Candidate] = []
    skipped = list(scan.skipped)
    namespaces = set(settings.exempt_namespaces)
    for candidate in scan.candidates:
        namespace = namespace_of(candidate)
        if namespace is not None and namespace in namespaces:
            skipped.append(Skipped(candidate.resource,
                                   f"exempt: namespace {namespace} is in {key}.exempt_namespaces"))
            continue
        pattern = next((p for p in settings.exempt_names
                        if fnmatch.fnmatchcase(candidate.resource, p)), None)
        if pattern is not None:
            skipped.append(Skipped(candidate.resource,
                                   f"exempt: matches {pattern!r} in {key}.exempt_names"))
            continue
        kept.append(candidate)
    return Scan(candidates=kept, skipped=skipped)


def exempt_by_owner(scan: Scan, holds: Mapping[str, OwnerHold]) -> Scan:
    """Move candidates an owner kept or exempted (Slack buttons; ``store.owner_holds``) to
    ``skipped``, naming who and until when."""
    kept: list[Candidate] = []
    skipped = list(scan.skipped)
    for candidate in scan.candidates:
        hold = holds.get(candidate.resource)
        if hold is None:
            kept.append(candidate)
        elif hold.until is None:
            skipped.append(Skipped(candidate.resource, f"exempt: exempted by {hold.by}"))
        else:
            skipped.append(Skipped(candidate.resource,
                                   f"kept by {hold.by} until {iso_time(hold.until)}"))
    return Scan(candidates=kept, skipped=skipped)


def exempt_flag(labels: dict[str, str] | None, annotations: dict[str, str] | None) -> bool:
    """``steward.io/exempt=true`` as a label or an annotation (tags use the same key)."""
    for source in (labels or {}, annotations or {}):
        if str(source.get(EXEMPT_KEY, "")).strip().lower() in _TRUE:
            return True
    return False
