"""The cache's share of a NodeCore: its near cache, the homes of the shards it leads, and the
wiring between them and the node — pure, like the core (the simulator runs it unchanged).

- Client cache ops go to the near cache (actors/cache_near.py); its answers become replies.
- What the near cache says to a shard's home goes to the node that leads the shard (or, when
  that is this node, into its own inbox: the home's holders include itself).
- A home's stream (actors/cache_home.py) is published on PUB and fed to this node's own near
  cache the same way, in the same order; the beat names each stream's last seq.
- A home logs through the node (``propose``: the entry's answer comes back to it) and confirms
  its leadership with a ReadIndex round (``confirm``): it is the ``HomePort``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from syncfab.actors.cache_home import CacheHome, Kind
from syncfab.actors.cache_near import NearCache
from syncfab.actors.cache_ops import CacheConfirm, CacheDelete, CacheRead, CacheWrite, check_op
from syncfab.actors.messages import (
    CacheAck,
    CacheDropReq,
    CacheFetch,
    CacheRecalled,
    CacheStream,
    CacheWriteBackReq,
    CacheWriteReq,
)
from syncfab.actors.raft import Role
from syncfab.actors.results import Err, Result
from syncfab.fabric.core.codec import DecodeError, Request, decode_request, encode

if TYPE_CHECKING:
    from syncfab.fabric.core.node import NodeCore

STREAM_TOPIC = b"cache"


def home_receives(home: CacheHome, src: str, msg: Any) -> bool:
    """Hand a holder's message to the home; False if it is not one a home takes (or is bad)."""
    match msg:
        case CacheFetch(op_id=op_id, key=key):
            home.ask(src, Kind.FETCH, op_id, key)
        case CacheWriteReq(op_id=op_id, request=raw):
            try:
                request = decode_request(raw)
            except (DecodeError, ValueError):
                return False
            op = request.op
            if not isinstance(op, CacheWrite | CacheDelete) or check_op(op) is not None:
                return False
            home.ask(src, Kind.WRITE, op_id, op.key, request=bytes(raw), command=op)
        case CacheDropReq(op_id=op_id, key=key):
            home.ask(src, Kind.DROP, op_id, key)
        case CacheWriteBackReq(items=items):
            home.write_back(src, items)
        case CacheAck():
            home.ack(src, msg)
        case CacheRecalled():
            home.recalled(src, msg)
        case _:
            return False
    return True


class NodeCache:
    def __init__(self, core: NodeCore) -> None:
        self.core = core
        cfg = core.config
        self.near = NearCache(core.id, cfg.shard_count, cfg.cache)
        self.undeliverable = 0  # holder messages for a shard whose leader nobody knows
        self._homes: list[CacheHome] = []

    def home(self, shard: int) -> CacheHome | None:
        g = self.core.groups.get(shard)
        if g is None or shard == 0:
            return None
        return g.machine.services["cache"].home  # type: ignore[attr-defined, no-any-return]

    def homes(self) -> list[CacheHome]:
        """The homes this node is now, in shard order (kept: asked every turn)."""
        return self._homes

    def _refresh_homes(self) -> None:
        found = (self.home(gid) for gid in sorted(self.core.groups))
        self._homes = [h for h in found if h is not None and h.active]

    # -- inputs ---------------------------------------------------------------------------

    def on_client(self, route: bytes, request: Request, raw: bytes, now_ms: int) -> None:
        self.near.on_client(route, request.client, request.id, request.acked, request.op, raw, now_ms)

    def hit(self, op: Any, now_ms: int) -> Result | None:
        """The answer to a cache read this node's own line gives now, else None (then the
        request is delivered as usual). ``now_ms``: the clock as the request arrived; a hit
        decides nothing, so its answer need not wait for the node's turn."""
        return self.near.hit(op.key, now_ms) if type(op) is CacheRead else None

    def on_peer(self, src: str, gid: int, msg: Any, now_ms: int) -> None:
        if isinstance(msg, CacheStream):
            self.near.on_stream(msg, now_ms)
            return
        home = self.home(gid)
        if home is None or not home.active:
            return  # not (or no longer) its home: the holder asks the leader it learns of next
        if not home_receives(home, src, msg):
            self.core.counters["bad_peer_messages"] += 1

    def on_beat(self, streams: list[tuple[int, int, int]], now_ms: int) -> None:
        if streams:
            self.near.on_beat(streams, now_ms)

    def clock(self, now_ms: int) -> None:
        """Every turn: a home stamps leases with the time it answers, never an older one."""
        for home in self._homes:
            home.now_ms = now_ms

    def tick(self, now_ms: int, wall_ms: int) -> None:
        for home in self.homes():
            home.tick(now_ms, wall_ms)
        # Our own homes' epochs, which the beat tells every other node (PUB does not loop back;
        # the loopback loses nothing, so no seq: the stream itself may still be in our inbox).
        self.near.on_beat([(h.shard, h.epoch, 0) for h in self.homes()], now_ms)
        self.near.tick(now_ms)

    def leadership(self, gid: int, leading: bool, term: int, now_ms: int, last_index: int) -> None:
        """Called once the group's leader-local state was reset for a change of leadership."""
        home = self.home(gid)
        if home is not None and leading:
            home.start(term, now_ms, last_index)
        self._refresh_homes()

    # -- outputs --------------------------------------------------------------------------

    def collect(self) -> None:
        """Move what the near cache and the homes produced into the node's flush."""
        core = self.core
        near = self.near
        near.flush_acks()
        for home in self.homes():
            stream = home.take_stream()
            if stream is not None:
                core.publish(STREAM_TOPIC, stream)
                core.loopback(0, stream)
        sends, near.sends = near.sends, []
        for shard, msg in sends:
            leader = core.leader_of(shard)
            if leader is None:
                self.undeliverable += 1
            elif leader == core.id:
                core.loopback(shard, msg)
            else:
                core.send(leader, shard, msg)
        answers, near.answers = near.answers, []
        for route, request_id, result in answers:
            core.reply_to_client(route, request_id, result)

    def has_work(self) -> bool:
        return bool(self.near.sends or self.near.answers or any(h.outbox for h in self.homes()))

    def stream_positions(self) -> list[tuple[int, int, int]]:
        """Every stream this node publishes, a fresh one too: its epoch is news to holders."""
        return [(h.shard, h.epoch, h.published) for h in self.homes()]

    # -- the HomePort ---------------------------------------------------------------------

    def propose(self, shard: int, payload: bytes | object, done: Callable[[Result], None]) -> None:
        raw = payload if isinstance(payload, bytes) else encode(Request("", 0, 0, payload))
        if not self.core.propose_for(shard, raw, done):
            done(Err("not_leader", f"not the leader of shard {shard}"))

    def confirm(self, shard: int, done: Callable[[Result], None]) -> None:
        if not self.core.read_for(shard, CacheConfirm(), done):
            done(Err("not_leader", f"not the leader of shard {shard}"))

    def leads(self, shard: int) -> bool:
        g = self.core.groups.get(shard)
        return g is not None and g.raft.role is Role.LEADER
