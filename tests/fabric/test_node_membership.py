"""A lone NodeCore's side of membership: telling a removed member it was removed (etcd's
"member removed" answer), and being told so. The simulator runs whole membership changes
(tests/sim/test_sim_membership.py); this pins the two messages one node sends and obeys."""

from __future__ import annotations

import random

from syncfab.actors.members import MemberTable
from syncfab.actors.messages import Removed, VoteRequest
from syncfab.actors.raft import Role
from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.core.hosting import TELL_REMOVED_MS, follow_members
from syncfab.fabric.core.node import NodeCore

MEMBERS = {"n1": "h1:7101", "n2": "h2:7101", "n3": "h3:7101"}


def node(node_id: str) -> NodeCore:
    return NodeCore(node_id, MEMBERS, stored={}, rng=random.Random(3), now_ms=0)


def sent_to(flush: object, peer: str) -> list[object]:
    return [msg for _, msg in flush.sends.get(peer, [])]  # type: ignore[attr-defined]


def test_a_removed_member_that_still_talks_raft_is_told_and_dialed() -> None:
    n2 = node("n2")
    table = n2.groups[CONTROL_GROUP].machine.services["members"]
    assert isinstance(table, MemberTable)
    # As the control group leaves it once n1 is removed (applied here by hand).
    table.members, table.removed, table.version = {"n2": "h2:7101", "n3": "h3:7101"}, {"n1": "h1:7101"}, 9
    follow_members(n2)
    assert n2.take_dial_change() == {"n2": "h2:7101", "n3": "h3:7101"}
    pre_vote = VoteRequest(7, 3, 2, pre_vote=True)
    n2.deliver_peer("n1", [(1, pre_vote)])
    flush = n2.turn(10)
    assert Removed(9) in sent_to(flush, "n1")
    assert n2.take_dial_change() == {"n1": "h1:7101", "n2": "h2:7101", "n3": "h3:7101"}
    n2.deliver_peer("n1", [(1, pre_vote)])
    assert Removed(9) not in sent_to(n2.turn(20), "n1")  # once a second at most
    n2.deliver_peer("n1", [(1, pre_vote)])
    assert Removed(9) in sent_to(n2.turn(20 + TELL_REMOVED_MS), "n1")
    # A node that never was a member is not answered.
    n2.deliver_peer("x9", [(1, pre_vote)])
    assert not sent_to(n2.turn(30 + TELL_REMOVED_MS), "x9")


def test_a_node_told_it_was_removed_stops_campaigning() -> None:
    n1 = node("n1")
    n1.deliver_peer("n2", [(CONTROL_GROUP, Removed(9))])
    n1.turn(10)
    assert n1.evicted
    campaigns = 0
    for t in range(20, 20_000, 10):
        flush = n1.turn(t)
        campaigns += sum(isinstance(m, VoteRequest) for p in ("n2", "n3") for m in sent_to(flush, p))
    assert campaigns == 0 and all(g.raft.role is Role.FOLLOWER for g in n1.groups.values())


def test_removed_is_heard_only_from_members() -> None:
    n1 = node("n1")
    n1.deliver_peer("x9", [(CONTROL_GROUP, Removed(9))])
    n1.turn(10)
    assert not n1.evicted
