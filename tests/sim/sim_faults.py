"""The nemesis: crashes, partitions and swizzle-clogs on a Poisson schedule drawn from the seed.

Crashes land at a chosen point of the node's write path: ``before_write`` (a turn's messages
are on the wire but its write, and every write still in flight, never reach the disk — the
dangerous window), ``after_write`` (a batch is durable, but nothing that waited for it was
sent), ``before_advance`` (after-persist messages out, core not told) or ``idle`` (right away).
A crash that would leave some group without a live majority is allowed only with
``majority_loss_probability``, and such a node comes back quickly.

A pause stops a node (turns and disk hand-backs) with its memory intact, for up to
``pause_ms_max``: when it resumes it acts on what it believed before.

Partitions cut sets of directed links: two halves, one isolated node (often a leader), or one
direction only (asymmetric). Swizzle-clog (FoundationDB's nemesis): pick some links, clog them
one by one, then unclog them one by one in a different random order.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from sim_config import SimConfig
from sim_network import Link

if TYPE_CHECKING:
    from simulator import Simulation

CRASH_POINTS = ("before_write", "after_write", "before_advance", "idle")


class Nemesis:
    def __init__(self, sim: Simulation, rng: random.Random, config: SimConfig) -> None:
        self._sim = sim
        self._rng = rng
        self._config = config
        self.active = False
        self._swizzling = False
        self.crashes = 0
        self.majority_losses = 0
        self.partitions = 0
        self.swizzles = 0
        self.pauses = 0
        self.paused: list[tuple[str, int, int]] = []  # (node, from ms, for ms), every pause

    def start(self) -> None:
        self.active = True
        cfg = self._config
        self._schedule(cfg.crash_probability_per_s, self._crash)
        self._schedule(cfg.pause_probability_per_s, self._pause)
        self._schedule(cfg.partition_probability_per_s, self._partition)
        self._schedule(cfg.clog_probability_per_s, self._swizzle)

    def stop(self) -> None:
        """No new faults; the simulator heals the network and restarts nodes itself."""
        self.active = False

    def _schedule(self, rate_per_s: float, fn: object) -> None:
        if rate_per_s <= 0:
            return
        delay_ms = max(1, round(self._rng.expovariate(rate_per_s) * 1000))
        self._sim.after(delay_ms, self._fire, rate_per_s, fn)

    def _fire(self, rate_per_s: float, fn: object) -> None:
        if not self.active:
            return
        fn()  # type: ignore[operator]
        self._schedule(rate_per_s, fn)

    # -- crashes ----------------------------------------------------------------------------

    def _crash(self) -> None:
        sim, cfg, rng = self._sim, self._config, self._rng
        candidates = [n for n in sim.node_ids if sim.is_up(n) and not sim.crash_pending(n)]
        if not candidates:
            return
        node = rng.choice(candidates)
        loses_majority = self._would_lose_majority(node)
        if loses_majority:
            if rng.random() >= cfg.majority_loss_probability:
                return
            self.majority_losses += 1
            down_ms = rng.randint(
                cfg.restart_delay_ms_min, max(cfg.restart_delay_ms_min, cfg.majority_loss_restart_ms_max)
            )
        else:
            down_ms = rng.randint(cfg.restart_delay_ms_min, cfg.restart_delay_ms_max)
        self.crashes += 1
        point = rng.choice(CRASH_POINTS)
        # Half the "before_write" crashes wait for a turn that writes log entries: a random turn
        # is mostly idle, and the window worth hitting is the one with acks and votes in it.
        sim.crash(node, point, down_ms, when_writing=point == "before_write" and rng.random() < 0.5)

    def _would_lose_majority(self, node: str) -> bool:
        """Would a group's voters — as the node itself has them (they change with the
        membership), else the placement's — be left without a live majority?"""
        sim = self._sim
        core = sim.nodes[node].core
        for gid in range(sim.config.shard_count + 1):
            g = core.groups.get(gid) if core is not None else None
            if g is not None and g.raft.conf.voters:
                replicas: tuple[str, ...] = g.raft.conf.voters
            elif node in sim.placement.nodes and node in sim.placement.replicas(gid):
                replicas = sim.placement.replicas(gid)
            else:
                continue
            if node not in replicas:
                continue
            live = sum(1 for r in replicas if r != node and sim.is_up(r) and not sim.crash_pending(r))
            if live < len(replicas) // 2 + 1:
                return True
        return False

    # -- pauses -----------------------------------------------------------------------------

    def _pause(self) -> None:
        sim, cfg, rng = self._sim, self._config, self._rng
        candidates = [n for n in sim.node_ids if sim.is_up(n)]
        if candidates:
            self.pauses += 1
            node = rng.choice(candidates)
            pause_ms = rng.randint(cfg.pause_ms_min, cfg.pause_ms_max)
            self.paused.append((node, sim.now, pause_ms))
            sim.pause(node, pause_ms)

    # -- partitions -------------------------------------------------------------------------

    def _partition(self) -> None:
        sim, cfg, rng = self._sim, self._config, self._rng
        nodes = list(sim.node_ids)
        rng.shuffle(nodes)
        kind = rng.choice(("halves", "isolate", "isolate_leader", "asymmetric"))
        leaders = [n for n in (sim.leader_of(g) for g in range(cfg.shard_count + 1)) if n is not None]
        if kind == "isolate_leader" and leaders:
            # Jepsen's favourite: cut off a leader, so it may go on believing it leads.
            leader = rng.choice(leaders)
            side_a, side_b = [leader], [n for n in nodes if n != leader]
        elif kind in ("isolate", "isolate_leader"):
            side_a, side_b = nodes[:1], nodes[1:]
        else:
            split = rng.randint(1, len(nodes) - 1)
            side_a, side_b = nodes[:split], nodes[split:]
        links: list[Link] = [(a, b) for a in side_a for b in side_b]
        if kind != "asymmetric":
            links += [(b, a) for a, b in links]
        sim.network.cut(links)
        self.partitions += 1
        duration_ms = rng.randint(cfg.partition_duration_ms_min, cfg.partition_duration_ms_max)
        sim.after(duration_ms, sim.network.heal, links)

    # -- swizzle-clog -----------------------------------------------------------------------

    def _swizzle(self) -> None:
        if self._swizzling:
            return
        sim, cfg, rng = self._sim, self._config, self._rng
        pairs = [(a, b) for i, a in enumerate(sim.node_ids) for b in sim.node_ids[i + 1 :]]
        chosen = rng.sample(pairs, rng.randint(1, min(cfg.clog_links_max, len(pairs))))
        self._swizzling = True
        self.swizzles += 1
        at_ms = 0
        for pair in chosen:
            at_ms += rng.randint(1, cfg.clog_step_ms_max)
            sim.after(at_ms, self._set_clog, pair, True)
        rng.shuffle(chosen)
        at_ms += rng.randint(cfg.clog_step_ms_max, 4 * cfg.clog_step_ms_max)
        for pair in chosen:
            at_ms += rng.randint(1, cfg.clog_step_ms_max)
            sim.after(at_ms, self._set_clog, pair, False)
        sim.after(at_ms + 1, self._swizzle_done)

    def _set_clog(self, pair: tuple[str, str], clogged: bool) -> None:
        network = self._sim.network
        a, b = pair
        for link in ((a, b), (b, a)):
            if clogged and self.active:
                network.clog(link)
            elif not clogged:
                network.unclog(link)

    def _swizzle_done(self) -> None:
        self._swizzling = False
