"""What a node shows of itself: the cluster as it sees it, and its Raft groups (read-only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.core.addresses import pub_address

if TYPE_CHECKING:
    from syncfab.fabric.core.node import NodeCore


def cluster_view(core: NodeCore) -> dict[str, Any]:
    """What a client learns the cluster from: members at the addresses clients dial — what each
    advertises; a peer not heard from since this node started, at its --peers entry."""
    control = core.groups[CONTROL_GROUP].raft
    members = []
    for m, peer_address in core.members.items():
        address = core.advertised.get(m, peer_address)
        alive = m == core.id or core.detector.is_alive(m, core._now)
        members.append({"id": m, "address": address, "pub_address": pub_address(address), "alive": alive})
    return {
        "node": core.id,
        "leader": control.leader,
        "term": control.term,
        "members": members,
        "shards": [
            {
                "id": s,
                "leader": core.leader_of(s),
                "replicas": list(core.placement.replicas(s)),
                "preferred_leader": core.placement.preferred_leader(s),
            }
            for s in core.placement.shards
        ],
    }


def group_status(core: NodeCore) -> list[dict[str, Any]]:
    return [
        {
            "group": gid,
            "role": g.raft.role.value,
            "term": g.raft.term,
            "leader": g.raft.leader,
            "commit_index": g.raft.commit_index,
            "applied_index": g.raft.applying_index,
            "last_index": g.raft.log.last_index,
            "elections_on_timeout": g.raft.elections_on_timeout,
            "elections_on_transfer": g.raft.elections_on_transfer,
            "voters": list(g.raft.conf.voters),
            "learners": list(g.raft.conf.learners),
            "removed": g.raft.removed,  # a replica moved off this node: inert, kept on disk
        }
        for gid, g in core.groups.items()
    ]
