"""RaftCore's membership changes (actors/raft_conf.py): learners, one voter at a time, removal.

Each test drives the in-memory ``Network`` by hand; a joining node starts with an empty disk
and no membership, as a node added to a running cluster does.
"""

from __future__ import annotations

import random

import pytest
from raft_network import Network

from syncfab.actors.messages import AppendEntries, InstallSnapshot, VoteReply, VoteRequest
from syncfab.actors.raft import Busy, RaftConfig, RaftCore, Role
from syncfab.actors.raft_conf import latest_conf, membership

ABC = ["a", "b", "c"]
ELECTION_MS = RaftConfig().election_timeout_ms
HEARTBEAT_MS = RaftConfig().heartbeat_ms


def three() -> Network:
    net = Network(list(ABC), seed=3)
    net.elect("a")
    for n in range(5):
        net.propose("a", b"x%d" % n)
    return net


def add_learner(net: Network, node: str) -> RaftCore:
    net.join(node)
    leader = net.nodes["a"]
    net.nodes["a"].propose_conf(membership(leader.conf.voters, [node]))
    net.settle()
    return net.nodes[node]


def test_a_learner_receives_the_log_but_counts_toward_no_quorum() -> None:
    net = three()
    d = add_learner(net, "d")
    assert d.conf == membership(ABC, ["d"]) and not d.is_voter
    assert net.data_applied("d") == net.data_applied("a")
    net.crash("b")
    net.crash("c")
    before = net.nodes["a"].commit_index
    net.nodes["a"].propose(b"lost")
    net.settle()
    # a and d hold it, but d does not vote: one voter of three is no quorum.
    assert net.nodes["a"].commit_index == before
    assert d.log.last_index == net.nodes["a"].log.last_index


def test_a_learner_never_campaigns_nor_takes_a_transfer() -> None:
    net = three()
    d = add_learner(net, "d")
    assert net.nodes["a"].transfer_leadership("d") is False
    net.crash("a")
    net.run_for(6 * ELECTION_MS)
    assert net.count(VoteRequest, src="d") == 0 and d.role is Role.FOLLOWER
    assert len(net.leaders()) == 1 and net.leaders()[0] in ("b", "c")


def test_a_promoted_learner_votes_and_four_voters_need_three() -> None:
    net = three()
    add_learner(net, "d")
    index = net.nodes["a"].propose_conf(membership(["a", "b", "c", "d"]))
    net.settle()
    for n in "abcd":
        assert net.nodes[n].conf == membership("abcd") and net.nodes[n].quorum == 3
    assert net.nodes["a"].commit_index >= index and not net.nodes["a"].conf_pending
    net.crash("c")
    net.propose("a", b"three of four")
    net.tick(HEARTBEAT_MS)  # tells d the commit
    assert b"three of four" in net.data_applied("d")
    net.crash("b")
    before = net.nodes["a"].commit_index
    net.propose("a", b"two of four")
    assert net.nodes["a"].commit_index == before
    # The membership is in the log, so a restart keeps it.
    net.restart("d")
    assert net.nodes["d"].conf == membership("abcd") and net.nodes["d"].is_voter


def test_one_voter_changes_at_a_time_and_one_change_at_a_time() -> None:
    net = three()
    net.join("d")
    net.join("e")
    a = net.nodes["a"]
    with pytest.raises(ValueError, match="one voter at a time"):
        a.propose_conf(membership("abcde"))
    with pytest.raises(ValueError, match="cannot remove itself"):
        a.propose_conf(membership("bc"))
    net.isolate("a")
    a.propose_conf(membership(ABC, ["d"]))
    net.settle()
    assert a.conf_pending
    with pytest.raises(Busy, match="under way"):
        a.propose_conf(membership(ABC, ["d", "e"]))


def test_a_removed_follower_learns_its_removal_and_goes_quiet() -> None:
    net = three()
    a, c = net.nodes["a"], net.nodes["c"]
    index = a.propose_conf(membership("ab"))
    net.settle()
    assert a.quorum == 2 and a.commit_index >= index
    net.run_for(3 * HEARTBEAT_MS)
    assert c.removed and not c.is_voter
    net.run_for((RaftConfig().removed_heartbeats + 2) * HEARTBEAT_MS)
    assert "c" not in a.progress  # told enough times: forgotten
    sent = net.count((AppendEntries, VoteRequest), dst="c") + net.count(VoteRequest, src="c")
    net.run_for(6 * ELECTION_MS)
    assert net.count((AppendEntries, VoteRequest), dst="c") + net.count(VoteRequest, src="c") == sent
    net.propose("a", b"without c")
    net.tick(HEARTBEAT_MS)
    assert b"without c" in net.data_applied("b") and b"without c" not in net.data_applied("c")


def test_an_uncommitted_change_truncated_away_brings_back_the_one_before() -> None:
    net = three()
    a = net.nodes["a"]
    net.isolate("a")
    a.propose_conf(membership("ab"))
    net.settle()
    assert a.conf == membership("ab") and a.quorum == 2
    net.run_for(3 * ELECTION_MS)  # a steps down (check-quorum); b or c takes over
    new = net.leaders()
    assert len(new) == 1 and new[0] != "a"
    net.recover()
    net.propose(new[0], b"after")
    net.tick(HEARTBEAT_MS)
    assert a.conf == membership(ABC) and a.quorum == 2 and b"after" in net.data_applied("a")
    assert all(e.conf is None for e in a.log.entries)


def test_a_learner_far_behind_installs_a_snapshot_that_carries_the_membership() -> None:
    net = three()
    a = net.nodes["a"]
    net.propose("a", b"y")
    a.compact(a.applying_index, b"state", 0)
    d = add_learner(net, "d")
    assert net.count(InstallSnapshot, dst="d") == 1
    assert net.restored["d"][0].conf == membership(ABC)
    assert d.conf == membership(ABC, ["d"])
    # compact again past the change: the snapshot now records d as a learner
    net.propose("a", b"z")
    a.compact(a.applying_index, b"state2", 0)
    assert a.snapshot is not None and a.snapshot.conf == membership(ABC, ["d"])
    assert latest_conf([], a.snapshot, membership(ABC)) == (membership(ABC, ["d"]), a.snapshot.index)


def test_a_replica_with_no_membership_refuses_every_vote() -> None:
    fresh = RaftCore("d", [], rng=random.Random(1), now_ms=0)
    for pre_vote in (True, False):
        fresh.step("a", VoteRequest(5, 10, 5, pre_vote))
        replies = [m for _, m in fresh.ready().messages_after_persist if isinstance(m, VoteReply)]
        assert replies and not replies[-1].granted
    fresh.tick(10 * ELECTION_MS)
    assert fresh.role is Role.FOLLOWER and not fresh.ready().messages


def test_a_replica_removed_while_down_is_sent_the_log_when_it_asks_for_votes() -> None:
    net = three()
    net.crash("c")
    net.nodes["a"].propose_conf(membership("ab"))
    net.settle()
    # Long past the telling: a has forgotten c by the time it comes back.
    net.run_for((RaftConfig().removed_heartbeats_max + 5) * HEARTBEAT_MS)
    assert "c" not in net.nodes["a"].progress
    net.restart("c")
    c = net.nodes["c"]
    assert c.is_voter and not c.removed  # its disk never got the removal
    net.run_for(6 * ELECTION_MS)  # it campaigns; the leader answers with the log
    assert c.removed and not c.is_voter
    assert net.leaders() == ["a"] and net.nodes["a"].conf == membership("ab")


def test_ask_for_log_asks_only_a_leader_outside_the_membership() -> None:
    lone = RaftCore("d", [*ABC, "d"], rng=random.Random(1), now_ms=0)
    assert not lone.ask_for_log("a") and not lone.ask_for_log("d")
    assert lone.ask_for_log("e")
    asks = [(to, m) for to, m in lone.ready().messages if isinstance(m, VoteRequest)]
    assert asks == [("e", VoteRequest(1, 0, 0, pre_vote=True))]
