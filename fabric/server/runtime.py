"""NodeRuntime: the one process around a NodeCore — sockets, disk, clock, event loop.

One turn: drain the ROUTER and SUB sockets in bulk (non-blocking, bounded), hand everything
to the core, run ``core.turn(now)``, send what may leave at once (a leader's AppendEntries go
out before its own fsync, so followers write in parallel) and queue the turn's writes for the
disk writer thread (fabric/server/writer.py), which group-commits every queued turn with one WAL
append and one fsync; only then ``core.apply()`` what is committed, and answer clients. When
a flush is durable the writer thread sends its after-persist messages at once (append acks,
votes) and hands it back to the loop, where ``core.advance`` confirms it, in turn order.
A turn is scheduled when a socket becomes readable, when the core still has work, when the
gateway submits a request, when a write completes, and every ``tick_ms``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import zmq

from syncfab.actors.cache_ops import NEAR_OPS
from syncfab.actors.results import RETRYABLE, Err, Result
from syncfab.fabric.client.produce_batcher import ProduceBatcher
from syncfab.fabric.core.codec import (
    DecodeError,
    PeerBatch,
    Replies,
    Reply,
    Request,
    RequestIds,
    Requests,
    ValidationError,
    decode_inbound,
    decode_reply,
    decode_request,
    encode,
    error_reply,
    frame_of,
)
from syncfab.fabric.core.node import LOCAL_ROUTE, Flush, NodeCore
from syncfab.fabric.core.routing import wait_of
from syncfab.fabric.server.config import ConfigError, NodeSettings
from syncfab.fabric.server.metrics import NodeMetrics
from syncfab.fabric.server.transport import PeerLinks, StreamTracker, Transport, decode_publication
from syncfab.fabric.server.writer import DiskWriter
from syncfab.storage.lmdb_store import LmdbLogStore

log = logging.getLogger("syncfab.node")

ROUTER_FRAMES_PER_TURN_MAX = 4096
SUB_FRAMES_PER_TURN_MAX = 1024
REQUEST_BYTES_MAX = 1 << 20  # the same bound as the HTTP gateway's bodies
# Turns whose writes are queued or being synced; past this the loop stops taking input until
# the disk catches up (backpressure) instead of piling up more.
WRITES_IN_FLIGHT_MAX = 64


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class NodeRuntime:
    def __init__(self, settings: NodeSettings, *, bind_host: str | None = None) -> None:
        self.settings = settings
        self.bind_host = bind_host
        self.epoch = int.from_bytes(os.urandom(6), "big")
        self.client_id = f"{settings.node_id}/gateway/{self.epoch:x}"
        self.ids = RequestIds()
        # The gateway's single produces share requests to each shard (fabric/client/produce_batcher.py).
        self.produces = ProduceBatcher(self.call, lambda: self.settings.core.shard_count)
        self.turns = 0
        self.created_s = time.time()
        self.metrics = NodeMetrics(self)
        self.streams = StreamTracker()
        self._futures: dict[int, asyncio.Future[Result]] = {}
        self._hits: dict[bytes, list[bytes]] = {}  # cache hits answered while draining
        self._scheduled = False
        self._closed = False
        self._router_readable = self._sub_readable = True
        self.store: LmdbLogStore
        self.core: NodeCore
        self.transport: Transport
        self._loop: asyncio.AbstractEventLoop
        self._ticker: asyncio.TimerHandle | None = None
        self.writer: DiskWriter
        self.on_fatal: Callable[[], None] | None = None  # the process's way to stop

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        os.makedirs(s.data_dir, exist_ok=True)
        self._check_identity()
        self.store = LmdbLogStore(os.path.join(s.data_dir, "log"), fsync=s.fsync)
        # The disk thread needs the GIL for a moment after each fsync to hand the result back;
        # with CPython's default 5 ms switch interval a busy loop would sit on it that long.
        sys.setswitchinterval(0.0005)
        stored = {g: self.store.load(g) for g in self.store.groups()}
        self.core = NodeCore(
            s.node_id,
            s.peers,
            stored=stored,
            rng=random.Random(self.epoch),
            now_ms=monotonic_ms(),
            config=s.core,
        )
        self.transport = Transport(
            zmq.Context.instance(), s.node_id, s.peers, epoch=self.epoch, bind_host=self.bind_host
        )
        # The writer thread's own sockets: it sends what waited for its fsync (fabric/server/writer.py).
        self._durable_links = PeerLinks(zmq.Context.instance(), s.node_id, s.peers, name="/disk")
        self.writer = DiskWriter(
            self.store,
            self._loop,
            self._on_written,
            self._on_write_failed,
            self.metrics.wal_fold_seconds.observe,  # thread-safe
            self._send_durable,
        )
        self._loop.add_reader(self.transport.router.getsockopt(zmq.FD), self._router_ready)
        self._loop.add_reader(self.transport.sub.getsockopt(zmq.FD), self._sub_ready)
        self._tick()
        log.info(
            "node %s up: router %s, %d groups, fsync %s",
            s.node_id,
            s.address,
            len(self.core.groups),
            "on" if s.fsync else "off",
        )

    async def write_back_cache(self, timeout_s: float = 2.0) -> int:
        """Clean shutdown: send every dirty (write_back) line home and wait, up to ``timeout_s``,
        for memory to have them. Returns how many were still on their way."""
        near = self.core.cache.near
        if not near.write_back_all(monotonic_ms()):
            return 0
        deadline = self._loop.time() + timeout_s
        while near.returning and self._loop.time() < deadline and not self._closed:
            self._wake()
            await asyncio.sleep(0.01)
        if near.returning:
            log.warning("%d dirty cache lines did not reach their home before shutdown", len(near.returning))
        return len(near.returning)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        self._loop.remove_reader(self.transport.router.getsockopt(zmq.FD))
        self._loop.remove_reader(self.transport.sub.getsockopt(zmq.FD))
        self.transport.close()
        self.writer.stop()
        self._durable_links.close()  # the writer thread's: closed once it has ended
        self.store.close()
        for fut in self._futures.values():
            if not fut.done():
                fut.set_result(Err("unavailable", "node shutting down"))

    def _check_identity(self) -> None:
        """A data dir belongs to one node of one cluster shape: refuse to start on a mismatch
        (a changed shard count would silently re-home every key)."""
        s = self.settings
        path = os.path.join(s.data_dir, "cluster.json")
        identity = {"node": s.node_id, "members": sorted(s.peers), "shards": s.core.shard_count}
        if os.path.exists(path):
            with open(path) as f:
                found = json.load(f)
            if found != identity:
                raise ConfigError(f"{path} was written for {found}, not {identity}")
        else:
            with open(path + ".tmp", "w") as f:
                json.dump(identity, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(path + ".tmp", path)

    # -- turns ----------------------------------------------------------------------------

    def _tick(self) -> None:
        if self._closed:
            return
        self._wake()
        self._ticker = self._loop.call_later(self.settings.tick_ms / 1000, self._tick)

    def _router_ready(self) -> None:
        self._router_readable = True
        self._wake()

    def _sub_ready(self) -> None:
        self._sub_readable = True
        self._wake()

    def _wake(self) -> None:
        if not self._scheduled and not self._closed:
            self._scheduled = True
            self._loop.call_soon(self._turn)

    def _turn(self) -> None:
        self._scheduled = False
        if self._closed:
            return
        t, core = self.transport, self.core
        # Only sockets that signalled: an empty non-blocking receive costs an exception.
        if self._router_readable:
            self._router_readable = False
            for frames in t.drain(t.router, ROUTER_FRAMES_PER_TURN_MAX):
                self._on_router_frames(frames)
            if self._hits:
                self._send_hits()
        if self._sub_readable:
            self._sub_readable = False
            for frames in t.drain(t.sub, SUB_FRAMES_PER_TURN_MAX):
                self._on_publication(frames)

        flush = core.turn(monotonic_ms(), time.time_ns() // 1_000_000)
        self._send_peers(flush.sends)
        durable_now = not (flush.writes or (flush.sends_after_persist and self.writer.in_flight))
        if not durable_now:
            # After-persist messages may acknowledge entries a queued write carries.
            self.writer.submit(flush)
        # Entries go out and to disk first; then this replica applies what is committed.
        applied = core.apply()
        self._send_peers(applied.sends)
        if flush.replies or applied.replies:
            self._send_replies(flush.replies + applied.replies)
        for topic, msg in flush.publishes + applied.publishes:
            t.publish(topic, msg)
        if durable_now:
            # Nothing here waits for the disk (readies without writes advance in any order
            # relative to pending writes); queueing it would only make the thread spin.
            self._send_after_persist([flush], self.transport.send_peer)
            self._advance([flush])
        self.turns += 1
        # Edge-triggered FDs: a socket may hold messages its FD will not announce again.
        self._router_readable, self._sub_readable = t.readable()
        if (core.has_work() or self._router_readable or self._sub_readable) and (
            self.writer.in_flight < WRITES_IN_FLIGHT_MAX
        ):
            self._wake()

    @property
    def dropped_sends(self) -> int:
        return self.transport.dropped_sends + self._durable_links.dropped

    def _send_peers(
        self, sends: dict[str, list[Any]], send: Callable[[str, bytes], None] | None = None
    ) -> None:
        """One PeerBatch per peer, on the loop's sockets unless ``send`` names others."""
        send = send or self.transport.send_peer
        me = self.settings.node_id
        for peer, items in sends.items():
            send(peer, encode(PeerBatch(me, items)))

    def _send_after_persist(self, flushes: list[Flush], send: Callable[[str, bytes], None]) -> None:
        """These flushes are durable: one message per peer for all they held back."""
        by_peer: dict[str, list[Any]] = {}
        for flush in flushes:
            for peer, items in flush.sends_after_persist.items():
                by_peer.setdefault(peer, []).extend(items)
        self._send_peers(by_peer, send)

    def _send_durable(self, flushes: list[Flush]) -> None:
        """On the writer thread, right after the fsync (only its own sockets)."""
        self._send_after_persist(flushes, self._durable_links.send)

    def _on_written(self, flushes: list[Flush], elapsed_s: float) -> None:
        """Back from the disk writer: these flushes are durable, in turn order, and what they
        held back for peers has left."""
        self.writer.completed(len(flushes))
        self.metrics.disk_write_seconds.observe(elapsed_s)
        if self._closed:
            return
        self._advance(flushes)
        if self.core.has_work():
            self._wake()

    def _advance(self, flushes: list[Flush]) -> None:
        for flush in flushes:
            self.core.advance(flush)

    def _on_write_failed(self, error: BaseException) -> None:
        log.critical("disk write failed, stopping: %r", error)
        self.close()
        if self.on_fatal is not None:
            self.on_fatal()

    def _send_replies(self, replies: list[tuple[bytes, bytes]]) -> None:
        """One frame per client per turn, however many replies it has."""
        by_route: dict[bytes, list[bytes]] = {}
        for route, data in replies:
            if route == LOCAL_ROUTE:
                self._resolve(data)
            else:
                by_route.setdefault(route, []).append(data)
        for route, datas in by_route.items():
            self.transport.reply(route, [frame_of(Replies, datas)])

    def _on_router_frames(self, frames: list[bytes]) -> None:
        """[identity, payload, payload, ...]: a client may send several requests at once."""
        route = frames[0]
        if len(frames) < 2 or frames[1] == b"":
            # A REQ socket puts an empty delimiter first; we speak to DEALERs only.
            self.metrics.bad_frames.inc()
            if len(frames) >= 3:
                self.transport.reply(route, [b"", error_reply(0, "bad_request", "use a DEALER socket")])
            return
        core = self.core
        for data in frames[1:]:
            try:
                msg = decode_inbound(data)
            except (DecodeError, ValidationError, ValueError) as e:
                self.metrics.bad_frames.inc()
                self.transport.reply(route, [error_reply(0, "bad_request", f"undecodable frame: {e}")])
                continue
            if isinstance(msg, PeerBatch):
                core.deliver_peer(msg.src, msg.items)
            elif isinstance(msg, Requests):
                for raw in msg.items:
                    item = bytes(raw)
                    try:
                        request = decode_request(item)
                    except (DecodeError, ValidationError, ValueError) as e:
                        self.metrics.bad_frames.inc()
                        bad = error_reply(0, "bad_request", f"undecodable request: {e}")
                        self.transport.reply(route, [bad])
                        continue
                    self._on_request(route, request, item)
            else:
                self._on_request(route, msg, data)

    def _on_request(self, route: bytes, request: Request, data: bytes) -> None:
        if len(data) > REQUEST_BYTES_MAX:
            # The native protocol's 413: a request becomes a log entry on three disks.
            self.metrics.bad_frames.inc()
            self.transport.reply(
                route,
                [
                    error_reply(
                        request.id, "payload_too_large", f"a request is at most {REQUEST_BYTES_MAX} bytes"
                    )
                ],
            )
        else:
            hit = self.core.cache.hit(request.op, monotonic_ms())
            if hit is not None:
                self._hits.setdefault(route, []).append(encode(Reply(request.id, hit, None)))
            else:
                self.core.deliver_client(route, request, data)

    def _send_hits(self) -> None:
        """Cache hits answered as they were drained: out before the turn, one frame per client."""
        hits, self._hits = self._hits, {}
        for route, replies in hits.items():
            self.transport.reply(route, [frame_of(Replies, replies)])

    def _on_publication(self, frames: list[bytes]) -> None:
        try:
            pub = decode_publication(frames[-1])
        except (DecodeError, ValidationError, ValueError):
            self.metrics.bad_frames.inc()
            return
        self.streams.observe(pub.src, pub.epoch, pub.seq)
        self.core.deliver_published(pub.src, pub.msg)

    def _resolve(self, data: bytes) -> None:
        reply = decode_reply(data)
        fut = self._futures.get(reply.id)
        if fut is not None and not fut.done():
            fut.set_result(reply.result)

    # -- the gateway's way in -------------------------------------------------------------

    async def call(self, op: Any, *, timeout_s: float = 5.0, attempt_timeout_s: float = 1.0) -> Result:
        """Run one operation on the cluster from this node: forwarded to its group's leader,
        retried (same request id, so applied once) across leader changes until ``timeout_s``
        (plus however long the op may wait by design)."""
        wait_ms, long_poll = wait_of(op)
        timeout_s += wait_ms / 1000
        if long_poll:
            attempt_timeout_s += wait_ms / 1000
        if isinstance(op, NEAR_OPS):
            # This node's own cache serves it and always answers (``unavailable`` once the home
            # stays silent past its deadline). Asked again meanwhile, it would queue the copy
            # behind the first and run it again after: a write_back write applied twice.
            attempt_timeout_s = timeout_s
        rid = self.ids.next()
        request = Request(self.client_id, rid, self.ids.acked, op)
        hit = self.core.cache.hit(op, monotonic_ms())
        if hit is not None:
            self.ids.done(rid)
            return hit
        raw = encode(request)
        deadline = self._loop.time() + timeout_s
        backoff_s = 0.005
        try:
            while True:
                remaining = deadline - self._loop.time()
                if remaining <= 0 or self._closed:
                    return Err("timeout", f"no answer within {timeout_s:g} s")
                fut: asyncio.Future[Result] = self._loop.create_future()
                self._futures[rid] = fut
                self.core.deliver_client(LOCAL_ROUTE, request, raw)
                self._wake()
                try:
                    result = await asyncio.wait_for(fut, min(remaining, attempt_timeout_s))
                except TimeoutError:
                    continue  # the leader we forwarded to may be gone: ask again
                if not (isinstance(result, Err) and result.code in RETRYABLE):
                    return result
                await asyncio.sleep(min(backoff_s, max(deadline - self._loop.time(), 0)))
                backoff_s = min(backoff_s * 2, 0.2)
        finally:
            self._futures.pop(rid, None)
            self.ids.done(rid)
