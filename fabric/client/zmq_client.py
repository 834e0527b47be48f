"""The native client: DEALER sockets to the nodes, driving a ``ClientCore``.

Every decision — request ids, which node an op goes to, leader hints, deadlines, retries,
coalescing lock ops and produces — is the core's (fabric/core/client_core.py), the same class
the simulator runs. This module only moves its frames: it learns the cluster from any node,
sends what the core has once per loop iteration, feeds it what the sockets drain, and keeps
one timer at the core's next deadline.

``AsyncClient`` is the asyncio API; fabric/client/blocking.py's ``Client`` is the same thing
for blocking code.

A cluster running CURVE (fabric/server/curve.py) needs ``curve_server_key`` (the nodes' public
key, or a mapping of node address to each one's) and this client's own pair, whose public key
the nodes accept; keys are Z85 text, as ``syncfab keygen`` writes them. Without an accepted key
a client's connections are refused at the handshake, and its calls time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

import syncfab.fabric.client.fanout as fanout
from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.locks import LockInfo
from syncfab.actors.queues import ConfigureQueue, NewMessage
from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.client.cache import CachedValue, CacheWriteResult, ClientCache
from syncfab.fabric.client.core_driver import CoreDriver
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
from syncfab.fabric.core.client_core import ClientConfig, ClientCore
from syncfab.fabric.core.codec import ClusterInfo, Requests, frame_of

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


CurveKey = str | bytes  # Z85 text


@dataclass(frozen=True, slots=True)
class _Curve:
    """A CURVE client's keys: its own pair and the server key of each node it dials."""

    public: bytes
    secret: bytes
    server_key: bytes | None  # every node's, when they share one
    server_keys: Mapping[str, bytes]  # address -> that node's, otherwise

    @classmethod
    def of(
        cls,
        server_key: CurveKey | Mapping[str, CurveKey],
        secret_key: CurveKey | None,
        public_key: CurveKey | None,
    ) -> _Curve:
        if secret_key is None:
            raise ValueError("curve_server_key needs curve_secret_key: this client's own key")
        secret = _z85(secret_key)
        public = _z85(public_key) if public_key is not None else zmq.curve_public(secret)
        if zmq.curve_public(secret) != public:
            raise ValueError("curve_public_key is not the public half of curve_secret_key")
        if isinstance(server_key, Mapping):
            return cls(public, secret, None, {a: _z85(k) for a, k in server_key.items()})
        return cls(public, secret, _z85(server_key), {})

    def server_key_of(self, address: str) -> bytes:
        key = self.server_keys.get(address, self.server_key)
        if key is None:
            raise ValueError(f"no CURVE server key for {address} in curve_server_key")
        return key


def _z85(key: CurveKey) -> bytes:
    raw = (key.encode("ascii") if isinstance(key, str) else key).strip()
    if len(raw) != 40:
        raise ValueError("a CURVE key is 40 characters of Z85 text")
    return raw


class _Link:
    """One DEALER to one node. What the core has for it in one loop iteration leaves as one
    frame (``Requests``); replies are drained in bulk when the socket's FD fires."""

    def __init__(self, ctx: zmq.Context, address: str, client: AsyncClient, curve: _Curve | None) -> None:
        self.address = address
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 50)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if curve is not None:
            self.sock.setsockopt(zmq.CURVE_PUBLICKEY, curve.public)
            self.sock.setsockopt(zmq.CURVE_SECRETKEY, curve.secret)
            self.sock.setsockopt(zmq.CURVE_SERVERKEY, curve.server_key_of(address))
        self.sock.connect(f"tcp://{address}")
        self.fd = self.sock.getsockopt(zmq.FD)
        self._client = client

    def send(self, requests: list[bytes]) -> None:
        # A full queue (100k requests) drops this frame; the core times its calls out and retries.
        # (try, not contextlib.suppress: that is three Python calls a frame.)
        try:  # noqa: SIM105
            self.sock.send(frame_of(Requests, requests), _NOBLOCK)
        except zmq.Again:
            pass

    def drain(self) -> None:
        # Every frame is a reply frame, however the node split them into messages.
        recv, receive = self.sock.recv, self._client._core.receive
        now_ms = self._client._now_ms()
        got = False
        while True:
            try:
                data = recv(_NOBLOCK)
            except zmq.Again:
                break
            receive(data, now_ms)
            got = True
        if got and self._client._driver is not None:
            self._client._driver.settle()


class AsyncClient:
    """The asyncio driver of a ``ClientCore`` (fabric/core/client_core.py, where every decision
    is made) over one DEALER per node."""

    def __init__(
        self,
        nodes: Sequence[str],
        *,
        client_id: str | None = None,
        timeout_s: float = 10.0,
        attempt_timeout_s: float = 1.0,
        attempts_max: int = 12,
        cache_node: str | None = None,
        curve_server_key: CurveKey | Mapping[str, CurveKey] | None = None,
        curve_secret_key: CurveKey | None = None,
        curve_public_key: CurveKey | None = None,
    ) -> None:
        """``curve_*``: a cluster running CURVE's server key (one for all, or node address ->
        key) and this client's key pair (the public half derived from the secret if not given)."""
        if not nodes:
            raise ValueError("give at least one node address (host:port)")
        if curve_server_key is None and (curve_secret_key or curve_public_key):
            raise ValueError("a CURVE key pair needs curve_server_key: the nodes' public key")
        self._curve = (
            _Curve.of(curve_server_key, curve_secret_key, curve_public_key)
            if curve_server_key is not None
            else None
        )
        self.seeds = list(nodes)
        self.client_id = client_id or f"client/{os.urandom(8).hex()}"
        config = ClientConfig(
            timeout_ms=round(timeout_s * 1000),
            attempt_timeout_ms=round(attempt_timeout_s * 1000),
            attempts_max=attempts_max,
        )
        cache_node = cache_node or self.seeds[0]
        self._core = ClientCore(
            self.client_id,
            [*self.seeds, cache_node],
            random.Random(int.from_bytes(os.urandom(8), "big")),
            config,
        )
        self._links: dict[str, _Link] = {}  # address -> link
        self._driver: CoreDriver | None = None  # once connected: the loop is known then
        self.locks = LockSession(self._begin, self._cancelled, self.client_id)
        # ``client.cache.read(key)`` ...: served by this node's near cache (fabric/client/cache.py).
        self.cache = ClientCache(self, cache_node)
        self._ctx = zmq.Context.instance()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def shard_count(self) -> int:
        return self._core.shard_count

    @property
    def members(self) -> dict[str, str]:
        """node id -> address"""
        return self._core.members

    @property
    def leaders(self) -> dict[int, str]:
        """group -> node id, as the latest replies named it"""
        return self._core.leaders

    @property
    def stats(self) -> dict[str, int]:
        """Calls, retries, timeouts, and how many lock ops and produces shared batches."""
        return self._core.stats

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._driver = CoreDriver(self._core, self._loop, self._send)
        for address in self._core.nodes:
            self._link(address)
        await self.refresh()

    async def close(self) -> None:
        """Release this client's locks (if the cluster answers), then the sockets."""
        with contextlib.suppress(SyncfabError):
            await self.locks.close()
        if self._driver is not None:
            self._driver.close()
        for link in self._links.values():
            if self._loop is not None:
                self._loop.remove_reader(link.fd)
            link.sock.close(linger=0)
        self._links.clear()

    async def refresh(self) -> dict[str, Any]:
        """Learn members, shard count and leaders from any node."""
        view = await self.cluster()
        self._core.learn(view)
        for address in self._core.nodes:
            self._link(address)
        return view

    # -- operations -----------------------------------------------------------------------

    # put, get, delete and produce await the driver's future in their own frame (not through
    # call(), whose wait is a coroutine more), and tell the driver if they are cancelled there.

    # put, get and delete repeat the same few lines on purpose: a shared helper coroutine would
    # be one more frame a call on the client's hottest path (README: the client alone).
    async def put(self, key: str, value: Any) -> int:
        """Store ``value`` (any JSON-like value) under ``key``; returns its log index."""
        driver = self._driver
        assert driver is not None, "call connect() first"
        handle = self._core.call(Put(key, value), int(driver.loop.time() * 1000))
        try:
            result = await driver.future(handle)
        except asyncio.CancelledError:
            driver.cancelled(handle)
            raise
        return self._value(result)

    async def get(self, key: str, default: Any = _MISSING) -> Any:
        """A linearizable read. Raises NotFound unless ``default`` is given."""
        driver = self._driver
        assert driver is not None, "call connect() first"
        handle = self._core.call(Get(key), int(driver.loop.time() * 1000))
        try:
            result = await driver.future(handle)
        except asyncio.CancelledError:
            driver.cancelled(handle)
            raise
        if isinstance(result, Err) and result.code == "not_found" and default is not _MISSING:
            return default
        return self._value(result)

    async def delete(self, key: str) -> bool:
        driver = self._driver
        assert driver is not None, "call connect() first"
        handle = self._core.call(Delete(key), int(driver.loop.time() * 1000))
        try:
            result = await driver.future(handle)
        except asyncio.CancelledError:
            driver.cancelled(handle)
            raise
        return self._value(result)

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
        Concurrent calls share requests on the wire (fabric/core/client_core.py)."""
        driver = self._driver
        assert driver is not None, "call connect() first"
        now_ms = int(driver.loop.time() * 1000)  # the driver's clock, inline (CoreDriver.now_ms)
        handle = self._core.produce(queue, NewMessage(data, key, headers, dedup_id), now_ms)
        try:
            result = await driver.future(handle)
        except asyncio.CancelledError:
            driver.cancelled(handle)
            raise
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

    def call(self, op: Any) -> Coroutine[Any, Any, Result]:
        """Run ``op`` on its group's leader: routed, retried, coalesced and timed by the core.
        The call starts here (await the result); not a coroutine itself, so every call has one
        frame less. The clock and the driver's wait inline: this is every call's path."""
        driver = self._driver
        assert driver is not None, "call connect() first"
        return driver.wait(self._core.call(op, int(driver.loop.time() * 1000)))

    def _begin(self, op: Any) -> tuple[int, asyncio.Future[Result]]:
        """``call`` without the driver's wait coroutine: the handle and its future, for a caller
        that awaits the future in a frame of its own (the lock session) and, cancelled there,
        calls ``_cancelled(handle)``."""
        driver = self._driver
        assert driver is not None, "call connect() first"
        handle = self._core.call(op, int(driver.loop.time() * 1000))
        return handle, driver.future(handle)

    def _cancelled(self, handle: int) -> None:
        assert self._driver is not None
        self._driver.cancelled(handle)

    async def call_at(self, address: str, op: Any) -> Result:
        """Send ``op`` to the node at ``address`` (a cache op: that node's cache serves it)."""
        self._link(address)
        driver = self._driver
        assert driver is not None, "call connect() first"
        return await driver.wait(self._core.call(op, self._now_ms(), node=address))

    # -- plumbing -------------------------------------------------------------------------

    def _now_ms(self) -> int:
        loop = self._loop
        assert loop is not None, "call connect() first"
        return int(loop.time() * 1000)  # the driver's clock (CoreDriver.now_ms)

    def _send(self, out: dict[str, list[bytes]]) -> None:
        for address, requests in out.items():
            link = self._link(address)
            link.send(requests)
            # ZeroMQ FDs are edge-triggered and a send can swallow the edge of a pending reply:
            # look once more (asking EVENTS costs less than a receive that finds nothing).
            if link.sock.get(_EVENTS) & _POLLIN:
                link.drain()

    def _link(self, address: str) -> _Link:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(self._ctx, address, self, self._curve)
            assert self._loop is not None
            self._loop.add_reader(link.fd, link.drain)
        return link
