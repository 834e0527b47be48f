"""An in-memory network of RaftCores for unit tests: no sockets, no event loop, no clock.

Modelled on etcd's raft_test.go ``network``: messages queue until ``deliver()`` steps them into
their receivers, links can be cut, nodes isolated or crashed (a crash keeps only what was
persisted), and ``settle()`` loops until nothing is left to say.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

from syncfab.actors.messages import Entry, HardState, RaftMessage, Snapshot
from syncfab.actors.raft import RaftConfig, RaftCore, Role
from syncfab.actors.ready import Persist

Hook = Callable[[str, str, RaftMessage], bool]


class Disk:
    """What one node has persisted, applied with Persist's documented order."""

    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self.entries: dict[int, Entry] = {}

    def write(self, p: Persist) -> None:
        if p.snapshot is not None:
            self.snapshot = p.snapshot
        if p.compact_to is not None:
            self.entries = {i: e for i, e in self.entries.items() if i >= p.compact_to}
        if p.truncate_from is not None:
            self.entries = {i: e for i, e in self.entries.items() if i < p.truncate_from}
        for e in p.entries:
            self.entries[e.index] = e
        if p.hard_state is not None:
            self.hard_state = p.hard_state

    def log(self) -> list[Entry]:
        return [self.entries[i] for i in sorted(self.entries)]


class Network:
    def __init__(self, ids: list[str], *, seed: int = 0, config: RaftConfig | None = None) -> None:
        self.ids = ids
        self.seed = seed
        self.config = config or RaftConfig()
        self.now = 0
        self.disks = {i: Disk() for i in ids}
        self.nodes: dict[str, RaftCore] = {}
        self.applied: dict[str, list[Entry]] = {i: [] for i in ids}
        self.restored: dict[str, list[Snapshot]] = {i: [] for i in ids}
        self.reads: dict[str, list[tuple[int, int]]] = {i: [] for i in ids}
        self.queue: deque[tuple[str, str, RaftMessage]] = deque()
        self.cut_links: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.hook: Hook | None = None
        self.sent: list[tuple[str, str, RaftMessage]] = []
        for n, i in enumerate(ids):
            self.nodes[i] = self._boot(i, n)

    def _boot(self, node_id: str, n: int) -> RaftCore:
        disk = self.disks[node_id]
        return RaftCore(
            node_id, self.ids, rng=random.Random(self.seed * 1000 + n), now_ms=self.now,
            config=self.config, hard_state=disk.hard_state, snapshot=disk.snapshot, entries=disk.log(),
        )

    # -- faults ---------------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        self.cut_links |= {(a, b), (b, a)}

    def isolate(self, a: str) -> None:
        for b in self.ids:
            if b != a:
                self.cut(a, b)

    def recover(self) -> None:
        self.cut_links.clear()

    def crash(self, node_id: str) -> None:
        self.down.add(node_id)
        self.queue = deque(m for m in self.queue if node_id not in (m[0], m[1]))

    def restart(self, node_id: str) -> None:
        self.down.discard(node_id)
        self.applied[node_id] = []
        self.nodes[node_id] = self._boot(node_id, self.ids.index(node_id) + 100)

    # -- driving --------------------------------------------------------------------------

    def process(self, node_id: str) -> None:
        node = self.nodes[node_id]
        rd = node.ready()
        for to, msg in rd.messages:
            self._send(node_id, to, msg)
        self.disks[node_id].write(rd.persist)
        for to, msg in rd.messages_after_persist:
            self._send(node_id, to, msg)
        if rd.restore is not None:
            self.restored[node_id].append(rd.restore)
            self.applied[node_id] = [e for e in self.applied[node_id] if e.index <= rd.restore.index]
        self.applied[node_id].extend(rd.committed)
        self.reads[node_id].extend((r.context, r.index) for r in rd.reads)
        node.advance(rd)

    def _send(self, src: str, dst: str, msg: RaftMessage) -> None:
        self.sent.append((src, dst, msg))
        self.queue.append((src, dst, msg))

    def deliver(self) -> int:
        """Process every live node, then deliver what is queued. Returns messages delivered."""
        for i in self.ids:
            if i not in self.down:
                self.process(i)
        n = 0
        batch, self.queue = self.queue, deque()
        for src, dst, msg in batch:
            if dst in self.down or src in self.down or (src, dst) in self.cut_links:
                continue
            if self.hook is not None and not self.hook(src, dst, msg):
                continue
            self.nodes[dst].step(src, msg)
            n += 1
        return n

    def settle(self, rounds_max: int = 1000) -> None:
        for _ in range(rounds_max):
            if not self.deliver() and not any(
                self.nodes[i].has_ready() for i in self.ids if i not in self.down
            ):
                return
        raise AssertionError("network did not settle")

    def tick(self, ms: int, only: list[str] | None = None) -> None:
        self.now += ms
        for i in only or self.ids:
            if i not in self.down:
                self.nodes[i].tick(self.now)
        self.settle()

    def run_for(self, ms: int, step_ms: int = 10) -> None:
        for _ in range(ms // step_ms):
            self.tick(step_ms)

    def elect(self, node_id: str) -> RaftCore:
        self.nodes[node_id].campaign()
        self.settle()
        assert self.nodes[node_id].role is Role.LEADER, f"{node_id} did not win"
        return self.nodes[node_id]

    def leaders(self) -> list[str]:
        return [i for i in self.ids if i not in self.down and self.nodes[i].role is Role.LEADER]

    def propose(self, node_id: str, data: bytes) -> int:
        index = self.nodes[node_id].propose(data)
        self.settle()
        return index

    def data_applied(self, node_id: str) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.data]
