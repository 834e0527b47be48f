"""Raft's safety properties, checked after every turn of every node.

The checker only *observes*: the Flush a turn returned (what was persisted, what was applied) and
the node's Raft cores' public state (role, term, log). Everything it remembers is global and
outlives crashes, so a property that must hold "ever" (one leader per term) is checked against the
whole run, not against the nodes alive right now.

1. election safety: at most one leader per (group, term);
2. log matching: one (group, index, term) always names the same data and the same previous term —
   by induction on the index, two logs holding the same (index, term) agree on the whole prefix;
3. state machine safety: no two nodes apply different entries at one (group, index); snapshots
   taken or installed at one (group, index) hold the same image;
4. leader completeness: an entry applied by a node in term t is in the log (or under the
   snapshot) of every leader of a term > t. The applier's current term bounds the term in which
   the entry was committed from above, so the check is sound, if slightly weaker than Raft's;
5. monotonic state on a live node: applied index (entries apply contiguously), commit index and
   term never go backwards, except across a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

from syncfab.actors.messages import Snapshot
from syncfab.actors.raft import RaftCore, Role
from syncfab.fabric.core.node import Flush, NodeCore

Fail = Callable[[str, str], NoReturn]


@dataclass(slots=True)
class _Applied:
    term: int
    data: bytes
    first_node: str
    observer_term: int  # lowest term any node was in when it applied this entry


class InvariantChecker:
    def __init__(self, fail: Fail) -> None:
        self._fail = fail
        self._leaders: dict[tuple[int, int], str] = {}
        self._current_leaders: dict[int, dict[str, tuple[RaftCore, int]]] = {}
        self._log: dict[tuple[int, int, int], tuple[bytes, int | None]] = {}
        self._applied: dict[tuple[int, int], _Applied] = {}
        self._applied_order: dict[int, list[int]] = {}
        self._snapshots: dict[tuple[int, int], Snapshot] = {}
        self._marks: dict[tuple[str, int], tuple[int, int, int]] = {}  # (applied, commit, term)
        self.snapshots_taken = 0
        self.snapshots_installed: dict[str, int] = {}
        self.entries_applied = 0
        self.truncations = 0

    @property
    def elections(self) -> int:
        """Leaderships seen: distinct (group, term) pairs that had a leader."""
        return len(self._leaders)

    def applied_entries(self, gid: int) -> list[tuple[int, bytes]]:
        """(index, data) of every entry of ``gid`` some node applied, in index order."""
        return sorted((index, self._applied[(gid, index)].data) for index in self._applied_order.get(gid, ()))

    # -- lifecycle --------------------------------------------------------------------------

    def node_started(self, node: str, core: NodeCore) -> None:
        """A (re)started node: its marks restart from what its disk gave it."""
        for gid, g in core.groups.items():
            raft = g.raft
            self._marks[(node, gid)] = (raft.applying_index, raft.commit_index, raft.term)
            if raft.snapshot is not None:
                self._check_snapshot(node, gid, raft.snapshot)

    def node_crashed(self, node: str, core: NodeCore) -> None:
        for leaders in self._current_leaders.values():
            leaders.pop(node, None)

    # -- the check --------------------------------------------------------------------------

    def observe(self, node: str, core: NodeCore, flush: Flush) -> None:
        for gid, ready in flush.readies:
            raft = core.groups[gid].raft
            persist = ready.persist
            if persist.truncate_from is not None and ready.restore is None:
                self.truncations += 1
            for e in persist.entries:
                self._check_log_entry(node, gid, raft, e.index, e.term, e.data)
            if persist.snapshot is not None:
                self._check_snapshot(node, gid, persist.snapshot)
                if ready.restore is None:
                    self.snapshots_taken += 1
            # A group hosted on demand (a learner being added) starts from nothing.
            applied, commit, term = self._marks.get((node, gid), (0, 0, 0))
            if ready.restore is not None:
                snap = ready.restore
                if snap.index < applied:
                    self._fail(
                        "applied index monotonic",
                        f"{node} group {gid} installed a snapshot at {snap.index} < applied {applied}",
                    )
                applied = snap.index
                self.snapshots_installed[node] = self.snapshots_installed.get(node, 0) + 1
            for e in ready.committed:
                if e.index != applied + 1:
                    self._fail(
                        "applied index monotonic",
                        f"{node} group {gid} applied {e.index} right after {applied}",
                    )
                applied = e.index
                self._check_applied(node, gid, raft, e.index, e.term, e.data)
            if raft.commit_index < commit:
                self._fail(
                    "commit index monotonic",
                    f"{node} group {gid} commit index {raft.commit_index} < {commit}",
                )
            if raft.term < term:
                self._fail("term monotonic", f"{node} group {gid} term {raft.term} < {term}")
            self._marks[(node, gid)] = (applied, raft.commit_index, raft.term)
            # A role only changes on input (a step, a tick), and input makes the core collect the
            # group: the groups in ``readies`` are the only ones whose role may have changed.
            self._check_role(node, gid, raft)

    def _check_role(self, node: str, gid: int, raft: RaftCore) -> None:
        current = self._current_leaders.setdefault(gid, {})
        if raft.role is not Role.LEADER:
            current.pop(node, None)
            return
        known = current.get(node)
        if known is not None and known[0] is raft and known[1] == raft.term:
            return  # the same leadership as last turn
        holder = self._leaders.setdefault((gid, raft.term), node)
        if holder != node:
            self._fail(
                "election safety", f"group {gid} term {raft.term} has two leaders: {holder} and {node}"
            )
        current[node] = (raft, raft.term)
        # A new leader must hold every entry applied in an earlier term.
        for index in self._applied_order.get(gid, ()):
            a = self._applied[(gid, index)]
            if a.observer_term < raft.term:
                self._check_leader_holds(node, gid, raft, index, a)

    def _check_log_entry(
        self, node: str, gid: int, raft: RaftCore, index: int, term: int, data: bytes
    ) -> None:
        prev_term = raft.log.term(index - 1)
        key = (gid, index, term)
        seen = self._log.get(key)
        if seen is None:
            self._log[key] = (data, prev_term)
            return
        seen_data, seen_prev = seen
        if seen_data != data:
            self._fail(
                "log matching", f"{node} group {gid} holds a different entry at index {index} term {term}"
            )
        if prev_term is not None and seen_prev is not None and prev_term != seen_prev:
            self._fail(
                "log matching",
                f"{node} group {gid} entry {index}/{term} follows term {prev_term}, "
                f"elsewhere term {seen_prev}",
            )
        if seen_prev is None and prev_term is not None:
            self._log[key] = (data, prev_term)

    def _check_applied(self, node: str, gid: int, raft: RaftCore, index: int, term: int, data: bytes) -> None:
        self.entries_applied += 1
        a = self._applied.get((gid, index))
        if a is None:
            a = self._applied[(gid, index)] = _Applied(term, data, node, raft.term)
            self._applied_order.setdefault(gid, []).append(index)
        elif a.term != term or a.data != data:
            self._fail(
                "state machine safety",
                f"group {gid} index {index}: {node} applied term {term}, {a.first_node} term {a.term}",
            )
        elif raft.term < a.observer_term:
            a.observer_term = raft.term
        else:
            return
        for leader, (leader_raft, _) in self._current_leaders.get(gid, {}).items():
            if leader_raft.role is Role.LEADER and leader_raft.term > a.observer_term:
                self._check_leader_holds(leader, gid, leader_raft, index, a)

    def _check_leader_holds(self, leader: str, gid: int, raft: RaftCore, index: int, a: _Applied) -> None:
        log = raft.log
        if index < log.base_index:
            return  # compacted: covered by the leader's snapshot (whose images are checked to agree)
        if log.term(index) != a.term:
            self._fail(
                "leader completeness",
                f"group {gid} leader {leader} (term {raft.term}) lacks entry {index}/{a.term} "
                f"applied by {a.first_node} in term {a.observer_term}; it has term {log.term(index)}",
            )

    def _check_snapshot(self, node: str, gid: int, snap: Snapshot) -> None:
        seen = self._snapshots.setdefault((gid, snap.index), snap)
        if seen.term != snap.term or seen.data != snap.data:
            self._fail(
                "state machine safety",
                f"{node} group {gid} snapshot at {snap.index} differs from an earlier one",
            )
        a = self._applied.get((gid, snap.index))
        if a is not None and a.term != snap.term:
            self._fail(
                "state machine safety",
                f"{node} group {gid} snapshot at {snap.index} has term {snap.term}, applied {a.term}",
            )
