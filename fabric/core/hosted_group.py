"""One Raft group as the node hosting it keeps it (fabric/core/node.py runs it): its Raft core and
state machine, the turn's batched writes and reads, and every request waiting in or on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from syncfab.actors.machine import GroupMachine
from syncfab.actors.raft import RaftCore
from syncfab.actors.results import Answers, Result
from syncfab.fabric.core.log_clock import LogClock


@dataclass(slots=True)
class Waiter:
    origin: str | None  # the node that relays the answer; None for our own clients
    route: bytes
    request_id: int
    hook: Callable[[Result | Answers], Any] | None = None  # answered in-process (a cache home)


Read = tuple[Waiter, Any]  # a waiting read and its query op


@dataclass(slots=True)
class HostedGroup:
    """One hosted group. A turn's writes become ONE log entry (a batch of requests) and its
    reads share ONE ReadIndex round: per-entry and per-round costs are paid per turn, not per
    request, which is most of what makes a busy node fast."""

    id: int
    raft: RaftCore
    machine: GroupMachine
    clock: LogClock  # what this replica stamps its entries with when it leads
    writes: list[bytes] = field(default_factory=list)  # this turn's requests, encoded
    writers: list[Waiter | None] = field(default_factory=list)  # None: our own housekeeping
    queries: list[Read] = field(default_factory=list)  # this turn's reads
    proposals: dict[int, list[Waiter]] = field(default_factory=dict)  # log index -> waiters
    reads: dict[int, list[Read]] = field(default_factory=dict)  # ReadIndex context -> reads
    read_waits: list[tuple[int, int, list[Read]]] = field(default_factory=list)  # heap by index
    # Requests a command left waiting (a lock acquire): answered when a notice names them.
    deferred: dict[tuple[str, int], Waiter] = field(default_factory=dict)
    # Leader-local ops waiting for data (a long-polling consume): heap of (deadline, seq, ...).
    parked: list[tuple[int, int, Waiter, Any]] = field(default_factory=list)
    housekeeping_index: int = 0  # our last housekeeping entry, until it is applied
    lead_term: int = -1  # the term in which our waiters were registered
    leading_since_ms: int = 0

    def waiters(self) -> list[Waiter | None]:
        """Every request waiting in or on this group, wherever it waits: what a lost leadership
        must fail (``forget_waiters`` then drops them)."""
        waiters = [*self.writers, *(w for w, _ in self.queries)]
        waiters += [w for ws in self.proposals.values() for w in ws]
        waiters += [w for reads in self.reads.values() for w, _ in reads]
        waiters += [w for _, _, reads in self.read_waits for w, _ in reads]
        waiters += [*self.deferred.values(), *(w for _, _, w, _ in self.parked)]
        return waiters

    def forget_waiters(self) -> None:
        self.writes, self.writers, self.queries, self.parked = [], [], [], []
        self.proposals.clear()
        self.reads.clear()
        self.read_waits.clear()
        self.deferred.clear()
        self.housekeeping_index = 0
