"""The leader's view of one follower, and how it decides what to send that follower next.

PROBE sends one AppendEntries at a time until a match is found; REPLICATE pipelines up to a
bound of unacknowledged messages; SNAPSHOT waits for an InstallSnapshot to land (etcd's
tracker.Progress states).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum


class Flow(Enum):
    PROBE = "probe"  # one AppendEntries at a time until a match is found
    REPLICATE = "replicate"  # optimistic pipelining, bounded by inflight_messages_max
    SNAPSHOT = "snapshot"  # an InstallSnapshot is on its way


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower."""

    match: int = 0
    next: int = 1
    flow: Flow = Flow.PROBE
    probe_sent: bool = False
    inflight: deque[int] = field(default_factory=deque)  # last index of each unacked message
    heard_ms: int = -(1 << 62)  # when the leader last had an answer from it (check-quorum, promotion)
    read_ack: int = 0
    stalled: int = 0
    seen_match: int = 0
    snapshot_index: int = 0

    def probe(self, next_index: int) -> None:
        self.flow, self.next, self.probe_sent = Flow.PROBE, next_index, False
        self.inflight.clear()

    def acknowledge(self, index: int) -> None:
        """The follower holds everything up to ``index``."""
        if index > self.match:
            self.match = index
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        if self.flow is Flow.PROBE or (self.flow is Flow.SNAPSHOT and self.match >= self.snapshot_index):
            self.flow, self.next = Flow.REPLICATE, self.match + 1
            self.inflight.clear()
        elif self.next <= self.match:
            self.next = self.match + 1

    def rejection_is_current(self, rejected_index: int) -> bool:
        """False for a rejection that an ack or a newer probe already superseded."""
        if rejected_index <= self.match or self.flow is Flow.SNAPSHOT:
            return False
        return self.flow is not Flow.PROBE or rejected_index == self.next - 1

    def paused(self, last_index: int, inflight_max: int) -> bool:
        if self.flow is Flow.SNAPSHOT:
            return True
        if self.flow is Flow.PROBE:
            return self.probe_sent
        return len(self.inflight) >= inflight_max or self.next > last_index

    def sent(self, last_sent: int) -> None:
        """An AppendEntries ending at ``last_sent`` left for this follower."""
        if self.flow is Flow.PROBE:
            self.probe_sent = True
        else:
            self.next = last_sent + 1
            self.inflight.append(last_sent)

    def sending_snapshot(self, index: int) -> None:
        self.flow, self.snapshot_index, self.stalled = Flow.SNAPSHOT, index, 0
        self.inflight.clear()

    def heartbeat_passed(self, last_index: int, stalled_max: int, snapshot_stalled_max: int) -> None:
        """Restart replication to a follower that made no progress for a while: the message that
        would have moved it on was lost (links drop messages when a peer is down)."""
        if self.match >= last_index or self.match != self.seen_match:
            self.stalled, self.seen_match = 0, self.match
            return
        self.stalled += 1
        limit = snapshot_stalled_max if self.flow is Flow.SNAPSHOT else stalled_max
        if self.flow is not Flow.PROBE and self.stalled >= limit:
            self.probe(self.match + 1)
            self.stalled = 0
