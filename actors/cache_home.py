"""A key's home: the shard leader's directory of who caches what, and every cache op's life there.

The home of a key is the leader of its shard. Its directory (leader-local, like a queue's
in-flight marks; actors/cache_directory.py) says, per cached key, who owns it (E or M) or who
shares it (S); its memory is the shard's replicated ``CacheStore``, which it changes only by
logging through its node (actors/cache_home_link.py). Everything it tells holders goes out on
ONE numbered stream per shard and epoch (its Raft term) on PUB/SUB, grants included; a holder
applies it in order and drops the shard's lines at a gap (actors/cache_near.py). Holders answer
point to point.

One op per key at a time, FIFO: a fetch (read miss), a write or delete, a client invalidate, a
write-back, a ttl expiry, a directory eviction. An op's phases:

    recall   an owner that may be dirty sends its value home (logged if newer), keeps S or drops
             its line; one that cannot be (a write_through writer's E) is demoted to a sharer
    acks     sharers are invalidated and the op waits until each has acknowledged or its lease
             has run out — so a holder cut off from its home never serves a stale line
    commit   a write is logged (the client's own request bytes); a fetch waits for a ReadIndex
             round (this node still leads, memory is up to date), or logs a CacheBump first
    grant    the asker's line (E if nobody else holds it, else S; M for a write_back write)

Leases are per holder and shard: a grant or a renewal (each after a ReadIndex round or a
commit) lets the holder serve its lines of the shard for ``lease_ms`` from before it asked; the
home counts ``home_lease_ms`` (clock drift allowed for) from when it answered. A home never
renews the lease of a holder that owes it an acknowledgement, so a holder that cannot hear the
stream loses its lease rather than stall writes. When a holder's lease runs out here, the home
forgets it (it must resync: drop everything) and fences the keys it owned: their next grant
logs a fresh version first, so neither a late write-back nor a version the lost owner handed out
can ever match again. A new home serves nothing but write-backs until one ``home_lease_ms`` has
passed since it took over: by then every lease its predecessors granted has run out.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec

from syncfab.actors.cache_directory import DIRECTORY, UNCACHED, Entry, HomeDirectory, HomeOp, Kind, Phase
from syncfab.actors.cache_home_link import HomeLink
from syncfab.actors.cache_ops import (
    EXCLUSIVE,
    INVALID,
    MODIFIED,
    SHARED,
    VERSION_STEP,
    WRITE_BACK,
    CacheBump,
    CacheConfig,
    CacheDelete,
    CacheExpire,
    CacheWriteBack,
    WriteBackItem,
)
from syncfab.actors.messages import (
    CacheAck,
    CacheRecalled,
    CacheStream,
    Grant,
    Inval,
    Lease,
    Recall,
    StreamItem,
    WrittenBack,
)
from syncfab.actors.results import Ok, Result

if TYPE_CHECKING:
    from syncfab.actors.cache_store import CacheStore

NIL = b"\xc0"  # MessagePack's nil: the value of a key that does not exist


class CacheHome:
    def __init__(self, shard: int, node_id: str, config: CacheConfig) -> None:
        self.shard = shard
        self.node_id = node_id
        self.config = config
        self.link = HomeLink(shard, lambda: self.epoch)  # to the shard's log, via the node
        self.memory: CacheStore  # set by CacheStore
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "fetches",
                "writes",
                "recalls",
                "invalidations",
                "write_backs",
                "write_backs_refused",
                "lapses",
                "evictions",
                "expiries",
            ),
            0,
        )
        self.fanout_ms: list[int] = []  # write accepted -> last holder acknowledged; drained by metrics
        self.reset()

    def reset(self) -> None:
        """Not (or no longer) the home: everything leader-local goes."""
        self.epoch = 0  # 0: not leading
        self.seq = self.published = 0
        self.outbox: list[StreamItem] = []
        self.ready_at_ms = 0
        self.ready = False
        self.epoch_start_index = 0
        self.now_ms = 0  # this node's clock, set every turn (leases are counted from it)
        self.directory = HomeDirectory(self.config.directory_entries_max)
        self.leases: dict[str, int] = {}  # holder -> home-clock end of its lease
        self.acked: dict[str, int] = {}  # holder -> stream seq it has applied
        self.lapsed: set[str] = set()  # holders to resync on their next renewal
        self.ops: dict[str, deque[HomeOp]] = {}  # key -> its ops, the head one running
        self.by_origin: dict[tuple[str, int], HomeOp] = {}  # (holder, op id) -> queued op
        self.waits_on: dict[str, set[str]] = {}  # holder -> keys whose head op waits for it
        self.home_expiring: set[str] = set()  # keys with an expiry or eviction queued
        self.link.forget()

    def start(self, epoch: int, now_ms: int, epoch_start_index: int) -> None:
        """This node leads the shard in ``epoch`` (its term) from ``now_ms``."""
        self.reset()
        self.epoch, self.now_ms, self.epoch_start_index = epoch, now_ms, epoch_start_index
        self.ready_at_ms = now_ms + self.config.home_lease_ms

    @property
    def active(self) -> bool:
        return self.epoch > 0

    # -- the stream -----------------------------------------------------------------------

    def _publish(self, item: StreamItem) -> int:
        self.seq += 1
        self.outbox.append(item)
        return self.seq

    def take_stream(self) -> CacheStream | None:
        if not self.outbox:
            return None
        out = CacheStream(self.shard, self.epoch, self.published + 1, self.outbox)
        self.published, self.outbox = self.seq, []
        return out

    # -- inputs from holders --------------------------------------------------------------

    def ask(self, node: str, kind: Kind, op_id: int, key: str, **details: Any) -> None:
        """A holder's fetch, write or invalidate (a retry of a queued one is ignored)."""
        if not self.active or (node, op_id) in self.by_origin:
            return
        op = HomeOp(kind, node, op_id, key, **details)
        self.by_origin[(node, op_id)] = op
        self._enqueue(op)

    def write_back(self, node: str, items: list[WriteBackItem]) -> None:
        if not self.active:
            return
        for item in items:
            op = self._head(item.key)
            if item.release and op is not None and op.phase is Phase.RECALL and op.recall_from == node:
                self._recalled(op, item)  # it gave the line up as our recall was on its way
            elif self.ready:
                self._enqueue(HomeOp(Kind.WRITE_BACK, node, 0, item.key, item=item))
            else:
                self._enqueue_early(HomeOp(Kind.WRITE_BACK, node, 0, item.key, item=item))

    def recalled(self, node: str, msg: CacheRecalled) -> None:
        if msg.epoch != self.epoch:
            return
        op = self._head(msg.key)
        if (
            op is not None
            and op.phase is Phase.RECALL
            and op.recall_from == node
            and msg.recall_seq == op.recall_seq
        ):
            self._recalled(op, msg.item)

    def ack(self, node: str, msg: CacheAck) -> None:
        if not self.active or msg.epoch != self.epoch:
            return
        for key, seq in msg.dropped:
            self._dropped(node, key, seq)
        if msg.seq > self.acked.get(node, 0):
            self.acked[node] = msg.seq
            for key in sorted(self.waits_on.get(node, ())):
                op = self._head(key)
                if op is not None and op.phase is Phase.ACKS and op.waits.get(node, msg.seq + 1) <= msg.seq:
                    self._stop_waiting(op, node)
        if msg.renew_id:
            renew_id = msg.renew_id
            self.link.confirm(lambda r: self._renewed(node, renew_id, r))

    def tick(self, now_ms: int, wall_ms: int) -> None:
        if not self.active:
            return
        self.now_ms = now_ms
        self.link.retry()
        if not self.ready and now_ms >= self.ready_at_ms:
            self.ready = True
            for key in sorted(self.ops):
                self._run(self.ops[key][0])
        for node in sorted(set(self.directory.held) | set(self.waits_on)):
            if self.leases.get(node, 0) <= now_ms:
                self._lapse(node)
        if self.ready:
            for key, version in self.memory.expired(wall_ms):
                if key not in self.home_expiring:
                    self.home_expiring.add(key)
                    self._enqueue(HomeOp(Kind.EXPIRE, "", 0, key, version=version))

    # -- one op's life --------------------------------------------------------------------

    def _head(self, key: str) -> HomeOp | None:
        queue = self.ops.get(key)
        return queue[0] if queue else None

    def _enqueue(self, op: HomeOp) -> None:
        queue = self.ops.setdefault(op.key, deque())
        queue.append(op)
        if len(queue) == 1:
            self._run(op)

    def _enqueue_early(self, op: HomeOp) -> None:
        """Before the home is ready only write-backs run: one goes ahead of the ops that wait
        for the takeover to end (they must see the value it brings home), behind earlier ones."""
        queue = self.ops.setdefault(op.key, deque())
        ahead = 0
        while ahead < len(queue) and queue[ahead].kind is Kind.WRITE_BACK:
            ahead += 1
        queue.insert(ahead, op)
        if ahead == 0:
            self._run(op)

    def _run(self, op: HomeOp) -> None:
        if op.phase is not Phase.QUEUED or (not self.ready and op.kind is not Kind.WRITE_BACK):
            return  # it waits for an event, or for the takeover wait to end
        key, entry = op.key, self.directory.get(op.key)
        if op.kind is Kind.WRITE_BACK:
            self._run_write_back(op, entry)
            return
        self.directory.former.pop(key, None)  # the key moves on: a lost owner's write-back is too late
        if entry is not None and entry.owner is not None:
            if op.kind is Kind.FETCH and entry.owner == op.node:
                # The owner asks again (it dropped a clean E, or this is an old fetch sent
                # twice): it gets E again, and a holder whose line went dirty since ignores that.
                pass
            elif not entry.owner_may_dirty:
                # Its copy is memory's: no need to wait for it. It relabels its line S; a write
                # invalidates it like any sharer's.
                owner = entry.owner
                self._publish(Recall(owner, key, shared=True))
                DIRECTORY[(entry.state, "recall_shared")]
                entry.sharers[owner], entry.owner = entry.owner_seq, None
            else:
                op.phase, op.recall_from = Phase.RECALL, entry.owner
                op.recall_seq = self._publish(Recall(entry.owner, key, shared=op.kind is Kind.FETCH))
                self._wait_for(op, entry.owner)
                self.counters["recalls"] += 1
                return
        self._invalidate(op, entry)

    def _recalled(self, op: HomeOp, item: WriteBackItem | None) -> None:
        """The owner answered the recall (or was lost): it is S (fetch) or gone now."""
        owner = op.recall_from
        assert owner is not None
        op.recall_from = None
        self._unwait(op, owner)
        entry = self.directory.get(op.key)
        if entry is not None and entry.owner == owner:
            if op.kind is Kind.FETCH:
                entry.sharers[owner] = entry.owner_seq
                entry.owner = None
            else:
                self.directory.unhold(entry, owner, op.key, "recall")
            op.dropped += 1
        if item is not None and item.version != self.memory.version_of(op.key):
            op.phase = Phase.RECALL_COMMIT
            self.link.propose(CacheWriteBack([item]), lambda r: self._recall_logged(op, owner, item, r))
            return
        if item is not None:
            self._publish(WrittenBack(owner, item.key, item.version, True))
        op.phase = Phase.QUEUED
        self._invalidate(op, self.directory.get(op.key))

    def _recall_logged(self, op: HomeOp, owner: str, item: WriteBackItem, result: Result) -> None:
        ok = isinstance(result, Ok) and result.value[0]
        self._publish(WrittenBack(owner, item.key, item.version, ok))
        self.counters["write_backs"] += 1
        op.phase = Phase.QUEUED
        self._invalidate(op, self.directory.get(op.key))

    def _invalidate(self, op: HomeOp, entry: Entry | None) -> None:
        """Every sharer drops its copy — the asker's too — unless this op only reads."""
        if op.kind is not Kind.FETCH and entry is not None and entry.sharers:
            seq = self._publish(Inval(op.key))
            self.counters["invalidations"] += 1
            op.phase, op.inval_ms = Phase.ACKS, self.now_ms
            for node in sorted(entry.sharers):
                op.waits[node] = seq
                self._wait_for(op, node)
            return
        self._commit(op)

    def _stop_waiting(self, op: HomeOp, node: str) -> None:
        """``node`` acknowledged op's invalidation, or its lease ran out."""
        op.waits.pop(node, None)
        self._unwait(op, node)
        entry = self.directory.get(op.key)
        if entry is not None and node in entry.sharers:
            entry.sharers.pop(node)
            self.directory.unheld(node, op.key)
            op.dropped += 1
        if not op.waits:
            self.fanout_ms.append(self.now_ms - op.inval_ms)
            if len(self.fanout_ms) > 4096:
                del self.fanout_ms[:2048]
            self._commit(op)

    def _commit(self, op: HomeOp) -> None:
        op.phase = Phase.COMMIT
        key = op.key
        match op.kind:
            case Kind.FETCH:
                self.counters["fetches"] += 1
                if key in self.directory.fenced:
                    self.link.propose(CacheBump(key), lambda r: self._fetch_confirmed(op, r))
                else:
                    self.link.confirm(lambda r: self._fetch_confirmed(op, r))
            case Kind.WRITE:
                self.counters["writes"] += 1
                self.link.propose(op.request, lambda r: self._written(op, r))
            case Kind.EXPIRE:
                self.counters["expiries"] += 1
                self.link.propose(CacheExpire(key, op.version), lambda r: self._finish(op))
            case Kind.DROP:
                self._grant(op, INVALID, None, 0, result=Ok(op.dropped))
            case Kind.EVICT:
                self.counters["evictions"] += 1
                entry = self.directory.get(key)
                if entry is not None and entry.state == UNCACHED:
                    del self.directory.entries[key]
                self._finish(op)

    def _fetch_confirmed(self, op: HomeOp, result: Result) -> None:
        stored = self.memory.peek(op.key)
        value, version = (None, 0) if stored is None else (stored.value, stored.version)
        self.directory.unfence(op.key, version)
        entry = self.directory.get(op.key)
        if entry is None:
            state = EXCLUSIVE
        elif entry.owner not in (None, op.node) or any(n != op.node for n in entry.sharers):
            state = SHARED
        else:
            state = EXCLUSIVE
        self._grant(op, state, value, version, may_dirty=state == EXCLUSIVE and self._fresh(op.key, version))

    def _written(self, op: HomeOp, result: Result) -> None:
        stored = self.memory.peek(op.key)
        state, value, version = INVALID, None, 0
        if isinstance(result, Ok):
            self.directory.unfence(op.key, stored.version if stored is not None else 0)
            if isinstance(op.command, CacheDelete):
                state = EXCLUSIVE if stored is None else INVALID
            elif stored is not None and stored.version == result.value:
                state = MODIFIED if op.command.policy == WRITE_BACK else EXCLUSIVE
                value, version = stored.value, stored.version
        # A write_through writer's E stays memory's copy (its first write_back write asks home),
        # so nobody need wait for it when the key is read or written elsewhere.
        self._grant(
            op,
            state,
            value,
            version,
            result=result,
            may_dirty=state == MODIFIED and self._fresh(op.key, version),
        )

    def _grant(
        self,
        op: HomeOp,
        state: str,
        value: bytes | None,
        version: int,
        *,
        result: Result | None = None,
        may_dirty: bool = False,
    ) -> None:
        """Tell the asker its line; the directory follows what the grant says."""
        node, key = op.node, op.key
        seq = self.seq + 1
        entry = self._entry_for(key) if state != INVALID else self.directory.get(key)
        if entry is None:
            state = INVALID  # the directory is full: the asker caches nothing
        if state != INVALID and entry is not None:
            self.directory.grant(entry, node, key, state, seq, may_dirty)
        elif entry is not None:
            self.directory.unhold(entry, node, key, "dropped")  # what the asker had is gone now
        # A lapsed holder gets no lease until it has resynced: its older lines are forgotten here.
        lease = node != "" and node not in self.lapsed and not self._owes(node)
        if lease:
            self.leases[node] = self.now_ms + self.config.home_lease_ms
        if node:
            raw = msgspec.Raw(NIL if value is None else value)
            self._publish(Grant(node, op.op_id, key, state, raw, version, lease, may_dirty, result))
        self._finish(op)

    def _finish(self, op: HomeOp) -> None:
        queue = self.ops.get(op.key)
        if not queue or queue[0] is not op:
            return  # reset() since, or a duplicate answer
        queue.popleft()
        self.by_origin.pop((op.node, op.op_id), None)
        if op.kind in (Kind.EXPIRE, Kind.EVICT):
            self.home_expiring.discard(op.key)
        if queue:
            self._run(queue[0])
        else:
            del self.ops[op.key]

    def _run_write_back(self, op: HomeOp, entry: Entry | None) -> None:
        """An owner's value coming home: logged if the sender still owns the line (or, before
        this home is ready, may have owned it under the previous home: memory's version decides)."""
        item, node = op.item, op.node
        assert item is not None
        owner = entry is not None and entry.owner == node
        if not (owner or not self.ready or self.directory.former.get(op.key) == node):
            self.counters["write_backs_refused"] += 1
            self._publish(WrittenBack(node, item.key, item.version, False))
            self._finish(op)
            return
        op.phase = Phase.COMMIT
        self.link.propose(CacheWriteBack([item]), lambda r: self._written_back(op, r))

    def _written_back(self, op: HomeOp, result: Result) -> None:
        item = op.item
        assert item is not None
        ok = isinstance(result, Ok) and result.value[0]
        self.counters["write_backs"] += 1
        entry = self.directory.get(op.key)
        former, fenced = self.directory.former, self.directory.fenced
        if former.get(op.key) == op.node:
            del former[op.key]
            if ok:
                fenced.pop(op.key, None)  # nothing it handed out is lost: its last version is in
        # A release that went in leaves the owner without the line. A refused write-back says
        # nothing of the line it holds now (one granted since, even): the directory keeps it.
        if entry is not None and entry.owner == op.node and item.release and ok:
            self.directory.unhold(entry, op.node, op.key, "dropped")
        self._publish(WrittenBack(op.node, item.key, item.version, ok))
        self._finish(op)

    # -- holders --------------------------------------------------------------------------

    def _dropped(self, node: str, key: str, grant_seq: int) -> None:
        """``node`` evicted a clean line granted at ``grant_seq`` (a newer grant stays)."""
        entry = self.directory.get(key)
        if entry is None:
            return
        if entry.sharers.get(node, grant_seq + 1) <= grant_seq:
            del entry.sharers[node]
            self.directory.unheld(node, key)
        elif entry.owner == node and entry.owner_seq <= grant_seq:
            op = self._head(key)
            if op is not None and op.phase is Phase.RECALL and op.recall_from == node:
                self._recalled(op, None)
            else:
                self.directory.unhold(entry, node, key, "dropped")

    def _renewed(self, node: str, renew_id: int, result: Result) -> None:
        if self._owes(node):
            return  # no lease while it owes us an answer: it asks again soon
        resync = node in self.lapsed
        if resync:
            # It drops every line of the shard when it reads this: forget what it got since.
            self.lapsed.discard(node)
            self.directory.forget(node, self.memory.version_of)
        self._publish(Lease(node, renew_id, resync))
        self.leases[node] = self.now_ms + self.config.home_lease_ms

    def _owes(self, node: str) -> bool:
        return bool(self.waits_on.get(node))

    def _lapse(self, node: str) -> None:
        """``node``'s lease ran out here: forget it; its owned keys are fenced."""
        self.counters["lapses"] += 1
        self.lapsed.add(node)
        self.leases.pop(node, None)
        self.directory.forget(node, self.memory.version_of)
        for key in sorted(self.waits_on.pop(node, ())):
            op = self._head(key)
            if op is None:
                continue
            if op.phase is Phase.RECALL and op.recall_from == node:
                self._recalled(op, None)
            elif op.phase is Phase.ACKS and node in op.waits:
                self._stop_waiting(op, node)

    def _fresh(self, key: str, version: int) -> bool:
        """May a line at ``version`` turn M without asking? Only if no version above it can have
        been handed out and lost: logged in this epoch, and no owner lost since."""
        return version // VERSION_STEP > self.epoch_start_index and key not in self.directory.fenced

    def _wait_for(self, op: HomeOp, node: str) -> None:
        self.waits_on.setdefault(node, set()).add(op.key)

    def _unwait(self, op: HomeOp, node: str) -> None:
        keys = self.waits_on.get(node)
        if keys is not None and node not in op.waits and op.recall_from != node:
            keys.discard(op.key)
            if not keys:
                del self.waits_on[node]

    def _entry_for(self, key: str) -> Entry | None:
        """The key's entry, made if there is room; when full, the least recently used idle
        entry is evicted (its holders invalidated first) and this grant caches nothing."""
        entry = self.directory.make(key)
        if entry is not None:
            return entry
        for victim in self.directory.entries:
            if victim not in self.ops and victim not in self.home_expiring:
                self.home_expiring.add(victim)
                self._enqueue(HomeOp(Kind.EVICT, "", 0, victim))
                break
        return None

    # -- views ---------------------------------------------------------------------------

    def line_info(self, key: str) -> dict[str, Any]:
        holders = [
            {"node": n, "state": state, "lease_ms": max(0, self.leases.get(n, 0) - self.now_ms)}
            for n, state in self.directory.holders(key)
        ]
        return {
            "key": key,
            "version": self.memory.version_of(key),
            "home": self.node_id,
            "epoch": self.epoch,
            "holders": holders,
        }

    def check(self) -> None:
        """Invariants the simulator asks for after every turn."""
        self.directory.check()
