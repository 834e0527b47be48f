"""Where leaders go: a shard leader hands its shard to the shard's preferred leader once that
node has been alive (phi-accrual) and caught up for a while; a stopping node hands every group
it leads to a live replica before it goes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from syncfab.actors.raft import Role

if TYPE_CHECKING:
    from syncfab.fabric.core.node import NodeCore


def balance_leaders(core: NodeCore) -> None:
    for gid, g in core.groups.items():
        raft = g.raft
        preferred = core.placement.preferred_leader(gid)
        if (
            raft.role is Role.LEADER
            and preferred is not None
            and preferred != core.id
            and core._now - g.leading_since_ms >= core.config.balance_after_leading_ms
            and core.detector.is_alive(preferred, core._now)
            # Caught up to the commit index, not the last index: under steady load an
            # entry is always in flight, and RaftCore finishes the catch-up itself (it
            # sends TimeoutNow once the target holds the whole log).
            and raft.progress[preferred].match >= raft.commit_index
        ) and raft.transfer_leadership(preferred):
            core.counters["leader_transfers"] += 1


def hand_over_leadership(core: NodeCore) -> int:
    """A stopping node's turn: hand each group it leads to the live replica furthest along its
    log (the preferred leader among equals), so the group's next request finds a leader instead
    of waiting out an election. Returns how many groups it leads that a live replica could take
    (0: nothing left to wait for). A transfer that has not finished in an election timeout is
    dropped by RaftCore and asked again here."""
    waiting = 0
    for gid, g in core.groups.items():
        raft = g.raft
        if raft.role is not Role.LEADER:
            continue
        live = sorted(p for p in raft.progress if p != core.id and core.detector.is_alive(p, core._now))
        if not live:
            continue
        waiting += 1
        preferred = core.placement.preferred_leader(gid)
        target = max(live, key=lambda p: (raft.progress[p].match, p == preferred))
        if raft.transfer_leadership(target):
            core.counters["leader_transfers"] += 1
    return waiting
