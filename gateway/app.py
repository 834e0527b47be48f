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

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.results import Ok, Result
from syncfab.fabric.core.routing import KEY_BYTES_MAX
from syncfab.fabric.server.runtime import NodeRuntime
from syncfab.gateway import cache, locks, queues
from syncfab.gateway.context import RUNTIME
from syncfab.gateway.responses import bad_request, error_response, json_response, read_body, result_error

log = logging.getLogger("syncfab.gateway")

BODY_BYTES_MAX = 1 << 20
OPENAPI = Path(__file__).with_name("openapi.yaml")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "unmatched"
    try:
        if request.content_length is not None and request.content_length > BODY_BYTES_MAX:
            # Refused on its headers, before a byte of the body is waited for.
            raise web.HTTPRequestEntityTooLarge(BODY_BYTES_MAX, request.content_length)
        response = await handler(request)
    except ConnectionResetError as e:
        # The client went away mid-request (mid-body, say): nothing to answer, nobody to tell.
        log.info("client left during %s %s: %s", request.method, request.path, e)
        response = error_response(400, "bad_request", "the client went away", field="body")
    except web.HTTPException as e:
        # aiohttp's own refusals (404, 405, 413 ...) get our JSON shape too.
        code = "payload_too_large" if e.status == 413 else e.reason.lower().replace(" ", "_")
        response = error_response(e.status, code, e.reason, **({"field": "body"} if e.status == 413 else {}))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error_response(500, "internal", "internal error")
    elapsed_s = time.perf_counter() - started
    request.app[RUNTIME].metrics.http.record(endpoint, request.method, response.status, elapsed_s)
    return response


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
    value, bad = await read_body(request, Any)
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
    locks.add_routes(app)
    queues.add_routes(app)
    cache.add_routes(app)
    return app
