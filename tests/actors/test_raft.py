"""RaftCore driven by hand: one test per rule of the Raft paper (Ongaro & Ousterhout, extended
version: figure 2 and sections 5, 7 and 8; section 6, membership, is test_raft_membership.py) that
a test can pin, then our extensions (pre-vote, check-quorum, flow control, pipelined writes,
ReadIndex, leadership transfer, backpressure).

Two levels: a lone ``RaftCore`` fed messages with ``step`` and inspected through ``ready()``, for
rules about one node's output; the in-memory ``Network`` for rules about a cluster. Every Ready
the network carries out is also checked there: nothing is applied before it is durable, in order.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from raft_network import Disk, Network

from syncfab.actors.messages import (
    AppendEntries,
    AppendReply,
    Entry,
    HardState,
    Heartbeat,
    HeartbeatReply,
    InstallSnapshot,
    Membership,
    RaftMessage,
    Snapshot,
    TimeoutNow,
    VoteReply,
    VoteRequest,
)
from syncfab.actors.raft import Busy, NotLeader, RaftConfig, RaftCore, Role
from syncfab.actors.raft_log import RaftLog
from syncfab.actors.ready import ReadState, Ready

ABC = ["a", "b", "c"]
CONFIG = RaftConfig()
HEARTBEAT_MS = CONFIG.heartbeat_ms
ELECTION_MS = CONFIG.election_timeout_ms


def run(terms: list[int], first: int = 1) -> list[Entry]:
    """Entries with the given terms at consecutive indexes from ``first``."""
    return [Entry(t, first + n, b"e%d" % (first + n)) for n, t in enumerate(terms)]


def core(
    node_id: str = "b",
    voters: list[str] = ABC,
    *,
    config: RaftConfig | None = None,
    hard_state: HardState | None = None,
    entries: list[Entry] | None = None,
    snapshot: Snapshot | None = None,
) -> RaftCore:
    return RaftCore(
        node_id,
        voters,
        rng=random.Random(7),
        now_ms=0,
        config=config,
        hard_state=hard_state,
        snapshot=snapshot,
        entries=entries or [],
    )


def drain(node: RaftCore) -> Ready:
    """One turn with a disk that is instantly durable."""
    rd = node.ready()
    node.advance(rd)
    return rd


def make_leader(node: RaftCore) -> RaftCore:
    """Win an election by stepping in just enough votes; leaves the Ready with the no-op taken."""
    node.campaign()
    if node.role is Role.PRE_CANDIDATE:
        for peer in node.peers[: node.quorum - 1]:
            node.step(peer, VoteReply(node.term + 1, True, pre_vote=True))
    for peer in node.peers[: node.quorum - 1]:
        node.step(peer, VoteReply(node.term, True))
    assert node.role is Role.LEADER
    drain(node)
    return node


def log_terms(node: RaftCore) -> list[int]:
    return [e.term for e in node.log.entries]


def messages_since(
    net: Network, start: int, kind: type, src: str | None = None, dst: str | None = None
) -> list[RaftMessage]:
    return [
        m for s, d, m in net.sent[start:] if isinstance(m, kind) and src in (None, s) and dst in (None, d)
    ]


def tick_until(net: Network, done: Callable[[], bool], ms_max: int, step_ms: int = 10) -> int:
    """Tick until ``done()``; returns the time it took. Fails past ``ms_max``."""
    start = net.now
    while not done():
        assert net.now - start < ms_max, f"not done after {ms_max} ms"
        net.tick(step_ms)
    return net.now - start


# == Leader election (§5.2) ================================================================


def test_timed_out_follower_becomes_pre_candidate_then_candidate_then_leader() -> None:
    net = Network(ABC)
    a = net.nodes["a"]
    while a.role is Role.FOLLOWER:
        net.now += 10
        a.tick(net.now)
    assert ELECTION_MS <= net.now < 2 * ELECTION_MS
    assert (a.role, a.term) == (Role.PRE_CANDIDATE, 0)  # a pre-vote changes no durable state
    seen = [(a.role, a.term)]
    while a.role is not Role.LEADER:
        net.deliver()
        if seen[-1] != (a.role, a.term):
            seen.append((a.role, a.term))
    assert seen == [(Role.PRE_CANDIDATE, 0), (Role.CANDIDATE, 1), (Role.LEADER, 1)]
    asked = [(d, m.pre_vote) for s, d, m in net.sent if s == "a" and isinstance(m, VoteRequest)]
    assert asked == [("b", True), ("c", True), ("b", False), ("c", False)]


def test_election_timeouts_are_randomized_between_one_and_two_timeouts() -> None:
    fired = []
    for seed in range(20):
        node = RaftCore("a", ABC, rng=random.Random(seed), now_ms=0)
        now = 0
        while node.role is Role.FOLLOWER:
            now += 1
            node.tick(now)
        fired.append(now)
    assert all(ELECTION_MS <= t < 2 * ELECTION_MS for t in fired)
    assert len(set(fired)) >= 15


def test_vote_is_granted_at_most_once_per_term_and_survives_a_restart() -> None:
    net = Network(ABC)
    net.nodes["b"].step("a", VoteRequest(1, 0, 0))
    net.process("b")
    assert net.disks["b"].hard_state == HardState(1, "a", 0)
    net.nodes["b"].step("c", VoteRequest(1, 0, 0))
    net.process("b")
    net.crash("b")
    net.restart("b")
    b = net.nodes["b"]
    assert (b.term, b.vote) == (1, "a")
    b.step("c", VoteRequest(1, 0, 0))
    b.step("a", VoteRequest(1, 0, 0))  # the same candidate asking again (a lost reply) is answered
    net.process("b")
    replies = [(d, m) for s, d, m in net.sent if s == "b"]
    assert replies == [
        ("a", VoteReply(1, True)),
        ("c", VoteReply(1, False)),
        ("c", VoteReply(1, False)),
        ("a", VoteReply(1, True)),
    ]


def test_a_vote_lost_with_its_write_was_never_announced() -> None:
    net = Network(ABC, disk_lag=1)
    net.nodes["b"].step("a", VoteRequest(1, 0, 0))
    net.process("b")  # the turn is taken, its write is still in flight
    assert net.count(VoteReply) == 0
    net.crash("b")
    net.restart("b")
    b = net.nodes["b"]
    assert (b.term, b.vote) == (0, None)
    b.step("c", VoteRequest(1, 0, 0))  # free to vote again: nobody was told of the first vote
    net.process("b")
    net.complete_write("b")
    assert [(d, m) for s, d, m in net.sent if s == "b"] == [("c", VoteReply(1, True))]


@pytest.mark.parametrize(
    ("last_index", "last_term", "granted"),
    [
        (3, 2, True),  # same log
        (4, 2, True),  # longer, same last term
        (1, 3, True),  # shorter but newer last term
        (2, 2, False),  # shorter, same last term
        (9, 1, False),  # longer but older last term
    ],
)
def test_election_restriction_refuses_a_candidate_with_an_older_log(
    last_index: int, last_term: int, granted: bool
) -> None:
    b = core("b", entries=run([1, 2, 2]), hard_state=HardState(2, None, 1))
    b.step("c", VoteRequest(3, last_index, last_term))
    rd = b.ready()
    assert rd.messages_after_persist == [("c", VoteReply(3, granted))]
    assert b.vote == ("c" if granted else None)


def test_a_candidate_missing_a_committed_entry_cannot_win() -> None:
    net = Network(ABC, config=RaftConfig(check_quorum=False))  # no leases: votes are asked at once
    net.elect("a")
    net.isolate("c")
    x = net.propose("a", b"x")  # committed by a and b
    net.recover()
    net.crash("a")
    c = net.nodes["c"]
    c.campaign()
    net.settle()
    assert c.role is not Role.LEADER
    assert [m.granted for m in messages_since(net, 0, VoteReply, "b", "c")] == [False]
    b = net.elect("b")
    assert b.log.term(x) is not None
    assert c.log.term(x) == b.log.term(x)  # and the winner brings c up to date


@pytest.mark.parametrize("seed", range(5))
def test_a_split_vote_is_resolved_by_randomized_timeouts(seed: int) -> None:
    net = Network(["a", "b", "c", "d"], seed=seed, config=RaftConfig(pre_vote=False))
    net.cut("b", "d")
    net.cut("c", "a")
    net.nodes["b"].campaign()
    net.nodes["c"].campaign()
    net.settle()
    assert net.leaders() == []  # a voted for b, d for c: two votes each, three needed
    assert [(n.role, n.term, n.vote) for n in net.nodes.values()] == [
        (Role.FOLLOWER, 1, "b"),
        (Role.CANDIDATE, 1, "b"),
        (Role.CANDIDATE, 1, "c"),
        (Role.FOLLOWER, 1, "c"),
    ]
    net.recover()
    tick_until(net, lambda: bool(net.leaders()), 3 * ELECTION_MS)
    [leader] = net.leaders()
    assert net.nodes[leader].term >= 2
    net.run_for(2 * ELECTION_MS)
    assert net.leaders() == [leader]


HIGHER_TERM_MESSAGES: list[RaftMessage] = [
    AppendEntries(9, 0, 0, [], 0),
    Heartbeat(9, 0, 0),
    InstallSnapshot(9, Snapshot(0, 0, b"")),
    AppendReply(9, False, 0),
    HeartbeatReply(9, 0),
    VoteReply(9, False),
    VoteReply(9, False, pre_vote=True),
    TimeoutNow(9),
]


@pytest.mark.parametrize("msg", HIGHER_TERM_MESSAGES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("role", [Role.LEADER, Role.CANDIDATE])
def test_a_higher_term_in_any_message_makes_a_leader_or_candidate_step_down(
    role: Role, msg: RaftMessage
) -> None:
    a = core("a", config=RaftConfig(pre_vote=False))
    if role is Role.LEADER:
        make_leader(a)
    else:
        a.campaign()
    assert a.role is role
    a.step("b", msg)
    assert (a.role, a.term, a.vote) == (Role.FOLLOWER, 9, None)
    from_leader = isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot)
    assert a.leader == ("b" if from_leader else None)


def test_a_higher_term_vote_request_deposes_a_candidate_or_a_leader_without_check_quorum() -> None:
    candidate = core("a", config=RaftConfig(pre_vote=False))
    candidate.campaign()
    leader = make_leader(core("a", config=RaftConfig(check_quorum=False)))
    for node in (candidate, leader):
        node.step("c", VoteRequest(5, 9, 5))
        assert (node.role, node.term, node.vote) == (Role.FOLLOWER, 5, "c")


def test_stale_term_messages_are_ignored_and_answered_with_our_term() -> None:
    b = core("b", entries=run([1, 1]), hard_state=HardState(3, None, 1))
    b.step("a", AppendEntries(2, 2, 1, run([2], first=3), 3))
    b.step("a", Heartbeat(2, 2, 0))
    b.step("a", InstallSnapshot(2, Snapshot(5, 2, b"s")))
    b.step("c", VoteRequest(2, 9, 2))
    b.step("c", VoteRequest(2, 9, 2, pre_vote=True))
    rd = b.ready()
    assert (b.term, b.vote, b.leader, b.log.last_index, b.commit_index) == (3, None, None, 2, 1)
    assert rd.messages == [
        ("a", AppendReply(3, False, 0)),  # tells a deposed leader the term, so it steps down
        ("a", AppendReply(3, False, 0)),
        ("a", AppendReply(3, False, 0)),
        ("c", VoteReply(3, False, pre_vote=True)),
    ]
    assert rd.messages_after_persist == []
    assert rd.restore is None


def test_a_leader_ignores_replies_from_an_older_term() -> None:
    a = make_leader(core("a", hard_state=HardState(4, None, 0), entries=run([1, 2, 3])))
    a.step("b", AppendReply(3, True, 4))
    a.step("c", HeartbeatReply(3, 0))
    assert (a.role, a.term) == (Role.LEADER, 5)
    assert (a.progress["b"].match, a.commit_index) == (0, 0)


def test_a_new_leaders_first_entry_is_a_noop_of_its_term() -> None:
    net = Network(ABC)
    a = net.elect("a")
    assert a.log.entries == [Entry(1, 1, b"")]
    net.propose("a", b"x")
    assert a.transfer_leadership("b")
    net.settle()
    b = net.nodes["b"]
    assert b.is_leader
    assert b.log.entries[-1] == Entry(b.term, 3, b"")
    assert all(n.log.entries[-1] == Entry(2, 3, b"") for n in net.nodes.values())


# == Pre-vote, check-quorum, leader stickiness ==============================================


def test_pre_vote_keeps_an_isolated_node_from_raising_terms_or_deposing_the_leader() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.isolate("c")
    net.run_for(6 * ELECTION_MS)
    c = net.nodes["c"]
    assert (c.role, c.term) == (Role.PRE_CANDIDATE, 1)  # it keeps trying, but only pre-votes
    assert not [m for s, _, m in net.sent if s == "c" and isinstance(m, VoteRequest) and not m.pre_vote]
    net.recover()
    net.run_for(2 * ELECTION_MS)
    assert net.leaders() == ["a"]
    assert [(n.term, n.leader) for n in net.nodes.values()] == [(1, "a")] * 3
    assert a.term == 1


def test_without_pre_vote_a_rejoining_node_disrupts_the_cluster() -> None:
    # The contrast that shows what pre-vote is for.
    net = Network(ABC, config=RaftConfig(pre_vote=False))
    net.elect("a")
    net.isolate("c")
    net.run_for(6 * ELECTION_MS)
    assert net.nodes["c"].term > 3
    net.recover()
    net.run_for(2 * ELECTION_MS)
    assert all(n.term > 3 for n in net.nodes.values())  # the leader of term 1 is gone


def test_check_quorum_steps_down_a_leader_cut_off_from_its_majority() -> None:
    ids = ["a", "b", "c", "d", "e"]
    net = Network(ids)
    a = net.elect("a")
    net.run_for(230)  # somewhere inside a quorum-check window
    for x in ("a", "b"):
        for y in ("c", "d", "e"):
            net.cut(x, y)  # b still answers a, but two of five is not a quorum
    took = tick_until(net, lambda: a.role is not Role.LEADER, 2 * ELECTION_MS + 10)
    # Each check looks at the replies since the previous one, so it takes one to two windows.
    assert ELECTION_MS <= took <= 2 * ELECTION_MS
    with pytest.raises(NotLeader):
        a.propose(b"x")


def test_a_healthy_leader_is_not_stepped_down() -> None:
    net = Network(ABC)
    net.elect("a")
    asked = net.count(VoteRequest)
    net.run_for(10 * ELECTION_MS)
    assert net.leaders() == ["a"]
    assert [n.term for n in net.nodes.values()] == [1, 1, 1]
    assert net.count(VoteRequest) == asked  # nobody so much as asked for a pre-vote


def test_without_check_quorum_a_cut_off_leader_stays_leader() -> None:
    net = Network(ABC, config=RaftConfig(check_quorum=False))
    a = net.elect("a")
    net.isolate("a")
    net.run_for(4 * ELECTION_MS)
    assert a.role is Role.LEADER


def test_a_follower_hearing_its_leader_ignores_vote_requests_but_not_a_transfer() -> None:
    net = Network(ABC)
    a = net.elect("a")
    b = net.nodes["b"]
    start = len(net.sent)
    b.step("c", VoteRequest(2, 99, 2, pre_vote=True))
    b.step("c", VoteRequest(2, 99, 2))
    a.step("c", VoteRequest(2, 99, 2))  # the leader holds its own lease
    net.process("b")
    net.process("a")
    assert (b.term, b.vote, b.leader) == (1, "a", "a")
    assert (a.role, a.term) == (Role.LEADER, 1)
    assert messages_since(net, start, VoteReply) == []  # not even refused: ignored
    b.step("c", VoteRequest(2, 99, 2, transfer=True))  # a leader asked for this election
    net.process("b")
    assert (b.term, b.vote) == (2, "c")
    assert messages_since(net, start, VoteReply) == [VoteReply(2, True)]


def test_a_node_cannot_start_an_election_while_the_leader_is_healthy() -> None:
    net = Network(ABC)
    net.elect("a")
    net.nodes["c"].campaign()
    net.settle()
    assert net.leaders() == ["a"]
    assert [n.term for n in net.nodes.values()] == [1, 1, 1]


# == Log replication (§5.3, §5.4) ===========================================================

FIGURE_7_LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7_FOLLOWERS = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


def figure_7() -> Network:
    """The paper's figure 7: the leader of term 8 ("l") and six followers with missing,
    extra and conflicting entries; the first three entries are committed."""
    net = Network(["l", *FIGURE_7_FOLLOWERS])
    net.load("l", run(FIGURE_7_LEADER), HardState(7, None, 3))
    for node, terms in FIGURE_7_FOLLOWERS.items():
        net.load(node, run(terms), HardState(7, None, 3))
    return net


def test_figure_7_every_follower_ends_with_the_leaders_log() -> None:
    net = figure_7()
    lead = net.elect("l")  # c and d refuse (their logs are newer), the other five elect it
    assert lead.term == 8
    want = [*FIGURE_7_LEADER, 8]
    for node in FIGURE_7_FOLLOWERS:
        follower = net.nodes[node]
        assert log_terms(follower) == want, node
        assert follower.log.entries == lead.log.entries[: len(want)]
        assert net.disks[node].log() == lead.log.entries  # the disk was rewritten too
    net.tick(HEARTBEAT_MS)
    net.check_safety()
    assert all(n.commit_index == 11 for n in net.nodes.values())
    # Missing entries cost one rejection, a tail the leader never had costs none.
    assert {n: net.count(AppendEntries, "l", n) for n in "abcd"} == {"a": 2, "b": 2, "c": 1, "d": 1}


def test_figure_7_conflicting_entries_cost_one_round_trip_per_term() -> None:
    net = figure_7()
    net.elect("l")
    # e conflicts in one term (4), f in two (2 and 3): one probe per term, then one that fits.
    assert (net.count(AppendEntries, "l", "e"), net.count(AppendEntries, "l", "f")) <= (2, 3)


def test_a_rejection_of_an_older_probe_is_ignored() -> None:
    a = make_leader(core("a", hard_state=HardState(1, None, 0), entries=run([1] * 4)))
    a.step("b", AppendReply(2, False, 4, hint=2))  # the first probe (prev 4) missed
    rd = a.ready()
    assert [(to, m.prev_index) for to, m in rd.messages if isinstance(m, AppendEntries)] == [("b", 2)]
    a.step("b", AppendReply(2, False, 4, hint=0))  # a late duplicate of that answer
    rd = a.ready()
    assert [m for _, m in rd.messages if isinstance(m, AppendEntries)] == []  # still waiting on 2


def test_a_lagging_follower_is_caught_up_after_a_single_rejection() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    for n in range(50):
        a.propose(b"%d" % n)
    net.settle()
    assert a.transfer_leadership("b")  # a new leader knows nothing of c: it probes from its end
    net.settle()
    net.restart("c")
    start = len(net.sent)
    net.run_for(3 * HEARTBEAT_MS)
    replies = messages_since(net, start, AppendReply, "c", "b")
    assert [(m.success, m.hint) for m in replies] == [(False, 1), (True, 0)]
    appends = messages_since(net, start, AppendEntries, "b", "c")
    assert [len(m.entries) for m in appends] == [1, 51]  # the probe, then all of 2..52
    assert net.nodes["c"].log.entries == net.nodes["b"].log.entries


def test_a_conflicting_tail_of_a_newer_term_is_skipped_in_one_round_trip() -> None:
    # f holds 30 entries of a term-4 leader that reached nobody else; l, elected in term 5 by
    # x, y and z, has 20 entries of term 2 at those indexes.
    ids = ["f", "l", "x", "y", "z"]
    net = Network(ids)
    for node in ("l", "x", "y", "z"):
        net.load(node, run([1, 1, 1] + [2] * 20), HardState(4, None, 3))
    net.load("f", run([1, 1, 1] + [4] * 30), HardState(4, None, 3))
    lead = net.elect("l")
    replies = messages_since(net, 0, AppendReply, "f", "l")
    assert [(m.success, m.index, m.hint) for m in replies][:2] == [(False, 23, 3), (True, 24, 0)]
    assert net.nodes["f"].log.entries == lead.log.entries


def test_figure_8_a_leader_never_commits_an_older_term_entry_by_counting_replicas() -> None:
    ids = ["s1", "s2", "s3", "s4", "s5"]
    # One entry per message so the old entry and the new no-op travel separately; no leases so
    # the hand-picked candidates win at once.
    net = Network(ids, config=RaftConfig(append_entries_max=1, check_quorum=False))
    net.elect("s1")
    # (a) s1 is leader of term 1 and replicates x (index 2) to s2 only.
    for peer in ("s3", "s4", "s5"):
        net.cut("s1", peer)
    net.propose("s1", b"x")
    # (b) s1 crashes; s5 wins term 2 with s3, s4 and itself; its no-op stays on s5.
    net.crash("s1")
    net.recover()
    net.hook = lambda src, dst, msg: not (src == "s5" and isinstance(msg, AppendEntries))
    net.elect("s5")
    assert net.nodes["s5"].log.entries[-1] == Entry(2, 2, b"")
    net.crash("s5")
    # (c) s1 restarts and wins term 3; it brings x to s3 and s4 but its own no-op reaches nobody.
    net.restart("s1")
    net.hook = lambda src, dst, msg: (
        not (
            isinstance(msg, AppendEntries)
            and any(e.index >= 3 for e in msg.entries)
            and net.nodes[dst].log.last_index >= 2
        )
    )
    s1 = net.nodes["s1"]
    s1.campaign()
    net.settle()
    assert (s1.role, s1.term) == (Role.FOLLOWER, 2)  # refused by s5's voters, it learnt term 2
    net.elect("s1")
    assert s1.term == 3
    assert {p: pr.match for p, pr in s1.progress.items()} == {"s2": 0, "s3": 2, "s4": 2, "s5": 0}
    assert sum(net.nodes[i].log.term(2) == 1 for i in ids if i != "s5") == 4
    assert s1.commit_index == 1  # x is on a majority, but it is of term 1: not committed
    # (d) s1 crashes; s5 (last entry of term 2) can win with s2, s3, s4 and overwrite x.
    net.crash("s1")
    net.hook = None
    net.restart("s5")
    s5 = net.nodes["s5"]
    s5.campaign()
    net.settle()
    assert (s5.role, s5.term) == (Role.FOLLOWER, 3)  # as s1 did: first learn the term
    net.elect("s5")
    net.propose("s5", b"y")
    net.restart("s1")
    net.run_for(3 * HEARTBEAT_MS)
    net.check_safety()
    assert all(n.log.term(2) == 2 for n in net.nodes.values())
    assert all(net.data_applied(i) == [b"y"] for i in ids)  # x was never applied anywhere


def test_figure_8_an_older_term_entry_commits_with_the_leaders_own_entry() -> None:
    # (e): once the leader's entry of its own term is on a majority, both commit.
    ids = ["s1", "s2", "s3", "s4", "s5"]
    net = Network(ids, config=RaftConfig(check_quorum=False))
    net.elect("s1")
    for peer in ("s3", "s4", "s5"):
        net.cut("s1", peer)
    x = net.propose("s1", b"x")
    assert net.nodes["s1"].commit_index < x
    net.crash("s1")
    net.recover()
    net.restart("s1")
    s1 = net.nodes["s1"]
    net.elect("s1")
    assert s1.commit_index == x + 1  # x and the no-op after it
    net.tick(HEARTBEAT_MS)
    assert all(net.data_applied(i) == [b"x"] for i in ids if i != "s1")


def test_a_follower_truncates_a_conflicting_suffix() -> None:
    b = core("b", entries=run([1, 1, 2, 2]), hard_state=HardState(2, None, 2))
    b.step("a", AppendEntries(3, 2, 1, [Entry(3, 3, b"n")], 2))
    rd = b.ready()
    assert log_terms(b) == [1, 1, 3]
    assert (rd.persist.truncate_from, rd.persist.entries) == (3, [Entry(3, 3, b"n")])
    assert rd.messages_after_persist == [("a", AppendReply(3, True, 3))]


def test_a_follower_never_rewrites_committed_entries() -> None:
    b = core("b", entries=run([1, 1, 2]), hard_state=HardState(2, None, 2))
    # No real leader sends this (entry 2 is committed, so every later leader holds it): it is
    # acknowledged up to the commit index and changes nothing.
    b.step("a", AppendEntries(3, 1, 1, [Entry(3, 2, b"n"), Entry(3, 3, b"n")], 3))
    rd = b.ready()
    assert log_terms(b) == [1, 1, 2]
    assert rd.persist.truncate_from is None
    assert rd.messages_after_persist == [("a", AppendReply(3, True, 2))]


def test_a_follower_commits_no_further_than_the_entries_the_leader_vouched_for() -> None:
    # Entries 3 and 4 are a deposed leader's; the new leader's commit index 4 is about its own.
    b = core("b", entries=run([1, 1, 2, 2]), hard_state=HardState(3, None, 1))
    b.step("a", AppendEntries(3, 2, 1, [], 4))
    assert b.commit_index == 2  # min(leader commit, last index this message matched)
    b.step("a", Heartbeat(3, 2, 0))
    assert b.commit_index == 2


def test_a_stale_shorter_append_does_not_truncate_a_matching_log() -> None:
    b = core("b", hard_state=HardState(1, None, 0))
    b.step("a", AppendEntries(1, 0, 0, run([1, 1, 1]), 0))
    b.step("a", AppendEntries(1, 0, 0, run([1]), 0))  # delayed duplicate of an earlier message
    rd = b.ready()
    assert log_terms(b) == [1, 1, 1]
    assert rd.messages_after_persist == [("a", AppendReply(1, True, 3)), ("a", AppendReply(1, True, 1))]


def test_a_mismatched_append_is_rejected_with_a_hint() -> None:
    b = core("b", entries=run([1, 1]), hard_state=HardState(2, None, 1))
    b.step("a", AppendEntries(2, 5, 2, run([2], first=6), 1))
    rd = b.ready()
    assert rd.messages_after_persist == [("a", AppendReply(2, False, 5, hint=2, hint_term=1))]
    assert log_terms(b) == [1, 1]


def test_commit_index_reaches_followers_with_the_next_append_entries() -> None:
    net = Network(ABC)
    a = net.elect("a")
    x = net.propose("a", b"x")
    b = net.nodes["b"]
    assert (a.commit_index, b.commit_index) == (x, x - 1)  # only the leader knows so far
    start = len(net.sent)
    net.propose("a", b"y")
    assert [m.commit for m in messages_since(net, start, AppendEntries, "a", "b")] == [x]
    assert b.commit_index == x
    assert net.data_applied("b") == [b"x"]


def test_commit_index_reaches_followers_with_heartbeats() -> None:
    net = Network(ABC)
    net.elect("a")
    x = net.propose("a", b"x")
    assert net.nodes["c"].commit_index < x
    net.tick(HEARTBEAT_MS)
    assert net.nodes["c"].commit_index == x
    assert net.data_applied("c") == [b"x"]


def test_a_heartbeat_never_commits_a_follower_past_what_it_is_known_to_hold() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.hook = lambda src, dst, msg: not (dst == "c" and isinstance(msg, AppendEntries))
    x = net.propose("a", b"x")
    assert a.commit_index == x
    start = len(net.sent)
    net.tick(HEARTBEAT_MS)
    assert [m.commit for m in messages_since(net, start, Heartbeat, "a")] == [x, x - 1]  # b, c
    assert net.nodes["c"].commit_index == x - 1


def test_proposals_of_one_turn_leave_in_one_append_entries_per_follower() -> None:
    net = Network(ABC)
    a = net.elect("a")
    start = len(net.sent)
    for n in range(20):
        a.propose(b"%d" % n)
    net.settle()
    appends = [(d, len(m.entries)) for s, d, m in net.sent[start:] if isinstance(m, AppendEntries)]
    assert appends == [("b", 20), ("c", 20)]
    assert a.commit_index == 21


def test_a_batch_is_split_by_append_entries_max() -> None:
    net = Network(ABC, config=RaftConfig(append_entries_max=8))
    a = net.elect("a")
    start = len(net.sent)
    for n in range(20):
        a.propose(b"%d" % n)
    net.process("a")
    assert [len(m.entries) for m in messages_since(net, start, AppendEntries, "a", "b")] == [8, 8, 4]


def test_append_entries_are_pipelined_up_to_inflight_messages_max() -> None:
    net = Network(ABC, config=RaftConfig(append_entries_max=1, inflight_messages_max=4))
    a = net.elect("a")
    start = len(net.sent)
    for n in range(10):
        a.propose(b"%d" % n)
    net.process("a")  # before any acknowledgement
    first = [[e.index for e in m.entries] for m in messages_since(net, start, AppendEntries, "a", "b")]
    assert first == [[2], [3], [4], [5]]
    net.settle()
    outstanding = peak = 0
    for src, dst, msg in net.sent[start:]:
        if (src, dst) == ("a", "b") and isinstance(msg, AppendEntries):
            outstanding += 1
            peak = max(peak, outstanding)
        elif (src, dst) == ("b", "a") and isinstance(msg, AppendReply):
            outstanding -= 1
    assert peak == 4
    assert a.commit_index == net.nodes["b"].log.last_index == 11


def test_appends_of_successive_turns_do_not_wait_for_acks() -> None:
    net = Network(ABC)
    a = net.elect("a")
    start = len(net.sent)
    a.propose(b"p")
    net.process("a")
    a.propose(b"q")
    net.process("a")
    assert [[e.data for e in m.entries] for m in messages_since(net, start, AppendEntries, "a", "b")] == [
        [b"p"],
        [b"q"],
    ]


# == Persistence ordering ===================================================================


def test_a_vote_grant_waits_for_the_vote_to_be_durable() -> None:
    b = core("b")
    b.step("a", VoteRequest(1, 0, 0))
    rd = b.ready()
    assert rd.persist.hard_state == HardState(1, "a", 0)
    assert rd.messages == []
    assert rd.messages_after_persist == [("a", VoteReply(1, True))]


def test_a_candidate_asks_for_votes_only_once_its_own_vote_is_durable() -> None:
    a = core("a", config=RaftConfig(pre_vote=False))
    a.campaign()
    rd = a.ready()
    assert rd.persist.hard_state == HardState(1, "a", 0)
    assert rd.messages == []
    assert rd.messages_after_persist == [("b", VoteRequest(1, 0, 0)), ("c", VoteRequest(1, 0, 0))]


def test_pre_vote_requests_leave_at_once_and_write_nothing() -> None:
    a = core("a")
    a.campaign()
    rd = a.ready()
    assert not rd.persist
    assert rd.messages == [(p, VoteRequest(1, 0, 0, pre_vote=True)) for p in ("b", "c")]


def test_append_acks_and_rejections_wait_for_the_write() -> None:
    b = core("b")
    b.step("a", AppendEntries(1, 0, 0, run([1, 1]), 0))
    b.step("a", AppendEntries(1, 5, 1, [], 0))
    rd = b.ready()
    assert (rd.persist.entries, rd.persist.hard_state) == (run([1, 1]), HardState(1, None, 0))
    assert rd.messages == []
    assert rd.messages_after_persist == [
        ("a", AppendReply(1, True, 2)),
        ("a", AppendReply(1, False, 5, 2, 1)),
    ]


def test_a_leader_sends_appends_while_its_own_copy_is_being_written() -> None:
    a = make_leader(core("a"))
    a.ready()
    for peer in ("b", "c"):
        a.step(peer, AppendReply(1, True, 1))  # out of probing: appends flow freely
    a.propose(b"x")
    rd = a.ready()
    assert rd.persist.entries == [Entry(1, 2, b"x")]
    assert [to for to, m in rd.messages if isinstance(m, AppendEntries)] == ["b", "c"]


def test_a_leader_counts_itself_toward_commit_only_once_its_entries_are_durable() -> None:
    a = make_leader(core("a"))
    a.ready()
    a.step("b", AppendReply(1, True, 1))
    assert a.commit_index == 1
    a.propose(b"x")
    rd = a.ready()  # the leader's write of x is in flight
    a.step("b", AppendReply(1, True, 2))
    assert a.commit_index == 1  # b's copy alone is one of three
    a.advance(rd)
    assert a.commit_index == 2


def test_a_single_node_commits_only_after_its_write() -> None:
    a = core("a", ["a"])
    a.campaign()
    assert a.is_leader
    a.propose(b"x")
    rd = a.ready()
    written = [Entry(1, 1, b""), Entry(1, 2, b"x")]
    assert (rd.persist.entries, rd.committed, a.commit_index) == (written, [], 0)
    a.advance(rd)
    assert a.commit_index == 2
    assert a.ready().committed == written


def test_committed_entries_are_applied_before_our_own_write_completes() -> None:
    b = core("b")
    b.step("a", AppendEntries(1, 0, 0, run([1, 1]), 2))  # the entries and their commit at once
    assert b.commit_index == 2
    rd = b.ready()
    # Committed means durable on a majority: applying need not wait for this node's fsync.
    assert (rd.persist.entries, rd.committed) == (run([1, 1]), run([1, 1]))
    b.advance(rd)
    assert b.ready().committed == []


def test_a_leader_answers_once_followers_synced_without_waiting_for_its_own_write() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.disk_lags["a"] = 5  # the leader's disk is slow; its followers' are not
    x = a.propose(b"x")
    for _ in range(6):
        net.deliver()
        if b"x" in net.data_applied("a"):
            break
    assert b"x" in net.data_applied("a")
    assert x not in net.disks["a"].entries, "the leader's own write was meant to lag behind"


@pytest.mark.parametrize("disk_lag", [1, 3])
def test_pipelined_writes_replicate_commit_and_apply(disk_lag: int) -> None:
    net = Network(ABC, disk_lag=disk_lag)
    a = net.elect("a")
    for n in range(10):
        a.propose(b"%d" % n)
        net.deliver()
    net.settle()
    net.tick(HEARTBEAT_MS)
    want = [b"%d" % n for n in range(10)]
    assert all(net.data_applied(i) == want for i in ABC)


def test_a_crash_loses_the_writes_in_flight_and_the_acks_that_waited_on_them() -> None:
    net = Network(ABC, disk_lag=1)
    a = net.elect("a")
    start = len(net.sent)
    x = a.propose(b"x")
    net.deliver()  # a takes the turn: x leaves for b and c while a writes it
    net.deliver()  # b and c take x; their writes are in flight
    assert messages_since(net, start, AppendReply) == []
    net.crash("b")
    net.crash("c")
    assert net.disks["b"].log()[-1].index < x
    net.restart("b")
    net.restart("c")
    net.run_for(4 * HEARTBEAT_MS)
    assert all(net.data_applied(i) == [b"x"] for i in ABC)


# == Crash and restart ======================================================================


def test_a_restarted_follower_rebuilds_from_its_disk_and_catches_up() -> None:
    net = Network(ABC)
    a = net.elect("a")
    for n in range(3):
        net.propose("a", b"old%d" % n)
    net.tick(HEARTBEAT_MS)
    b = net.nodes["b"]
    before = (b.term, b.vote, list(b.log.entries))
    net.crash("b")
    for n in range(3):
        net.propose("a", b"new%d" % n)
    net.restart("b")
    b = net.nodes["b"]
    assert (b.term, b.vote, b.log.entries) == before
    # The commit index is written with entries only; a heartbeat's is learnt again.
    assert b.commit_index == net.disks["b"].hard_state.commit == 3
    assert b.applying_index == 0  # the state machine is rebuilt from the log
    net.run_for(3 * HEARTBEAT_MS)
    assert b.log.entries == a.log.entries
    assert net.data_applied("b") == [b"old0", b"old1", b"old2", b"new0", b"new1", b"new2"]


def test_a_restarted_leader_rejoins_as_a_follower_and_catches_up() -> None:
    net = Network(ABC)
    net.elect("a")
    net.propose("a", b"x")
    net.crash("a")
    tick_until(net, lambda: bool(net.leaders()), 3 * ELECTION_MS)
    [leader] = net.leaders()
    net.propose(leader, b"y")
    net.restart("a")
    a = net.nodes["a"]
    assert (a.role, a.term, a.vote) == (Role.FOLLOWER, 1, "a")
    net.run_for(3 * HEARTBEAT_MS)
    assert (a.role, a.term, a.leader) == (Role.FOLLOWER, 2, leader)
    assert net.data_applied("a") == [b"x", b"y"]


def test_a_lone_leaders_unreplicated_first_entry_is_replaced_after_a_restart() -> None:
    # Regression: a restarted node took its first stored entry for a compaction base, hence
    # committed, and rejected every AppendEntries from the next leader forever.
    net = Network(ABC)
    net.hook = lambda src, dst, msg: not (src == "a" and isinstance(msg, AppendEntries))
    net.elect("a")
    net.crash("a")  # its no-op (1@1) reached nobody
    net.hook = None
    tick_until(net, lambda: bool(net.leaders()), 3 * ELECTION_MS)
    [leader] = net.leaders()
    net.propose(leader, b"y")
    net.restart("a")
    a = net.nodes["a"]
    assert (a.log.entries, a.commit_index) == ([Entry(1, 1, b"")], 0)
    net.run_for(3 * HEARTBEAT_MS)
    assert a.log.entries == net.nodes[leader].log.entries
    assert net.data_applied("a") == [b"y"]


def test_a_lost_append_inside_a_pipeline_is_recovered_by_the_next_one() -> None:
    net = Network(ABC, config=RaftConfig(append_entries_max=2))
    a = net.elect("a")
    lost: list[RaftMessage] = []

    def lose_one(src: str, dst: str, msg: RaftMessage) -> bool:
        if dst == "b" and isinstance(msg, AppendEntries) and msg.prev_index == 3 and not lost:
            lost.append(msg)
            return False
        return True

    net.hook = lose_one
    start = len(net.sent)
    for n in range(6):
        a.propose(b"%d" % n)
    net.settle()  # no time passes: the gap is found by the follower's rejection
    assert lost
    assert [m.success for m in messages_since(net, start, AppendReply, "b")] == [True, False, True, True]
    assert net.nodes["b"].log.entries == a.log.entries


def test_a_lost_last_append_is_recovered_within_a_few_heartbeats() -> None:
    net = Network(ABC)
    a = net.elect("a")
    lost: list[RaftMessage] = []

    def lose_one(src: str, dst: str, msg: RaftMessage) -> bool:
        if dst == "b" and isinstance(msg, AppendEntries) and msg.entries and not lost:
            lost.append(msg)
            return False
        return True

    net.hook = lose_one
    net.propose("a", b"x")
    b = net.nodes["b"]
    assert lost and b.log.last_index < a.log.last_index
    took = tick_until(net, lambda: b.log.last_index == a.log.last_index, 10 * HEARTBEAT_MS)
    assert took <= (CONFIG.stalled_heartbeats_max + 1) * HEARTBEAT_MS


# == Snapshots (§7) =========================================================================


def test_a_far_behind_follower_installs_a_snapshot_then_replicates() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"x")
    net.crash("c")
    for n in range(5):
        net.propose("a", b"y%d" % n)
    a.compact(a.applying_index, b"state@7")
    net.settle()
    snap = Snapshot(7, 1, b"state@7", Membership(tuple(ABC)))
    assert (a.log.base_index, net.disks["a"].snapshot, min(net.disks["a"].entries)) == (7, snap, 7)
    net.restart("c")
    c = net.nodes["c"]
    # The leader's pipeline to c stalled while c was down; it restarts it with a probe, and
    # the probe finds the entries gone.
    tick_until(
        net, lambda: c.log.last_index == a.log.last_index, (CONFIG.stalled_heartbeats_max + 2) * HEARTBEAT_MS
    )
    assert (net.count(InstallSnapshot, dst="c"), net.count(InstallSnapshot, dst="b")) == (1, 0)
    assert net.restored["c"] == [snap]
    assert (c.log.base_index, c.commit_index, net.disks["c"].snapshot) == (7, 7, snap)
    net.propose("a", b"z")
    net.tick(HEARTBEAT_MS)
    # 1 and 2 (the no-op and x) c applied from its own log, 3..7 arrived as the snapshot.
    assert [e.index for e in net.applied["c"]] == [1, 2, 8]
    assert net.data_applied("c") == [b"x", b"z"]
    net.crash("c")
    net.restart("c")  # boots from the snapshot and the entries after it
    c = net.nodes["c"]
    assert (c.log.base_index, c.applying_index, c.log.last_index) == (7, 7, 8)


def test_compaction_that_keeps_entries_spares_a_slightly_lagging_follower_a_snapshot() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    for n in range(4):
        net.propose("a", b"y%d" % n)
    a.compact(a.applying_index, b"state", keep_entries=4)
    net.settle()
    net.restart("c")
    net.run_for(3 * HEARTBEAT_MS)
    assert net.count(InstallSnapshot) == 0
    assert net.nodes["c"].log.last_index == a.log.last_index


def test_an_install_snapshot_that_does_not_match_replaces_the_log() -> None:
    disk = Disk()
    disk.entries = {e.index: e for e in run([1, 1, 2, 2])}
    c = core("c", entries=disk.log(), hard_state=HardState(2, None, 1))
    snap = Snapshot(6, 3, b"state@6")
    c.step("a", InstallSnapshot(3, snap))
    rd = c.ready()
    assert (rd.restore, rd.persist.snapshot, rd.committed) == (snap, snap, [])
    assert rd.messages_after_persist == [("a", AppendReply(3, True, 6))]
    assert (c.log.base_index, c.log.entries, c.commit_index, c.applying_index) == (6, [], 6, 6)
    disk.write(rd.persist)
    assert (disk.snapshot, disk.log()) == (snap, [])
    rebuilt = RaftLog.from_disk(disk.snapshot, disk.log())
    assert (rebuilt.base_index, rebuilt.base_term, rebuilt.committed) == (6, 3, 6)


def test_an_install_snapshot_whose_entry_we_hold_keeps_our_suffix() -> None:
    c = core("c", entries=run([1] * 8), hard_state=HardState(1, None, 3))
    c.step("a", InstallSnapshot(1, Snapshot(5, 1, b"state@5")))
    rd = c.ready()
    assert (rd.restore, rd.persist.snapshot) == (None, None)
    assert (c.log.last_index, c.commit_index) == (8, 5)
    assert rd.committed == run([1] * 5)  # applied from our own log
    assert rd.messages_after_persist == [("a", AppendReply(1, True, 5))]


def test_a_stale_install_snapshot_is_acknowledged_with_our_commit_index() -> None:
    c = core("c", entries=run([1] * 8), hard_state=HardState(1, None, 6))
    c.step("a", InstallSnapshot(1, Snapshot(5, 1, b"state@5")))
    rd = c.ready()
    assert (rd.restore, c.log.last_index, c.commit_index) == (None, 8, 6)
    assert rd.messages_after_persist == [("a", AppendReply(1, True, 6))]


def test_a_lost_snapshot_is_sent_again() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    for n in range(3):
        net.propose("a", b"y%d" % n)
    a.compact(a.applying_index, b"state")
    net.settle()
    lost: list[RaftMessage] = []

    def lose_first_snapshot(src: str, dst: str, msg: RaftMessage) -> bool:
        if isinstance(msg, InstallSnapshot) and not lost:
            lost.append(msg)
            return False
        return True

    net.hook = lose_first_snapshot
    net.restart("c")
    c = net.nodes["c"]
    took = tick_until(net, lambda: c.log.last_index == a.log.last_index, 30 * HEARTBEAT_MS)
    assert lost
    assert net.count(InstallSnapshot, dst="c") == 2
    stalls = CONFIG.stalled_heartbeats_max + CONFIG.snapshot_stalled_heartbeats_max
    assert took <= (stalls + 2) * HEARTBEAT_MS
    assert net.restored["c"] == [a.snapshot]


# == Client interaction: ReadIndex (§8) =====================================================


def test_a_read_is_confirmed_by_a_quorum_heartbeat_round_at_the_commit_index() -> None:
    net = Network(ABC)
    a = net.elect("a")
    x = net.propose("a", b"x")
    net.cut("a", "c")  # b alone completes the quorum
    start = len(net.sent)
    a.read_index(1)
    net.deliver()  # the round goes out
    assert net.reads["a"] == []
    net.settle()
    assert net.reads["a"] == [(1, x)]
    rounds = messages_since(net, start, Heartbeat, "a")
    assert len(rounds) == 2 and rounds[0].read_seq == rounds[1].read_seq > 0


def test_a_read_needs_a_quorum_and_a_lost_round_is_completed_by_the_next_heartbeat() -> None:
    net = Network(ABC)
    a = net.elect("a")
    x = net.propose("a", b"x")
    net.isolate("a")
    a.read_index(7)
    net.settle()
    assert net.reads["a"] == []
    net.recover()
    net.tick(HEARTBEAT_MS)
    assert net.reads["a"] == [(7, x)]


def test_reads_of_one_turn_share_one_heartbeat_round() -> None:
    net = Network(ABC)
    a = net.elect("a")
    x = net.propose("a", b"x")
    start = len(net.sent)
    for context in (1, 2, 3):
        a.read_index(context)
    net.settle()
    assert net.reads["a"] == [(1, x), (2, x), (3, x)]
    assert len(messages_since(net, start, Heartbeat)) == 2


def test_reads_wait_until_a_new_leader_commits_an_entry_of_its_term() -> None:
    net = Network(ABC)
    a = net.elect("a")
    x = net.propose("a", b"x")
    b = net.nodes["b"]
    assert a.transfer_leadership("b")
    while not b.is_leader:
        net.deliver()
    noop = b.log.last_index
    stale = b.commit_index
    assert b.log.term(stale) != b.term  # nothing of its term is committed yet
    b.read_index(1)
    net.deliver()
    assert net.reads["b"] == []
    net.settle()
    assert net.reads["b"] == [(1, noop)]  # not the commit index it had when asked
    assert stale <= x < noop


def test_a_deposed_leader_does_not_confirm_reads() -> None:
    net = Network(ABC, config=RaftConfig(check_quorum=False))  # so it goes on believing
    a = net.elect("a")
    net.propose("a", b"x")
    net.isolate("a")
    net.elect("b")
    net.propose("b", b"y")  # a read served by a now would miss y
    assert a.is_leader
    a.read_index(1)
    net.run_for(3 * HEARTBEAT_MS)
    assert net.reads["a"] == []
    net.recover()
    net.run_for(3 * HEARTBEAT_MS)  # its heartbeats meet the new term
    assert not a.is_leader
    assert net.reads["a"] == []
    with pytest.raises(NotLeader):
        a.read_index(2)


def test_reads_and_proposals_on_a_follower_raise_not_leader_with_the_leader_hint() -> None:
    net = Network(ABC)
    net.elect("a")
    b = net.nodes["b"]
    with pytest.raises(NotLeader) as read:
        b.read_index(1)
    with pytest.raises(NotLeader) as proposal:
        b.propose(b"x")
    assert read.value.leader == proposal.value.leader == "a"
    with pytest.raises(NotLeader) as unknown:
        core("c").propose(b"x")
    assert unknown.value.leader is None


def test_a_single_node_cluster_confirms_reads_without_messages() -> None:
    a = core("a", ["a"])
    a.campaign()
    drain(a)  # the no-op is durable, hence committed
    drain(a)
    a.read_index(1)
    rd = a.ready()
    assert (rd.reads, rd.messages) == ([ReadState(1, 1)], [])


# == Leadership transfer ====================================================================


def test_a_transfer_to_a_caught_up_follower_is_immediate() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.propose("a", b"x")
    start = len(net.sent)
    assert a.transfer_leadership("c")
    net.settle()  # no time passes: nobody had to time out
    c = net.nodes["c"]
    assert net.leaders() == ["c"]
    assert (c.term, a.term, a.role) == (2, 2, Role.FOLLOWER)
    assert messages_since(net, start, TimeoutNow) == [TimeoutNow(1)]
    assert all(m.transfer for m in messages_since(net, start, VoteRequest, "c"))


def test_a_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = Network(ABC, config=RaftConfig(append_entries_max=2))  # catching up takes a few acks
    a = net.elect("a")
    net.crash("c")
    for n in range(5):
        net.propose("a", b"y%d" % n)
    net.restart("c")
    start = len(net.sent)
    assert a.transfer_leadership("c")
    c = net.nodes["c"]
    tick_until(net, lambda: c.is_leader, ELECTION_MS)
    events = [
        "timeout-now" if isinstance(m, TimeoutNow) else f"ack {m.index}"
        for src, dst, m in net.sent[start:]
        if ((src, dst) == ("a", "c") and isinstance(m, TimeoutNow))
        or ((src, dst) == ("c", "a") and isinstance(m, AppendReply) and m.success)
    ]
    assert events.count("timeout-now") == 1
    assert events.index("timeout-now") > events.index("ack 6")  # 6: a's last index
    assert net.data_applied("c")[:5] == [b"y%d" % n for n in range(5)]


def test_proposals_during_a_transfer_raise_busy() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    assert a.transfer_leadership("c")
    with pytest.raises(Busy):
        a.propose(b"x")


def test_a_transfer_to_a_dead_follower_is_abandoned_after_an_election_timeout() -> None:
    net = Network(ABC)
    a = net.elect("a")
    net.crash("c")
    assert a.transfer_leadership("c")
    net.run_for(ELECTION_MS - 10)
    with pytest.raises(Busy):
        a.propose(b"x")
    net.run_for(20)
    net.propose("a", b"x")
    assert (a.role, a.term) == (Role.LEADER, 1)


def test_a_transfer_is_refused_by_a_follower_to_itself_to_a_stranger_or_during_another() -> None:
    net = Network(ABC)
    a = net.elect("a")
    assert not net.nodes["b"].transfer_leadership("c")
    assert not a.transfer_leadership("a")
    assert not a.transfer_leadership("z")
    net.crash("c")
    assert a.transfer_leadership("c")
    assert not a.transfer_leadership("b")


# == Backpressure ===========================================================================


def test_proposals_beyond_uncommitted_entries_max_raise_busy() -> None:
    net = Network(ABC, config=RaftConfig(uncommitted_entries_max=5))
    a = net.elect("a")
    net.isolate("a")
    for n in range(5):
        a.propose(b"%d" % n)
    with pytest.raises(Busy):
        a.propose(b"one too many")
    net.recover()
    net.run_for(4 * HEARTBEAT_MS)
    assert a.commit_index == a.log.last_index
    a.propose(b"room again")


# == Everything at once =====================================================================


@pytest.mark.parametrize("disk_lag", [0, 1, 2])
@pytest.mark.parametrize("seed", [1, 2])
def test_nemesis_run_is_safe_then_converges(seed: int, disk_lag: int) -> None:
    """Partitions, crashes, compactions, transfers and reads at random (safety checked after
    every step), then heal: one leader, every log equal."""
    rng = random.Random(seed)
    ids = ["a", "b", "c", "d", "e"]
    net = Network(
        ids, seed=seed, disk_lag=disk_lag, config=RaftConfig(append_entries_max=3, inflight_messages_max=2)
    )
    proposed = 0
    for step in range(300):
        live = [i for i in ids if i not in net.down]
        roll = rng.random()
        if roll < 0.3:
            for i in net.leaders():
                try:
                    net.nodes[i].propose(b"v%d" % proposed)
                    proposed += 1
                except (NotLeader, Busy):
                    pass
        elif roll < 0.35:
            net.cut(*rng.sample(ids, 2))
        elif roll < 0.4:
            net.recover()
        elif roll < 0.43 and len(net.down) < 2:
            net.crash(rng.choice(live))
        elif roll < 0.48 and net.down:
            net.restart(rng.choice(sorted(net.down)))
        elif roll < 0.5:
            for i in live:
                node = net.nodes[i]
                if node.applying_index > node.log.base_index + 5:
                    node.compact(node.applying_index, b"snap", rng.choice([0, 2]))
        elif roll < 0.52 and net.leaders():
            net.nodes[net.leaders()[0]].transfer_leadership(rng.choice(ids))
        elif roll < 0.55 and net.leaders():
            net.nodes[net.leaders()[0]].read_index(step)
        net.tick(rng.choice([10, 20, 50]))
        net.check_safety()
    net.recover()
    for i in sorted(net.down):
        net.restart(i)
    net.run_for(10 * ELECTION_MS)
    net.check_safety()
    [leader] = net.leaders()
    lead = net.nodes[leader]
    assert proposed > 0
    assert all(net.nodes[i].log.last_index == lead.log.last_index for i in ids)
    assert all(net.nodes[i].commit_index == lead.commit_index for i in ids)
