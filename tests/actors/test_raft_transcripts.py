"""Raft scenarios as text transcripts (etcd's interaction_test / datadriven style).

Each file in ``transcripts/`` is a list of blocks::

    # optional comment lines
    command args
    ----
    the output the command printed

separated by blank lines. The test replays every command on a fresh in-memory network and
compares what it prints with what is recorded. ``SYNCFAB_REWRITE=1 pytest
tests/actors/test_raft_transcripts.py`` rewrites the outputs instead (review the diff!).

Commands (node ids are any words; times in ms):

    nodes a b c [seed=N] [disk_lag=N] [<RaftConfig field>=N ...]   start a cluster
    campaign a          a starts an election, then the network settles
    propose a x y       a proposes the bytes "x", then "y" in the same turn; the network settles
    read a 1            a asks for a ReadIndex read with context 1, then the network settles
    transfer a c        a hands leadership to c, then the network settles
    compact a 5 [keep]  a snapshots its state machine at applied index 5, keeping ``keep`` entries
    settle              deliver until nothing is left to say
    tick 600            let 600 ms pass in 10 ms steps, delivering as it goes
    cut a b | isolate c | recover      break one link, every link of a node, heal all
    drop a b app        lose the next message of a kind (app, app-ok, hb, snap, vote...) a -> b
    crash b | restart b                lose b's memory (and its disk writes in flight) / boot it
    join d              start d with an empty disk and no membership (a node being added)
    conf a voters=a,b,c,d [learners=e] a proposes that membership (actors/raft_conf.py's rules)
    status              one line per node (and the leader's view of each follower)
    log b               b's log and its marks

Output: every message delivered (or lost, and why) in order, ``@<time>ms`` when time has passed,
and ``*`` lines for what nodes did: role and term changes, entries applied, snapshots restored,
reads confirmed, and (with ``disk_lag``) writes completed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import transcript_format
from raft_network import Delivery, Network
from transcript_format import check_file, parse, render

from syncfab.actors.messages import (
    AppendEntries,
    AppendReply,
    Entry,
    Heartbeat,
    HeartbeatReply,
    InstallSnapshot,
    Membership,
    RaftMessage,
    TimeoutNow,
    VoteReply,
    VoteRequest,
)
from syncfab.actors.raft import Busy, NotLeader, RaftConfig, RaftCore, Role
from syncfab.actors.raft_conf import membership

TRANSCRIPTS = Path(__file__).parent / "transcripts"
TICK_STEP_MS = 10
ENTRIES_SHOWN_MAX = 4


# -- formatting ---------------------------------------------------------------------------


def fmt_data(data: bytes) -> str:
    if not data:
        return "noop"
    text = data.decode("ascii", "replace")
    return text if text.isprintable() and " " not in text else repr(data)


def fmt_entry(e: Entry) -> str:
    if e.conf is not None:
        return f"{e.index}@{e.term} conf {fmt_conf(e.conf)}"
    return f"{e.index}@{e.term} {fmt_data(e.data)}"


def fmt_conf(conf: Membership) -> str:
    learners = f" learners={','.join(conf.learners)}" if conf.learners else ""
    return f"voters={','.join(conf.voters) or '-'}{learners}"


def fmt_entries(entries: list[Entry]) -> str:
    if len(entries) <= ENTRIES_SHOWN_MAX:
        return "[" + ", ".join(fmt_entry(e) for e in entries) + "]"
    return f"[{fmt_entry(entries[0])} ... {fmt_entry(entries[-1])}] ({len(entries)} entries)"


def kind(msg: RaftMessage) -> str:
    match msg:
        case AppendEntries():
            return "app"
        case AppendReply(success=True):
            return "app-ok"
        case AppendReply():
            return "app-no"
        case Heartbeat():
            return "hb"
        case HeartbeatReply():
            return "hb-ok"
        case VoteRequest(pre_vote=True):
            return "prevote"
        case VoteRequest():
            return "vote"
        case VoteReply(pre_vote=True, granted=True):
            return "prevote-ok"
        case VoteReply(pre_vote=True):
            return "prevote-no"
        case VoteReply(granted=True):
            return "vote-ok"
        case VoteReply():
            return "vote-no"
        case InstallSnapshot():
            return "snap"
        case TimeoutNow():
            return "timeout-now"
    raise AssertionError(f"unknown message {msg!r}")


def fmt_message(msg: RaftMessage) -> str:
    head = f"{kind(msg)} t{msg.term}"
    match msg:
        case AppendEntries():
            body = f" prev={msg.prev_index}@{msg.prev_term} commit={msg.commit} {fmt_entries(msg.entries)}"
        case AppendReply(success=True):
            body = f" index={msg.index}"
        case AppendReply():
            body = f" index={msg.index} hint={msg.hint}"
        case Heartbeat():
            body = f" commit={msg.commit} read={msg.read_seq}"
        case HeartbeatReply():
            body = f" read={msg.read_seq}"
        case VoteRequest():
            body = f" last={msg.last_index}@{msg.last_term}" + (" transfer" if msg.transfer else "")
        case InstallSnapshot():
            s = msg.snapshot
            body = f" {s.index}@{s.term} {fmt_data(s.data)}"
        case _:
            body = ""
    return head + body


def fmt_delivery(d: Delivery) -> str:
    lost = f"  (lost: {d.dropped})" if d.dropped else ""
    return f"{d.src}->{d.dst} {fmt_message(d.msg)}{lost}"


def fmt_role(node: RaftCore) -> str:
    text = f"{node.role.value} t{node.term}"
    if node.role is Role.FOLLOWER and node.leader is not None:
        text += f", leader {node.leader}"
    if not node.is_voter:  # only once memberships change: the other transcripts never show it
        text += ", removed" if node.removed else ", learner" if node.id in node.conf.learners else ", no vote"
    return text


# -- the traced network -------------------------------------------------------------------


class TracedNetwork(Network):
    """A Network that narrates: after each delivery round, what was applied, what was
    delivered, and who changed role."""

    def __init__(self, ids: list[str], *, seed: int, config: RaftConfig, disk_lag: int) -> None:
        self.lines: list[str] = []
        self._roles: dict[str, str] = {}
        self._applied_seen: dict[str, int] = {i: 0 for i in ids}
        self._restored_seen: dict[str, int] = {i: 0 for i in ids}
        self._reads_seen: dict[str, int] = {i: 0 for i in ids}
        self._deliveries_seen = 0
        self._time_shown = 0
        super().__init__(ids, seed=seed, config=config, disk_lag=disk_lag)
        self._roles = {i: fmt_role(n) for i, n in self.nodes.items()}

    def say(self, line: str) -> None:
        if self.now != self._time_shown:
            self._time_shown = self.now
            self.lines.append(f"@{self.now}ms")
        self.lines.append(line)

    def take_lines(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines

    def deliver(self) -> int:
        self.note_roles()
        n = super().deliver()
        self.note_outputs()
        self.note_deliveries()
        self.note_roles()
        return n

    def complete_write(self, node_id: str) -> None:
        persist = self.writing[node_id][0].persist
        super().complete_write(node_id)
        if self.disk_lag and persist:  # with an instant disk this would be noise
            parts = []
            if persist.entries:
                parts.append(f"entries {persist.entries[0].index}..{persist.entries[-1].index}")
            if persist.hard_state is not None:
                hs = persist.hard_state
                parts.append(f"term {hs.term} vote {hs.vote} commit {hs.commit}")
            if persist.snapshot is not None:
                parts.append(f"snapshot {persist.snapshot.index}")
            self.say(f"* {node_id} wrote " + (", ".join(parts) or "a truncation"))

    def join(self, node_id: str) -> RaftCore:
        for seen in (self._applied_seen, self._restored_seen, self._reads_seen):
            seen[node_id] = 0
        node = super().join(node_id)
        self._roles[node_id] = fmt_role(node)
        self.say(f"* {node_id} joined, empty: {fmt_role(node)}")
        return node

    def crash(self, node_id: str) -> None:
        super().crash(node_id)
        self.note_deliveries()
        self._roles[node_id] = "down"
        self.say(f"* {node_id} crashed")

    def restart(self, node_id: str) -> None:
        super().restart(node_id)
        self._applied_seen[node_id] = 0
        node = self.nodes[node_id]
        self._roles[node_id] = fmt_role(node)
        self.say(
            f"* {node_id} restarted: {fmt_role(node)} vote={node.vote} commit={node.commit_index} "
            f"log={fmt_span(node)}"
        )

    def note_roles(self) -> None:
        for i in self.ids:
            if i in self.down:
                continue
            now = fmt_role(self.nodes[i])
            if self._roles.get(i) != now:
                self._roles[i] = now
                self.say(f"* {i} {now}")

    def note_outputs(self) -> None:
        for i in self.ids:
            restored = self.restored[i][self._restored_seen[i] :]
            self._restored_seen[i] = len(self.restored[i])
            for s in restored:
                self.say(f"* {i} restored snapshot {s.index}@{s.term} {fmt_data(s.data)}")
            applied = self.applied[i]
            if self._applied_seen[i] > len(applied):  # a restore trimmed what was applied
                self._applied_seen[i] = len(applied)
            new = applied[self._applied_seen[i] :]
            self._applied_seen[i] = len(applied)
            if new:
                self.say(f"* {i} applied {fmt_entries(new)}")
            reads = self.reads[i][self._reads_seen[i] :]
            self._reads_seen[i] = len(self.reads[i])
            for context, index in reads:
                self.say(f"* {i} read {context} ready at index {index}")

    def note_deliveries(self) -> None:
        for d in self.deliveries[self._deliveries_seen :]:
            self.say(fmt_delivery(d))
        self._deliveries_seen = len(self.deliveries)


def fmt_span(node: RaftCore) -> str:
    log = node.log
    if not log.entries:
        return f"(empty after {log.base_index}@{log.base_term})"
    return f"{log.entries[0].index}..{log.last_index}@{log.last_term}"


# -- the interpreter ----------------------------------------------------------------------

CONFIG_FIELDS = {f.name for f in dataclasses.fields(RaftConfig)}


class Scenario:
    def __init__(self) -> None:
        self.net: TracedNetwork | None = None
        self.drops: list[tuple[str, str, str]] = []

    def run(self, command: str) -> list[str]:
        name, *args = command.split()
        if name == "nodes":
            return self.cmd_nodes(args)
        net = self.net
        assert net is not None, "a transcript starts with `nodes`"
        handler = getattr(self, f"cmd_{name}", None)
        assert handler is not None, f"unknown command {name!r}"
        out: list[str] = handler(net, *args)
        return out + net.take_lines()

    def cmd_nodes(self, args: list[str]) -> list[str]:
        ids = [a for a in args if "=" not in a]
        opts = dict(a.split("=", 1) for a in args if "=" in a)
        seed = int(opts.pop("seed", "0"))
        disk_lag = int(opts.pop("disk_lag", "0"))
        overrides: dict[str, Any] = {}
        for key, value in opts.items():
            assert key in CONFIG_FIELDS, f"no RaftConfig field {key!r}"
            overrides[key] = value == "true" if value in ("true", "false") else int(value)
        config = RaftConfig(**overrides)
        self.net = TracedNetwork(ids, seed=seed, disk_lag=disk_lag, config=config)
        self.net.hook = self.hook
        return ["ok"]

    def hook(self, src: str, dst: str, msg: RaftMessage) -> bool:
        for n, (s, d, k) in enumerate(self.drops):
            if (s, d) == (src, dst) and kind(msg) == k:
                del self.drops[n]
                return False
        return True

    def cmd_settle(self, net: TracedNetwork) -> list[str]:
        net.settle()
        return []

    def cmd_tick(self, net: TracedNetwork, ms: str) -> list[str]:
        for _ in range(int(ms) // TICK_STEP_MS):
            net.tick(TICK_STEP_MS)
        return []

    def cmd_campaign(self, net: TracedNetwork, node: str) -> list[str]:
        net.nodes[node].campaign()
        net.settle()
        return []

    def cmd_propose(self, net: TracedNetwork, node: str, *data: str) -> list[str]:
        out = []
        for d in data:  # all in one turn
            try:
                index = net.nodes[node].propose(d.encode())
            except (NotLeader, Busy) as e:
                out.append(f"error: {fmt_error(e)}")
                break
            net.say(f"{node} proposes {d} at index {index}")
        net.settle()
        return out

    def cmd_join(self, net: TracedNetwork, node: str) -> list[str]:
        net.join(node)
        return []

    def cmd_conf(self, net: TracedNetwork, node: str, *args: str) -> list[str]:
        """``conf a voters=a,b,c learners=d``: propose that membership at ``a``."""
        opts = dict(a.split("=", 1) for a in args)
        conf = membership(
            opts.get("voters", "").split(","), filter(None, opts.get("learners", "").split(","))
        )
        try:
            index = net.nodes[node].propose_conf(conf)
        except (NotLeader, Busy, ValueError) as e:
            return [f"error: {fmt_error(e)}"]
        net.say(f"{node} proposes {fmt_conf(conf)} at index {index}")
        net.settle()
        return []

    def cmd_read(self, net: TracedNetwork, node: str, context: str) -> list[str]:
        try:
            net.nodes[node].read_index(int(context))
        except NotLeader as e:
            return [f"error: {fmt_error(e)}"]
        net.settle()
        return []

    def cmd_transfer(self, net: TracedNetwork, node: str, target: str) -> list[str]:
        if not net.nodes[node].transfer_leadership(target):
            return ["refused"]
        net.settle()
        return []

    def cmd_compact(self, net: TracedNetwork, node: str, index: str, keep: str = "0") -> list[str]:
        n = net.nodes[node]
        state = ",".join(e.data.decode() for e in net.applied[node] if e.data and e.index <= int(index))
        n.compact(int(index), f"state[{state}]".encode(), int(keep))
        net.settle()
        return [f"{node} log now {fmt_span(n)}, snapshot {int(index)}@{n.snapshot.term if n.snapshot else 0}"]

    def cmd_cut(self, net: TracedNetwork, a: str, b: str) -> list[str]:
        net.cut(a, b)
        return ["ok"]

    def cmd_isolate(self, net: TracedNetwork, node: str) -> list[str]:
        net.isolate(node)
        return ["ok"]

    def cmd_recover(self, net: TracedNetwork) -> list[str]:
        net.recover()
        return ["ok"]

    def cmd_drop(self, net: TracedNetwork, src: str, dst: str, what: str) -> list[str]:
        self.drops.append((src, dst, what))
        return ["ok"]

    def cmd_crash(self, net: TracedNetwork, node: str) -> list[str]:
        net.crash(node)
        return []

    def cmd_restart(self, net: TracedNetwork, node: str) -> list[str]:
        net.restart(node)
        return []

    def cmd_status(self, net: TracedNetwork) -> list[str]:
        out = []
        for i in net.ids:
            if i in net.down:
                out.append(f"{i}: down")
                continue
            n = net.nodes[i]
            out.append(
                f"{i}: {fmt_role(n)} vote={n.vote} commit={n.commit_index} "
                f"applied={n.applying_index} log={fmt_span(n)}"
            )
            for peer, pr in sorted(n.progress.items()):
                out.append(f"  {peer}: match={pr.match} next={pr.next} {pr.flow.value}")
        return out

    def cmd_log(self, net: TracedNetwork, node: str) -> list[str]:
        n = net.nodes[node]
        log = n.log
        snap = n.snapshot
        out = [
            f"{node}: base={log.base_index}@{log.base_term} committed={log.committed} "
            f"applied={log.applied} stable={log.stable}"
            + (f" snapshot={snap.index}@{snap.term} {fmt_data(snap.data)}" if snap else "")
        ]
        out += [f"  {fmt_entry(e)}" for e in log.entries]
        return out


def fmt_error(e: Exception) -> str:
    if isinstance(e, NotLeader):
        return f"NotLeader (leader: {e.leader})"
    return f"{type(e).__name__} ({e})"


def replay(text: str) -> str:
    return transcript_format.replay(text, Scenario().run)


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(TRANSCRIPTS.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    check_file(path, Scenario().run)


def test_there_are_transcripts() -> None:
    assert len(list(TRANSCRIPTS.glob("*.txt"))) >= 6


def test_parse_and_render_round_trip() -> None:
    text = "# a comment\nnodes a b\n----\nok\n\n# two\n# lines\nsettle\n----\nx\ny\n"
    blocks = parse(text)
    assert [(b.comments, b.command, b.output) for b in blocks] == [
        (["# a comment"], "nodes a b", ["ok"]),
        (["# two", "# lines"], "settle", ["x", "y"]),
    ]
    assert render(blocks) == text


def test_a_replay_notices_a_changed_output() -> None:
    text = "nodes a\n----\nok\n\ncampaign a\n----\nsomething else\n"
    assert replay(text) != text
    assert "* a leader t1" in replay(text)
