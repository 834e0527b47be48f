"""JSON in, JSON out: the shapes every handler shares, errors included.

Every error is ``{"error": code, "message": ..., <detail>}``; bad input names its ``field``.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from syncfab.actors.results import Err
from syncfab.gateway.router import Request, Response

T = TypeVar("T")

# How an operation's error code reads over HTTP.
STATUS_OF = {
    "bad_request": 400,
    "not_found": 404,
    "not_held": 409,
    "stale_request": 409,
    "deadlock": 409,
    "lease_expired": 409,
    "already_waiting": 409,
    "cancelled": 409,
    "lock_timeout": 408,
    "version_mismatch": 409,
    "payload_too_large": 413,
    "queue_full": 429,
    "timeout": 504,
    "busy": 503,
    "no_leader": 503,
    "not_leader": 503,
    "leader_changed": 503,
    "unavailable": 503,
    "shutting_down": 503,
}

_json_encode = msgspec.json.Encoder().encode
_MISSING = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")
_PATH = re.compile(r"at `\$\.?([^`]*)`")


def json_response(body: Any, status: int = 200) -> Response:
    return Response(_json_encode(body), status)


def error_response(status: int, code: str, message: str, **extra: Any) -> Response:
    return json_response({"error": code, "message": message, **extra}, status)


def bad_request(field: str, message: str) -> Response:
    return error_response(400, "bad_request", message, field=field)


def result_error(err: Err, status: int | None = None, **extra: Any) -> Response:
    detail = dict(err.detail) if isinstance(err.detail, dict) else {}
    if err.detail is not None and not detail:
        detail["detail"] = err.detail
    return error_response(status or STATUS_OF.get(err.code, 500), err.code, err.message, **detail, **extra)


def read_body(request: Request, kind: type[T]) -> tuple[T | None, Response | None]:
    """The body decoded as ``kind`` (a msgspec Struct, or Any), or the 4xx that says why not —
    naming the field for a wrong type or a missing one."""
    body = request.body
    if not body:
        return None, bad_request("body", "a JSON body is required")
    try:
        return msgspec.json.decode(body, type=kind), None
    except msgspec.ValidationError as e:
        return None, bad_request(_field_of(str(e)), str(e))
    except msgspec.DecodeError as e:
        return None, bad_request("body", f"malformed JSON: {e}")
    except RecursionError:
        return None, bad_request("body", "JSON nested too deeply")


def _field_of(message: str) -> str:
    """msgspec says ``Expected `int`, got `str` - at `$.messages[1].data```, ``Object missing
    required field `data` - at `$.messages[0]``` or ``Object contains unknown field `x```: name
    the field as a path into the body."""
    missing, path = _MISSING.search(message), _PATH.search(message)
    # A map's values show as `headers[...]`: the map is the field to name.
    where = path.group(1).replace("[...]", "") if path else ""
    if missing:
        return f"{where}.{missing.group(1)}" if where else missing.group(1)
    return where or "body"


def int_param(
    request: Request, name: str, default: int | None, low: int = 0, high: int = 1 << 31
) -> tuple[int | None, Response | None]:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default, None
    try:
        value = int(raw)
    except ValueError:
        return None, bad_request(name, f"{name} must be an integer, got {raw!r}")
    if not low <= value <= high:
        return None, bad_request(name, f"{name} must be {low}..{high}")
    return value, None
