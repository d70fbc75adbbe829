"""What the stand-in checks in a body before storing it: names, labels, annotations,
specs, Job status and Events, and the API's time formats."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from agent.sim.kube_api.errors import _bad_value, _Cause, _error, _required
from agent.sim.kube_api.resources import _META_TIMES, _TIME_FIELDS, JsonObj, _Resource

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# MicroTime (Lease renewTime, Event eventTime): Go parses it with the layout
# 2006-01-02T15:04:05.000000Z07:00, which needs exactly six fraction digits.
_RFC3339_MICRO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character"
)


def _qualified_key_error(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix)):
        return "prefix part " + _SUBDOMAIN_MSG
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', must be at "
                "most 63 characters, and must start and end with an alphanumeric character")
    return None


def _validate_meta(res: _Resource, meta: JsonObj) -> list[_Cause]:
    causes: list[_Cause] = []
    name = meta.get("name", "")
    if not isinstance(name, str) or not name:
        causes.append(_required("metadata.name", "name or generateName is required"))
    elif res.custom:
        if name in (".", "..") or "/" in name or "%" in name:
            causes.append(_bad_value("metadata.name", name, "may not contain '/' or '%'"))
    elif res.plural == "namespaces":
        if len(name) > 63 or not _DNS1123_LABEL.match(name):
            causes.append(_bad_value("metadata.name", name, _LABEL_MSG))
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN.match(name):
        causes.append(_bad_value("metadata.name", name, _SUBDOMAIN_MSG))
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        causes.append(_bad_value("metadata.labels", labels, "must be a map of strings"))
        labels = {}
    for key, value in labels.items():
        problem = _qualified_key_error(key)
        if problem:
            causes.append(_bad_value("metadata.labels", key, problem))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(_bad_value(
                "metadata.labels", value,
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character"))
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict):
        causes.append(_bad_value("metadata.annotations", annotations, "must be a map of strings"))
        annotations = {}
    for key, value in annotations.items():
        problem = _qualified_key_error(key)
        if problem:
            causes.append(_bad_value("metadata.annotations", key, problem))
        if not isinstance(value, str):
            causes.append(_bad_value("metadata.annotations", value, "must be a string"))
    return causes


_REQUIRED_SPEC: dict[str, tuple[str, ...]] = {
    "pods": ("containers",),
    "deployments": ("selector", "template"),
    "statefulsets": ("selector", "template"),
    "daemonsets": ("selector", "template"),
    "replicasets": ("selector",),
    "jobs": ("template",),
    "cronjobs": ("schedule", "jobTemplate"),
}
_STATUS_COUNTERS: dict[str, tuple[str, ...]] = {
    "statefulsets": ("replicas",),
    "replicasets": ("replicas",),
    "daemonsets": ("currentNumberScheduled", "numberMisscheduled", "desiredNumberScheduled",
                   "numberReady"),
}


def _validate_spec(res: _Resource, obj: JsonObj) -> list[_Cause]:
    """The required spec fields of built-in kinds, and workload selectors matching templates."""
    if res.group != "apps" and res.plural not in _REQUIRED_SPEC:
        return []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [_required("spec")] if res.plural in _REQUIRED_SPEC else []
    causes = [_required(f"spec.{name}") for name in _REQUIRED_SPEC.get(res.plural, ())
              if spec.get(name) in (None, [], "")]
    selector = spec.get("selector")
    template = spec.get("template")
    if res.group == "apps" and isinstance(selector, dict) and isinstance(template, dict):
        wanted = selector.get("matchLabels") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            causes.append(_bad_value("spec.template.metadata.labels", labels,
                                     "`selector` does not match template `labels`"))
    return causes


def _validate_job_status(obj: JsonObj) -> list[_Cause]:
    """What a real API server (1.31+, JobManagedBy) refuses in a Job's status write: a
    terminal condition without its interim one, and completionTime out of step with
    Complete."""
    status = obj.get("status") or {}
    true = {c.get("type") for c in status.get("conditions") or []
            if isinstance(c, dict) and c.get("status") == "True"}
    causes: list[_Cause] = []
    if "Complete" in true and "SuccessCriteriaMet" not in true:
        causes.append(_bad_value("status.conditions", None, "cannot set Complete=True "
                                 "condition without the SuccessCriteriaMet=true condition"))
    if "Failed" in true and "FailureTarget" not in true:
        causes.append(_bad_value("status.conditions", None, "cannot set Failed=True "
                                 "condition without the FailureTarget=true condition"))
    if "Complete" in true and "Failed" in true:
        causes.append(_bad_value("status.conditions", None, "cannot set Complete=True and "
                                 "Failed=true conditions"))
    if "Complete" in true and not status.get("completionTime"):
        causes.append(_required("status.completionTime",
                                "completionTime is required for Complete jobs"))
    if "Complete" not in true and status.get("completionTime"):
        causes.append(_bad_value("status.completionTime", status["completionTime"],
                                 "completionTime can only be set for Complete jobs"))
    return causes


def _validate_event(res: _Resource, obj: JsonObj) -> list[_Cause]:
    """The create-time rules of the Event API each group version enforces (storage form)."""
    causes: list[_Cause] = []
    meta_ns = obj["metadata"].get("namespace", "")
    if res.group == "events.k8s.io":
        if not obj.get("eventTime"):
            causes.append(_required("eventTime"))
        for name, storage_name in (("reportingController", "reportingComponent"),
                                   ("reportingInstance", "reportingInstance"),
                                   ("action", "action"), ("reason", "reason")):
            if not obj.get(storage_name):
                causes.append(_required(name))
        if obj.get("type") not in ("Normal", "Warning"):
            causes.append(_Cause("type", "FieldValueNotSupported",
                                 f'Unsupported value: {json.dumps(obj.get("type", ""))}: '
                                 'supported values: "Normal", "Warning"'))
        for name, storage_name in (("deprecatedFirstTimestamp", "firstTimestamp"),
                                   ("deprecatedLastTimestamp", "lastTimestamp"),
                                   ("deprecatedCount", "count")):
            if obj.get(storage_name):
                causes.append(_bad_value(name, obj[storage_name], "needs to be unset"))
        return causes
    involved = obj.get("involvedObject")
    if not isinstance(involved, dict):
        return [_required("involvedObject")]
    involved_ns = involved.get("namespace") or ""
    if (involved_ns and involved_ns != meta_ns) or (
            not involved_ns and meta_ns not in ("", "default")):
        causes.append(_bad_value("involvedObject.namespace", involved_ns,
                                 "does not match event.namespace"))
    return causes


def _format_time(moment: datetime, *, micro: bool) -> str:
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _normalise_times(res: _Resource, obj: JsonObj, *, strict: bool) -> None:
    """Parse and re-render time fields as the API server does; reject what it cannot parse.

    ``strict`` is off for the direct state API, where a naive time means UTC.
    """
    specs = _META_TIMES + (() if res.custom else _TIME_FIELDS.get(res.storage_key, ()))
    for path, micro in specs:
        *parents, leaf = path.split(".")
        holder: Any = obj
        for part in parents:
            holder = holder.get(part) if isinstance(holder, dict) else None
        if not isinstance(holder, dict) or holder.get(leaf) is None:
            continue
        value = holder[leaf]
        if strict and micro and isinstance(value, str) and not _RFC3339_MICRO.match(value):
            raise _error(400, f'{res.kind} in version "{res.version}" cannot be handled as a '
                              f'{res.kind}: parsing time {json.dumps(value)} as '
                              f'"2006-01-02T15:04:05.000000Z07:00": six fraction digits '
                              f"required ({path})")
        if not isinstance(value, str) or (strict and not _RFC3339.match(value)):
            raise _error(400, f'{res.kind} in version "{res.version}" cannot be handled as a '
                              f'{res.kind}: parsing time {json.dumps(value)} as '
                              f'"2006-01-02T15:04:05Z07:00" failed ({path})')
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise _error(400, f'{res.kind} in version "{res.version}" cannot be handled as a '
                              f"{res.kind}: {exc} ({path})") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        holder[leaf] = _format_time(moment, micro=micro)
