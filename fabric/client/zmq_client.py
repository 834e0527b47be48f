"""The native client: DEALER sockets to the nodes, requests routed to each group's leader.

It learns the cluster (members, shard count, shard leaders) from any node, computes a key's
shard itself and sends straight to that shard's leader. Every request carries this client's
id and a request id, so a retry — after a timeout, a leader change, a dead node — is applied
once. Retries are bounded by a deadline and a count, rotate across nodes, and follow the
leader hints replies carry.

``AsyncClient`` is the asyncio API; fabric/client/blocking.py's ``Client`` is the same thing
for blocking code.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

import zmq

import syncfab.fabric.client.fanout as fanout
from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.locks import Acquire, LockInfo, Release
from syncfab.actors.queues import ConfigureQueue, NewMessage
from syncfab.actors.results import RETRYABLE, Err, Ok, Result
from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.client.cache import CachedValue, CacheWriteResult, ClientCache
from syncfab.fabric.client.lock_batcher import LockBatcher, RequestSlots
from syncfab.fabric.client.locks import (
    Deadlock,
    Grant,
    HeldLock,
    LockSession,
    LockTimeout,
    NotFound,
    SyncfabError,
    VersionMismatch,
    raise_for,
)
from syncfab.fabric.client.produce_batcher import ProduceBatcher
from syncfab.fabric.core.codec import ClusterInfo, Request, RequestIds, Requests, encode, frame_of, replies_in
from syncfab.fabric.core.routing import group_for, wait_of

__all__ = [
    "AsyncClient",
    "CacheWriteResult",
    "CachedValue",
    "Deadlock",
    "Grant",
    "LockTimeout",
    "NotFound",
    "SyncfabError",
    "VersionMismatch",
]

_MISSING: Any = object()
# Plain ints: pyzmq's enum members cost a conversion on every call.
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class _Link:
    """One DEALER to one node. Requests queued in one loop iteration leave as one frame
    (``Requests``); replies are drained in bulk when the socket's FD fires."""

    def __init__(self, ctx: zmq.Context, address: str, client: AsyncClient) -> None:
        self.address = address
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.sock.connect(f"tcp://{address}")
        self.fd = self.sock.getsockopt(zmq.FD)
        self.outbox: list[bytes] = []
        self._client = client

    def flush(self) -> bool:
        """Send what is queued; True if the socket was used (which may swallow its FD's
        signal of a reply that arrived meanwhile)."""
        if not self.outbox:
            return False
        # A full queue (100k requests) drops this batch; its callers time out and retry.
        with contextlib.suppress(zmq.Again):
            self.sock.send(frame_of(Requests, self.outbox), _NOBLOCK)
        self.outbox = []
        return True

    def drain(self) -> None:
        # Every frame is a reply frame, however the node split them into messages.
        recv, resolve = self.sock.recv, self._client._resolve
        while True:
            try:
                data = recv(_NOBLOCK)
            except zmq.Again:
                return
            resolve(data)


_TIMED_OUT: Any = object()
SWEEP_INTERVAL_S = 0.05


class AsyncClient:
    def __init__(
        self,
        nodes: Sequence[str],
        *,
        client_id: str | None = None,
        timeout_s: float = 10.0,
        attempt_timeout_s: float = 1.0,
        attempts_max: int = 12,
        cache_node: str | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("give at least one node address (host:port)")
        self.seeds = list(nodes)
        self.client_id = client_id or f"client/{os.urandom(8).hex()}"
        self.timeout_s = timeout_s
        self.attempt_timeout_s = attempt_timeout_s
        self.attempts_max = attempts_max
        self.ids = RequestIds()
        self.shard_count = 0
        self.members: dict[str, str] = {}  # node id -> address
        self.leaders: dict[int, str] = {}  # group -> node id
        self._links: dict[str, _Link] = {}  # address -> link
        self._futures: dict[int, asyncio.Future[Result]] = {}
        self._hints: dict[int, str] = {}  # request id -> leader named by its latest reply
        self._deadlines: dict[int, float] = {}  # request id -> end of its current attempt
        self._sweeper: asyncio.TimerHandle | None = None
        self.locks = LockSession(self.call, self.client_id)
        # ``client.cache.read(key)`` ...: served by this node's near cache (fabric/client/cache.py).
        self.cache = ClientCache(self, cache_node or self.seeds[0])
        self._produces = ProduceBatcher(self.call, self._shards)
        self._lock_ops = LockBatcher(
            RequestSlots(
                self._call_as,
                self.ids.reserve,
                self._expect,
                self._forget,
                self._schedule_flush,
                lambda: self.attempt_timeout_s,
            )
        )
        self._rotation = itertools.count()
        self._ctx = zmq.Context.instance()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        for address in [*self.seeds, self.cache.node]:
            self._link(address)
        await self.refresh()

    async def close(self) -> None:
        """Release this client's locks (if the cluster answers), then the sockets."""
        with contextlib.suppress(SyncfabError):
            await self.locks.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for link in self._links.values():
            if self._loop is not None:
                self._loop.remove_reader(link.fd)
            link.sock.close(linger=0)
        self._links.clear()

    async def refresh(self) -> dict[str, Any]:
        """Learn members, shard count and leaders from any node."""
        view = await self.cluster()
        self.members = {m["id"]: m["address"] for m in view["members"]}
        self.shard_count = len(view["shards"])
        self.leaders = {s["id"]: s["leader"] for s in view["shards"] if s["leader"]}
        if view["leader"]:
            self.leaders[CONTROL_GROUP] = view["leader"]
        for address in self.members.values():
            self._link(address)
        return view

    # -- operations -----------------------------------------------------------------------

    async def put(self, key: str, value: Any) -> int:
        """Store ``value`` (any JSON-like value) under ``key``; returns its log index."""
        return self._value(await self.call(Put(key, value)))

    async def get(self, key: str, default: Any = _MISSING) -> Any:
        """A linearizable read. Raises NotFound unless ``default`` is given."""
        result = await self.call(Get(key))
        if isinstance(result, Err) and result.code == "not_found" and default is not _MISSING:
            return default
        return self._value(result)

    async def delete(self, key: str) -> bool:
        return self._value(await self.call(Delete(key)))

    async def cluster(self) -> dict[str, Any]:
        return self._value(await self.call(ClusterInfo()))

    # -- locks (group 0); a lease session keeps this client's locks alive -------------------

    async def acquire(
        self, resource: str, mode: str = "exclusive", *, wait_ms: int = 0, ttl_ms: int | None = None
    ) -> Grant:
        """Take a lock; raises LockTimeout, Deadlock (``.detail["cycle"]``) or SyncfabError."""
        return await self.locks.acquire(resource, mode, wait_ms, ttl_ms)

    async def release(self, resource: str) -> bool:
        return await self.locks.release(resource)

    async def renew(self, ttl_ms: int | None = None) -> int:
        """Extend this client's lease now; returns when it expires (cluster wall clock, ms)."""
        return await self.locks.renew(ttl_ms)

    def lock(
        self, resource: str, mode: str = "exclusive", *, wait_ms: int = 0, ttl_ms: int | None = None
    ) -> HeldLock:
        """``async with client.lock("orders/42", wait_ms=5000) as grant: ...grant.fencing_token``"""
        return HeldLock(self.locks, resource, mode, wait_ms, ttl_ms)

    async def lock_info(self, resource: str) -> dict[str, Any]:
        return self._value(await self.call(LockInfo(resource)))

    # -- queues (every shard holds a slice of every queue) ---------------------------------

    async def produce(
        self,
        queue: str,
        data: Any,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
        dedup_id: str | None = None,
    ) -> str:
        """Returns the message id once the message is durable on a majority of its shard.
        Concurrent calls share requests on the wire (fabric/client/produce_batcher.py)."""
        result = await self._produces.submit(queue, NewMessage(data, key, headers, dedup_id))
        return self._value(result)["message_id"]

    async def produce_batch(self, queue: str, messages: Sequence[NewMessage | Any]) -> list[str]:
        batch = [m if isinstance(m, NewMessage) else NewMessage(m) for m in messages]
        result = await fanout.produce_batch(self.call, self._shards(), queue, batch)
        return self._value(result)["message_ids"]

    async def consume(
        self,
        queue: str,
        consumer: str | None = None,
        *,
        max: int = 1,
        visibility_ms: int | None = None,
        wait_ms: int = 0,
    ) -> list[dict[str, Any]]:
        result = await fanout.consume(
            self.call, self._shards(), queue, consumer or self.client_id, max, visibility_ms, wait_ms
        )
        return self._value(result)["messages"]

    async def messages(
        self,
        queue: str,
        consumer: str | None = None,
        *,
        max: int = 16,
        visibility_ms: int | None = None,
        wait_ms: int = 1_000,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every message, as it comes (long polling); ack each one you are done with."""
        while True:
            for message in await self.consume(
                queue, consumer, max=max, visibility_ms=visibility_ms, wait_ms=wait_ms
            ):
                yield message

    async def ack(self, queue: str, message_ids: Sequence[str]) -> int:
        return self._value(await fanout.settle(self.call, queue, list(message_ids)))["acked"]

    async def nack(self, queue: str, message_ids: Sequence[str]) -> int:
        return self._value(await fanout.settle(self.call, queue, list(message_ids), nack=True))["nacked"]

    async def queue_stats(self, queue: str) -> dict[str, Any]:
        return self._value(await fanout.stats(self.call, self._shards(), queue))

    async def configure_queue(self, queue: str, **settings: int) -> dict[str, Any]:
        settings_op = ConfigureQueue(queue, **settings)
        return self._value(await fanout.configure(self.call, self._shards(), settings_op))

    def _shards(self) -> int:
        if not self.shard_count:
            raise SyncfabError("unavailable", "the client has not learnt the cluster yet")
        return self.shard_count

    @staticmethod
    def _value(result: Result) -> Any:
        if isinstance(result, Err):
            raise_for(result)
        assert isinstance(result, Ok)
        return result.value

    async def call(self, op: Any) -> Result:
        """Send ``op`` to its group's leader (any node when unknown) until it is answered with
        something other than a retryable error, the deadline passes, or tries run out.
        Concurrent lock acquires and releases share requests on the wire
        (fabric/client/lock_batcher.py)."""
        assert self._loop is not None, "call connect() first"
        if type(op) is Acquire or type(op) is Release:
            return await self._lock_ops.call(op)
        return await self._call_as(op, self.ids.next())

    def _call_as(self, op: Any, rid: int) -> Awaitable[Any]:
        """``call`` under a request id already taken (and forgotten once answered). The first
        attempt is queued before this returns; awaiting the result waits and retries."""
        loop = self._loop
        assert loop is not None, "call connect() first"
        group: int | None = None
        if self.shard_count and not isinstance(op, ClusterInfo):
            routed = group_for(op, self.shard_count, self.client_id, rid)
            if isinstance(routed, Err):
                self.ids.done(rid)
                answered: asyncio.Future[Any] = loop.create_future()
                answered.set_result(routed)
                return answered
            group = routed
        raw = encode(Request(self.client_id, rid, self.ids.acked, op))
        wait_ms, long_poll = wait_of(op)
        deadline = loop.time() + self.timeout_s + wait_ms / 1000
        attempt_timeout_s = self.attempt_timeout_s + (wait_ms / 1000 if long_poll else 0)
        target = self._address_for(group)
        fut = self._attempt(rid, raw, target, deadline, attempt_timeout_s)
        return self._answer(rid, raw, group, target, fut, deadline, attempt_timeout_s)

    def _attempt(
        self, rid: int, raw: bytes, target: str, deadline: float, attempt_timeout_s: float
    ) -> asyncio.Future[Any]:
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[Any] = loop.create_future()
        self._futures[rid] = fut
        self._links[target].outbox.append(raw)
        self._schedule_flush()
        self._deadlines[rid] = loop.time() + min(deadline - loop.time(), attempt_timeout_s)
        self._schedule_sweep()
        return fut

    async def _answer(
        self,
        rid: int,
        raw: bytes,
        group: int | None,
        target: str,
        fut: asyncio.Future[Any],
        deadline: float,
        attempt_timeout_s: float,
    ) -> Any:
        """Until answered with something other than a retryable error, the deadline passes, or
        tries run out; ``fut`` is the first attempt's."""
        loop = self._loop
        assert loop is not None
        backoff_s = 0.01
        result: Any = None
        try:
            for attempt in range(self.attempts_max):
                if attempt:
                    if deadline - loop.time() <= 0:
                        break
                    fut = self._attempt(rid, raw, target, deadline, attempt_timeout_s)
                result = await fut
                if result is _TIMED_OUT:
                    result = self._timeout()
                    target = self._next_address(target)
                    continue
                hint = self._hints.pop(rid, None)
                if hint and group is not None:
                    self.leaders[group] = hint
                if not (isinstance(result, Err) and result.code in RETRYABLE):
                    return result
                tried, target = target, self._address_for(group)
                if target == tried and result.code != "busy":
                    target = self._next_address(tried)
                await asyncio.sleep(min(backoff_s, max(deadline - loop.time(), 0)))
                backoff_s = min(backoff_s * 2, 0.25)
            return self._timeout() if result is None else result
        finally:
            self._futures.pop(rid, None)
            self._deadlines.pop(rid, None)
            self._hints.pop(rid, None)
            self.ids.done(rid)

    async def call_at(self, address: str, op: Any) -> Result:
        """Send ``op`` to the node at ``address`` (a cache op: that node's cache serves it),
        asked again there, then of the other nodes, until answered or out of time."""
        loop = self._loop
        assert loop is not None, "call connect() first"
        rid = self.ids.next()
        raw = encode(Request(self.client_id, rid, self.ids.acked, op))
        deadline = loop.time() + self.timeout_s
        target, backoff_s = address, 0.01
        result: Any = None
        try:
            for attempt in range(self.attempts_max):
                if attempt and deadline - loop.time() <= 0:
                    break
                result = await self._attempt(rid, raw, target, deadline, self.attempt_timeout_s)
                if result is _TIMED_OUT:
                    result = self._timeout()
                    if attempt:  # its own node twice, then the others in turn
                        target = self._next_address(target)
                    continue
                if not (isinstance(result, Err) and result.code in RETRYABLE):
                    return result
                await asyncio.sleep(min(backoff_s, max(deadline - loop.time(), 0)))
                backoff_s = min(backoff_s * 2, 0.25)
            return self._timeout() if result is None else result
        finally:
            self._forget(rid)
            self._deadlines.pop(rid, None)

    # -- plumbing -------------------------------------------------------------------------

    def _expect(self, rid: int) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._futures[rid] = fut
        return fut

    def _forget(self, rid: int) -> None:
        self._futures.pop(rid, None)
        self._hints.pop(rid, None)
        self.ids.done(rid)

    def _timeout(self) -> Err:
        return Err("timeout", f"no answer within {self.timeout_s:g} s")

    def _resolve(self, data: bytes) -> None:
        try:
            replies = replies_in(data)
        except Exception:  # a node's error reply to garbage is still a Reply; ignore the rest
            return
        for reply in replies:
            if reply.leader:
                self._hints[reply.id] = reply.leader
            fut = self._futures.get(reply.id)
            if fut is not None and not fut.done():
                fut.set_result(reply.result)

    def _link(self, address: str) -> _Link:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(self._ctx, address, self)
            assert self._loop is not None
            self._loop.add_reader(link.fd, link.drain)
        return link

    def _address_for(self, group: int | None) -> str:
        leader = self.leaders.get(group) if group is not None else None
        if leader and leader in self.members:
            return self.members[leader]
        addresses = list(self._links)
        return addresses[next(self._rotation) % len(addresses)]

    def _next_address(self, current: str) -> str:
        addresses = list(self._links)
        return addresses[(addresses.index(current) + 1) % len(addresses)]

    def _schedule_sweep(self) -> None:
        # One timer for all requests, not one per request: attempts time out at most
        # SWEEP_INTERVAL_S late, which is noise next to a one-second attempt timeout.
        if self._sweeper is None and self._loop is not None:
            self._sweeper = self._loop.call_later(SWEEP_INTERVAL_S, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        assert self._loop is not None
        now = self._loop.time()
        for rid, deadline in list(self._deadlines.items()):
            if deadline <= now:
                del self._deadlines[rid]
                fut = self._futures.get(rid)
                if fut is not None and not fut.done():
                    fut.set_result(_TIMED_OUT)
        if self._deadlines:
            self._schedule_sweep()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_all)

    def _flush_all(self) -> None:
        self._lock_ops.flush()  # its batches join the outboxes sent now
        self._flush_scheduled = False
        # ZeroMQ FDs are edge-triggered and a send can swallow the edge of a pending reply:
        # look once more at each socket sent on (asking EVENTS costs less than a receive that
        # finds nothing, which raises). The others' FDs still announce what arrives.
        for link in self._links.values():
            if link.flush() and link.sock.get(_EVENTS) & _POLLIN:
                link.drain()
