"""The simulator's records: a simulated node (process, disk, clock), a run's report, and what
may receive replies."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from linearizability import Operation
from sim_config import SimConfig

from syncfab.fabric.core.node import Flush, NodeCore
from syncfab.storage.memory_store import MemoryLogStore


class Endpoint(Protocol):
    """Anything that sends requests and takes replies: a ``SimClient`` or a scenario's probe."""

    name: str
    route: bytes

    def on_reply(self, data: bytes) -> None: ...


@dataclass(slots=True)
class SimNode:
    id: str
    disk: MemoryLogStore
    core: NodeCore | None = None
    # Bumped at every crash and restart: a message addressed to an older incarnation is lost.
    epoch: int = 0
    # Messages this node sent in an incarnation below this are lost (its crash took them down).
    sent_valid_from: int = 0
    turn_due: int | None = None
    crash_point: str | None = None
    crash_when_writing: bool = False  # wait for a turn that writes log entries (scenarios)
    down_ms: int = 0
    # The disk writer (fabric/server/writer.py): flushes queued behind the write in progress, and the
    # batch being written (one transaction, one fsync). Both are lost in a crash.
    queued: list[Flush] = field(default_factory=list)
    writing: list[Flush] | None = None
    # Stopped (a GC pause, SIGSTOP, a VM migration) until then: no turns, no write hand-backs;
    # what arrives waits in the inbox.
    paused_until: int = 0
    # The node's monotonic clock: its own origin and rate, the same across restarts (one machine).
    clock_offset_ms: int = 0
    clock_rate: float = 1.0
    # Its wall clock: real time plus this (NTP keeps it close; it does not drift, and it survives
    # restarts like the machine does).
    wall_skew_ms: int = 0

    @property
    def writes_in_flight(self) -> int:
        return len(self.queued) + len(self.writing or ())


@dataclass(frozen=True, slots=True)
class SimReport:
    seed: int
    config: SimConfig
    sim_time_ms: int
    heal_ms: int  # when the liveness phase began
    turns: int
    ops: int
    ops_unknown: int
    ops_liveness: int
    retries: int
    crashes: int
    majority_losses: int
    partitions: int
    swizzles: int
    pauses: int
    elections: int
    entries_applied: int
    snapshots_taken: int
    snapshots_installed: int
    truncations: int  # followers that cut off a conflicting suffix of their log
    network: dict[str, int]
    digest: str
    history: list[Operation]
    workloads: tuple[str, ...] = ("kv",)
    workload_stats: dict[str, int] = field(default_factory=dict)
