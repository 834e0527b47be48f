"""Where leaders go: a shard leader hands its shard to the shard's preferred leader once that
node has been alive (phi-accrual) and caught up for a while; a stopping node hands every group
it leads to a live replica before it goes. Either way the leader first proposes the leader
memory its successor should keep (a queue's in-flight marks: actors/queue_handover.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from syncfab.actors.raft import Role
from syncfab.fabric.core.codec import Request, encode

if TYPE_CHECKING:
    from syncfab.fabric.core.hosted_group import HostedGroup
    from syncfab.fabric.core.node import NodeCore


def transfer(core: NodeCore, g: HostedGroup, target: str) -> bool:
    """Hand ``g`` to ``target``: what the next leader should keep goes into the log first (the
    target campaigns only once it holds the whole log), then RaftCore asks it to campaign."""
    raft = g.raft
    if raft.role is not Role.LEADER or raft.transfer_target is not None or target not in raft.conf.voters:
        return False
    for op in g.machine.hand_over():
        g.writes.append(encode(Request("", 0, 0, op)))
        g.writers.append(None)  # housekeeping's way: no one waits for its answer
    if g.writes:
        core._propose_batch(g)
    core._active.add(g.id)
    if not raft.transfer_leadership(target):
        return False
    core.counters["leader_transfers"] += 1
    return True


def balance_leaders(core: NodeCore) -> None:
    for gid, g in core.groups.items():
        raft = g.raft
        preferred = core.placement.preferred_leader(gid)
        if (
            raft.role is Role.LEADER
            and preferred is not None
            and preferred != core.id
            and core._now - g.leading_since_ms >= core.config.balance_after_leading_ms
            and preferred in raft.conf.voters
            and core.detector.is_alive(preferred, core._now)
            # Caught up to the commit index, not the last index: under steady load an
            # entry is always in flight, and RaftCore finishes the catch-up itself (it
            # sends TimeoutNow once the target holds the whole log).
            and raft.progress[preferred].match >= raft.commit_index
        ):
            transfer(core, g, preferred)


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
        voters = raft.conf.voters
        live = sorted(p for p in voters if p != core.id and core.detector.is_alive(p, core._now))
        if not live:
            continue
        waiting += 1
        preferred = core.placement.preferred_leader(gid)
        target = max(live, key=lambda p: (raft.progress[p].match, p == preferred))
        transfer(core, g, target)
    return waiting
