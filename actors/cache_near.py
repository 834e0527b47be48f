"""A node's near cache: its clients' reads served from its own lines, everything else asked of
the key's home (actors/cache_home.py).

A read of a line in M, E or S whose shard lease is live is a hit: answered here, no message.
A miss becomes ONE fetch per key however many callers wait for it (no herds). Writes go home
(the home invalidates every other copy first), except a write_back write to a line this node
owns, which stays local (E turns M silently). Per key, one op is in flight at a time; the rest
queue behind it, so nothing this node says about a key overtakes what it said before.

From each home it applies one ordered stream per shard and epoch. A gap (a seq skipped, or a
home's heartbeat naming a seq not seen), a new epoch, or a resync drops every line of that
shard at once — M lines go home first: a dirty line is never dropped before memory has it.
A line is served only while its shard's lease is live (renewed by grants and by renewals this
node asks for), so a node cut off from a home stops serving that shard's lines by itself.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Any

import msgspec

from syncfab.actors.cache_answers import ClientRequests, grant_result, line_value
from syncfab.actors.cache_lines import Line, LineTable, step
from syncfab.actors.cache_near_state import DROP, FETCH, WRITE, Caller, HomeSession, KeyOp, ToHome
from syncfab.actors.cache_ops import (
    EXCLUSIVE,
    INVALID,
    MODIFIED,
    SHARED,
    VERSION_STEP,
    WRITE_BACK,
    CacheConfig,
    CacheDelete,
    CacheInvalidate,
    CacheRead,
    CacheStats,
    CacheWrite,
    CacheWritten,
    WriteBackItem,
    check_op,
)
from syncfab.actors.messages import (
    CacheAck,
    CacheDropReq,
    CacheFetch,
    CacheRecalled,
    CacheStream,
    CacheWriteBackReq,
    CacheWriteReq,
    Grant,
    Inval,
    Lease,
    Recall,
    WrittenBack,
)
from syncfab.actors.results import Err, Ok, Result
from syncfab.actors.ring import shard_for_key

RENEWS_MAX = 8  # renewals remembered per shard (older answers renew nothing)


class NearCache:
    def __init__(self, node_id: str, shard_count: int, config: CacheConfig, op_base: int = 0) -> None:
        self.node_id = node_id
        self.shard_count = shard_count
        self.config = config
        self.lines = LineTable(config.lines_max, config.bytes_max)
        self.sessions: dict[int, HomeSession] = {}
        self.pending: dict[str, KeyOp] = {}
        self.queued: dict[str, deque[Caller]] = {}
        self.dirty: OrderedDict[str, int] = OrderedDict()  # dirty key -> when it was first written
        # Values on their way home (write-backs, recall answers), sent again until the home's
        # WrittenBack: key -> (shard, the message, when it was sent). A line being released
        # stays, unserved, until then.
        self.returning: dict[str, tuple[int, CacheWriteBackReq | CacheRecalled, int]] = {}
        self._recent_drops: OrderedDict[str, None] = OrderedDict()  # to tell coherence misses apart
        # A local write is in no session table, so this node keeps its own (actors/cache_answers.py).
        self._requests = ClientRequests()
        self._next_op = op_base
        # Outputs, taken by the node each turn.
        self.sends: list[tuple[int, ToHome]] = []
        self.answers: list[tuple[bytes, int, Result]] = []
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "hits",
                "misses_capacity",
                "misses_coherence",
                "local_writes",
                "remote_writes",
                "evictions",
                "write_backs",
                "write_backs_refused",
                "recalls",
                "invalidations",
                "gaps",
                "epochs",
                "resyncs",
                "lease_waits",
                "timeouts",
            ),
            0,
        )

    def number_ops_from(self, op_base: int) -> None:
        """Op ids of this incarnation start here (a home may still hold an earlier one's)."""
        self._next_op = op_base

    # -- clients --------------------------------------------------------------------------

    def on_client(
        self, route: bytes, client: str, request_id: int, acked: int, op: Any, raw: bytes, now_ms: int
    ) -> None:
        earlier = self._requests.earlier(client, request_id, acked)
        if earlier is not None:
            self.answers.append((route, request_id, earlier))
        elif self._requests.serve(client, request_id):
            self._dispatch((route, request_id, op, raw, client), now_ms)

    def _dispatch(self, caller: Caller, now_ms: int) -> None:
        op = caller[2]
        if type(op) is CacheRead:
            self._read(caller, op.key, now_ms)
            return
        if isinstance(op, CacheStats):
            self._answer(caller, Ok(self.stats()))
            return
        err = check_op(op)
        if err is not None:
            self._answer(caller, err)
        elif self._busy(op.key):
            self.queued.setdefault(op.key, deque()).append(caller)
        elif isinstance(op, CacheWrite):
            self._write(caller, op, now_ms)
        elif isinstance(op, CacheDelete):
            self._start(op.key, WRITE, lambda i: CacheWriteReq(i, msgspec.Raw(caller[3])), caller, now_ms)
        elif isinstance(op, CacheInvalidate):
            self._start(op.key, DROP, lambda i: CacheDropReq(i, op.key), caller, now_ms)
        else:
            self._answer(caller, Err("bad_request", f"{type(op).__name__} is not a cache op"))

    def hit(self, key: str, now_ms: int) -> Result | None:
        """A read served from this node's own line, or None (it must go the long way). The
        runtime asks this as a request arrives, with the clock read then: a hit decides
        nothing, so it need not wait for the node's turn."""
        line = self.lines.get(key)
        if line is None or line.releasing or self.sessions[line.shard].lease_until_ms <= now_ms:
            return None
        self.counters["hits"] += 1
        self.lines.touch(line)
        return line_value(line, hit=True)

    def _read(self, caller: Caller, key: str, now_ms: int) -> None:
        result = self.hit(key, now_ms)
        if result is not None:
            self._answer(caller, result)
            return
        line = self.lines.get(key)
        op = self.pending.get(key)
        if op is not None and op.kind == FETCH:
            op.callers.append(caller)  # one fetch, however many callers
            op.joined_ms.append(now_ms)
            self._count_miss(key)
        elif self._busy(key):
            self.queued.setdefault(key, deque()).append(caller)
        elif line is not None:
            # The line is fine, its lease lapsed: renew it rather than fetch it again (a dirty
            # M line must not be fetched over anyway).
            self.counters["lease_waits"] += 1
            session = self.sessions[line.shard]
            session.waiting.append((now_ms, caller))
            self._renew(line.shard, session, now_ms, force=True)
        else:
            self._count_miss(key)
            self._start(key, FETCH, lambda i: CacheFetch(i, key), caller, now_ms)

    def _write(self, caller: Caller, op: CacheWrite, now_ms: int) -> None:
        line = self.lines.get(op.key)
        # A compare-and-set always goes home: it is logged, so a retry (through any node) of one
        # that succeeded is answered, not applied again and failed.
        if (
            op.policy == WRITE_BACK
            and op.ttl_ms is None
            and op.expected_version is None
            and line is not None
            and not line.releasing
            and (line.state == MODIFIED or (line.state == EXCLUSIVE and line.may_dirty))
            and line.version % VERSION_STEP < VERSION_STEP - 1
            and self.sessions[line.shard].lease_until_ms > now_ms
            and not self._requests.forwarded(caller[4], caller[1])
            # A flush unconfirmed for a flush period means the home may not hear us: what we
            # wrote here would be lost with the lease. Such writes go home (and wait there).
            and (not line.pending or now_ms - line.pending_ms <= self.config.flush_ms)
        ):
            # The owner's write: nobody else holds the line, memory learns it on write-back.
            line.state = step(line.state, "write")
            line.value = bytes(op.value)
            line.version += 1
            self.lines.resize(line)
            self.lines.touch(line)
            self.dirty.setdefault(op.key, now_ms)
            self.counters["local_writes"] += 1
            self._answer(caller, Ok(CacheWritten(op.key, line.version, MODIFIED)))
            return
        self.counters["remote_writes"] += 1
        if op.policy == WRITE_BACK:
            self._requests.forward(caller[4], caller[1])
        self._start(op.key, WRITE, lambda i: CacheWriteReq(i, msgspec.Raw(caller[3])), caller, now_ms)

    def _start(self, key: str, kind: str, message: Any, caller: Caller | None, now_ms: int) -> None:
        self._next_op += 1
        shard = shard_for_key(key, self.shard_count)
        op = KeyOp(
            kind,
            shard,
            self._next_op,
            message(self._next_op),
            now_ms,
            now_ms,
            [caller] if caller is not None else [],
            [now_ms] if caller is not None else [],
        )
        self.pending[key] = op
        self.sends.append((shard, op.message))

    def _busy(self, key: str) -> bool:
        if key in self.pending:
            return True
        line = self.lines.get(key)
        return line is not None and line.releasing

    def _done(self, key: str, now_ms: int) -> None:
        """The key's op is over: the callers queued behind it go on, in order."""
        self.pending.pop(key, None)
        queue = self.queued.pop(key, None)
        while queue:
            self._dispatch(queue.popleft(), now_ms)
            if self._busy(key):
                if queue:
                    self.queued.setdefault(key, deque()).extend(queue)
                return

    def _answer(self, caller: Caller, result: Result) -> None:
        self._requests.answered(caller[4], caller[1], result, keep=type(caller[2]) is not CacheRead)
        self.answers.append((caller[0], caller[1], result))

    def _count_miss(self, key: str) -> None:
        if key in self._recent_drops:
            del self._recent_drops[key]
            self.counters["misses_coherence"] += 1
        else:
            self.counters["misses_capacity"] += 1

    # -- the homes' streams ---------------------------------------------------------------

    def on_stream(self, stream: CacheStream, now_ms: int) -> None:
        shard = stream.shard
        session = self.sessions.get(shard)
        if session is None or stream.epoch > session.epoch:
            session = self._new_epoch(shard, stream.epoch, stream.seq0 - 1, now_ms)
        elif stream.epoch < session.epoch:
            return  # a deposed home's
        last = stream.seq0 + len(stream.items) - 1
        if last <= session.applied:
            return  # seen (a loopback or a duplicate)
        if stream.seq0 > session.applied + 1:
            self._lose_shard(shard, now_ms, "gaps")
        first = max(stream.seq0, session.applied + 1)
        for seq in range(first, last + 1):
            session.applied = seq
            self._apply(shard, session, seq, stream.items[seq - stream.seq0], now_ms)
        self._evict(now_ms)

    def on_beat(self, streams: list[tuple[int, int, int]], now_ms: int) -> None:
        """A home's heartbeat names the last seq of its streams: one we have not seen was lost."""
        for shard, epoch, seq in streams:
            session = self.sessions.get(shard)
            if session is None or epoch > session.epoch:
                self._new_epoch(shard, epoch, seq, now_ms)
            elif epoch == session.epoch and seq > session.applied:
                self._lose_shard(shard, now_ms, "gaps")
                session.applied = seq

    def _apply(self, shard: int, session: HomeSession, seq: int, item: Any, now_ms: int) -> None:
        match item:
            case Inval(key=key):
                session.ack_due = True
                line = self.lines.get(key)
                if line is not None and line.shard == shard:
                    self.counters["invalidations"] += 1
                    if line.state == SHARED:
                        line.state = step(line.state, "inval")
                        self._drop(line)
                    else:
                        self._lose(line, now_ms)  # an owner the home forgot (its lease lapsed)
            case Grant(node=node) if node == self.node_id:
                self._granted(shard, session, seq, item, now_ms)
            case Recall(node=node, key=key, shared=shared) if node == self.node_id:
                self._recall(shard, session, key, shared, seq, now_ms)
            case Lease(node=node, renew_id=renew_id, resync=resync) if node == self.node_id:
                asked = session.renews.pop(renew_id, None)
                if resync:
                    self._lose_shard(shard, now_ms, "resyncs")
                if asked is not None:
                    session.lease_until_ms = max(session.lease_until_ms, asked + self.config.lease_ms)
                waiting, session.waiting = session.waiting, []
                for _, caller in waiting:
                    self._dispatch(caller, now_ms)
            case WrittenBack(node=node) if node == self.node_id:
                self._written_back(item, now_ms)

    def _granted(self, shard: int, session: HomeSession, seq: int, grant: Grant, now_ms: int) -> None:
        key = grant.key
        op = self.pending.get(key)
        line = self.lines.get(key)
        if op is None or op.op_id != grant.op_id:
            # An answer to an op no longer waited for (asked twice, or given up): the home's
            # directory now says what it grants, so the line follows it unless it is dirty.
            if line is None or not line.dirty:
                self._install(shard, key, line, grant, seq)
            return
        new = self._install(shard, key, line, grant, seq)
        lease_end_ms = op.first_ms + self.config.lease_ms
        if grant.lease:
            session.lease_until_ms = max(session.lease_until_ms, lease_end_ms)
        # The value was memory's when the home granted it and stays so until our lease's end
        # (the home waits for our ack or that end before it commits a newer one). A grant that
        # arrives later — held in a partition, say — answers only the callers that came before
        # that end; one that came after could be handed a value overwritten before it asked.
        late: list[Caller] = []
        for caller, joined_ms in zip(op.callers, op.joined_ms, strict=True):
            if joined_ms < lease_end_ms:
                self._answer(caller, grant_result(caller[2], grant, new))
            else:
                late.append(caller)
        if late:
            self.queued.setdefault(key, deque()).extendleft(reversed(late))  # asked again, first
        self._done(key, now_ms)

    def _install(self, shard: int, key: str, line: Line | None, grant: Grant, seq: int) -> str:
        new = step(line.state if line is not None else INVALID, f"grant_{grant.state}")
        if new == INVALID:
            if line is not None:
                self.lines.drop(key)
            return new
        value = None if grant.version == 0 else bytes(grant.value)
        self.lines.put(Line(key, shard, new, value, grant.version, grant.version, seq, grant.may_dirty))
        return new

    def _recall(
        self, shard: int, session: HomeSession, key: str, shared: bool, seq: int, now_ms: int
    ) -> None:
        self.counters["recalls"] += 1
        line = self.lines.get(key)
        returning = self.returning.get(key)
        if returning is not None and isinstance(returning[1], CacheRecalled):
            del self.returning[key]  # an answer to an older recall: this one's answer replaces it
        if line is None or line.state == SHARED:
            if line is not None and not shared:
                self._drop(line)
            self.sends.append((shard, CacheRecalled(session.epoch, key, None, seq)))
            return
        if line.releasing:
            item = _item(line, release=True)  # already on its way home: the same answer
            answer = CacheRecalled(session.epoch, key, item, seq)
            if returning is not None and isinstance(returning[1], CacheRecalled):
                self.returning[key] = (shard, answer, now_ms)  # sent again until memory has it
            self.sends.append((shard, answer))
            return
        dirty = line.dirty
        item = _item(line, release=not shared) if dirty else None
        line.state = step(line.state, "recall_shared" if shared else "recall")
        line.may_dirty = False
        self.dirty.pop(key, None)
        if item is not None:
            line.pending = line.version
            line.releasing = line.state == INVALID  # kept, unserved, until memory has it
        elif line.state == INVALID:
            self._drop(line)
        answer = CacheRecalled(session.epoch, key, item, seq)
        if item is not None:
            self.returning[key] = (shard, answer, now_ms)  # sent again until memory has it
        self.sends.append((shard, answer))

    def _written_back(self, item: WrittenBack, now_ms: int) -> None:
        returning = self.returning.get(item.key)
        if returning is not None and _returned_version(returning[1]) == item.version:
            del self.returning[item.key]
        line = self.lines.get(item.key)
        if line is None or line.pending != item.version:
            return
        line.pending = 0
        if item.ok:
            line.base = max(line.base, item.version)
            if line.state == MODIFIED and not line.dirty:
                line.state = step(line.state, "flushed")
        else:
            self.counters["write_backs_refused"] += 1  # the home no longer counts us the owner
        if not line.dirty:
            self.dirty.pop(item.key, None)
        elif item.ok and not line.releasing:
            self.dirty.setdefault(item.key, now_ms)  # written again while this was on its way
        if line.releasing or not item.ok:
            self.dirty.pop(item.key, None)
            self.lines.drop(item.key)
            if item.key not in self.pending:
                self._done(item.key, now_ms)

    # -- losing lines ---------------------------------------------------------------------

    def _drop(self, line: Line) -> None:
        """A clean line goes (its home knows, or forgot us)."""
        self.lines.drop(line.key)
        self._recent_drops[line.key] = None
        if len(self._recent_drops) > self.config.lines_max:
            self._recent_drops.popitem(last=False)

    def _lose(self, line: Line, now_ms: int) -> None:
        """The line may no longer be served: dropped, or sent home first if dirty — again, to
        whichever home is next, if it was already on its way to one that is gone."""
        if not line.releasing:
            line.state = step(line.state, "lost")
        if line.dirty:
            self._release(line, now_ms)
        else:
            self._drop(line)

    def _release(self, line: Line, now_ms: int) -> None:
        """A dirty line on its way out: unserved, kept until memory has its value."""
        line.releasing, line.pending = True, line.version
        self.dirty.pop(line.key, None)
        message = CacheWriteBackReq([_item(line, release=True)])
        self.returning[line.key] = (line.shard, message, now_ms)
        self.sends.append((line.shard, message))
        self.counters["write_backs"] += 1

    def _lose_shard(self, shard: int, now_ms: int, why: str) -> None:
        """A gap, a new epoch or a resync: nothing of this shard may be trusted any more."""
        self.counters[why] += 1
        session = self.sessions[shard]
        for line in self.lines.of_shard(shard):
            if why == "gaps" and not line.dirty:
                session.dropped.append((line.key, line.grant_seq))  # keep the home's directory exact
            self._lose(line, now_ms)
        session.lease_until_ms = 0
        session.ack_due = True
        for op in self.pending.values():
            if op.shard == shard:
                op.sent_ms = now_ms - self.config.op_retry_ms  # ask again at the next tick

    def _new_epoch(self, shard: int, epoch: int, applied: int, now_ms: int) -> HomeSession:
        old = self.sessions.get(shard)
        session = self.sessions[shard] = HomeSession(epoch, applied)
        if old is not None:
            session.waiting = old.waiting
            self._lose_shard(shard, now_ms, "epochs")
        return session

    def _evict(self, now_ms: int) -> None:
        if not self.lines.over():
            return
        for line in self.lines.victims(self.pending):
            self.counters["evictions"] += 1
            if line.dirty:
                self._release(line, now_ms)
            else:
                self.sessions[line.shard].dropped.append((line.key, line.grant_seq))
                self.lines.drop(line.key)

    # -- time -----------------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        cfg = self.config
        for shard, session in sorted(self.sessions.items()):
            if self.lines.holds_shard(shard) or session.waiting:
                self._renew(shard, session, now_ms)
            while session.waiting and now_ms - session.waiting[0][0] >= cfg.op_deadline_ms:
                self.counters["timeouts"] += 1
                self._answer(session.waiting.pop(0)[1], Err("unavailable", f"no lease on shard {shard}"))
        for key, (shard, message, sent_ms) in sorted(self.returning.items()):
            if now_ms - sent_ms >= cfg.op_retry_ms:
                self.returning[key] = (shard, message, now_ms)
                self.sends.append((shard, message))
        for key, op in sorted(self.pending.items()):
            if now_ms - op.sent_ms < cfg.op_retry_ms:
                continue
            if now_ms - op.first_ms >= cfg.op_deadline_ms:
                self.counters["timeouts"] += 1
                for caller in op.callers:
                    self._answer(caller, Err("unavailable", f"the home of {key!r} did not answer"))
                op.callers, op.joined_ms = [], []
                self._done(key, now_ms)
                continue
            op.sent_ms = now_ms
            self.sends.append((op.shard, op.message))
        self._flush_dirty(now_ms)

    def _renew(self, shard: int, session: HomeSession, now_ms: int, force: bool = False) -> None:
        cfg = self.config
        if not force and session.lease_until_ms - now_ms > cfg.lease_ms // 2:
            return
        if session.renews and now_ms - max(session.renews.values()) < cfg.op_retry_ms:
            return  # one is on its way
        self._next_op += 1
        session.renews[self._next_op] = now_ms
        while len(session.renews) > RENEWS_MAX:
            del session.renews[min(session.renews)]
        self.sends.append((shard, CacheAck(session.epoch, session.applied, self._next_op, session.dropped)))
        session.dropped, session.ack_due = [], False

    def _flush_dirty(self, now_ms: int) -> None:
        """M lines go home at most ``flush_ms`` after they were first written (or last sent)."""
        due: dict[int, list[WriteBackItem]] = {}
        for key, since in list(self.dirty.items()):
            if now_ms - since < self.config.flush_ms:
                break
            del self.dirty[key]  # written again after this goes: dirty again from then
            line = self.lines.get(key)
            if line is None or not line.dirty or line.releasing or key in self.returning:
                continue
            line.pending, line.pending_ms = line.version, now_ms
            item = _item(line, release=False)
            self.returning[key] = (line.shard, CacheWriteBackReq([item]), now_ms)
            due.setdefault(line.shard, []).append(item)
        for shard, items in sorted(due.items()):
            self.counters["write_backs"] += len(items)
            self.sends.append((shard, CacheWriteBackReq(items)))

    def flush_acks(self) -> None:
        """One acknowledgement per shard per turn, for everything the turn applied."""
        for shard, session in sorted(self.sessions.items()):
            if session.ack_due or session.dropped:
                self.sends.append((shard, CacheAck(session.epoch, session.applied, 0, session.dropped)))
                session.dropped, session.ack_due = [], False

    def write_back_all(self, now_ms: int) -> int:
        """Clean shutdown: every dirty line goes home now. Returns how many are on their way."""
        for line in list(self.lines):
            if line.dirty and not line.releasing:
                self._release(line, now_ms)
        return len(self.returning)

    # -- views ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        c = self.counters
        reads = c["hits"] + c["misses_capacity"] + c["misses_coherence"]
        return {
            **c,
            "hit_rate": c["hits"] / reads if reads else 0.0,
            "lines": len(self.lines),
            "bytes": self.lines.bytes,
            "states": self.lines.counts(),
            "dirty": len(self.dirty),
        }


def _returned_version(message: CacheWriteBackReq | CacheRecalled) -> int:
    item = message.item if isinstance(message, CacheRecalled) else message.items[0]
    return item.version if item is not None else 0


def _item(line: Line, *, release: bool) -> WriteBackItem:
    assert line.value is not None, "an M line always has a value"
    return WriteBackItem(line.key, msgspec.Raw(line.value), line.version, line.base, release)
