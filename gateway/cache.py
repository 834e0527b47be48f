"""HTTP for the cache: read, write, delete, invalidate — served by THIS node's own lines — and
the home's directory entry for a key (``/cache/line``), this node's counters (``/cache/stats``).

Values are JSON over HTTP and MessagePack inside (actors/cache_ops.py): a write encodes its
value once; a read decodes what the node answers. Every limit is the cache's own check
(``check_key`` / ``check_op``), run here before anything is sent, so bad input never leaves
the gateway. Read and write latency go to two histograms on the node's registry, made on first
use: ``syncfab_cache_read_seconds`` (hits apart from misses) and ``syncfab_cache_write_seconds``
(by policy).
"""

from __future__ import annotations

import time
from typing import Any
from weakref import WeakKeyDictionary

import msgspec
from prometheus_client import CollectorRegistry, Histogram

from syncfab.actors.cache_ops import (
    POLICIES,
    WRITE_THROUGH,
    CacheDelete,
    CacheInvalidate,
    CacheLine,
    CacheRead,
    CacheStats,
    CacheWrite,
    check_key,
    check_op,
)
from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.server.metrics import LATENCY_BUCKETS_S
from syncfab.gateway.responses import bad_request, error_response, json_response, read_body, result_error
from syncfab.gateway.router import Request, Response, Router

VERSION_MAX = (1 << 64) - 1  # what MessagePack can carry; no version gets anywhere near it

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder().decode


class WriteBody(msgspec.Struct, forbid_unknown_fields=True):
    key: str
    value: Any
    policy: str = WRITE_THROUGH
    ttl_ms: int | None = None
    expected_version: int | None = None


class KeyBody(msgspec.Struct, forbid_unknown_fields=True):
    key: str


# -- metrics -------------------------------------------------------------------------------


class _CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.read = Histogram(
            "syncfab_cache_read_seconds",
            "A cache read at this node's gateway, hits (own line) apart",
            ["hit"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.write = Histogram(
            "syncfab_cache_write_seconds",
            "A cache write at this node's gateway, by policy",
            ["policy"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        for hit in ("true", "false"):
            self.read.labels(hit)
        for policy in POLICIES:
            self.write.labels(policy)


_METRICS: WeakKeyDictionary[CollectorRegistry, _CacheMetrics] = WeakKeyDictionary()


def _metrics(request: Request) -> _CacheMetrics:
    """One pair per node registry (several nodes may share a process)."""
    registry = request.runtime.metrics.registry
    found = _METRICS.get(registry)
    if found is None:
        found = _METRICS[registry] = _CacheMetrics(registry)
    return found


# -- helpers -------------------------------------------------------------------------------


def _fields(value: Any) -> dict[str, Any]:
    """An op's answer as a dict: it crosses the node's reply codec, so it usually is one."""
    return msgspec.structs.asdict(value) if isinstance(value, msgspec.Struct) else dict(value)


def _key_param(request: Request) -> tuple[str, Response | None]:
    key = request.query.get("key")
    if key is None:
        return "", bad_request("key", "key is required")
    err = check_key(key)
    return key, result_error(err) if err is not None else None


async def _call(request: Request, op: Any) -> Result:
    return await request.runtime.call(op)


def _answer(result: Result) -> Response:
    return json_response(_fields(result.value)) if isinstance(result, Ok) else result_error(result)


# -- handlers ------------------------------------------------------------------------------


async def read(request: Request) -> Response:
    key, bad = _key_param(request)
    if bad:
        return bad
    started = time.perf_counter()
    result = await _call(request, CacheRead(key))
    if isinstance(result, Ok):
        found = _fields(result.value)
        hit = bool(found.get("hit"))
    else:
        found = {}
        hit = isinstance(result.detail, dict) and bool(result.detail.get("hit"))
    _metrics(request).read.labels("true" if hit else "false").observe(time.perf_counter() - started)
    if isinstance(result, Err):
        if result.code == "not_found":
            extra = {} if isinstance(result.detail, dict) and "hit" in result.detail else {"hit": hit}
            return result_error(result, **extra)
        return result_error(result)
    value = found["value"]
    if isinstance(value, msgspec.Raw):
        value = _decode(value)
    body = {
        "key": found["key"],
        "value": value,
        "version": found["version"],
        "state": found["state"],
        "hit": hit,
    }
    try:
        return json_response(body)
    except (TypeError, msgspec.EncodeError):
        # Written by a native client as something JSON cannot say (a MessagePack extension).
        return error_response(406, "not_json", "the value has no JSON form", field="value", key=key)


async def write(request: Request) -> Response:
    body, bad = read_body(request, WriteBody)
    if bad:
        return bad
    assert body is not None
    try:
        value = msgspec.Raw(_encode(body.value))
    except (OverflowError, TypeError, msgspec.EncodeError) as e:
        return bad_request("value", f"value cannot be stored: {e}")
    if body.expected_version is not None and body.expected_version > VERSION_MAX:
        return bad_request("expected_version", f"expected_version must be 0..{VERSION_MAX}")
    op = CacheWrite(body.key, value, body.policy, body.ttl_ms, body.expected_version)
    err = check_op(op)
    if err is not None:
        return result_error(err)
    started = time.perf_counter()
    result = await _call(request, op)
    _metrics(request).write.labels(op.policy).observe(time.perf_counter() - started)
    return _answer(result)


async def delete(request: Request) -> Response:
    return await _key_op(request, CacheDelete)


async def invalidate(request: Request) -> Response:
    return await _key_op(request, CacheInvalidate)


async def _key_op(request: Request, kind: type[CacheDelete] | type[CacheInvalidate]) -> Response:
    body, bad = read_body(request, KeyBody)
    if bad:
        return bad
    assert body is not None
    op = kind(body.key)
    err = check_op(op)
    if err is not None:
        return result_error(err)
    return _answer(await _call(request, op))


async def line(request: Request) -> Response:
    key, bad = _key_param(request)
    if bad:
        return bad
    return _answer(await _call(request, CacheLine(key)))


async def stats(request: Request) -> Response:
    return _answer(await _call(request, CacheStats()))


def add_routes(router: Router) -> None:
    router.add_get("/cache/read", read)
    router.add_post("/cache/write", write)
    router.add_post("/cache/delete", delete)
    router.add_post("/cache/invalidate", invalidate)
    router.add_get("/cache/line", line)
    router.add_get("/cache/stats", stats)
