"""In-flight marks handed from one queue leader to the next on a planned leadership transfer.

Which consumer holds which message until when is leader memory (actors/queues.py): a new
leader starts with nothing in flight and hands those messages out again at once, to other
consumers, while the first ones are still working on them. After a crash that is the price
of not logging every consume. A planned transfer — the balancer moving a shard to its
preferred node, a stopping node handing its groups over — need not pay it: just before it
asks the target to campaign, the leader proposes its marks as ``HandOver`` commands (the
target holds the whole log before it campaigns, so it has them). Every replica keeps the
marks it applied, bounded; the replica that next becomes leader installs those whose message
is still stored with the delivery count it had then — one acked, nacked, redelivered,
dead-lettered or expired since is left alone — so a message stays its consumer's until its
deadline, as it would have without the transfer. A consume served between the proposal and
the transfer, or a give-back (``Return``) in that gap, is not in them: the first goes visible
as after a crash, the second stays hidden until its old deadline.
"""

from __future__ import annotations

from syncfab.actors.queue_ops import IDS_MAX, HandOver, check_queue, message_id, parse_ids
from syncfab.actors.queue_state import QueueState
from syncfab.actors.results import Err, Ok, Result, bad_request

HANDOVER_MARKS_MAX = 16 * IDS_MAX  # one transfer hands over at most these; the rest go visible


# One mark: (consumer, deadline_ms, delivery_count), by (queue, seq).
_Mark = tuple[str, int, int]


class HandedMarks:
    """The marks of the hand-overs this replica applied, until it next leads (or stops)."""

    def __init__(self) -> None:
        self._marks: dict[tuple[str, int], _Mark] = {}

    @staticmethod
    def ops(shard: int, queues: dict[str, QueueState]) -> list[HandOver]:
        """What a leader about to transfer proposes: its live marks, oldest seqs first, at most
        HANDOVER_MARKS_MAX, in commands of at most IDS_MAX. A mark whose Redeliver is already
        proposed is left to it."""
        ops: list[HandOver] = []
        left = HANDOVER_MARKS_MAX
        for name in sorted(queues):
            q = queues[name]
            marks = [(seq, lease) for seq, lease in sorted(q.inflight.items()) if not lease.proposed]
            marks = marks[:left]
            left -= len(marks)
            for start in range(0, len(marks), IDS_MAX):
                chunk = marks[start : start + IDS_MAX]
                ops.append(
                    HandOver(
                        name,
                        [message_id(shard, seq) for seq, _ in chunk],
                        [lease.consumer for _, lease in chunk],
                        [lease.wake_ms for _, lease in chunk],
                        [q.messages[seq].delivery_count for seq, _ in chunk],
                    )
                )
            if not left:
                break
        return ops

    def apply(self, shard: int, op: HandOver, now_ms: int) -> Result:
        """Keep ``op``'s marks (validated alike on every replica); forget those whose deadline
        has passed, and the soonest beyond HANDOVER_MARKS_MAX."""
        err = check_queue(op.queue)
        if err is not None:
            return err
        seqs = parse_ids(op.message_ids, shard)
        if isinstance(seqs, Err):
            return seqs
        columns = (op.consumers, op.deadlines_ms, op.delivery_counts)
        if len(seqs) != len(op.message_ids) or any(
            not isinstance(c, list) or len(c) != len(seqs) for c in columns
        ):
            return bad_request("message_ids", "one consumer, deadline and count per distinct message id")
        for consumer, deadline, count in zip(*columns, strict=True):
            if type(consumer) is not str or type(deadline) is not int or type(count) is not int:
                return bad_request("consumers", "consumers are strings, deadlines and counts integers")
        for seq, consumer, deadline, count in zip(seqs, *columns, strict=True):
            self._marks[op.queue, seq] = (consumer, deadline, count)
        self._marks = {k: m for k, m in self._marks.items() if m[1] > now_ms}
        if len(self._marks) > HANDOVER_MARKS_MAX:
            latest = sorted(self._marks.items(), key=lambda item: (-item[1][1], item[0]))
            self._marks = dict(latest[:HANDOVER_MARKS_MAX])
        return Ok({"handed": len(seqs)})

    def take(self) -> list[tuple[str, int, _Mark]]:
        """Every mark kept, in (queue, seq) order, and forget them."""
        marks = sorted((queue, seq, mark) for (queue, seq), mark in self._marks.items())
        self._marks = {}
        return marks
