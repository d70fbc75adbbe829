"""Label and field selectors, parsed and matched as the API server does."""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.sim.kube_api.errors import _error
from agent.sim.kube_api.resources import JsonObj, _Resource
from agent.sim.kube_api.validation import _LABEL_VALUE, _qualified_key_error


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # = != in notin exists !exists gt lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        try:
            number = int(value or "")
        except ValueError:
            return False
        limit = int(self.values[0])
        return number > limit if self.op == "gt" else number < limit


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_REQ_EQ = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*([^\s=!]*)\s*$")
_REQ_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\((.*)\)\s*$")
_REQ_CMP = re.compile(rf"^\s*({_KEY})\s*(>|<)\s*(-?\d+)\s*$")
_REQ_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")


def parse_label_selector(text: str) -> builtins.list[_Requirement]:
    """Parse a label selector the way apimachinery does; 400 BadRequest on bad syntax."""
    requirements: list[_Requirement] = []
    values: tuple[str, ...]
    if not text.strip():
        return requirements
    for raw in _split_top_level(text):
        if match := _REQ_EQ.match(raw):
            key, op, values = match[1], "!=" if match[2] == "!=" else "=", (match[3],)
        elif match := _REQ_SET.match(raw):
            key, op = match[1], match[2]
            values = tuple(v.strip() for v in match[3].split(",") if v.strip())
            if not values:
                raise _error(400, f"unable to parse requirement: {raw!r}: for 'in', 'notin' "
                                  "operators, values set can't be empty")
        elif match := _REQ_CMP.match(raw):
            key, op, values = match[1], "gt" if match[2] == ">" else "lt", (match[3],)
        elif match := _REQ_EXISTS.match(raw):
            key, op, values = match[2], "!exists" if match[1] else "exists", ()
        else:
            raise _error(400, f"unable to parse requirement: found {raw.strip()!r}, "
                              "expected: identifier, '!', 'in', 'notin', '=', '==', '!='")
        problem = _qualified_key_error(key)
        if problem:
            raise _error(400, f'unable to parse requirement: key: Invalid value: "{key}": '
                              f"{problem}")
        for value in values if op not in ("gt", "lt") else ():
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                raise _error(400, f'unable to parse requirement: values[0][{key}]: Invalid value: '
                                  f'"{value}": a valid label must be an empty string or consist '
                                  "of alphanumeric characters, '-', '_' or '.'")
        requirements.append(_Requirement(key, op, values))
    return requirements


def _parse_field_selector(res: _Resource, text: str) -> list[tuple[str, str, str]]:
    terms: list[tuple[str, str, str]] = []
    if not text.strip():
        return terms
    for raw in text.split(","):
        match = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not match:
            raise _error(400, f"invalid selector: '{text}'; can't understand '{raw}'")
        path = res.field_path(match[1])
        if path is None:
            raise _error(400, f'field label not supported: {match[1]}')
        terms.append((path, "!=" if match[2] == "!=" else "=", match[3]))
    return terms


def _field_value(obj: JsonObj, path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class _Selector:
    labels: tuple[_Requirement, ...] = ()
    fields: tuple[tuple[str, str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.labels and not self.fields

    def matches(self, obj: JsonObj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        if not all(r.matches(labels) for r in self.labels):
            return False
        for path, op, want in self.fields:
            if (_field_value(obj, path) == want) != (op == "="):
                return False
        return True


def _selector_string(selector: Any) -> str:
    """The string form of a LabelSelector, as the scale subresource reports it."""
    if not isinstance(selector, dict):
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        op, key, values = expr.get("operator"), expr.get("key"), expr.get("values") or []
        if op in ("In", "NotIn"):
            parts.append(f"{key} {op.lower()} ({','.join(sorted(values))})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)
