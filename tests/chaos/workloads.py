"""Workloads: clients on both interfaces (the native ZeroMQ client and every node's HTTP
gateway) recording each operation's call and return into one ``History``.

An operation whose outcome the client cannot know (a timeout, a 5xx, a retryable error) is
recorded with ``ret_us=None``: the checkers let it take effect at any point after its call,
or never. Only verdicts are definite: a 2xx, a 404 of a read, a lost compare-and-set
(``version_mismatch``), a lock table's ``lock_timeout`` or ``deadlock``.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from syncfab.fabric.client import AsyncClient, LockTimeout, NotFound, SyncfabError, VersionMismatch

OP_TIMEOUT_S = 3.0
THINK_S_MAX = 0.03  # load shaping between a worker's ops, so histories stay checkable
BACKOFF_S = 0.2  # after an op with no verdict (a dead node refuses at once: no busy loop)
LOCK_TTL_MS = 3000
LOCK_WAIT_MS = 1000
# A holder uses the resource only this long after it asked for the lock: the lease the
# leader stamps runs at least ttl from a moment after that call (1% for clock rate, 200 ms
# for the test's own scheduling).
LOCK_SAFE_S = LOCK_TTL_MS / 1000 * 0.99 - 0.2
VISIBILITY_MS = 2000
WRITE_BACK_SUFFIX = "/wb"  # cache keys written with policy write_back (a CAS still goes home)


def now_us() -> int:
    return time.monotonic_ns() // 1000


class Indefinite(Exception):
    """No verdict: the operation may or may not have taken effect."""


@dataclass
class Event:
    process: str
    kind: str
    key: str
    call_us: int
    interface: str
    node: str
    value: Any = None
    ret_us: int | None = None
    output: Any = None
    error: str = ""

    def done(self, output: Any = None) -> None:
        self.ret_us, self.output = now_us(), output

    def unknown(self, error: str) -> None:
        self.error = error

    def as_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in (None, "")}


@dataclass
class History:
    events: list[Event] = field(default_factory=list)

    def begin(self, process: str, kind: str, key: str, interface: str, node: str, value: Any = None) -> Event:
        event = Event(process, kind, key, now_us(), interface, node, value)
        self.events.append(event)
        return event

    def of(self, *kinds: str) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def succeeded_after(self, since_us: int, *kinds: str) -> int:
        return sum(1 for e in self.of(*kinds) if e.ret_us is not None and e.call_us >= since_us)


# -- the two interfaces, as one shape -------------------------------------------------------


class HttpNode:
    """One node's gateway: every non-verdict answer raises Indefinite."""

    def __init__(self, session: aiohttp.ClientSession, node: str, url: str) -> None:
        self.session, self.node, self.url = session, node, url

    async def request(self, method: str, path: str, *, verdicts: tuple[int, ...] = (), **kw: Any) -> Any:
        try:
            async with self.session.request(method, self.url + path, **kw) as r:
                body = await r.json(content_type=None)
                if r.status == 200 or r.status in verdicts:
                    return r.status, body
                raise Indefinite(f"{r.status} {body.get('error') if isinstance(body, dict) else body}")
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            raise Indefinite(f"{type(e).__name__}: {e}") from None


def http_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=OP_TIMEOUT_S))


async def native_client(addresses: list[str], cache_node: str | None = None) -> AsyncClient:
    client = AsyncClient(addresses, timeout_s=OP_TIMEOUT_S, attempt_timeout_s=0.5, cache_node=cache_node)
    await client.connect()
    return client


def _indefinite(e: SyncfabError) -> Indefinite:
    return Indefinite(f"{e.code}: {e.message}")


# -- KV registers -----------------------------------------------------------------------------


async def kv_worker(
    h: History, process: str, rng: random.Random, keys: list[str], stop: asyncio.Event, target: Any
) -> None:
    """put (a value never written before) / get / delete on a few keys."""
    serial = itertools.count()
    interface = "http" if isinstance(target, HttpNode) else "native"
    node = target.node if isinstance(target, HttpNode) else "leader"
    while not stop.is_set():
        key = rng.choice(keys)
        kind = rng.choices(["get", "put", "delete"], [5, 4, 1])[0]
        value = f"{process}:{next(serial)}" if kind == "put" else None
        e = h.begin(process, kind, key, interface, node, value)
        try:
            e.done(await _kv_op(target, kind, key, value))
        except Indefinite as err:
            e.unknown(str(err))
        await _think(rng, e)


def _think(rng: random.Random, e: Event) -> Any:
    return asyncio.sleep(rng.uniform(0, THINK_S_MAX) + (BACKOFF_S if e.ret_us is None else 0))


async def _kv_op(target: Any, kind: str, key: str, value: Any) -> Any:
    if isinstance(target, HttpNode):
        if kind == "get":
            status, body = await target.request("GET", f"/kv/{key}", verdicts=(404,))
            return body["value"] if status == 200 else None
        if kind == "put":
            await target.request("PUT", f"/kv/{key}", json=value)
            return None
        await target.request("DELETE", f"/kv/{key}", verdicts=(404,))
        return None
    try:
        if kind == "get":
            return await target.get(key, None)
        if kind == "put":
            await target.put(key, value)
            return None
        await target.delete(key)
        return None
    except NotFound:
        return None
    except SyncfabError as e:
        raise _indefinite(e) from None


# -- the cache as registers with compare-and-set ------------------------------------------------


async def cache_worker(
    h: History, process: str, rng: random.Random, keys: list[str], stop: asyncio.Event, target: Any, node: str
) -> None:
    """read / write / compare-and-set / delete through one node's cache (writes write_through,
    or write_back for a key ending in WRITE_BACK_SUFFIX). A CAS expects the version (and so
    the value) this worker last saw of the key."""
    serial = itertools.count()
    seen: dict[str, tuple[int, Any]] = {}  # key -> (version, value) last observed
    interface = "http" if isinstance(target, HttpNode) else "native"
    while not stop.is_set():
        key = rng.choice(keys)
        kind = rng.choices(["read", "write", "cas", "delete"], [5, 3, 2, 1])[0]
        value = f"{process}:{next(serial)}" if kind in ("write", "cas") else None
        expected = seen.get(key, (0, None))
        e = h.begin(process, kind, key, interface, node, value)
        if kind == "cas":
            e.output = {"expected_version": expected[0], "expected_value": expected[1]}
        try:
            out = await _cache_op(target, kind, key, value, expected[0])
        except Indefinite as err:
            e.unknown(str(err))
        else:
            if kind == "cas":
                out = {**e.output, **out}
            e.done(out)
            if kind == "read":
                seen[key] = (out["version"], out["value"]) if out["found"] else (0, None)
            elif kind in ("write", "cas") and "version" in out:
                seen[key] = (out["version"], value)
            elif kind == "cas" and "current_version" in out:
                seen.pop(key, None)  # read it again before the next CAS
            elif kind == "delete":
                seen[key] = (0, None)
        await _think(rng, e)


async def _cache_op(target: Any, kind: str, key: str, value: Any, expected_version: int) -> dict[str, Any]:
    if isinstance(target, HttpNode):
        if kind == "read":
            status, body = await target.request("GET", "/cache/read", params={"key": key}, verdicts=(404,))
            if status == 404:
                return {"found": False}
            return {"found": True, **{k: body[k] for k in ("value", "version", "state", "hit")}}
        if kind == "delete":
            await target.request("POST", "/cache/delete", json={"key": key})
            return {}
        body = {"key": key, "value": value}
        if key.endswith(WRITE_BACK_SUFFIX):
            body["policy"] = "write_back"
        if kind == "cas":
            body["expected_version"] = expected_version
        status, reply = await target.request("POST", "/cache/write", json=body, verdicts=(409,))
        if status == 409:
            if reply.get("error") != "version_mismatch":
                raise Indefinite(f"409 {reply}")
            return {"current_version": reply.get("version")}
        return {"version": reply["version"], "state": reply["state"]}
    try:
        if kind == "read":
            try:
                found = await target.cache.read(key)
            except NotFound:
                return {"found": False}
            return {
                "found": True,
                "value": found.value,
                "version": found.version,
                "state": found.state,
                "hit": found.hit,
            }
        if kind == "delete":
            await target.cache.delete(key)
            return {}
        expected = expected_version if kind == "cas" else None
        policy = "write_back" if key.endswith(WRITE_BACK_SUFFIX) else "write_through"
        try:
            written = await target.cache.write(key, value, policy=policy, expected_version=expected)
        except VersionMismatch as e:
            return {"current_version": (e.detail or {}).get("version")}
        return {"version": written.version, "state": written.state}
    except SyncfabError as e:
        raise _indefinite(e) from None


async def directory_poller(
    h: History, cluster: Any, keys: list[str], stop: asyncio.Event, session: aiohttp.ClientSession
) -> None:
    """Snapshots of each key's directory at its home (``GET /cache/line``), asked of every
    node in turn (each forwards to the home it knows)."""
    for i in itertools.count():
        if stop.is_set():
            return
        node = cluster.ids[i % len(cluster.ids)]
        target = HttpNode(session, node, cluster.url(node))
        for key in keys:
            e = h.begin("directory", "line", key, "http", node)
            try:
                _, body = await target.request("GET", "/cache/line", params={"key": key}, verdicts=(404,))
            except Indefinite as err:
                e.unknown(str(err))
            else:
                e.done(body)
        await asyncio.sleep(0.2)


# -- locks, and the resource they protect ----------------------------------------------------


@dataclass
class FencedResource:
    """What a lock protects, on the test's side: it takes a holder's write only with a fencing
    token no smaller than the largest it has taken, and records every attempt."""

    name: str
    max_token: int = 0
    accesses: list[dict[str, Any]] = field(default_factory=list)

    def access(self, token: int, process: str) -> bool:
        accepted = token >= self.max_token
        self.accesses.append(
            {
                "t_us": now_us(),
                "process": process,
                "token": token,
                "accepted": accepted,
                "max": self.max_token,
            }
        )
        self.max_token = max(self.max_token, token)
        return accepted


async def lock_worker(
    h: History,
    process: str,
    rng: random.Random,
    resources: dict[str, FencedResource],
    stop: asyncio.Event,
    target: Any,
) -> None:
    """Acquire an exclusive lock (waiting up to a second), use its resource a few times while
    the lease surely lasts, release. Over HTTP every attempt is a new owner id."""
    serial = itertools.count()
    interface = "http" if isinstance(target, HttpNode) else "native"
    node = target.node if isinstance(target, HttpNode) else "leader"
    while not stop.is_set():
        name = rng.choice(sorted(resources))
        owner = f"{process}-{next(serial)}" if interface == "http" else target.client_id
        e = h.begin(process, "acquire", name, interface, node, owner)
        try:
            token = await _acquire(target, name, owner)
        except Indefinite as err:
            e.unknown(str(err))
            await _release(target, name, owner)  # best effort: it may have been granted
            await _think(rng, e)
            continue
        e.done(token)
        if token is None:  # lock_timeout or deadlock: not granted
            continue
        safe_until_us = e.call_us + round(LOCK_SAFE_S * 1e6)
        # Half the holds use the resource until the lease it is sure of ends: a leader change
        # or an expiry decided too early then falls inside a hold.
        hold_until_us = safe_until_us if rng.random() < 0.5 else now_us() + rng.randint(0, 800_000)
        while True:
            resources[name].access(token, process)
            await asyncio.sleep(rng.uniform(0.05, 0.3))
            if now_us() >= min(hold_until_us, safe_until_us):
                break
        r = h.begin(process, "release", name, interface, node, owner)
        try:
            await _release(target, name, owner, definite=True)
        except Indefinite as err:
            r.unknown(str(err))
        else:
            r.done(token)
        await asyncio.sleep(rng.uniform(0, THINK_S_MAX))


async def _acquire(target: Any, resource: str, owner: str) -> int | None:
    if isinstance(target, HttpNode):
        body = {"resource": resource, "mode": "exclusive", "client_id": owner}
        body |= {"wait_ms": LOCK_WAIT_MS, "ttl_ms": LOCK_TTL_MS}
        status, reply = await target.request("POST", "/lock/acquire", json=body, verdicts=(408, 409))
        return int(reply["fencing_token"]) if status == 200 else None
    try:
        grant = await target.acquire(resource, "exclusive", wait_ms=LOCK_WAIT_MS, ttl_ms=LOCK_TTL_MS)
    except LockTimeout:
        return None
    except SyncfabError as e:
        if e.code == "deadlock":
            return None
        raise _indefinite(e) from None
    return grant.fencing_token


async def _release(target: Any, resource: str, owner: str, *, definite: bool = False) -> None:
    try:
        if isinstance(target, HttpNode):
            await target.request("POST", "/lock/release", json={"resource": resource, "client_id": owner})
        else:
            await target.release(resource)
    except (Indefinite, SyncfabError) as e:
        if definite:
            raise Indefinite(str(e)) from None


# -- a queue where every produced id is counted ------------------------------------------------


async def producer(
    h: History, process: str, rng: random.Random, queue: str, stop: asyncio.Event, target: Any
) -> None:
    serial = itertools.count()
    interface = "http" if isinstance(target, HttpNode) else "native"
    node = target.node if isinstance(target, HttpNode) else "leader"
    while not stop.is_set():
        data_id = f"{process}:{next(serial)}"
        e = h.begin(process, "produce", queue, interface, node, data_id)
        try:
            if isinstance(target, HttpNode):
                _, body = await target.request(
                    "POST", "/queue/produce", json={"queue": queue, "data": {"id": data_id}}
                )
                e.done(body["message_id"])
            else:
                e.done(await target.produce(queue, {"id": data_id}))
        except SyncfabError as err:
            e.unknown(f"{err.code}: {err.message}")
        except Indefinite as err:
            e.unknown(str(err))
        await _think(rng, e)


async def consume_once(h: History, process: str, queue: str, target: Any, wait_ms: int) -> int:
    """One consume and the ack of everything it got; returns how many messages came."""
    interface = "http" if isinstance(target, HttpNode) else "native"
    node = target.node if isinstance(target, HttpNode) else "leader"
    e = h.begin(process, "consume", queue, interface, node)
    try:
        if isinstance(target, HttpNode):
            params = {"queue": queue, "consumer": process, "max": "8"}
            params |= {"visibility_ms": str(VISIBILITY_MS), "wait_ms": str(wait_ms)}
            _, body = await target.request("GET", "/queue/consume", params=params)
            messages = body["messages"]
        else:
            messages = await target.consume(
                queue, process, max=8, visibility_ms=VISIBILITY_MS, wait_ms=wait_ms
            )
    except SyncfabError as err:
        e.unknown(f"{err.code}: {err.message}")
        return 0
    except Indefinite as err:
        e.unknown(str(err))
        return 0
    got = [(m["message_id"], m["data"]["id"]) for m in messages]
    e.done(got)
    if not got:
        return 0
    ids = [mid for mid, _ in got]
    a = h.begin(process, "ack", queue, interface, node, ids)
    try:
        if isinstance(target, HttpNode):
            _, body = await target.request("POST", "/queue/ack", json={"queue": queue, "message_ids": ids})
            a.done(list(body.get("not_found", [])))
        else:
            acked = await target.ack(queue, ids)
            # The native ack answers a count only: it names no id, so it is definite for all
            # of them only when it covers them all.
            if acked == len(ids):
                a.done([])
            else:
                a.unknown(f"acked {acked} of {len(ids)}")
    except SyncfabError as err:
        a.unknown(f"{err.code}: {err.message}")
    except Indefinite as err:
        a.unknown(str(err))
    return len(got)


async def consumer(
    h: History, process: str, rng: random.Random, queue: str, stop: asyncio.Event, target: Any
) -> None:
    while not stop.is_set():
        await consume_once(h, process, queue, target, wait_ms=300)
        await asyncio.sleep(rng.uniform(0, THINK_S_MAX))
