"""The API's error responses: ``Status`` objects with the real server's reasons and causes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agent.sim.kube_api.resources import JsonObj, _Resource


class KubeApiError(Exception):
    """An API error carrying the ``Status`` object the server answers with."""

    def __init__(self, status: JsonObj) -> None:
        super().__init__(f"{status['code']} {status['reason']}: {status['message']}")
        self.status = status

    @property
    def code(self) -> int:
        return int(self.status["code"])


_REASONS = {
    400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
    405: "MethodNotAllowed", 406: "NotAcceptable", 409: "Conflict", 410: "Expired",
    415: "UnsupportedMediaType", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
    503: "ServiceUnavailable", 504: "Timeout",
}


def _status(code: int, reason: str, message: str, details: JsonObj | None = None) -> JsonObj:
    body: JsonObj = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def _error(code: int, message: str, details: JsonObj | None = None) -> KubeApiError:
    return KubeApiError(_status(code, _REASONS.get(code, "Unknown"), message, details))


def _res_details(res: _Resource, name: str) -> JsonObj:
    details: JsonObj = {"name": name, "kind": res.plural}
    if res.group:
        details["group"] = res.group
    return details


def _not_found(res: _Resource, name: str) -> KubeApiError:
    return _error(404, f'{res.group_resource} "{name}" not found', _res_details(res, name))


def _already_exists(res: _Resource, name: str) -> KubeApiError:
    message = f'{res.group_resource} "{name}" already exists'
    return KubeApiError(_status(409, "AlreadyExists", message, _res_details(res, name)))


def _conflict(res: _Resource, name: str, why: str) -> KubeApiError:
    return _error(409, f'Operation cannot be fulfilled on {res.group_resource} "{name}": {why}',
                  _res_details(res, name))


_STALE = ("the object has been modified; please apply your changes to the latest version and "
          "try again")


@dataclass(frozen=True)
class _Cause:
    field: str
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported
    message: str


def _invalid(qualified_kind: str, group: str, name: str, causes: list[_Cause]) -> KubeApiError:
    parts = [f"{c.field}: {c.message}" for c in causes]
    text = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    details: JsonObj = {
        "name": name, "kind": qualified_kind.split(".", 1)[0],
        "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
    }
    if group:
        details["group"] = group
    return _error(422, f'{qualified_kind} "{name}" is invalid: {text}', details)


def _bad_value(path: str, value: Any, detail: str) -> _Cause:
    return _Cause(path, "FieldValueInvalid", f"Invalid value: {json.dumps(value)}: {detail}")


def _required(path: str, detail: str = "") -> _Cause:
    return _Cause(path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))
