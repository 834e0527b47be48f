"""An in-memory network of RaftCores for unit tests: no sockets, no event loop, no clock.

Modelled on etcd's raft_test.go ``network``: messages queue until ``deliver()`` steps them into
their receivers, links can be cut, nodes isolated or crashed (a crash keeps only what was
persisted), and ``settle()`` loops until nothing is left to say.

Every message's fate is kept in ``deliveries`` (delivered, or why not), and every ``Ready`` is
checked as it is taken: what a node is told to apply must already be on its disk.

``disk_lag`` models pipelined writes: a node's write (and with it its ``messages_after_persist``
and its ``advance``) completes only once ``disk_lag`` later readies were taken, or when the
network is otherwise quiet; a crash loses the writes still in flight.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from syncfab.actors.messages import Entry, HardState, RaftMessage, Snapshot
from syncfab.actors.raft import RaftConfig, RaftCore, Role
from syncfab.actors.ready import Persist, Ready

Hook = Callable[[str, str, RaftMessage], bool]


class Delivery(NamedTuple):
    src: str
    dst: str
    msg: RaftMessage
    dropped: str | None  # None when delivered, else why not: "down", "cut" or "hook"


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
    def __init__(
        self, ids: list[str], *, seed: int = 0, config: RaftConfig | None = None, disk_lag: int = 0
    ) -> None:
        self.ids = ids
        self.initial = {i: list(ids) for i in ids}  # each node's initial voters (a joined one: none)
        self.seed = seed
        self.config = config or RaftConfig()
        self.disk_lag = disk_lag
        self.disk_lags: dict[str, int] = {}  # per-node overrides of disk_lag
        self.writing: dict[str, deque[Ready]] = {i: deque() for i in ids}
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
        self.deliveries: list[Delivery] = []
        for n, i in enumerate(ids):
            self.nodes[i] = self._boot(i, n)

    def _boot(self, node_id: str, n: int) -> RaftCore:
        disk = self.disks[node_id]
        return RaftCore(
            node_id,
            self.initial[node_id],
            rng=random.Random(self.seed * 1000 + n),
            now_ms=self.now,
            config=self.config,
            hard_state=disk.hard_state,
            snapshot=disk.snapshot,
            entries=disk.log(),
        )

    def join(self, node_id: str) -> RaftCore:
        """Start a node with an empty disk and no membership: it learns the group from the log
        once a leader adds it (RaftCore.propose_conf)."""
        self.ids.append(node_id)
        self.initial[node_id] = []
        self.writing[node_id] = deque()
        self.disks[node_id] = Disk()
        self.applied[node_id], self.restored[node_id], self.reads[node_id] = [], [], []
        self.nodes[node_id] = self._boot(node_id, len(self.ids) - 1)
        return self.nodes[node_id]

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
        self.writing[node_id].clear()  # never reached the disk; neither did what waited on it
        kept: deque[tuple[str, str, RaftMessage]] = deque()
        for m in self.queue:
            if node_id in (m[0], m[1]):
                self.deliveries.append(Delivery(*m, "down"))
            else:
                kept.append(m)
        self.queue = kept

    def restart(self, node_id: str) -> None:
        self.down.discard(node_id)
        self.writing[node_id].clear()
        self.applied[node_id] = []
        self.nodes[node_id] = self._boot(node_id, self.ids.index(node_id) + 100)

    def load(
        self, node_id: str, entries: list[Entry], hard_state: HardState, snapshot: Snapshot | None = None
    ) -> None:
        """Replace a node's disk with the given contents and reboot it from them (to start a
        scenario from hand-built logs, such as the divergent ones of the Raft paper's figure 7)."""
        disk = self.disks[node_id] = Disk()
        disk.hard_state, disk.snapshot = hard_state, snapshot
        disk.entries = {e.index: e for e in entries}
        self.restart(node_id)

    # -- driving --------------------------------------------------------------------------

    def process(self, node_id: str) -> None:
        """Take a node's Ready: send ``messages``, apply ``committed``, start the write; then
        complete the writes that are more than ``disk_lag`` readies old."""
        node = self.nodes[node_id]
        expected = node.applying_index + 1  # taking committed entries moves it
        rd = node.ready()
        for e in rd.committed:
            # Only committed entries are applied (durable on a majority, though perhaps not yet
            # on this node's disk), in order, without gaps, each once.
            assert e.index <= node.commit_index, f"{node_id} told to apply uncommitted {e}"
            assert e.index == expected, f"{node_id} applies {e.index}, expected {expected}"
            expected += 1
        for to, msg in rd.messages:
            self._send(node_id, to, msg)
        if rd.restore is not None:
            self.restored[node_id].append(rd.restore)
            self.applied[node_id] = [e for e in self.applied[node_id] if e.index <= rd.restore.index]
        self.applied[node_id].extend(rd.committed)
        self.reads[node_id].extend((r.context, r.index) for r in rd.reads)
        writing = self.writing[node_id]
        if not rd and not writing:
            node.advance(rd)  # nothing to wait for
            return
        writing.append(rd)
        while len(writing) > self.disk_lags.get(node_id, self.disk_lag):
            self.complete_write(node_id)

    def complete_write(self, node_id: str) -> None:
        """The oldest write in flight is durable: what waited on it may go."""
        rd = self.writing[node_id].popleft()
        self.disks[node_id].write(rd.persist)
        for to, msg in rd.messages_after_persist:
            self._send(node_id, to, msg)
        self.nodes[node_id].advance(rd)

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
            if dst in self.down or src in self.down:
                self.deliveries.append(Delivery(src, dst, msg, "down"))
            elif (src, dst) in self.cut_links:
                self.deliveries.append(Delivery(src, dst, msg, "cut"))
            elif self.hook is not None and not self.hook(src, dst, msg):
                self.deliveries.append(Delivery(src, dst, msg, "hook"))
            else:
                self.deliveries.append(Delivery(src, dst, msg, None))
                self.nodes[dst].step(src, msg)
                n += 1
        return n

    def settle(self, rounds_max: int = 1000) -> None:
        for _ in range(rounds_max):
            live = [i for i in self.ids if i not in self.down]
            if self.deliver() or any(self.nodes[i].has_ready() for i in live):
                continue
            lagging = [i for i in live if self.writing[i]]
            if not lagging:
                return
            for i in lagging:  # quiet but for the disks: let them catch up
                while self.writing[i]:
                    self.complete_write(i)
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

    def count(self, kind: type | tuple[type, ...], src: str | None = None, dst: str | None = None) -> int:
        """How many messages of ``kind`` were sent (delivered or not), optionally by/to a node."""
        return sum(
            1 for s, d, m in self.sent if isinstance(m, kind) and src in (None, s) and dst in (None, d)
        )

    def check_safety(self) -> None:
        """State machine safety and log matching on what is visible now: no two nodes applied
        different entries at an index, and live nodes agree on every entry up to the lowest
        commit index among them."""
        by_index: dict[int, tuple[str, Entry]] = {}
        for i in self.ids:
            for e in self.applied[i]:
                seen = by_index.setdefault(e.index, (i, e))
                assert seen[1] == e, f"{seen[0]} applied {seen[1]} but {i} applied {e}"
        live = [self.nodes[i] for i in self.ids if i not in self.down]
        floor = min(n.commit_index for n in live)
        for n in live:
            lo = n.log.base_index + 1
            for e in n.log.entries[: max(0, floor - lo + 1)]:
                for other in live:
                    t = other.log.term(e.index)
                    assert t is None or t == e.term, f"{n.id} and {other.id} differ at {e.index}"
