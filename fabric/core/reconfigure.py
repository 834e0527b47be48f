"""Moving each group's Raft membership toward the placement of the cluster's members.

The control group's member table (actors/members.py) says which nodes make up the cluster;
``ShardPlacement`` of those members says which replicate each group (the control group: all
of them). Each group's leader closes the gap one step at a time, and each step is one Raft
membership change (actors/raft_conf.py), proposed once the previous one has committed:

1. a replica the placement wants and the group lacks joins as a **learner** (every such
   replica at once: learners do not change any quorum);
2. a learner that has caught up (answers, and holds the log up to the commit index, or nearly:
   under load an entry is always in flight) becomes a **voter**;
3. only when no voter is missing, a voter the placement no longer wants is **removed** — if
   that is the leader itself, it first hands the group to a voter that stays;
4. learners the placement no longer wants are dropped.

Adding before removing keeps every group at its full replica count throughout: replacing a
dead node's replica passes through one voter more, never one fewer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from syncfab.actors.raft import Busy, NotLeader, Role
from syncfab.actors.raft_conf import membership
from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.core.balance import transfer

if TYPE_CHECKING:
    from syncfab.actors.progress import Progress
    from syncfab.fabric.core.hosted_group import HostedGroup
    from syncfab.fabric.core.node import NodeCore


def reconfigure(core: NodeCore) -> None:
    for gid, g in core.groups.items():
        if g.raft.role is Role.LEADER and not g.raft.conf_pending:
            _step(core, g, _target(core, gid))


def _target(core: NodeCore, gid: int) -> set[str]:
    return set(core.placement.nodes if gid == CONTROL_GROUP else core.placement.replicas(gid))


def _step(core: NodeCore, g: HostedGroup, target: set[str]) -> None:
    raft = g.raft
    voting, learning = set(raft.conf.voters), set(raft.conf.learners)
    missing = target - voting
    if missing - learning:
        _propose(core, g, voting, learning | missing)
        return
    ready = sorted(m for m in missing if _caught_up(core, raft.progress[m], raft.commit_index))
    if ready:
        _propose(core, g, voting | {ready[0]}, learning - {ready[0]})
        return
    if missing:
        return  # learners still catching up
    extra = sorted(voting - target - {core.id})  # others first: the leader leaves last
    if extra:
        _propose(core, g, voting - {extra[0]}, learning)
    elif core.id not in target:
        stays = [v for v in raft.conf.voters if v in target and raft.progress[v].match >= raft.commit_index]
        if stays:
            preferred = core.placement.preferred_leader(g.id)
            transfer(core, g, preferred if preferred in stays else stays[0])
    elif learning - target:
        _propose(core, g, voting, learning & target)


def _caught_up(core: NodeCore, pr: Progress, commit_index: int) -> bool:
    """A learner that answers and holds the log to within one AppendEntries of the commit
    index (under load an entry is always in flight). One that never answered — down, or added
    at a wrong address — stays a learner: as a voter it would only weaken the quorum."""
    raft = core.config.raft
    answered = core._now - pr.heard_ms < raft.election_timeout_ms
    return answered and pr.match > 0 and pr.match + raft.append_entries_max >= commit_index


def _propose(core: NodeCore, g: HostedGroup, voting: set[str], learning: set[str]) -> None:
    try:
        g.raft.propose_conf(membership(voting, learning))
    except (Busy, NotLeader):
        return  # a transfer under way, or no entry of this term committed yet: next round
    core.counters["membership_changes"] += 1
    core._active.add(g.id)
