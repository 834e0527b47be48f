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
from syncfab.actors.results import Err, Result
from syncfab.fabric.client.core_driver import CoreDriver
from syncfab.fabric.core.client_core import ClientConfig, ClientCore
from syncfab.fabric.core.codec import (
    DecodeError,
    PeerBatch,
    Replies,
    Reply,
    Request,
    Requests,
    ValidationError,
    decode_inbound,
    decode_request,
    encode,
    error_reply,
    frame_of,
)
from syncfab.fabric.core.node import LOCAL_ROUTE, Flush, NodeCore
from syncfab.fabric.core.routing import wait_of
from syncfab.fabric.server.config import ConfigError, NodeSettings
from syncfab.fabric.server.curve import ZapHandler
from syncfab.fabric.server.metrics import NodeMetrics
from syncfab.fabric.server.transport import (
    PeerLinks,
    StreamTracker,
    Transport,
    decode_publication,
    end_context,
    io_context,
)
from syncfab.fabric.server.writer import DiskWriter
from syncfab.storage.lmdb_store import LmdbLogStore

log = logging.getLogger("syncfab.node")

ROUTER_FRAMES_PER_TURN_MAX = 4096
SUB_FRAMES_PER_TURN_MAX = 1024
REQUEST_BYTES_MAX = 1 << 20  # the same bound as the HTTP gateway's bodies
GATEWAY_TIMEOUT_MS = 5_000  # an HTTP call's deadline, on top of its op's own wait
GATEWAY_ATTEMPT_TIMEOUT_MS = 1_000
LOCAL_NODE = "local"  # the gateway client's one node: this one
SHUTTING_DOWN = Err("shutting_down", "the node is stopping: ask another")
# Turns whose writes are queued or being synced; past this the loop stops taking input until
# the disk catches up (backpressure) instead of piling up more.
WRITES_IN_FLIGHT_MAX = 64
# A clean stop waits this long at most for its groups to take new leaders (one takes a round
# trip or two; RaftCore drops a transfer after an election timeout and it is asked again).
HAND_OVER_MAX_S = 2.0


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class NodeRuntime:
    def __init__(self, settings: NodeSettings, *, bind_host: str | None = None) -> None:
        self.settings = settings
        self.bind_host = bind_host
        self.epoch = int.from_bytes(os.urandom(6), "big")
        self.client_id = f"{settings.node_id}/gateway/{self.epoch:x}"
        # The gateway's client: the same ClientCore as the native client's, its requests
        # delivered to this node's own inbox (the core forwards them to their leaders).
        self.client = ClientCore(
            self.client_id,
            [LOCAL_NODE],
            random.Random(self.epoch),
            ClientConfig(timeout_ms=GATEWAY_TIMEOUT_MS, attempt_timeout_ms=GATEWAY_ATTEMPT_TIMEOUT_MS),
        )
        self.client.shard_count = settings.core.shard_count
        self._ending = False  # end_calls: the node is stopping
        self._driver: CoreDriver  # once started: the loop is known then
        self.turns = 0
        self.created_s = time.time()
        self.metrics = NodeMetrics(self)
        self.streams = StreamTracker()
        self._hits: dict[bytes, list[bytes]] = {}  # cache hits answered while draining
        self._scheduled = False
        self._closed = False
        # A shutdown step waiting for the core to settle: (its condition, the event to set).
        self._turn_check: tuple[Callable[[], bool], asyncio.Event] | None = None
        self._said_evicted = False
        self._router_readable = self._sub_readable = True
        self.store: LmdbLogStore
        self.core: NodeCore
        self.transport: Transport
        self._loop: asyncio.AbstractEventLoop
        self._ticker: asyncio.TimerHandle | None = None
        self.writer: DiskWriter
        self._zap: ZapHandler | None = None  # with CURVE on: who answers the handshakes
        self.on_fatal: Callable[[], None] | None = None  # the process's way to stop

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        s = self.settings
        self._loop = asyncio.get_running_loop()
        self._driver = CoreDriver(self.client, self._loop, self._deliver_local)
        os.makedirs(s.data_dir, exist_ok=True)
        bootstrap = self._check_identity()
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
            advertise=s.advertised,
            bootstrap=bootstrap,
        )
        self.metrics.core_started()
        self._zmq, affinity = io_context(s.node_id, s.peers)
        if s.curve is not None:
            # Before any server binds: a handshake no handler answers would be let in.
            self._zap = ZapHandler(
                self._zmq, s.curve.accepted, self.metrics.auth_refused.labels("fabric").inc
            )
            self._zap.start()
        self.transport = Transport(
            self._zmq,
            s.node_id,
            s.peers,
            epoch=self.epoch,
            bind_host=self.bind_host,
            affinity=affinity,
            curve=s.curve,
        )
        if self._zap is not None:
            self._zap.watch(self.transport.router)
            self._zap.watch(self.transport.pub)
        # The writer thread's own sockets: it sends what waited for its fsync (fabric/server/writer.py).
        self._durable_links = PeerLinks(self._zmq, s.node_id, s.peers, affinity=affinity, curve=s.curve)
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
            "node %s up: router %s (clients: %s), %d groups, fsync %s, CURVE %s",
            s.node_id,
            s.address,
            s.advertised,
            len(self.core.groups),
            "on" if s.fsync else "off",
            f"on ({len(s.curve.accepted)} keys accepted)" if s.curve else "off",
        )

    async def hand_over(self, timeout_s: float = HAND_OVER_MAX_S) -> int:
        """Clean shutdown, first: hand every group this node leads to a live replica (TimeoutNow)
        and wait, up to ``timeout_s``, until it leads none a live replica could take — so the
        groups' next requests find a leader at once instead of waiting out an election after
        this node is gone. Requests keep being served meanwhile. Returns how many were left."""
        self.core.leave()
        await self._turns_until(lambda: not self.core.handing_over, timeout_s)
        if self.core.handing_over:
            log.warning("%d groups still led by this node at shutdown", self.core.handing_over)
        return self.core.handing_over

    async def write_back_cache(self, timeout_s: float = 2.0) -> int:
        """Clean shutdown: send every dirty (write_back) line home and wait, up to ``timeout_s``,
        for memory to have them. Returns how many were still on their way."""
        near = self.core.cache.near
        if not near.write_back_all(monotonic_ms()):
            return 0
        await self._turns_until(lambda: not near.returning, timeout_s)
        if near.returning:
            log.warning("%d dirty cache lines did not reach their home before shutdown", len(near.returning))
        return len(near.returning)

    async def _turns_until(self, done: Callable[[], bool], timeout_s: float) -> None:
        """Wait until ``done()`` holds after a turn (every turn ends by checking it: what changes
        it is a peer's reply or a timer, both handled in turns), or ``timeout_s`` has passed."""
        if done():
            return
        settled = asyncio.Event()
        self._turn_check = (done, settled)
        self._wake()
        try:
            await asyncio.wait_for(settled.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            self._turn_check = None

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
        if self._zap is not None:
            self._zap.stop()  # its socket is its thread's: closed there, before the context ends
        # The writer thread has ended: nothing else uses the context.
        if not end_context(self._zmq):
            log.warning("ZeroMQ's I/O threads still resolving a peer's name: left to the exit")
        self.store.close()
        self._driver.end(Err("unavailable", "node shutting down"))
        self._driver.close()

    def _check_identity(self) -> list[str]:
        """A data dir belongs to one node of one cluster: refuse to start on a mismatch (a changed
        shard count would silently re-home every key). Returns the members the cluster was
        first started with (none for a node that joined it), which decide every group's first
        membership; the members now are in the control group (actors/members.py), not here."""
        s = self.settings
        path = os.path.join(s.data_dir, "cluster.json")
        bootstrap = [] if s.join else sorted(s.peers)
        identity = {"node": s.node_id, "shards": s.core.shard_count, "bootstrap": bootstrap}
        if os.path.exists(path):
            with open(path) as f:
                found = json.load(f)
            if "members" in found:  # written before membership changes: the same thing
                found["bootstrap"] = found.pop("members")
            if (found.get("node"), found.get("shards")) != (s.node_id, s.core.shard_count):
                raise ConfigError(f"{path} was written for {found}, not {identity}")
            return list(found["bootstrap"])
        with open(path + ".tmp", "w") as f:
            json.dump(identity, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(path + ".tmp", path)
        return bootstrap

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
        if core.evicted and not self._said_evicted:
            self._said_evicted = True
            log.error(
                "node %s is no longer a member of the cluster (removed): its groups stop here. "
                "Stop it; to use this machine again, wipe its data dir and add it under a new id",
                core.id,
            )
        dial = core.take_dial_change()
        if dial is not None:
            log.info("dialing %s", ", ".join(f"{m}={a}" for m, a in dial.items()))
            self.transport.set_peers(dial)
            self._durable_links.set_peers(dial)
        if self._turn_check is not None and self._turn_check[0]():
            self._turn_check[1].set()
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
        local = False
        for route, data in replies:
            if route == LOCAL_ROUTE:  # the gateway's
                self.client.receive(data, self._driver.now_ms())
                local = True
            else:
                by_route.setdefault(route, []).append(data)
        for route, datas in by_route.items():
            self.transport.reply(route, [frame_of(Replies, datas)])
        if local:
            self._driver.settle()

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
            except (DecodeError, ValidationError, ValueError, RecursionError) as e:
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
                    except (DecodeError, ValidationError, ValueError, RecursionError) as e:
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
        except (DecodeError, ValidationError, ValueError, RecursionError):
            self.metrics.bad_frames.inc()
            return
        self.streams.observe(pub.src, pub.epoch, pub.seq)
        self.core.deliver_published(pub.src, pub.msg)

    # -- the gateway's way in -------------------------------------------------------------

    def end_calls(self) -> None:
        """The node is stopping: every call the gateway waits on (an open long-poll, say) is
        answered now, and any new one at once, with ``shutting_down`` (HTTP 503), so the HTTP
        server's stop waits for nobody."""
        self._ending = True
        self._driver.end(SHUTTING_DOWN)

    async def call(self, op: Any) -> Result:
        """Run one operation on the cluster from this node: a ``ClientCore`` of the gateway's
        (fabric/core/client_core.py) numbers it, coalesces lock ops and produces, and retries
        it (same request id, so applied once) across leader changes; this node's core forwards
        it to its group's leader. A cache hit is answered here, from this node's lines."""
        if self._ending:
            return SHUTTING_DOWN
        hit = self.core.cache.hit(op, monotonic_ms())
        if hit is not None:
            return hit
        driver = self._driver
        if isinstance(op, NEAR_OPS):
            # This node's own cache serves it and always answers (``unavailable`` once the home
            # stays silent past its deadline): one attempt, as long as the call.
            attempt_ms = GATEWAY_TIMEOUT_MS + wait_of(op)[0]
            handle = self.client.call(op, driver.now_ms(), node=LOCAL_NODE, attempt_timeout_ms=attempt_ms)
        else:
            handle = self.client.call(op, driver.now_ms())
        return await driver.wait(handle)

    def _deliver_local(self, out: dict[str, list[bytes]]) -> None:
        """The gateway's requests into this node's own inbox (its core forwards them)."""
        if self._closed:
            return
        for raws in out.values():
            for raw in raws:
                self.core.deliver_client(LOCAL_ROUTE, decode_request(raw), raw)
        if out:
            self._wake()
