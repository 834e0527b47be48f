"""NodeCore: everything one node decides, for every Raft group it hosts, with no I/O.

The runtime (or the simulator) feeds it peer batches, client requests and the time, then runs
one *turn*: ``turn(now_ms, wall_ms)`` returns a ``Flush`` — one write for all groups (group
commit), messages per peer to send before and after that write, replies to clients,
broadcasts — and ``advance(flush)`` confirms it was carried out (flushes may be advanced late,
in order). Nothing here reads a clock, a socket or a file.

Routing (fabric/core/routing.py): a request names its group through its op. The leader of that
group batches the turn's writes into one entry of the requests' own encoded bytes, stamped
with its wall clock; any other replica forwards the bytes to the leader it knows, once, and
relays the answer. Queries and leader-local ops (a consume) wait for one ReadIndex round per
turn, then run once the state machine has caught up. A command may leave its request waiting
(a lock acquire); the notice that answers it comes from a later entry. Each tick, a leader
proposes what its services say is due (lease expiry, redelivery).
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from syncfab.actors.cache_ops import NEAR_OPS
from syncfab.actors.machine import ApplyContext
from syncfab.actors.messages import Beat, Forward, ForwardReply, RaftMessage, Removed
from syncfab.actors.raft import Busy, NotLeader, Role
from syncfab.actors.ready import Persist, Ready
from syncfab.actors.results import Answers, Err, Ok, Result, Waiting
from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.core.balance import balance_leaders, hand_over_leadership
from syncfab.fabric.core.codec import (
    CACHE_MESSAGES,
    ClusterInfo,
    DecodeError,
    OnShard,
    PeerMessage,
    Reply,
    Request,
    batch_stamp,
    decode_batch,
    decode_request,
    encode,
    encode_batch,
)
from syncfab.fabric.core.detector import PhiAccrualDetector
from syncfab.fabric.core.hosted_group import HostedGroup, Waiter
from syncfab.fabric.core.hosting import (
    ask_lost_groups,
    follow_members,
    host_group,
    host_on_demand,
    placement_of,
    redial,
    tell_removed,
)
from syncfab.fabric.core.node_cache import NodeCache
from syncfab.fabric.core.node_config import NodeConfig
from syncfab.fabric.core.reconfigure import reconfigure
from syncfab.fabric.core.routing import group_for
from syncfab.fabric.core.views import cluster_view, group_status

if TYPE_CHECKING:
    from syncfab.storage.log_store import StoredGroup

# Replies to this route go to the in-process gateway rather than a ROUTER identity.
LOCAL_ROUTE = b""

BEAT_TOPIC = b"beat"


@dataclass(slots=True)
class Flush:
    writes: list[tuple[int, Persist]] = field(default_factory=list)
    sends: dict[str, list[tuple[int, PeerMessage]]] = field(default_factory=dict)
    sends_after_persist: dict[str, list[tuple[int, PeerMessage]]] = field(default_factory=dict)
    replies: list[tuple[bytes, bytes]] = field(default_factory=list)
    # One-to-all broadcasts (PUB/SUB): (topic, message).
    publishes: list[tuple[bytes, PeerMessage]] = field(default_factory=list)
    readies: list[tuple[int, Ready]] = field(default_factory=list)


class NodeCore:
    def __init__(
        self,
        node_id: str,
        members: Mapping[str, str],
        *,
        stored: Mapping[int, StoredGroup],
        rng: random.Random,
        now_ms: int,
        config: NodeConfig | None = None,
        advertise: str | None = None,
        bootstrap: Sequence[str] | None = None,
    ) -> None:
        """``members``: the addresses peers dial, as this node was told them (the control
        group's member table, once it has one, takes over). ``bootstrap``: the nodes the cluster
        was first started with, which decide every group's first membership (default: all of
        ``members``); empty for a node joining a running cluster, which hosts what it is sent."""
        self.id = node_id
        self.members = dict(sorted(members.items()))  # id -> the address peers dial
        # id -> the address native clients dial: this node's own, and each peer's from its beats.
        self.advertised = {node_id: advertise or self.members[node_id]}
        self.config = cfg = config or NodeConfig()
        self.bootstrap = tuple(sorted(self.members if bootstrap is None else bootstrap))
        first = placement_of(self.bootstrap, cfg) if self.id in self.bootstrap else None
        self.placement = first or placement_of(self.members, cfg)
        self.detector = PhiAccrualDetector()
        self._now = self._wall = now_ms
        self._park_seq = 0
        self.cache = NodeCache(self)
        self.groups: dict[int, HostedGroup] = {}
        hosted = set(first.groups_of(node_id) if first else [CONTROL_GROUP]) | set(stored)
        for gid in sorted(hosted):
            voters = first.replicas(gid) if first and node_id in first.replicas(gid) else ()
            host_group(self, gid, voters, stored.get(gid), random.Random(rng.getrandbits(64)))
        self._members_version = -1
        self.former: dict[str, str] = {}  # removed members' addresses, while a group tells them
        self.told: dict[str, int] = {}  # removed member -> when it was last told so (Removed)
        self.evicted = False  # this node is no longer a member (its table says, or a member did)
        self._dialed = dict(self.members)  # what the runtime was last told to dial
        self._dial_changed = False
        follow_members(self)
        # Drawn after the groups' own, so adding it left their elections as they were.
        self.cache.near.number_ops_from(rng.getrandbits(32) << 24)
        self._rng = random.Random(rng.getrandbits(64))  # for groups hosted later
        self._peer_inbox: deque[tuple[str, list[tuple[int, PeerMessage]]]] = deque()
        self._client_inbox: deque[tuple[str | None, bytes, Request, bytes]] = deque()
        self._flush = Flush()
        self._committed: list[tuple[HostedGroup, Ready]] = []  # found by turn(), for apply()
        # Groups with input since they were last collected; only they are visited in a turn.
        self._active: set[int] = set(self.groups)
        self._next_tick = now_ms
        self._remote_leaders: dict[int, tuple[int, str]] = {}
        self._beat_seq = 0
        self._next_beat = now_ms
        self._next_balance = now_ms + cfg.balance_interval_ms
        self._read_context = 0
        # A clean stop (leave): hand every group over; how many a live replica could still take.
        self.leaving = False
        self.handing_over = 0
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "forwarded",
                "rejected_busy",
                "bad_peer_messages",
                "snapshots_taken",
                "snapshots_installed",
                "leader_transfers",
                "groups_added",
                "membership_changes",
            ),
            0,
        )

    # -- inputs ---------------------------------------------------------------------------

    def deliver_peer(self, src: str, items: list[tuple[int, PeerMessage]]) -> None:
        # From non-members too: a removed replica learns its removal from its group's log, and
        # answers. Beats are heard from members only (deliver_published, _on_peer).
        if src != self.id:
            self._peer_inbox.append((src, items))

    def deliver_published(self, src: str, msg: PeerMessage) -> None:
        """A broadcast from ``src`` (the runtime has already checked its stream sequence)."""
        if src in self.members and src != self.id:
            self._peer_inbox.append((src, [(CONTROL_GROUP, msg)]))

    def deliver_client(self, route: bytes, request: Request, raw: bytes) -> None:
        """``raw`` is ``request`` encoded (what the client sent): it becomes the log entry."""
        if len(self._client_inbox) >= self.config.client_inbox_max:
            self.counters["rejected_busy"] += 1
            self._reply(None, route, request.id, Err("busy", "node inbox full"), None)
            return
        self._client_inbox.append((None, route, request, raw))

    def leave(self) -> None:
        """A clean stop begins: from the next turn on, hand every group this node leads to a
        live replica, and tell the peers (in the beats) to hand it none."""
        self.leaving = True
        self.handing_over = sum(g.raft.role is Role.LEADER for g in self.groups.values())
        self._next_beat = self._now  # say so now

    def has_work(self) -> bool:
        f = self._flush
        inputs = self._peer_inbox or self._client_inbox or self._committed or self._active
        return bool(inputs or f.replies or f.sends or f.publishes or self.cache.has_work())

    # -- the turn -------------------------------------------------------------------------

    def turn(self, now_ms: int, wall_ms: int | None = None) -> Flush:
        """``now_ms`` drives timers (monotonic); ``wall_ms`` is what a leader stamps into the
        entries it proposes — the replicated state machines' only clock (default: now_ms)."""
        self._now = now_ms
        self._wall = now_ms if wall_ms is None else wall_ms
        self.cache.clock(now_ms)
        if now_ms >= self._next_tick:
            self._next_tick = now_ms + self.config.tick_ms
            for gid, g in self.groups.items():
                if self.evicted and g.raft.role is not Role.LEADER:
                    continue  # no more campaigns; a leader goes on until check-quorum deposes it
                g.raft.tick(now_ms)
                if g.raft.role is Role.LEADER:
                    self._housekeeping(g)
                    self._active.add(gid)  # heartbeats, and entries a full pipeline held back
                elif g.raft.has_ready():
                    self._active.add(gid)
            self.cache.tick(now_ms, self._wall)
        if now_ms >= self._next_beat:
            self._next_beat = now_ms + self.config.beat_ms
            self._send_beats()
        if now_ms >= self._next_balance:
            self._next_balance = now_ms + self.config.balance_interval_ms
            reconfigure(self)
            ask_lost_groups(self)
            redial(self)
            balance_leaders(self)
        if self.leaving:
            self.handing_over = hand_over_leadership(self)
        while self._peer_inbox:
            src, items = self._peer_inbox.popleft()
            for gid, msg in items:
                self._on_peer(src, gid, msg)
        for _ in range(min(len(self._client_inbox), self.config.client_requests_per_turn_max)):
            self._on_request(*self._client_inbox.popleft())
        self.cache.collect()
        flush, self._flush = self._flush, Flush()
        active, self._active = self._active, set()
        for gid in sorted(active):
            self._collect(self.groups[gid], flush)
        return flush

    def apply(self) -> Flush:
        """Apply what the last turn found committed, and serve the reads that waited for it.
        Returns what that produced to send at once (replies, answers relayed to other nodes).

        Call after sending the turn's messages and queueing its writes — followers and disks
        start on new entries while this replica applies older ones — and before advancing that
        turn's flush (advance may snapshot the state machine)."""
        committed, self._committed = self._committed, []
        pending, self._flush = self._flush, Flush()
        try:
            for g, ready in committed:
                self._apply_ready(g, ready)
            self.cache.collect()
        finally:
            out, self._flush = self._flush, pending
        return out

    def advance(self, flush: Flush) -> None:
        cfg = self.config
        for gid, ready in flush.readies:
            g = self.groups[gid]
            raft = g.raft
            raft.advance(ready)
            # A leader's durable entries may commit (advance has looked), and whatever is left
            # to send, write or apply shows in has_ready; a follower's write needs no turn.
            if raft.has_ready():
                self._active.add(gid)
            if ready.committed:
                base = raft.snapshot.index if raft.snapshot is not None else 0
                if raft.applying_index - base >= cfg.snapshot_entries:
                    raft.compact(raft.applying_index, g.machine.snapshot(), cfg.snapshot_keep_entries)
                    self.counters["snapshots_taken"] += 1

    def _collect(self, g: HostedGroup, flush: Flush) -> None:
        raft = g.raft
        if raft.role is not Role.LEADER and g.lead_term == -1 and not raft.has_ready():
            return  # a quiet follower: nothing to write, send or apply
        self._check_leadership(g)
        if g.writes:
            self._propose_batch(g)
        if g.queries:
            self._read_context += 1
            g.reads[self._read_context], g.queries = g.queries, []
            raft.read_index(self._read_context)
        ready = raft.ready()
        if ready.restore is not None or ready.committed or ready.reads or g.read_waits:
            self._committed.append((g, ready))
        if ready.persist:
            flush.writes.append((g.id, ready.persist))
            for entry in reversed(ready.persist.entries):
                if entry.data:  # b"" is a new leader's no-op
                    g.clock.appended(batch_stamp(entry.data), self._now)
                    break
        _route(flush.sends, g.id, ready.messages)
        _route(flush.sends_after_persist, g.id, ready.messages_after_persist)
        flush.readies.append((g.id, ready))

    def _apply_ready(self, g: HostedGroup, ready: Ready) -> None:
        raft = g.raft
        if ready.restore is not None:
            g.machine.restore(ready.restore.data)
            self.counters["snapshots_installed"] += 1
        for entry in ready.committed:
            if entry.data:  # b"" is a new leader's no-op
                self._apply_entry(g, entry.index, entry.data)
        if ready.committed and g.parked:
            self._retry_parked(g)
        if g.id == CONTROL_GROUP and (ready.committed or ready.restore is not None):
            follow_members(self)
        applied = raft.applying_index
        for rs in ready.reads:
            reads = g.reads.pop(rs.context, None)
            if reads is not None:
                heapq.heappush(g.read_waits, (rs.index, rs.context, reads))
        while g.read_waits and g.read_waits[0][0] <= applied:
            for waiter, op in heapq.heappop(g.read_waits)[2]:
                self._serve_read(g, waiter, op)

    def _serve_read(self, g: HostedGroup, waiter: Waiter, op: Any) -> None:
        """A query or leader-local op whose ReadIndex the state machine has reached."""
        if not g.machine.is_local(op):
            self._answer(waiter, g.machine.query(op))
            return
        stamp = self._stamp(g)
        result = g.machine.local(stamp, op)
        if isinstance(result, Waiting):
            self._park_seq += 1
            deadline = stamp + getattr(op, "wait_ms", 0)
            heapq.heappush(g.parked, (deadline, self._park_seq, waiter, op))
        else:
            self._answer(waiter, result)

    def _apply_entry(self, g: HostedGroup, index: int, data: bytes) -> None:
        now_ms, requests = decode_batch(data)
        waiters = g.proposals.pop(index, None)
        machine, deferred = g.machine, g.deferred
        for pos, request in enumerate(requests):
            op = request.op.op if isinstance(request.op, OnShard) else request.op
            ctx = ApplyContext(index, now_ms, request.client, request.id)
            result = machine.apply(ctx, request.acked, op)
            waiter = waiters[pos] if waiters is not None else None
            if isinstance(result, Waiting):
                if waiter is not None:
                    deferred[(request.client, request.id)] = waiter
            elif waiter is not None:
                if isinstance(result, Answers):
                    # Ops of a batch left waiting are answered later, each under its own id.
                    for k, answer in enumerate(result.results):
                        if isinstance(answer, Waiting):
                            rid = request.id + 1 + k
                            deferred[(request.client, rid)] = Waiter(waiter.origin, waiter.route, rid)
                self._answer(waiter, result)
            for notice in ctx.notices:
                parked = deferred.pop((notice.client, notice.request_id), None)
                if parked is not None:
                    self._answer(parked, notice.result)
        if index >= g.housekeeping_index:
            g.housekeeping_index = 0

    def _propose_batch(self, g: HostedGroup) -> None:
        writes, writers = g.writes, g.writers
        g.writes, g.writers = [], []
        try:
            index = g.raft.propose(encode_batch(self._stamp(g), writes))
        except (Busy, NotLeader) as e:
            code = "busy" if isinstance(e, Busy) else "not_leader"
            for w in writers:
                if w is not None:
                    self._fail(w, Err(code, str(e)), g.raft.leader)
            return
        g.proposals[index] = writers
        if None in writers:
            g.housekeeping_index = index

    def _housekeeping(self, g: HostedGroup) -> None:
        """Propose what the services' clocks say is due (lease expiry, visibility deadlines) —
        one housekeeping entry at a time, so a slow commit does not repeat it every tick — and
        answer parked long-polls whose wait is over."""
        wall = self._stamp(g)
        if not g.housekeeping_index:
            for op in g.machine.due(wall):
                g.writes.append(encode(Request("", 0, 0, op)))
                g.writers.append(None)
        while g.parked and g.parked[0][0] <= wall:
            _, _, waiter, op = heapq.heappop(g.parked)
            self._answer(waiter, g.machine.local(wall, msgspec.structs.replace(op, wait_ms=0)))

    def _retry_parked(self, g: HostedGroup) -> None:
        """New entries were applied: a parked long-poll may now find what it waits for."""
        still: list[tuple[int, int, Waiter, Any]] = []
        for item in sorted(g.parked):
            result = g.machine.local(self._stamp(g), item[3])
            if isinstance(result, Waiting):
                still.append(item)
            else:
                self._answer(item[2], result)
        heapq.heapify(still)
        g.parked = still

    def _answer(self, waiter: Waiter, result: Result | Answers) -> None:
        if waiter.hook is not None:
            waiter.hook(result)
        else:
            self._reply(waiter.origin, waiter.route, waiter.request_id, result, self.id)

    def _fail(self, waiter: Waiter, err: Err, leader: str | None) -> None:
        if waiter.hook is not None:
            waiter.hook(err)
        else:
            self._reply(waiter.origin, waiter.route, waiter.request_id, err, leader)

    def _check_leadership(self, g: HostedGroup) -> None:
        """Fail every waiter registered under a leadership we no longer hold: their entries may
        never commit. Clients retry with the same id, which the session table makes safe."""
        raft = g.raft
        leading = raft.role is Role.LEADER
        if leading and raft.term == g.lead_term:
            return
        if not leading and g.lead_term == -1:
            return  # a follower that was not leading either: nothing was registered here
        err = Err("leader_changed", "leadership changed before the request completed")
        for w in g.waiters():
            if w is not None:
                self._fail(w, err, raft.leader)
        g.forget_waiters()
        # Leader-only state (a queue's in-flight marks, a cache home) starts afresh with each leadership.
        g.machine.reset_local(leading)
        self.cache.leadership(g.id, leading, raft.term, self._now, raft.log.last_index)
        g.lead_term = raft.term if leading else -1
        if leading:
            g.leading_since_ms = self._now

    def _stamp(self, g: HostedGroup) -> int:
        """The time this leader writes into its entries and reads the services' deadlines by
        (fabric/core/log_clock.py: its wall clock, corrected if it runs ahead of the log's)."""
        return g.clock.stamp(g.raft.term, self._now, self._wall)

    # -- requests -------------------------------------------------------------------------

    def _on_request(self, origin: str | None, route: bytes, request: Request, raw: bytes) -> None:
        op = request.op
        if isinstance(op, ClusterInfo):
            self._reply(origin, route, request.id, Ok(self.cluster_view()), None)
            return
        if isinstance(op, NEAR_OPS):
            if origin is None:  # served by this node's own cache, never forwarded
                self.cache.on_client(route, request, raw, self._now)
            return
        gid = group_for(op, self.config.shard_count, request.client, request.id)
        if isinstance(gid, Err):
            self._reply(origin, route, request.id, gid, None)
            return
        g = self.groups.get(gid)
        if g is None or g.raft.role is not Role.LEADER:
            leader = self.leader_of(gid)
            if origin is None and leader is not None and leader != self.id:
                # One hop: the leader answers us, we answer the client.
                self.counters["forwarded"] += 1
                self._send(leader, gid, Forward(route, msgspec.Raw(raw)))
            else:
                code = "not_leader" if leader is not None else "no_leader"
                self._reply(origin, route, request.id, Err(code, f"group {gid} leader: {leader}"), leader)
            return
        self._active.add(gid)
        waiter = Waiter(origin, route, request.id)
        inner = op.op if isinstance(op, OnShard) else op
        if g.machine.is_query(inner) or g.machine.is_local(inner):
            # Leader-local ops (a consume) read replicated state too, so they wait for ReadIndex
            # like queries: run at once, a new leader that has not applied its predecessor's last
            # acks, or a deposed leader that does not know it yet, handed out messages whose ack
            # was already acknowledged (tests/sim/test_sim_queues.py has both cases). See _serve_read.
            g.queries.append((waiter, inner))
        else:
            g.writes.append(raw)
            g.writers.append(waiter)

    def leader_of(self, gid: int) -> str | None:
        g = self.groups.get(gid)
        if g is not None and not g.raft.removed:
            return g.raft.leader
        known = self._remote_leaders.get(gid)
        return known[1] if known else None

    def _reply(
        self, origin: str | None, route: bytes, request_id: int, result: Result | Answers, leader: str | None
    ) -> None:
        data = encode(Reply(request_id, result, leader))
        if origin is None:
            self._flush.replies.append((route, data))
        else:
            self._send(origin, CONTROL_GROUP, ForwardReply(route, msgspec.Raw(data)))

    def take_dial_change(self) -> dict[str, str] | None:
        """The peers to dial (hosting.redial), if that changed since last asked."""
        changed, self._dial_changed = self._dial_changed, False
        return dict(self._dialed) if changed else None

    # -- peers ----------------------------------------------------------------------------

    def _on_peer(self, src: str, gid: int, msg: PeerMessage) -> None:
        match msg:
            case Beat():
                if src not in self.members:
                    self._note_leaders(src, msg)  # a removed node leads nothing new; it may have led
                    return
                if msg.leaving:  # stopping: no group is handed to it (balance, hand-over)
                    self.detector.forget(src)
                else:
                    self.detector.heartbeat(src, self._now)
                if msg.advertise:
                    self.advertised[src] = msg.advertise
                self.cache.on_beat(msg.cache_streams, self._now)
                self._note_leaders(src, msg)
            case Forward():
                try:
                    request = decode_request(msg.request)
                except (DecodeError, ValueError):
                    self.counters["bad_peer_messages"] += 1
                    return
                self._on_request(src, msg.route, request, bytes(msg.request))
            case ForwardReply():
                self._flush.replies.append((msg.route, bytes(msg.reply)))
            case Removed():
                if src in self.members:
                    self.evicted = True
            case _ if isinstance(msg, CACHE_MESSAGES):
                self.cache.on_peer(src, gid, msg, self._now)
            case _:
                if src not in self.members:
                    tell_removed(self, src)
                g = self.groups.get(gid)
                if g is None:
                    g = host_on_demand(self, gid, msg)
                    if g is None:
                        self.counters["bad_peer_messages"] += 1
                        return
                g.raft.step(src, msg)
                self._active.add(gid)

    def _note_leaders(self, src: str, beat: Beat) -> None:
        for group, term in beat.leading:
            known = self._remote_leaders.get(group)
            if known is None or term >= known[0]:
                self._remote_leaders[group] = (term, src)

    def _send(self, peer: str, gid: int, msg: PeerMessage) -> None:
        self._flush.sends.setdefault(peer, []).append((gid, msg))

    send = _send

    def publish(self, topic: bytes, msg: PeerMessage) -> None:
        self._flush.publishes.append((topic, msg))

    def loopback(self, gid: int, msg: PeerMessage) -> None:
        """A message to this node itself (a home's holders include its own node)."""
        self._peer_inbox.append((self.id, [(gid, msg)]))

    def reply_to_client(self, route: bytes, request_id: int, result: Result) -> None:
        self._reply(None, route, request_id, result, None)

    def propose_for(self, gid: int, raw: bytes, done: Callable[[Result | Answers], Any]) -> bool:
        """Log ``raw`` (an encoded Request) in ``gid``'s next entry; ``done`` gets its answer."""
        g = self.groups.get(gid)
        if g is None or g.raft.role is not Role.LEADER:
            return False
        g.writes.append(raw)
        g.writers.append(Waiter(None, LOCAL_ROUTE, 0, done))
        self._active.add(gid)
        return True

    def read_for(self, gid: int, op: Any, done: Callable[[Result | Answers], Any]) -> bool:
        """Run query ``op`` after this turn's ReadIndex round of ``gid``; ``done`` gets its answer."""
        g = self.groups.get(gid)
        if g is None or g.raft.role is not Role.LEADER:
            return False
        g.queries.append((Waiter(None, LOCAL_ROUTE, 0, done), op))
        self._active.add(gid)
        return True

    def _send_beats(self) -> None:
        self._beat_seq += 1
        leading = [(gid, g.raft.term) for gid, g in self.groups.items() if g.raft.role is Role.LEADER]
        beat = Beat(
            self._beat_seq, leading, self.cache.stream_positions(), self.advertised[self.id], self.leaving
        )
        self._flush.publishes.append((BEAT_TOPIC, beat))

    # -- views (fabric/core/views.py) ---------------------------------------------------------

    def cluster_view(self) -> dict[str, Any]:
        return cluster_view(self)

    def group_status(self) -> list[dict[str, Any]]:
        return group_status(self)


def _route(
    out: dict[str, list[tuple[int, PeerMessage]]], gid: int, messages: list[tuple[str, RaftMessage]]
) -> None:
    for peer, msg in messages:
        out.setdefault(peer, []).append((gid, msg))
