"""QueuePartitions: one shard's slice of every queue — append, deliver, ack, nack, visibility
deadlines, dead letters.

A message lives on shard ``hash(queue, key)`` (routing is the caller's), so messages with one
key are appended in order to one partition. Its id is ``"{shard}:{seq}"``, ``seq`` counting
per partition, so whoever holds an id can route its ack.

Replicated (the same on every replica, in snapshots): stored messages, the seq counter,
settings, dedup windows, counters. Leader memory only: which consumer holds which message
until when. A new leader starts with nothing in flight and hands those messages out again;
at-least-once delivery allows that, and it is why in-flight marks need not cost a log entry.
A planned transfer hands them over in the log (actors/queue_handover.py).

Delivery order is "oldest visible first" by seq; a message made visible again (nack, passed
deadline, return, leader change) goes back in its seq place, ahead of younger ones. Per-key
order is only that: with several consumers, or after a redelivery, a younger message of a key
can be processed before an older one finishes. A consumer that needs strict per-key order
takes one message at a time and acks it before asking for the next.

Time is ``ctx.now_ms`` (the proposing leader's clock) clamped to never run backwards within
the partition, so ``enqueued_at`` grows with seq and the oldest message is the first one.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from syncfab.actors.queue_handover import HandedMarks
from syncfab.actors.queue_index import DedupWindow, ExpirySchedule, LeaseDeadlines
from syncfab.actors.queue_ops import (
    BATCH_MAX,
    DLQ_SUFFIX,
    IDS_MAX,
    SETTINGS_LOW,
    Ack,
    ConfigureQueue,
    Consume,
    ExpireMessages,
    HandOver,
    Nack,
    NewMessage,
    Produce,
    ProduceBatch,
    QueueCommand,
    QueueLocal,
    QueueQuery,
    QueueStats,
    Redeliver,
    Return,
    check_configure,
    check_consume,
    check_message,
    check_queue,
    message_id,
    parse_ids,
)
from syncfab.actors.queue_state import (
    DEFAULT_SETTINGS,
    Lease,
    PartitionImage,
    QueueImage,
    QueueSettings,
    QueueState,
    StoredMessage,
)
from syncfab.actors.queue_views import browse, counters, queue_stats
from syncfab.actors.results import WAITING, Err, Ok, Result, Waiting, bad_request

if TYPE_CHECKING:
    from syncfab.actors.machine import ApplyContext

__all__ = [
    "Ack",
    "ConfigureQueue",
    "Consume",
    "ExpireMessages",
    "Nack",
    "NewMessage",
    "Produce",
    "ProduceBatch",
    "QueueCommand",
    "QueueLocal",
    "QueuePartitions",
    "QueueQuery",
    "QueueSettings",
    "QueueStats",
    "Redeliver",
    "Return",
]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(PartitionImage).decode

_Appended = list[tuple[int, bool]]  # (seq, duplicate) per produced item


def _full(queue: str, max_depth: int) -> Err:
    return Err(
        "queue_full",
        f"queue {queue!r} is at its max_depth of {max_depth}",
        {"queue": queue, "max_depth": max_depth},
    )


class QueuePartitions:
    commands = (Produce, ProduceBatch, Ack, Nack, Redeliver, HandOver, ConfigureQueue, ExpireMessages)
    queries = (QueueStats,)
    locals = (Consume, Return)
    batches = ()

    def __init__(
        self,
        shard: int,
        *,
        dedup_ids_max: int = 100_000,
        redelivery_retry_ms: int = 10_000,
        due_ids_max: int = 10_000,
    ) -> None:
        """``redelivery_retry_ms``: a housekeeping command due() proposed that has not been
        applied after this long (the proposal was lost) is proposed again; copies are harmless.
        ``due_ids_max``: at most this many deadlines handled per due() call; the rest wait
        for the next call, so one call's work stays bounded."""
        self.shard = shard
        self.dedup_ids_max = dedup_ids_max
        self.redelivery_retry_ms = redelivery_retry_ms
        self.due_ids_max = due_ids_max
        # Replicated.
        self._queues: dict[str, QueueState] = {}
        self._seq = 0
        self._now_ms = 0
        self._dedup = DedupWindow(dedup_ids_max)
        self._expiry = ExpirySchedule()  # derived, kept on every replica
        # Leader memory.
        self._deadlines = LeaseDeadlines(
            lambda: (
                (lease.wake_ms, lease.lease_no, name, seq)
                for name, q in self._queues.items()
                for seq, lease in q.inflight.items()
            )
        )
        self._lease_no = 0
        self._delivered: dict[str, int] = {}  # by this node while leader; not replicated
        self._handed = HandedMarks()  # from hand-overs applied here, for when this node next leads
        self._leading = False  # as reset_local last said

    # ---- the Service protocol -------------------------------------------------------------

    def apply(self, ctx: ApplyContext, op: QueueCommand) -> Result | Waiting:
        self._now_ms = max(self._now_ms, ctx.now_ms)
        match op:
            case Produce():
                return self._produce(op)
            case ProduceBatch():
                return self._produce_batch(op)
            case Ack():
                return self._ack(op)
            case Nack(queue=name, message_ids=ids):
                return self._redeliver(name, ids, None, "nacked")
            case Redeliver(queue=name, message_ids=ids, delivery_counts=counts):
                return self._redeliver(name, ids, counts, "redelivered")
            case HandOver():
                result = self._handed.apply(self.shard, op, self._now_ms)
                if self._leading:  # elected before this entry applied: the marks are ours now
                    self._take_on(self._handed.take())
                return result
            case ConfigureQueue():
                return self._configure(op)
            case ExpireMessages():
                return self._expire(op)
        raise TypeError(f"not a queue command: {op!r}")

    def query(self, op: QueueQuery) -> Result:
        if not isinstance(op, QueueStats):
            raise TypeError(f"not a queue query: {op!r}")
        err = check_queue(op.queue)
        if err is not None:
            return err
        q, dlq = self._queues.get(op.queue), self._queues.get(op.queue + DLQ_SUFFIX)
        return Ok(queue_stats(self.shard, op.queue, q, dlq, self._delivered.get(op.queue, 0)))

    def local(self, now_ms: int, op: QueueLocal) -> Result | Waiting:
        match op:
            case Consume():
                return self._consume(now_ms, op)
            case Return():
                return self._return(op)
        raise TypeError(f"not a queue leader operation: {op!r}")

    def due(self, now_ms: int) -> list[Any]:
        """Housekeeping the leader should propose now. O(1) when nothing is due."""
        ops: list[Any] = []
        if self._deadlines.due(now_ms):
            ops += self._due_redeliveries(now_ms)
        if self._expiry.due(now_ms):
            ops += self._due_expiries(now_ms)
        return ops

    def hand_over(self) -> list[HandOver]:
        """What this leader proposes before it hands the group to another node: its marks."""
        return HandedMarks.ops(self.shard, self._queues)

    def reset_local(self, leading: bool) -> None:
        """Forget every in-flight mark (leadership changed): those messages are visible again
        with their replicated delivery counts unchanged — but for a new leader's marks handed
        over in the log, which it takes on (now, or as their entry applies)."""
        for name in sorted(self._queues):
            self._queues[name].release_all()
        self._deadlines.clear()
        self._leading = leading
        handed = self._handed.take()
        if leading:
            self._take_on(handed)

    def _take_on(self, marks: list[tuple[str, int, tuple[str, int, int]]]) -> None:
        for name, seq, (consumer, deadline_ms, count) in marks:
            q = self._queues.get(name)
            msg = q.messages.get(seq) if q is not None else None
            if q is None or msg is None or msg.delivery_count != count or seq in q.inflight:
                continue  # acked, expired, dead-lettered or redelivered since; or still ours
            self._lease_no += 1
            q.inflight[seq] = Lease(consumer, self._lease_no, deadline_ms)
            self._deadlines.push(deadline_ms, self._lease_no, name, seq)

    def snapshot(self) -> bytes:
        queues = [
            QueueImage(name, q.settings, q.counters, list(q.messages.values()))
            for name, q in sorted(self._queues.items())
        ]
        return _encode(PartitionImage(self.shard, self._seq, self._now_ms, queues, self._dedup.image()))

    def restore(self, data: bytes) -> None:
        image = _decode(data)
        if image.shard != self.shard:
            raise ValueError(f"a snapshot of shard {image.shard} cannot restore shard {self.shard}")
        self._seq, self._now_ms = image.seq, image.now_ms
        self._queues = {}
        self._expiry = ExpirySchedule()
        for qi in image.queues:
            q = QueueState(qi.name, qi.settings)
            q.counters = qi.counters
            q.messages = OrderedDict((m.seq, m) for m in qi.messages)
            q.rebuild()
            self._queues[qi.name] = q
            self._schedule_expiry(q)
        self._dedup.load(image.dedup)
        self._deadlines.clear()

    # ---- read-only views --------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, int]]:
        """Per-queue replicated counters and depth for metrics: the same on every replica."""
        return counters(self._queues)

    def delivered(self) -> dict[str, int]:
        """Deliveries this node made while leading, per queue (leader memory, for metrics)."""
        return dict(sorted(self._delivered.items()))

    def browse(self, queue: str) -> list[dict[str, Any]]:
        """Every stored message of ``queue`` (actors/queue_views.py). O(depth): for tests and
        operators, not the request path."""
        return browse(self.shard, self._queues.get(queue))

    # ---- commands ---------------------------------------------------------------------------

    def _produce(self, op: Produce) -> Result:
        if op.dedup_id is None:
            # The common case, without _append's batch and dedup bookkeeping.
            err = check_queue(op.queue) or check_message(op)
            result = err if err is not None else self._append_new(op.queue, self._queues.get(op.queue), [op])
        else:
            result = self._append(op.queue, [op], "")
        if isinstance(result, Err):
            return result
        seq, duplicate = result[0]
        return Ok(
            {"message_id": message_id(self.shard, seq), "duplicate": True}
            if duplicate
            else {"message_id": message_id(self.shard, seq)}
        )

    def _produce_batch(self, op: ProduceBatch) -> Result:
        if not isinstance(op.messages, list) or len(op.messages) > BATCH_MAX:
            return bad_request("messages", f"a batch holds at most {BATCH_MAX} messages")
        result = self._append(op.queue, op.messages, "messages[{}].")
        if isinstance(result, Err):
            return result
        value: dict[str, Any] = {"message_ids": [message_id(self.shard, seq) for seq, _ in result]}
        duplicates = [i for i, (_, duplicate) in enumerate(result) if duplicate]
        if duplicates:
            value["duplicates"] = duplicates
        return Ok(value)

    def _append(self, name: str, items: list[Produce] | list[NewMessage], prefix: str) -> _Appended | Err:
        """Validate, deduplicate and store ``items`` — all of them or none. Returns a
        (seq, duplicate) pair per item; a duplicate's seq is the original message's."""
        err = check_queue(name)
        if err is not None:
            return err
        for i, item in enumerate(items):
            if check_message(item) is not None:
                return check_message(item, prefix.format(i))  # named by its place in the batch
        q = self._queues.get(name)
        settings = q.settings if q is not None else DEFAULT_SETTINGS
        now = self._now_ms
        self._dedup.forget_closed(now)
        if settings.dedup_window_ms <= 0 or all(item.dedup_id is None for item in items):
            return self._append_new(name, q, items)
        # First pass decides, changing nothing, which items are duplicates (of an earlier
        # produce, or of an earlier item of this batch): only the others count against max_depth.
        known: dict[str, int | None] = {}  # dedup id -> original seq, None if new in this batch
        planned: list[int | str | None] = []  # original seq / dedup id of a new item above / new
        for item in items:
            did = item.dedup_id if settings.dedup_window_ms > 0 else None
            if did is None:
                planned.append(None)
            elif did in known:
                original = known[did]
                planned.append(did if original is None else original)
            else:
                known[did] = self._dedup.lookup(name, did, now)
                planned.append(known[did])
        fresh = planned.count(None)
        if settings.max_depth and (q.depth if q is not None else 0) + fresh > settings.max_depth:
            return _full(name, settings.max_depth)
        q = q if q is not None else self._queue(name)
        stored: dict[str, int] = {}  # dedup id -> seq of this batch's new message
        out: _Appended = []
        for item, plan in zip(items, planned, strict=True):
            if plan is not None:
                out.append((stored[plan] if isinstance(plan, str) else plan, True))
                continue
            seq = self._store(q, StoredMessage(0, item.key, item.data, item.headers, now))
            if item.dedup_id is not None and settings.dedup_window_ms > 0:
                stored[item.dedup_id] = seq
                self._dedup.remember(name, item.dedup_id, seq, now + settings.dedup_window_ms)
            out.append((seq, False))
        q.counters.deduplicated += len(out) - fresh
        return out

    def _append_new(
        self, name: str, q: QueueState | None, items: list[Produce] | list[NewMessage]
    ) -> _Appended | Err:
        """``_append`` without dedup ids: every item is a new message."""
        settings = q.settings if q is not None else DEFAULT_SETTINGS
        if settings.max_depth and (q.depth if q is not None else 0) + len(items) > settings.max_depth:
            return _full(name, settings.max_depth)
        q = q if q is not None else self._queue(name)
        now, first = self._now_ms, self._seq + 1
        self._seq += len(items)
        q.extend(
            [
                StoredMessage(seq, item.key, item.data, item.headers, now)
                for seq, item in enumerate(items, first)
            ]
        )
        q.counters.produced += len(items)
        if settings.retention_ms and name not in self._expiry:
            self._expiry.at(name, now + settings.retention_ms)
        return [(seq, False) for seq in range(first, self._seq + 1)]

    def _ack(self, op: Ack) -> Result:
        seqs = self._ids(op.queue, op.message_ids)
        if isinstance(seqs, Err):
            return seqs
        q = self._queues.get(op.queue)
        missing = [
            mid for mid, seq in zip(op.message_ids, seqs, strict=True) if q is None or q.remove(seq) is None
        ]
        acked = len(seqs) - len(missing)
        if q is not None:
            q.counters.acked += acked
        # Named when there are any: already acked, dead-lettered, expired, or never produced.
        return Ok({"acked": acked, "not_found": missing} if missing else {"acked": acked})

    def _redeliver(self, name: str, ids: list[str], counts: list[int] | None, verb: str) -> Result:
        """Count a failed delivery for each message named: visible again, or dead-lettered once
        it has been delivered max_deliveries times (SQS's maxReceiveCount: max_deliveries=3 hands
        a message out at most 3 times). A nack ends any lease this replica holds on it; a
        Redeliver with counts (the leader's own) only one whose deadline passed."""
        seqs = self._ids(name, ids)
        if isinstance(seqs, Err):
            return seqs
        if counts is not None and (
            not isinstance(counts, list) or len(counts) != len(ids) or len(set(ids)) != len(ids)
        ):
            return bad_request("delivery_counts", "delivery_counts has one count per distinct message id")
        q = self._queues.get(name)
        if q is None:
            return Ok({verb: 0, "dead_lettered": 0, "not_found": list(ids)})
        done = dead = 0
        missing = []
        for i, seq in enumerate(seqs):
            msg = q.messages.get(seq)
            if msg is None:
                missing.append(ids[i])
                continue
            if counts is not None and counts[i] != msg.delivery_count:
                continue
            msg.delivery_count += 1
            done += 1
            lease = q.inflight.get(seq)
            if msg.delivery_count >= q.settings.max_deliveries and self._dead_letter(q, msg):
                dead += 1
            elif counts is None or lease is None or lease.proposed or lease.wake_ms <= self._now_ms:
                q.release(seq)
            # else a Redeliver proposed by an earlier leader: the delivery it counts did fail, but
            # the message has since been handed out again here, and that lease is not over.
        q.counters.redelivered += done
        return Ok(
            {verb: done, "dead_lettered": dead, "not_found": missing}
            if missing
            else {verb: done, "dead_lettered": dead}
        )

    def _dead_letter(self, q: QueueState, msg: StoredMessage) -> bool:
        """Move ``msg`` to ``<queue>.dlq`` in this partition under a new id (its place in the
        dead-letter queue's order). False if that name would be too long: it then stays."""
        target = q.name + DLQ_SUFFIX
        if check_queue(target) is not None:
            return False
        q.remove(msg.seq)
        q.counters.dead_lettered += 1
        headers = dict(msg.headers or {})
        headers["x-dead-letter-reason"] = "max_deliveries"
        headers["x-original-message-id"] = message_id(self.shard, msg.seq)
        headers["x-original-enqueued-at"] = str(msg.enqueued_at)
        # A new message of the dead-letter queue: its own delivery count, and enqueued now so
        # that its retention runs from the move and enqueued_at keeps growing with seq.
        dlq = self._queue(target)
        self._store(dlq, StoredMessage(0, msg.key, msg.data, headers, self._now_ms))
        return True

    def _configure(self, op: ConfigureQueue) -> Result:
        err = check_configure(op)
        if err is not None:
            return err
        q = self._queue(op.queue)
        changes = {f: getattr(op, f) for f in SETTINGS_LOW if getattr(op, f) is not None}
        q.settings = msgspec.structs.replace(q.settings, **changes)
        self._schedule_expiry(q)
        return Ok({"queue": q.name, **msgspec.structs.asdict(q.settings)})

    def _expire(self, op: ExpireMessages) -> Result:
        """Drop messages (in flight or not) enqueued ``retention_ms`` or longer ago."""
        err = check_queue(op.queue)
        if err is not None:
            return err
        q = self._queues.get(op.queue)
        if q is None or not q.settings.retention_ms:
            return Ok({"expired": 0})
        cutoff = self._now_ms - q.settings.retention_ms
        expired = 0
        while (msg := q.oldest()) is not None and msg.enqueued_at <= cutoff:
            q.remove(msg.seq)
            expired += 1
        q.counters.expired += expired
        self._schedule_expiry(q)
        return Ok({"expired": expired})

    # ---- leader operations ----------------------------------------------------------------

    def _consume(self, now_ms: int, op: Consume) -> Result | Waiting:
        err = check_consume(op)
        if err is not None:
            return err
        q = self._queues.get(op.queue)
        messages: list[dict[str, Any]] = []
        if q is not None:
            visibility = q.settings.visibility_ms if op.visibility_ms is None else op.visibility_ms
            deadline = now_ms + visibility
            while len(messages) < op.max and (msg := q.take()) is not None:
                self._lease_no += 1
                q.inflight[msg.seq] = Lease(op.consumer, self._lease_no, deadline)
                self._deadlines.push(deadline, self._lease_no, q.name, msg.seq)
                messages.append(q.view(self.shard, msg, msg.delivery_count + 1))
        if not messages and op.wait_ms > 0:
            return WAITING
        if messages:
            self._delivered[op.queue] = self._delivered.get(op.queue, 0) + len(messages)
        return Ok({"messages": messages})

    def _return(self, op: Return) -> Result:
        """Give leased messages back uncounted. One whose deadline already passed (a Redeliver
        for it is in the log) stays with that Redeliver, which counts the delivery."""
        seqs = self._ids(op.queue, op.message_ids)
        if isinstance(seqs, Err):
            return seqs
        q = self._queues.get(op.queue)
        returned = 0
        if q is not None:
            for seq in seqs:
                lease = q.inflight.get(seq)
                if lease is not None and not lease.proposed:
                    q.release(seq)
                    returned += 1
        return Ok({"returned": returned})

    # ---- housekeeping -----------------------------------------------------------------------

    def _due_redeliveries(self, now_ms: int) -> list[Redeliver]:
        found: dict[str, list[tuple[int, int]]] = {}
        handled = 0
        while self._deadlines.due(now_ms) and handled < self.due_ids_max:
            wake_ms, lease_no, name, seq = self._deadlines.pop()
            q = self._queues.get(name)
            lease = q.inflight.get(seq) if q is not None else None
            if q is None or lease is None or lease.lease_no != lease_no or lease.wake_ms != wake_ms:
                continue  # acked, nacked, returned, or superseded by a later entry
            handled += 1
            # Proposed, so not handed out again before the Redeliver applies. If it never does
            # (the entry was lost), look again after the retry interval.
            lease.proposed = True
            lease.wake_ms = now_ms + self.redelivery_retry_ms
            self._deadlines.push(lease.wake_ms, lease_no, name, seq)
            found.setdefault(name, []).append((seq, q.messages[seq].delivery_count))
        ops = []
        for name in sorted(found):
            items = sorted(found[name])
            for start in range(0, len(items), IDS_MAX):
                chunk = items[start : start + IDS_MAX]
                ids = [message_id(self.shard, seq) for seq, _ in chunk]
                ops.append(Redeliver(name, ids, [count for _, count in chunk]))
        return ops

    def _due_expiries(self, now_ms: int) -> list[ExpireMessages]:
        names = []
        for name in self._expiry.pop_due(now_ms):
            q = self._queues[name]
            oldest = q.oldest()
            if oldest is None or not q.settings.retention_ms:
                continue  # a produce or a configure schedules it again
            if oldest.enqueued_at + q.settings.retention_ms <= now_ms:
                names.append(name)
                # The ExpireMessages reschedules when it applies; this look is for a lost one.
                self._expiry.at(name, now_ms + self.redelivery_retry_ms)
            else:
                self._expiry.at(name, oldest.enqueued_at + q.settings.retention_ms)
        return [ExpireMessages(name) for name in sorted(names)]

    # ---- helpers ----------------------------------------------------------------------------

    def _queue(self, name: str) -> QueueState:
        """The queue, created with default settings on first use (by a command only: queries
        and leader operations must not change replicated state)."""
        q = self._queues.get(name)
        if q is None:
            q = self._queues[name] = QueueState(name)
        return q

    def _ids(self, name: str, ids: list[str]) -> list[int] | Err:
        err = check_queue(name)
        return err if err is not None else parse_ids(ids, self.shard)

    def _store(self, q: QueueState, msg: StoredMessage) -> int:
        self._seq += 1
        msg.seq = self._seq
        q.append(msg)
        q.counters.produced += 1
        if q.settings.retention_ms and q.name not in self._expiry:
            self._expiry.at(q.name, msg.enqueued_at + q.settings.retention_ms)
        return msg.seq

    def _schedule_expiry(self, q: QueueState) -> None:
        oldest = q.oldest()
        if oldest is not None and q.settings.retention_ms:
            self._expiry.at(q.name, oldest.enqueued_at + q.settings.retention_ms)
