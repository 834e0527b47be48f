"""The HTTP gateway: thin handlers that turn JSON into operations on the node's runtime.

Any node's gateway serves every request: the runtime forwards it to the leader of the right
group and retries across leader changes. Every error is JSON naming what went wrong
(``{"error": code, "message": ..., "field": ...}``); no input can take the node down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.routing import KEY_BYTES_MAX
from syncfab.fabric.runtime import NodeRuntime

log = logging.getLogger("syncfab.gateway")

BODY_BYTES_MAX = 1 << 20
RUNTIME = web.AppKey("runtime", NodeRuntime)
OPENAPI = Path(__file__).with_name("openapi.yaml")

# How an operation's error code reads over HTTP.
STATUS_OF = {
    "bad_request": 400,
    "not_found": 404,
    "stale_request": 409,
    "deadlock": 409,
    "timeout": 504,
    "busy": 503,
    "no_leader": 503,
    "not_leader": 503,
    "leader_changed": 503,
    "unavailable": 503,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_json_encode = msgspec.json.Encoder().encode


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=_json_encode(body), status=status, content_type="application/json")


def error_response(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return json_response({"error": code, "message": message, **extra}, status)


def bad_request(field: str, message: str) -> web.Response:
    return error_response(400, "bad_request", message, field=field)


def result_error(err: Err) -> web.Response:
    extra = dict(err.detail) if isinstance(err.detail, dict) else {}
    if err.detail is not None and not extra:
        extra["detail"] = err.detail
    return error_response(STATUS_OF.get(err.code, 500), err.code, err.message, **extra)


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as e:
        # aiohttp's own refusals (404, 405, 413 ...) get our JSON shape too.
        code = "payload_too_large" if e.status == 413 else e.reason.lower().replace(" ", "_")
        response = error_response(e.status, code, e.reason,
                                  **({"field": "body"} if e.status == 413 else {}))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(500, "internal", "internal error")
    metrics = request.app[RUNTIME].metrics
    metrics.http_requests.labels(endpoint, request.method, str(response.status)).inc()
    metrics.http_latency.labels(endpoint, request.method).observe(time.perf_counter() - started)
    return response


async def read_json(request: web.Request) -> tuple[Any, web.Response | None]:
    """The body as JSON, or the 4xx response that says why it is not."""
    body = await request.read()
    if not body:
        return None, bad_request("body", "a JSON body is required")
    try:
        return msgspec.json.decode(body), None
    except msgspec.DecodeError as e:
        return None, bad_request("body", f"malformed JSON: {e}")


def key_of(request: web.Request) -> tuple[str, web.Response | None]:
    key = request.match_info["key"]
    if not key or len(key.encode()) > KEY_BYTES_MAX:
        return key, bad_request("key", f"key must be 1..{KEY_BYTES_MAX} bytes")
    return key, None


async def call(request: web.Request, op: Any) -> Result:
    return await request.app[RUNTIME].call(op)


# -- handlers ------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "node": request.app[RUNTIME].settings.node_id})


async def cluster(request: web.Request) -> web.Response:
    return json_response(request.app[RUNTIME].core.cluster_view())


async def status(request: web.Request) -> web.Response:
    core = request.app[RUNTIME].core
    return json_response({"node": core.id, "groups": core.group_status(), "counters": core.counters})


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[RUNTIME].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(text=OPENAPI.read_text(), content_type="application/yaml")


async def kv_put(request: web.Request) -> web.Response:
    key, bad = key_of(request)
    if bad:
        return bad
    value, bad = await read_json(request)
    if bad:
        return bad
    result = await call(request, Put(key, value))
    if isinstance(result, Ok):
        return json_response({"key": key, "index": result.value})
    return result_error(result)


async def kv_get(request: web.Request) -> web.Response:
    key, bad = key_of(request)
    if bad:
        return bad
    result = await call(request, Get(key))
    if isinstance(result, Ok):
        return json_response({"key": key, "value": result.value})
    return result_error(result)


async def kv_delete(request: web.Request) -> web.Response:
    key, bad = key_of(request)
    if bad:
        return bad
    result = await call(request, Delete(key))
    if isinstance(result, Ok):
        return json_response({"key": key, "deleted": result.value})
    return result_error(result)


def create_app(runtime: NodeRuntime) -> web.Application:
    app = web.Application(client_max_size=BODY_BYTES_MAX, middlewares=[errors_and_metrics])
    app[RUNTIME] = runtime
    app.router.add_get("/health", health)
    app.router.add_get("/cluster", cluster)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.yaml", openapi)
    app.router.add_put("/kv/{key:.+}", kv_put)
    app.router.add_get("/kv/{key:.+}", kv_get)
    app.router.add_delete("/kv/{key:.+}", kv_delete)
    return app
