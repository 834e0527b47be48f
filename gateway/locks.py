"""HTTP for the lock manager: acquire, release, renew, inspect."""

from __future__ import annotations

import msgspec

from syncfab.actors.limits import LOCK_TTL_MS_DEFAULT
from syncfab.actors.locks import EXCLUSIVE, Acquire, LockInfo, OwnerInfo, Release, Renew
from syncfab.actors.results import Err, Ok
from syncfab.gateway.responses import json_response, read_body, result_error
from syncfab.gateway.router import Request, Response, Router


class AcquireBody(msgspec.Struct, forbid_unknown_fields=True):
    resource: str
    client_id: str
    mode: str = EXCLUSIVE  # as the native client's
    wait_ms: int = 0  # a try-lock, as the native client's
    ttl_ms: int = LOCK_TTL_MS_DEFAULT


class ReleaseBody(msgspec.Struct, forbid_unknown_fields=True):
    resource: str
    client_id: str


class RenewBody(msgspec.Struct, forbid_unknown_fields=True):
    client_id: str
    ttl_ms: int = LOCK_TTL_MS_DEFAULT


def _http_names(result: Err) -> Err:
    """The lock table calls the owner ``owner``; over HTTP it is ``client_id``."""
    if isinstance(result.detail, dict) and result.detail.get("field") == "owner":
        return Err(
            result.code, result.message.replace("owner", "client_id"), {**result.detail, "field": "client_id"}
        )
    return result


async def acquire(request: Request) -> Response:
    body, bad = read_body(request, AcquireBody)
    if bad:
        return bad
    assert body is not None
    op = Acquire(body.resource, body.mode, body.client_id, body.wait_ms, body.ttl_ms)
    result = await request.runtime.call(op)
    if isinstance(result, Ok):
        return json_response(result.value)
    if result.code == "lock_timeout":  # the lock stayed held for the whole wait
        return result_error(result, granted=False)
    if result.code in ("deadlock", "lease_expired", "cancelled"):
        return result_error(result, granted=False)
    return result_error(_http_names(result))


async def release(request: Request) -> Response:
    body, bad = read_body(request, ReleaseBody)
    if bad:
        return bad
    assert body is not None
    result = await request.runtime.call(Release(body.resource, body.client_id))
    return json_response(result.value) if isinstance(result, Ok) else result_error(_http_names(result))


async def renew(request: Request) -> Response:
    body, bad = read_body(request, RenewBody)
    if bad:
        return bad
    assert body is not None
    result = await request.runtime.call(Renew(body.client_id, body.ttl_ms))
    if isinstance(result, Ok):
        return json_response({"renewed": True, **result.value})
    return result_error(_http_names(result))


async def info(request: Request) -> Response:
    result = await request.runtime.call(LockInfo(request.match_info["resource"]))
    return json_response(result.value) if isinstance(result, Ok) else result_error(result)


async def owner(request: Request) -> Response:
    result = await request.runtime.call(OwnerInfo(request.match_info["owner"]))
    return json_response(result.value) if isinstance(result, Ok) else result_error(result)


def add_routes(router: Router) -> None:
    router.add_post("/lock/acquire", acquire)
    router.add_post("/lock/release", release)
    router.add_post("/lock/renew", renew)
    router.add_get("/lock/{resource:.+}", info)
    router.add_get("/lock-owner/{owner:.+}", owner)
