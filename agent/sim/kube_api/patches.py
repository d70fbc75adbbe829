"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902) on stored objects."""

from __future__ import annotations

import copy
import json
from typing import Any

from agent.sim.kube_api.errors import _error


class _PatchFailed(Exception):
    pass


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _PatchFailed(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path.split("/")[1:]] if path else []


def _resolve(doc: Any, tokens: list[str]) -> Any:
    for token in tokens:
        if isinstance(doc, dict) and token in doc:
            doc = doc[token]
        elif isinstance(doc, list) and token.isdigit() and int(token) < len(doc):
            doc = doc[int(token)]
        else:
            raise _PatchFailed(f"path /{'/'.join(tokens)} does not exist")
    return doc


def _pointer_add(doc: Any, tokens: list[str], value: Any, *, replace: bool) -> Any:
    if not tokens:
        return value
    parent = _resolve(doc, tokens[:-1])
    leaf = tokens[-1]
    if isinstance(parent, dict):
        if replace and leaf not in parent:
            raise _PatchFailed(f"replace operation does not apply: doc is missing key: {leaf}")
        parent[leaf] = value
    elif isinstance(parent, list):
        if leaf == "-" and not replace:
            parent.append(value)
        elif leaf.isdigit() and int(leaf) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(leaf)] = value
            else:
                parent.insert(int(leaf), value)
        else:
            raise _PatchFailed(f"index {leaf} out of bounds")
    else:
        raise _PatchFailed("cannot add to a scalar")
    return doc


def _pointer_remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise _PatchFailed("cannot remove the whole document")
    parent = _resolve(doc, tokens[:-1])
    leaf = tokens[-1]
    if isinstance(parent, dict) and leaf in parent:
        return parent.pop(leaf)
    if isinstance(parent, list) and leaf.isdigit() and int(leaf) < len(parent):
        return parent.pop(int(leaf))
    raise _PatchFailed(f"remove operation does not apply: doc is missing path: /{'/'.join(tokens)}")


def _same_json(left: Any, right: Any) -> bool:
    return json.dumps(left, sort_keys=True) == json.dumps(right, sort_keys=True)


def _json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 JSON patch; a malformed patch is 400, one that does not apply is 422."""
    if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
        raise _error(400, "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    for operation in operations:
        if operation.get("op") not in ("add", "remove", "replace", "move", "copy", "test"):
            raise _error(400, f"Unexpected kind: {operation.get('op')}")
        needs_from = operation["op"] in ("move", "copy")
        if "path" not in operation or (needs_from and "from" not in operation):
            raise _error(400, f"operation {operation['op']} is missing a path")
    doc = copy.deepcopy(doc)
    try:
        for operation in operations:
            op, tokens = operation["op"], _pointer(operation["path"])
            value = copy.deepcopy(operation.get("value"))
            if op in ("add", "replace"):
                doc = _pointer_add(doc, tokens, value, replace=op == "replace")
            elif op == "remove":
                _pointer_remove(doc, tokens)
            elif op == "move":
                value = _pointer_remove(doc, _pointer(operation["from"]))
                doc = _pointer_add(doc, tokens, value, replace=False)
            elif op == "copy":
                value = copy.deepcopy(_resolve(doc, _pointer(operation["from"])))
                doc = _pointer_add(doc, tokens, value, replace=False)
            elif not _same_json(_resolve(doc, tokens), operation.get("value")):
                raise _PatchFailed(f"testing value {operation['path']} failed: test failed")
    except _PatchFailed:
        # The API server turns every jsonpatch apply error into this generic 422.
        raise _error(422, "the server rejected our request due to an error in our request",
                     {}) from None
    return doc
