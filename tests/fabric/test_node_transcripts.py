"""NodeCore as text transcripts: a request's whole life across three real NodeCores, turn by
turn — what each turn read, what its Flush carried (the writes that must reach the disk, the
messages that leave at once and those that wait for the write, replies, broadcasts), what
applying produced — in the order NodeRuntime runs them.

Each file in ``node_transcripts/`` is in the shared transcript format
(tests/actors/transcript_format.py); ``SYNCFAB_REWRITE=1 pytest
tests/fabric/test_node_transcripts.py`` rewrites the outputs (review the diff!).

Commands (times in ms; clients are any words; keys and values are words):

    nodes n1 n2 n3 [shards=N] [seed=N]   boot; time then passes silently until every group
                                         has a leader and the balancer is done; prints who leads
    request c1 n2 put k v                c1 sends one request to n2; the cluster then settles
        (ops: put K V | get K | delete K | acquire R OWNER [wait=MS] | release R OWNER |
         cache_write K V [write_back] | cache_read K)
    settle                               deliver until nothing is left to say
    tick N                               N ms pass in 10 ms steps (Raft timers, beats); quiet:
                                         prints only what is not a heartbeat or a beat
    status                               each group's leader and term, each node's cache lines
    join n4                              a node for the running cluster (--join), empty
    members                              each node's members and each group's Raft membership
        (request ops also: member_add N | member_remove N)

The harness is the runtime's order, synchronously: a turn's ``sends`` leave, its writes are
made (one simulated disk write per turn, finished before the next turn), ``apply()``'s output
leaves, then ``sends_after_persist`` and ``advance``. Messages are delivered in FIFO order
through the real codec (``PeerBatch`` bytes), one node's inbox drained per turn. A cache read
that hits is answered as it is read off the socket, before any turn, as NodeRuntime does.
"""

from __future__ import annotations

import random
import sys
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from syncfab.actors.cache_ops import CacheRead, CacheWrite
from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.lock_ops import Acquire, Release
from syncfab.actors.members import MemberAdd, MemberRemove, MemberSeed
from syncfab.actors.messages import (
    AppendEntries,
    AppendReply,
    Beat,
    CacheWriteReq,
    Entry,
    Forward,
    ForwardReply,
    Heartbeat,
    HeartbeatReply,
    VoteReply,
    VoteRequest,
)
from syncfab.actors.ready import Persist
from syncfab.actors.results import Answers, Err, Ok, Result, Waiting
from syncfab.fabric.core.codec import (
    PeerBatch,
    Reply,
    Request,
    decode_batch,
    decode_inbound,
    decode_request,
    encode,
    replies_in,
)
from syncfab.fabric.core.node import Flush, NodeCore
from syncfab.fabric.core.node_config import NodeConfig

sys.path.insert(0, str(Path(__file__).parents[1] / "actors"))
from transcript_format import check_file

TRANSCRIPTS = Path(__file__).parent / "node_transcripts"
STEP_MS = 10
BOOT_MS_MAX = 20_000  # a boot that elects no leader for every group by then fails
SETTLE_TURNS_MAX = 10_000
QUIET = (Heartbeat, HeartbeatReply, Beat)
pack, unpack = msgspec.msgpack.encode, msgspec.msgpack.decode


# -- formatting ------------------------------------------------------------------------------


def fmt_op(op: Any) -> str:
    match op:
        case Put(key=k, value=v):
            return f"put {k}={v}"
        case Get(key=k):
            return f"get {k}"
        case Delete(key=k):
            return f"delete {k}"
        case Acquire(resource=r, owner=o):
            return f"acquire {r} by {o}"
        case Release(resource=r, owner=o):
            return f"release {r} by {o}"
        case CacheWrite(key=k, value=v, policy=p):
            return f"cache_write {k}={unpack(bytes(v))} {p}"
        case CacheRead(key=k):
            return f"cache_read {k}"
        case MemberAdd(node=n, address=a):
            return f"member_add {n} at {a}"
        case MemberRemove(node=n):
            return f"member_remove {n}"
        case MemberSeed(members=m):
            return f"member_seed {','.join(m)}"
    return type(op).__name__


def fmt_entry(e: Entry) -> str:
    """``index.term:@stamp [client#id op, ...]``: an entry is one turn's writes to a group,
    stamped with the leader's wall clock (codec.Batch); or a membership change."""
    if e.conf is not None:
        learners = f" learners={','.join(e.conf.learners)}" if e.conf.learners else ""
        return f"{e.index}.{e.term}:conf voters={','.join(e.conf.voters)}{learners}"
    if not e.data:
        return f"{e.index}.{e.term}:empty"
    stamp_ms, requests = decode_batch(e.data)
    ops = ", ".join(f"{r.client or '(leader)'}#{r.id} {fmt_op(r.op)}" for r in requests)
    return f"{e.index}.{e.term}:@{stamp_ms} [{ops}]"


def fmt_result(result: Result | Answers | Waiting) -> str:
    match result:
        case Ok(value=value):
            return "ok" if value is None else f"ok {fmt_value(value)}"
        case Err(code=code):
            return f"error {code}"
        case Waiting():
            return "waiting"
    return type(result).__name__


def fmt_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {fmt_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def fmt_reply(data: bytes) -> str:
    return "; ".join(
        f"#{r.id} {fmt_result(r.result)}" + (f" leader={r.leader}" if r.leader else "")
        for r in replies_in(data)
    )


def fmt_message(msg: Any) -> str:
    match msg:
        case AppendEntries(term=t, prev_index=pi, prev_term=pt, entries=es, commit=c):
            return f"app t{t} prev={pi}.{pt} commit={c} [{', '.join(fmt_entry(e) for e in es)}]"
        case AppendReply(term=t, success=ok, index=i):
            return f"app-ok t{t} index={i}" if ok else f"app-reject t{t} index={i}"
        case Heartbeat(term=t, commit=c, read_seq=r):
            return f"hb t{t} commit={c} read_seq={r}"
        case HeartbeatReply(term=t, read_seq=r):
            return f"hb-ok t{t} read_seq={r}"
        case VoteRequest(term=t, last_index=li, last_term=lt, pre_vote=pre):
            return f"{'pre-vote' if pre else 'vote'} t{t} last={li}.{lt}"
        case VoteReply(term=t, granted=g, pre_vote=pre):
            return f"{'pre-vote' if pre else 'vote'}-{'yes' if g else 'no'} t{t}"
        case Forward(request=raw):
            request = decode_request(bytes(raw))
            return f"forward {request.client}#{request.id} {fmt_op(request.op)}"
        case CacheWriteReq(request=raw):
            request = decode_request(bytes(raw))
            return f"cache-write-req {request.client}#{request.id} {fmt_op(request.op)}"
        case ForwardReply(reply=raw):
            return f"forward-reply {fmt_reply(bytes(raw))}"
    return fmt_struct(msg)


def fmt_struct(msg: Any) -> str:
    """``Name(field=value, ...)``: values as text (MessagePack payloads decoded, results and
    nested structs formatted); ``op_id`` left out (a node numbers its ops from a random base)."""

    def fmt_field(v: Any) -> str:
        if isinstance(v, msgspec.Raw):
            return repr(unpack(bytes(v)))
        if isinstance(v, Ok | Err):
            return fmt_result(v)
        if isinstance(v, msgspec.Struct):
            return fmt_struct(v)
        if isinstance(v, list):
            return "[" + ", ".join(fmt_field(x) for x in v) + "]"
        return str(v)

    fields = ", ".join(f"{f}={fmt_field(getattr(msg, f))}" for f in msg.__struct_fields__ if f != "op_id")
    return f"{type(msg).__name__}({fields})"


def fmt_persist(p: Persist) -> str:
    parts = []
    if p.snapshot is not None:
        parts.append(f"snapshot@{p.snapshot.index}")
    if p.truncate_from is not None:
        parts.append(f"truncate from {p.truncate_from}")
    if p.entries:
        parts.append("entries " + ", ".join(fmt_entry(e) for e in p.entries))
    if p.hard_state is not None:
        hs = p.hard_state
        parts.append(f"hard state t{hs.term} vote={hs.vote} commit={hs.commit}")
    return "; ".join(parts)


# -- the rig ---------------------------------------------------------------------------------


class Cluster:
    def __init__(self, ids: list[str], shards: int, seed: int) -> None:
        self.now_ms = 0
        self.members = {n: f"{n}:7000" for n in ids}
        rng = random.Random(seed)
        self.config = NodeConfig(shard_count=shards)
        self.cores = {
            n: NodeCore(
                n,
                self.members,
                stored={},
                rng=random.Random(rng.getrandbits(64)),
                now_ms=0,
                config=self.config,
            )
            for n in ids
        }
        self.wire: deque[tuple[str, Callable[[], None]]] = deque()  # (destination, delivery)
        self.out: list[str] = []
        self.quiet = False
        self.ticking = False
        self.clients: dict[str, int] = {}  # client -> its last request id

    def say(self, line: str) -> None:
        if not self.quiet:
            self.out.append(line)

    # -- the runtime's order, for one node ---------------------------------------------------

    def turn(self, node: str) -> None:
        core = self.cores[node]
        flush = core.turn(self.now_ms, self.now_ms)
        lines = self._describe(node, flush)
        self._send(node, flush.sends)
        applied = core.apply()
        lines += self._describe(node, applied)
        self._send(node, applied.sends)
        for route, data in flush.replies + applied.replies:
            lines.append(f"  {node} -> {route.decode()}: {fmt_reply(data)}")
        for _topic, msg in flush.publishes + applied.publishes:
            self._publish(node, msg)
        self._send(node, flush.sends_after_persist)
        core.advance(flush)
        if lines:
            for line in [f"{node} turn @{self.now_ms}ms", *lines]:
                self.say(line)

    def _describe(self, node: str, flush: Flush) -> list[str]:
        lines = []
        for gid, p in flush.writes:
            described = fmt_persist(p)
            if described:
                lines.append(f"  write g{gid}: {described}")
        for label, sends in (("", flush.sends), (" after write", flush.sends_after_persist)):
            for peer, items in sends.items():
                for gid, msg in items:
                    if self.quiet_message(msg):
                        continue
                    lines.append(f"  {node} -> {peer} g{gid}{label}: {fmt_message(msg)}")
        for _topic, msg in flush.publishes:
            if not self.quiet_message(msg):
                lines.append(f"  {node} publishes: {fmt_message(msg)}")
        for gid, ready in flush.readies:
            if ready.committed:
                lines.append(f"  g{gid} commits " + ", ".join(fmt_entry(e) for e in ready.committed))
        return lines

    def quiet_message(self, msg: Any) -> bool:
        # Time passing (tick, boot) sends heartbeats and beats by the dozen: those are left out
        # there; a settle without time passing shows every one (a ReadIndex round, say).
        return self.quiet or (self.ticking and isinstance(msg, QUIET))

    def _send(self, src: str, sends: dict[str, list[tuple[int, Any]]]) -> None:
        for peer, items in sends.items():
            data = encode(PeerBatch(src, items))
            self.wire.append((peer, lambda p=peer, d=data: self._deliver_peer(p, d)))

    def _deliver_peer(self, dst: str, data: bytes) -> None:
        batch = decode_inbound(data)
        assert isinstance(batch, PeerBatch)
        self.cores[dst].deliver_peer(batch.src, batch.items)

    def _publish(self, src: str, msg: Any) -> None:
        for peer in self.cores:
            if peer != src:
                self.wire.append((peer, lambda p=peer, m=msg: self.cores[p].deliver_published(src, m)))

    def request(self, client: str, node: str, op: Any) -> None:
        rid = self.clients[client] = self.clients.get(client, 0) + 1
        raw = encode(Request(client, rid, rid, op))
        core = self.cores[node]
        self.say(f"{client} -> {node}: #{rid} {fmt_op(op)}")
        hit = core.cache.hit(op, self.now_ms)
        if hit is not None:
            self.say(
                f"  {node} -> {client}: {fmt_reply(encode(Reply(rid, hit, None)))} (a hit, before any turn)"
            )
            return
        core.deliver_client(client.encode(), decode_request(raw), raw)
        self.wire.append((node, lambda: None))  # its socket signalled: the node turns

    def settle(self) -> None:
        for _ in range(SETTLE_TURNS_MAX):
            pending = {n for n, _ in self.wire} | {n for n, c in self.cores.items() if c.has_work()}
            if not pending:
                return
            # Deliver what is on the wire for one node, then let it turn: FIFO by first arrival.
            node = self.wire[0][0] if self.wire else sorted(pending)[0]
            for _ in range(len(self.wire)):
                dst, deliver = self.wire.popleft()
                if dst == node:
                    deliver()
                else:
                    self.wire.append((dst, deliver))
            self.turn(node)
        raise AssertionError(f"not settled after {SETTLE_TURNS_MAX} turns")

    def tick(self, ms: int) -> None:
        end = self.now_ms + ms
        self.ticking = True
        try:
            while self.now_ms < end:
                self.now_ms += STEP_MS
                for node in self.cores:
                    self.turn(node)
                self.settle()
        finally:
            self.ticking = False

    def leaders(self) -> dict[int, tuple[str, int]]:
        found: dict[int, tuple[str, int]] = {}
        for n, core in self.cores.items():
            for gid, g in core.groups.items():
                if g.raft.leader == n:
                    found[gid] = (n, g.raft.term)
        return found


class Scenario:
    def __init__(self) -> None:
        self.cluster: Cluster | None = None

    def run(self, command: str) -> list[str]:
        words = command.split()
        pos = [w for w in words[1:] if "=" not in w]
        kw = {k: int(v) for k, v in (w.split("=", 1) for w in words[1:] if "=" in w)}
        if words[0] == "nodes":
            return self.cmd_nodes(pos, **kw)
        c = self.cluster
        assert c is not None, "start with: nodes ..."
        c.out = []
        getattr(self, f"cmd_{words[0]}")(c, *pos, **kw)
        return c.out

    def cmd_nodes(self, ids: list[str], shards: int = 1, seed: int = 1) -> list[str]:
        c = self.cluster = Cluster(ids, shards, seed)
        groups = {g for core in c.cores.values() for g in core.groups}
        c.quiet = True
        # Past the balancer's first rounds, so leadership stays where it is during the scenario,
        # and past a cache lease after that: a new home serves only write-backs until then.
        cfg = c.config
        settle_ms = cfg.balance_after_leading_ms + 2 * cfg.balance_interval_ms + cfg.cache.home_lease_ms
        while len(c.leaders()) < len(groups) and c.now_ms < BOOT_MS_MAX:
            c.tick(STEP_MS)
        assert len(c.leaders()) == len(groups), f"no leader for every group by {BOOT_MS_MAX} ms"
        c.tick(settle_ms)
        c.quiet = False
        return [f"@{c.now_ms}ms", *self.leader_lines(c)]

    @staticmethod
    def leader_lines(c: Cluster) -> list[str]:
        return [f"g{gid} leader {n} t{term}" for gid, (n, term) in sorted(c.leaders().items())]

    def cmd_request(self, c: Cluster, client: str, node: str, kind: str, *args: str, wait: int = 0) -> None:
        ops: dict[str, Callable[..., Any]] = {
            "put": lambda k, v: Put(k, v),
            "get": lambda k: Get(k),
            "delete": lambda k: Delete(k),
            "acquire": lambda r, o: Acquire(r, "exclusive", o, wait, 10_000),
            "release": lambda r, o: Release(r, o),
            "cache_write": lambda k, v, policy="write_through": CacheWrite(k, msgspec.Raw(pack(v)), policy),
            "cache_read": lambda k: CacheRead(k),
            "member_add": lambda n: MemberAdd(n, f"{n}:7000"),
            "member_remove": lambda n: MemberRemove(n),
        }
        c.request(client, node, ops[kind](*args))
        c.settle()

    def cmd_settle(self, c: Cluster) -> None:
        c.settle()

    def cmd_join(self, c: Cluster, node: str) -> None:
        """A node for the running cluster (``--join``): it knows the members, they not it yet."""
        members = {**c.members, node: f"{node}:7000"}
        core = NodeCore(
            node, members, stored={}, rng=random.Random(7), now_ms=c.now_ms, config=c.config, bootstrap=()
        )
        c.cores[node] = core
        c.say(f"{node} joins, hosting {sorted(core.groups)} with no membership")

    def cmd_members(self, c: Cluster) -> None:
        for n, core in c.cores.items():
            confs = []
            for gid, g in sorted(core.groups.items()):
                conf = g.raft.conf
                learners = f" +{','.join(conf.learners)}" if conf.learners else ""
                state = " (removed)" if g.raft.removed else ""
                confs.append(f"g{gid} {','.join(conf.voters) or '-'}{learners}{state}")
            c.say(f"{n} members {','.join(core.members)}: {'; '.join(confs)}")

    def cmd_tick(self, c: Cluster, ms: str) -> None:
        c.tick(int(ms))

    def cmd_status(self, c: Cluster) -> None:
        for line in self.leader_lines(c):
            c.say(line)
        for n, core in c.cores.items():
            lines = ", ".join(f"{line.key} {line.state} v{line.version}" for line in core.cache.near.lines)
            c.say(f"{n} cache: {lines or '-'}")


@pytest.mark.parametrize("path", sorted(TRANSCRIPTS.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    check_file(path, Scenario().run)


def test_there_are_transcripts() -> None:
    assert len(list(TRANSCRIPTS.glob("*.txt"))) >= 3
