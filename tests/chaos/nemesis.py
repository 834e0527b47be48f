"""Nemeses: faults that a chaos round starts, holds for a while and then heals.

Each is a class with ``start(cluster, rng) -> str`` (what it did, for the schedule) and
``heal(cluster) -> str``; every random choice comes from the round's seeded ``rng``. A
``Schedule`` records each step with its time, so a failure can say what happened when.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from .cluster import ChaosCluster, FakeClock
from .netns import PEER_PORT

PUB_PORT = PEER_PORT + 1
RELAY_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "relay.py")


@dataclass
class Schedule:
    started_mono: float = field(default_factory=time.monotonic)
    steps: list[tuple[float, str]] = field(default_factory=list)

    def note(self, what: str) -> None:
        self.steps.append((round(time.monotonic() - self.started_mono, 3), what))

    def lines(self) -> list[str]:
        return [f"{t:8.3f}s {what}" for t, what in self.steps]


class Nemesis:
    name = "none"
    kills = False  # True: a node dies without a clean shutdown (write_back's documented loss)

    def start(self, c: ChaosCluster, rng: random.Random) -> str:
        raise NotImplementedError

    def heal(self, c: ChaosCluster) -> str:
        raise NotImplementedError


def _pick(rng: random.Random, nodes: list[str]) -> str:
    return rng.choice(sorted(nodes))


class KillRestart(Nemesis):
    """kill -9 of a node (random, the control leader, or a shard's leader), restarted at heal."""

    kills = True

    def __init__(self, target: str) -> None:
        self.target = target  # "random" | "control-leader" | "shard-leader"
        self.name = {"random": "kill-random", "control-leader": "kill-control-leader"}.get(
            target, "kill-shard-leader"
        )
        self.victim = ""

    def start(self, c: ChaosCluster, rng: random.Random) -> str:
        why = "random"
        if self.target == "control-leader":
            self.victim, why = c.control_leader() or _pick(rng, c.running()), "control leader"
        elif self.target == "shard-leader":
            control = c.control_leader()
            leaders = c.shard_leaders()
            # A shard whose leader is not the control leader, when there is one: this nemesis is
            # about a data group losing its leader while group 0 stays put.
            candidates = sorted(s for s, n in leaders.items() if n != control) or sorted(leaders)
            shard = rng.choice(candidates) if candidates else None
            self.victim = leaders[shard] if shard is not None else _pick(rng, c.running())
            why = f"leader of shard {shard}"
        else:
            self.victim = _pick(rng, c.running())
        c.kill(self.victim)
        return f"kill -9 {self.victim} ({why})"

    def heal(self, c: ChaosCluster) -> str:
        c.start(self.victim)
        return f"restart {self.victim}"


class Partition(Nemesis):
    """Cut links between nodes. ``kind``: "majority" (one node alone against the others),
    "isolate-leader" (the control leader alone), "bridge" (two nodes cannot see each other,
    the third sees both: each side sees a different majority)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = {"majority": "partition-majority", "isolate-leader": "isolate-leader"}.get(kind, "bridge")

    def start(self, c: ChaosCluster, rng: random.Random) -> str:
        nodes = c.ids
        if self.kind == "bridge":
            middle = _pick(rng, nodes)
            a, b = (n for n in nodes if n != middle)
            c.net.cut(a, b)
            return f"bridge: {a} x {b}, {middle} sees both"
        alone = (
            (c.control_leader() or _pick(rng, nodes)) if self.kind == "isolate-leader" else _pick(rng, nodes)
        )
        rest = [n for n in nodes if n != alone]
        for other in rest:
            c.net.cut(alone, other)
        return f"partition: {{{alone}}} | {{{','.join(rest)}}}"

    def heal(self, c: ChaosCluster) -> str:
        c.net.heal()
        return "heal network"


class InboundLoss(Nemesis):
    """A node that sends but does not hear its peers (``probability`` 1), or packet loss on
    every node's inbound peer traffic (iptables ``statistic``)."""

    def __init__(self, probability: float, everywhere: bool) -> None:
        self.probability, self.everywhere = probability, everywhere
        self.name = "packet-loss" if everywhere else "one-way"

    def start(self, c: ChaosCluster, rng: random.Random) -> str:
        if self.everywhere:
            for n in c.ids:
                c.net.drop_inbound(n, self.probability)
            return f"drop {self.probability:.0%} of inbound peer packets on every node"
        node = c.control_leader() if rng.random() < 0.5 else None
        node = node or _pick(rng, c.ids)
        c.net.drop_inbound(node)
        return f"one-way: {node} sends but hears no peer"

    def heal(self, c: ChaosCluster) -> str:
        c.net.heal()
        return "heal network"


class Pause(Nemesis):
    """SIGSTOP a node (the control leader half the time) for longer than its leases and the
    election timeout (the round's fault time), then SIGCONT."""

    name = "pause"

    def start(self, c: ChaosCluster, rng: random.Random) -> str:
        lead = c.control_leader()
        self.victim = lead if lead and rng.random() < 0.5 else _pick(rng, c.running())
        c.pause(self.victim)
        return f"SIGSTOP {self.victim}" + (" (control leader)" if self.victim == lead else "")

    def heal(self, c: ChaosCluster) -> str:
        c.resume(self.victim)
        return f"SIGCONT {self.victim}"


class Clock(Nemesis):
    """Restart one node under faketime, then move the control group's leadership to it (pause
    the current leader for a few election timeouts, up to ``nudges_max`` times) so its clock
    decides: leader-stamped times are lock leases, queue visibility and cache ttl. Heal
    restarts it on true time."""

    kills = True  # it restarts the node with kill -9, twice

    def __init__(self, clock: FakeClock, name: str, nudges_max: int = 4, nudge_s: float = 1.5) -> None:
        self.clock, self.name = clock, name
        self.nudges_max, self.nudge_s = nudges_max, nudge_s

    def start(self, c: ChaosCluster, rng: random.Random) -> str:
        self.victim = _pick(rng, c.ids)
        c.kill(self.victim)
        c.start(self.victim, self.clock)
        c.wait_ready()
        nudges = 0
        while c.control_leader() != self.victim and nudges < self.nudges_max:
            lead = c.control_leader()
            if lead is None:
                c.wait_ready()
                continue
            c.pause(lead)
            time.sleep(self.nudge_s)  # the fault: the leader silent for 3 election timeouts
            c.resume(lead)
            c.wait_ready()
            nudges += 1
        lead = c.control_leader()
        clock = f"faketime -f '{self.clock.spec}' on {self.victim} (wall_only={self.clock.wall_only})"
        return f"{clock}; control leader {lead} after {nudges} nudges"

    def heal(self, c: ChaosCluster) -> str:
        c.kill(self.victim)
        c.start(self.victim)
        return f"restart {self.victim} on true time"


class Delay(Nemesis):
    """Every peer connection through a user-space relay holding each chunk ``delay_ms`` plus
    up to ``jitter_ms`` (order kept): iptables DNAT in each node's namespace sends new
    connections to the relay and resets the open ones. Heal removes the rules, then kills the
    relay, which closes what it carried, and the nodes reconnect directly."""

    name = "delay"

    def __init__(self, delay_ms: int, jitter_ms: int) -> None:
        self.delay_ms, self.jitter_ms = delay_ms, jitter_ms
        self.relay: subprocess.Popen[str] | None = None

    def start(self, c: ChaosCluster, rng: random.Random) -> str:
        targets = [f"{c.net.ips[n]}:{p}" for n in c.ids for p in (PEER_PORT, PUB_PORT)]
        cmd = [sys.executable, RELAY_SCRIPT, "--seed", str(rng.getrandbits(32)), "--listen", c.net.host_ip]
        cmd += ["--delay-ms", str(self.delay_ms), "--jitter-ms", str(self.jitter_ms)]
        for t in targets:
            cmd += ["--target", t]
        self.relay = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        assert self.relay.stdout is not None
        line = self.relay.stdout.readline()  # the relay prints its ports once it listens
        if not line:
            raise RuntimeError(f"delay relay exited with {self.relay.wait()}")
        ports = json.loads(line)
        for node in c.ids:
            for peer in c.ids:
                if peer != node:
                    for port in (PEER_PORT, PUB_PORT):
                        c.net.redirect(node, peer, port, ports[f"{c.net.ips[peer]}:{port}"])
        return f"delay every peer link {self.delay_ms}+U(0,{self.jitter_ms}) ms (relay pid {self.relay.pid})"

    def heal(self, c: ChaosCluster) -> str:
        c.net.heal()
        if self.relay is not None:
            self.relay.send_signal(signal.SIGKILL)
            self.relay.wait()
            self.relay = None
        return "heal network, relay killed"


def every_nemesis() -> list[Nemesis]:
    """One of each, in the order the suite runs them."""
    return [
        KillRestart("random"),
        KillRestart("control-leader"),
        KillRestart("shard-leader"),
        Partition("majority"),
        Partition("isolate-leader"),
        Partition("bridge"),
        InboundLoss(1.0, everywhere=False),
        InboundLoss(0.2, everywhere=True),
        Pause(),
        Delay(delay_ms=40, jitter_ms=60),
        Clock(FakeClock("+8s", wall_only=True), "clock-skew"),
        Clock(FakeClock("x1.5", wall_only=False), "fast-clock"),
    ]
