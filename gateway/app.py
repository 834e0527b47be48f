"""The HTTP gateway: thin handlers that turn JSON into operations on the node's runtime.

Any node's gateway serves every request: the runtime forwards it to the leader of the right
group and retries across leader changes. Every error is JSON naming what went wrong
(``{"error": code, "message": ..., "field": ...}``); no input can take the node down.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.results import Ok, Result
from syncfab.fabric.core.routing import KEY_BYTES_MAX
from syncfab.fabric.server.http_auth import TokenCheck
from syncfab.fabric.server.runtime import NodeRuntime
from syncfab.gateway import cache, locks, members, queues
from syncfab.gateway.http_server import HttpServer
from syncfab.gateway.responses import bad_request, json_response, read_body, result_error
from syncfab.gateway.router import Request, Response, Router

log = logging.getLogger("syncfab.gateway")

OPENAPI = Path(__file__).with_name("openapi.yaml")


def serve(runtime: NodeRuntime) -> HttpServer:
    """The gateway of ``runtime``'s node, ready to ``start(host, port)``; every request it
    answers is counted in the node's metrics (fabric/server/http_metrics.py). With tokens in its
    settings, a request without one is refused (401) and counted as refused."""
    s = runtime.settings
    auth = TokenCheck(s.auth_tokens, s.metrics_tokens) if s.auth_tokens else None
    refused = runtime.metrics.auth_refused.labels("http").inc
    return HttpServer(create_router(), runtime, runtime.metrics.http, auth=auth, on_refused=refused)


def key_of(request: Request) -> tuple[str, Response | None]:
    key = request.match_info["key"]
    if not key or len(key.encode()) > KEY_BYTES_MAX:
        return key, bad_request("key", f"key must be 1..{KEY_BYTES_MAX} bytes")
    return key, None


async def call(request: Request, op: Any) -> Result:
    runtime: NodeRuntime = request.runtime
    return await runtime.call(op)


# -- handlers ------------------------------------------------------------------------------


async def health(request: Request) -> Response:
    return json_response({"status": "ok", "node": request.runtime.settings.node_id})


async def cluster(request: Request) -> Response:
    return json_response(request.runtime.core.cluster_view())


async def status(request: Request) -> Response:
    core = request.runtime.core
    groups, evicted = core.group_status(), core.evicted  # evicted: no longer a member
    return json_response({"node": core.id, "groups": groups, "counters": core.counters, "evicted": evicted})


async def metrics(request: Request) -> Response:
    return Response(generate_latest(request.runtime.metrics.registry), content_type=CONTENT_TYPE_LATEST)


async def openapi(request: Request) -> Response:
    return Response(_openapi_bytes(), content_type="application/yaml")


@functools.cache
def _openapi_bytes() -> bytes:
    return OPENAPI.read_bytes()


async def kv_put(request: Request) -> Response:
    key, bad = key_of(request)
    if bad:
        return bad
    value, bad = read_body(request, Any)
    if bad:
        return bad
    result = await call(request, Put(key, value))
    if isinstance(result, Ok):
        return json_response({"key": key, "index": result.value})
    return result_error(result)


async def kv_get(request: Request) -> Response:
    key, bad = key_of(request)
    if bad:
        return bad
    result = await call(request, Get(key))
    if isinstance(result, Ok):
        return json_response({"key": key, "value": result.value})
    return result_error(result)


async def kv_delete(request: Request) -> Response:
    key, bad = key_of(request)
    if bad:
        return bad
    result = await call(request, Delete(key))
    if isinstance(result, Ok):
        return json_response({"key": key, "deleted": result.value})
    return result_error(result)


def create_router() -> Router:
    router = Router()
    router.add_get("/health", health)
    router.add_get("/cluster", cluster)
    router.add_get("/status", status)
    router.add_get("/metrics", metrics)
    router.add_get("/openapi.yaml", openapi)
    router.add_put("/kv/{key:.+}", kv_put)
    router.add_get("/kv/{key:.+}", kv_get)
    router.add_delete("/kv/{key:.+}", kv_delete)
    locks.add_routes(router)
    members.add_routes(router)
    queues.add_routes(router)
    cache.add_routes(router)
    return router
