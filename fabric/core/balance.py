"""Leaders where the ring prefers them: a shard leader hands its shard to the shard's preferred
leader once that node has been alive (phi-accrual) and caught up for a while."""

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
