"""A whole syncfab cluster in one thread, on simulated time, driven by one seed.

The nodes are the real, unchanged ``NodeCore``; the simulator only replaces what the runtime
owns — the network (``SimNetwork``), the disk (one ``MemoryLogStore`` per node, which keeps what
was written and nothing else) and the clock (an event queue of ``(time_ms, seq, fn, args)``).
A node's turn does what ``NodeRuntime`` does, in its order:

    flush = core.turn(now)          # decide
    send flush.sends                # entries leave at once
    queue flush for the disk writer # writes are pipelined: turns go on while a batch syncs
    applied = core.apply()          # apply what is committed
    send applied.sends, flush.replies + applied.replies, flush.publishes
    ... when its batch is synced (one write, one fsync for every queued turn), in turn order:
    send flush.sends_after_persist  # only after the write
    core.advance(flush)

and a crash can land between any two of those steps. Peer batches and client requests cross the
network as bytes through the real codec. Each node has a monotonic clock (timers; it may drift)
and a wall clock a few to ~100 ms off real time (what a leader stamps into entries: the only time
lock leases and visibility deadlines see). After every turn ``InvariantChecker`` checks Raft's
safety properties and ``ServiceChecker`` the lock table's and queues' own. Then a liveness phase
heals everything and the cluster must converge; the KV clients' history must be linearizable,
every lock client must finish and leave the table empty, the queue must drain.

Workloads (sim_workloads.py): per seed some of kv (sim_clients.py), locks (sim_locks.py) and
queues (sim_queues.py) and cache (sim_cache.py), every client a driver of the ClientCore the
native client ships (sim_rpc.py): ids, routing, retries and coalescing are the real client's.

Replay a seed from a REPL (from tests/sim): ``run_simulation(17)`` or, to narrow a regime down,
``run_simulation(17, packet_loss_probability=0.0)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Iterator
from typing import Any

from linearizability import Operation, check_kv_history
from sim_clients import SimClient
from sim_clock import SimClock, SimulationFailure, failure_prefix
from sim_config import SimConfig, choose_config
from sim_faults import Nemesis
from sim_invariants import InvariantChecker
from sim_members import MembershipChanges
from sim_network import SimNetwork
from sim_service_invariants import ServiceChecker
from sim_types import Endpoint, SimNode, SimReport
from sim_workloads import Workloads, choose_workloads

from syncfab.actors.raft import Role
from syncfab.actors.raft_conf import membership
from syncfab.actors.ring import CONTROL_GROUP, ShardPlacement
from syncfab.fabric.core.codec import PeerBatch, PeerMessage, Reply, Request, decode_inbound, encode
from syncfab.fabric.core.node import Flush, NodeCore
from syncfab.storage.memory_store import MemoryLogStore

# fabric/server/runtime.py's backpressure: past this many unsynced turns only the timer runs turns.
# (Not imported: the runtime module pulls in zmq and lmdb, which the simulation replaces.)
WRITES_IN_FLIGHT_MAX = 64
# A crash aimed at a point of the write path lands idle if the node gets there this late.
CRASH_LANDING_MS_MAX = 200
LIVENESS_POLL_MS = 50
WALL_EPOCH_MS = 1_700_000_000_000  # wall clocks read like real ones (the monotonic ones do not)


class Simulation(SimClock):
    def __init__(self, seed: int, config: SimConfig | None = None, **overrides: Any) -> None:
        master = random.Random(seed)
        # Each concern draws from its own stream, so overriding one knob (or adding a client)
        # does not reshuffle every other decision of the seed.
        streams = [random.Random(master.getrandbits(64)) for _ in range(6)]
        config_rng, self._net_rng, fault_rng, client_rng, self._node_rng, self._sched_rng = streams
        # Drawn after the first six, so adding them left every earlier stream as it was.
        workload_rng, wall_rng = random.Random(master.getrandbits(64)), random.Random(master.getrandbits(64))
        if config is None:
            config = dataclasses.replace(choose_config(config_rng), **choose_workloads(workload_rng))
        cfg = dataclasses.replace(config, **overrides) if overrides else config
        super().__init__(seed, cfg)
        self._trace = hashlib.blake2b(digest_size=16)
        self.turns = 0
        self.node_ids = [f"n{i}" for i in range(1, cfg.node_count + 1)]
        self.members = {n: f"{n}:7101" for n in self.node_ids}  # addresses no one dials
        self.bootstrap = self.node_ids[: cfg.node_count - cfg.joining]
        self.node_config = cfg.node_config()
        self.placement = ShardPlacement.build(self.bootstrap, cfg.shard_count, cfg.replication, cfg.vnodes)
        self.network = SimNetwork(self._net_rng, cfg, self.after, lambda: self.now)
        self.checker = InvariantChecker(self.fail)
        self.services = ServiceChecker(self.fail, self._live_replicas)
        self.nemesis = Nemesis(self, fault_rng, cfg)
        self.nodes = {n: SimNode(n, MemoryLogStore()) for n in self.node_ids}
        for node in self.nodes.values():
            node.clock_offset_ms = self._sched_rng.randint(0, 1 << 40)
            node.clock_rate = 1.0 + self._sched_rng.uniform(-cfg.clock_drift_max, cfg.clock_drift_max)
            node.wall_skew_ms = wall_rng.randint(-cfg.wall_skew_ms_max, cfg.wall_skew_ms_max)
        self._clients_by_route: dict[bytes, Endpoint] = {}  # every client adds itself (add_endpoint)
        self.clients = [
            SimClient(i, self, random.Random(client_rng.getrandbits(64)), cfg)
            for i in range(cfg.client_count if "kv" in cfg.workloads else 0)
        ]
        self.workloads = Workloads(self, workload_rng)
        self.membership = MembershipChanges(self) if cfg.joining else None
        for node in self.nodes.values():
            self._start(node)

    # -- nodes ------------------------------------------------------------------------------

    def is_up(self, node: str) -> bool:
        return self.nodes[node].core is not None

    def crash_pending(self, node: str) -> bool:
        return self.nodes[node].crash_point is not None

    def core(self, node: str) -> NodeCore:
        core = self.nodes[node].core
        assert core is not None, f"{node} is down"
        return core

    def _start(self, node: SimNode) -> None:
        stored = {g: node.disk.load(g) for g in node.disk.groups()}
        joins = node.id not in self.bootstrap
        # What its --peers would say: a joining node knows the cluster, the cluster not it.
        told = self.members if joins else {n: self.members[n] for n in self.bootstrap}
        node.core = NodeCore(
            node.id,
            told,
            stored=stored,
            now_ms=self.local_ms(node),
            rng=random.Random(self._node_rng.getrandbits(64)),
            config=self.node_config,
            bootstrap=() if joins else self.bootstrap,
        )
        node.epoch += 1
        node.crash_point = None
        self.checker.node_started(node.id, node.core)
        self._wake(node, self.now + self._sched_rng.randint(0, self.config.tick_interval_ms_max))

    def crash(self, node_id: str, point: str, down_ms: int, *, when_writing: bool = False) -> None:
        """Crash ``node_id`` at ``point`` (see sim_faults.CRASH_POINTS): now for ``idle``, else when
        the node next gets there — with ``when_writing``, at its next turn that writes log entries.
        It restarts ``down_ms`` later."""
        node = self.nodes[node_id]
        if node.core is None or node.crash_point is not None:
            return
        node.crash_point, node.down_ms, node.crash_when_writing = point, down_ms, when_writing
        if point == "idle":
            self._crash_now(node)
        else:
            # An idle node may never write again: do not let the crash wait for ever.
            wait_ms = CRASH_LANDING_MS_MAX * (5 if when_writing else 1)
            self.after(wait_ms, self._crash_landing, node, node.epoch)

    def _crash_landing(self, node: SimNode, epoch: int) -> None:
        if node.core is not None and node.epoch == epoch and node.crash_point is not None:
            self._crash_now(node)

    def _crash_now(self, node: SimNode) -> None:
        assert node.core is not None
        self.checker.node_crashed(node.id, node.core)
        node.core = None
        node.crash_point = None
        node.crash_when_writing = False
        node.paused_until = 0
        node.turn_due = None
        node.queued, node.writing = [], None  # never synced: gone with the process
        node.epoch += 1
        if self._sched_rng.random() < self.config.crash_drops_sent_probability:
            node.sent_valid_from = node.epoch
        self.after(node.down_ms, self._restart, node, node.epoch)

    def _restart(self, node: SimNode, epoch: int) -> None:
        if node.core is None and node.epoch == epoch:
            self._start(node)

    def local_ms(self, node: SimNode) -> int:
        """What ``node``'s monotonic clock reads now."""
        return node.clock_offset_ms + int(self.now * node.clock_rate)

    def wall_ms(self, node: SimNode) -> int:
        """What ``node``'s wall clock reads now: what it stamps into the entries it proposes."""
        return WALL_EPOCH_MS + self.now + node.wall_skew_ms

    def _live_replicas(self, gid: int) -> Iterator[tuple[str, NodeCore]]:
        """Every live node hosting ``gid`` (a retired replica too: what it applied, it agrees on)."""
        for n in self.node_ids:
            core = self.nodes[n].core
            if core is not None and gid in core.groups:
                yield n, core

    def pause(self, node_id: str, pause_ms: int) -> None:
        node = self.nodes[node_id]
        if node.core is not None:
            node.paused_until = max(node.paused_until, self.now + pause_ms)

    def _wake(self, node: SimNode, at_ms: int) -> None:
        """Make sure ``node`` runs a turn no later than ``at_ms``."""
        if node.core is None or (node.turn_due is not None and node.turn_due <= at_ms):
            return
        node.turn_due = at_ms
        self.at(at_ms, self._on_turn, node, node.epoch, at_ms)

    def _on_turn(self, node: SimNode, epoch: int, due: int) -> None:
        if node.core is None or node.epoch != epoch or node.turn_due != due:
            return  # superseded by an earlier wake, or the node crashed since
        node.turn_due = None
        if node.paused_until > self.now:
            self._wake(node, node.paused_until)
            return
        self._turn(node, node.core)
        if node.core is not None:
            cfg = self.config
            if node.core.has_work() and node.writes_in_flight < WRITES_IN_FLIGHT_MAX:
                self._wake(node, self.now + 1)
            self._wake(
                node, self.now + self._sched_rng.randint(cfg.tick_interval_ms_min, cfg.tick_interval_ms_max)
            )

    def _turn(self, node: SimNode, core: NodeCore) -> None:
        # NodeRuntime's order: what may leave at once (peer batches, client replies, broadcasts),
        # then the writes go to the disk writer; what had to wait for them leaves, and the core is
        # advanced, when they are synced (_write_done) — or at once when nothing is in flight.
        flush = core.turn(self.local_ms(node), self.wall_ms(node))
        self.turns += 1
        point = node.crash_point
        if node.crash_when_writing and not any(p.entries for _, p in flush.writes):
            point = None  # not this turn
        self._send_batches(node, flush.sends)
        if point == "before_write":
            self._crash_now(node)  # sent, never written: the dangerous window
            return
        durable_now = not (flush.writes or (flush.sends_after_persist and node.writes_in_flight))
        if not durable_now:
            # As the runtime does: a flush with nothing to write waits only if its after-persist
            # messages may acknowledge entries that the writes ahead of it carry.
            node.queued.append(flush)
            self._start_write(node)
        applied = core.apply()
        self.checker.observe(node.id, core, flush)
        self.services.observe(node.id, core, flush)
        self.workloads.observe_turn()
        self._trace_applied(node.id, flush)
        self._send_batches(node, applied.sends)
        for route, data in flush.replies + applied.replies:
            client = self._clients_by_route[route]
            self.network.send(node.id, client.name, client.on_reply, data)
        for _topic, msg in flush.publishes + applied.publishes:
            self._publish(node, msg)
        if durable_now:
            self._persisted(node, core, flush)

    def _start_write(self, node: SimNode) -> None:
        """The writer takes everything queued as one batch: one transaction, one fsync."""
        while node.writing is None and node.queued:
            node.writing, node.queued = node.queued, []
            if any(flush.writes for flush in node.writing):
                cfg, rng = self.config, self._sched_rng
                write_ms = rng.randint(cfg.disk_write_ms_min, cfg.disk_write_ms_max)
                if cfg.disk_stall_probability and rng.random() < cfg.disk_stall_probability:
                    write_ms = rng.randint(write_ms, max(write_ms, cfg.disk_stall_ms_max))
                self.after(write_ms, self._write_done, node, node.epoch)
                return
            # Nothing to write: the writer thread hands the batch straight back. (Handing it back
            # a turn later would let every turn queue an empty flush behind the previous one.)
            if not self._complete_write(node):
                return

    def _write_done(self, node: SimNode, epoch: int) -> None:
        if node.core is None or node.epoch != epoch or node.writing is None:
            return  # the node crashed while the write was in flight: it never happened
        if node.paused_until > self.now:
            self.at(node.paused_until, self._write_done, node, epoch)
            return
        if self._complete_write(node):
            self._start_write(node)
            self._wake(node, self.now)

    def _complete_write(self, node: SimNode) -> bool:
        """The batch in ``node.writing`` is synced: run what waited for it. False if the node
        crashed on the way."""
        batch, node.writing = node.writing or [], None
        writes = [w for flush in batch for w in flush.writes]
        if writes:
            node.disk.write(writes)
            if node.crash_point == "after_write":
                self._crash_now(node)  # durable, but nobody was told
                return False
        core = node.core
        assert core is not None
        for flush in batch:
            self._persisted(node, core, flush)
            if node.core is None:
                return False
        return True

    def _persisted(self, node: SimNode, core: NodeCore, flush: Flush) -> None:
        self._send_batches(node, flush.sends_after_persist)
        if node.crash_point == "before_advance":
            self._crash_now(node)
            return
        core.advance(flush)

    def _trace_applied(self, node: str, flush: Flush) -> None:
        trace = self._trace
        for gid, ready in flush.readies:
            for e in ready.committed:
                trace.update(f"A{self.now}:{node}:{gid}:{e.index}:{e.term}:".encode())
                trace.update(e.data)

    # -- messages ---------------------------------------------------------------------------

    def _send_batches(self, node: SimNode, sends: dict[str, list[tuple[int, PeerMessage]]]) -> None:
        for peer, items in sends.items():
            dst = self.nodes.get(peer)
            if dst is None:  # a member added at an address no node answers
                self.network.stats["dropped_no_such_node"] += 1
                continue
            data = encode(PeerBatch(node.id, items))
            self.network.send(node.id, peer, self._deliver_peer, node, node.epoch, dst, dst.epoch, data)

    def _deliver_peer(self, src: SimNode, src_epoch: int, dst: SimNode, dst_epoch: int, data: bytes) -> None:
        if dst.core is None or dst.epoch != dst_epoch or src_epoch < src.sent_valid_from:
            self.network.stats["dropped_crash"] += 1
            return
        self._trace.update(f"P{self.now}:{src.id}>{dst.id}:".encode())
        self._trace.update(data)
        batch = decode_inbound(data)
        assert isinstance(batch, PeerBatch), f"{src.id} sent {type(batch).__name__} as a peer batch"
        dst.core.deliver_peer(batch.src, batch.items)
        self._wake(dst, self.now + self._sched_rng.randint(0, self.config.processing_delay_ms_max))

    def _publish(self, node: SimNode, msg: PeerMessage) -> None:
        """PUB/SUB: one copy per subscriber, each with its own fate (PUB drops for a slow
        subscriber), in order on each link (TCP). A subscriber that restarts misses what was sent
        before. The message crosses the codec as a one-item batch of the control group."""
        data = encode(PeerBatch(node.id, [(CONTROL_GROUP, msg)]))
        for peer in self.node_ids:
            if peer != node.id:
                dst = self.nodes[peer]
                self.network.send(
                    node.id,
                    peer,
                    self._deliver_published,
                    node,
                    node.epoch,
                    dst,
                    dst.epoch,
                    data,
                    ordered=True,
                )

    def _deliver_published(
        self, src: SimNode, src_epoch: int, dst: SimNode, dst_epoch: int, data: bytes
    ) -> None:
        if dst.core is None or dst.epoch != dst_epoch or src_epoch < src.sent_valid_from:
            self.network.stats["dropped_crash"] += 1
            return
        self._trace.update(f"B{self.now}:{src.id}>{dst.id}:".encode())
        self._trace.update(data)
        batch = decode_inbound(data)
        assert isinstance(batch, PeerBatch) and len(batch.items) == 1
        dst.core.deliver_published(batch.src, batch.items[0][1])
        self._wake(dst, self.now + self._sched_rng.randint(0, self.config.processing_delay_ms_max))

    def add_endpoint(self, endpoint: Endpoint) -> None:
        """Let a client (a workload's, a scenario's) receive the replies addressed to its route."""
        self._clients_by_route[endpoint.route] = endpoint

    def send_request(self, client: Endpoint, node_id: str, raw: bytes) -> None:
        node = self.nodes[node_id]
        self.network.send(client.name, node_id, self._deliver_request, client, node, node.epoch, raw)

    def _deliver_request(self, client: Endpoint, node: SimNode, epoch: int, raw: bytes) -> None:
        if node.core is None or node.epoch != epoch:
            self.network.stats["dropped_crash"] += 1
            return
        self._trace.update(f"R{self.now}:{client.name}>{node.id}:".encode())
        self._trace.update(raw)
        request = decode_inbound(raw)
        assert isinstance(request, Request)
        # As NodeRuntime does, a cache hit is answered as it is drained (not by a paused node).
        hit = None if node.paused_until > self.now else node.core.cache.hit(request.op, self.local_ms(node))
        if hit is not None:
            self.network.send(node.id, client.name, client.on_reply, encode(Reply(request.id, hit, None)))
            return
        node.core.deliver_client(client.route, request, raw)
        self._wake(node, self.now + self._sched_rng.randint(0, self.config.processing_delay_ms_max))

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> SimReport:
        """The whole run: the safety phase under faults, then ``finish``."""
        self.start()
        self.run_until(self.config.safety_duration_ms)
        return self.finish()

    def start(self) -> None:
        """Clients and the nemesis begin (a scenario drives the time itself after this)."""
        for client in self.clients:
            client.start()
        self.workloads.start()
        if self.membership is not None:
            self.membership.start()
        self.nemesis.start()

    def finish(self) -> SimReport:
        """The liveness phase: heal everything; every client's further operations must complete
        and every group converge within ``liveness_budget_ms``; then the history must be
        linearizable."""
        cfg = self.config
        heal_ms = self.now
        self.heal()
        for client in self.clients:
            client.enter_liveness(cfg.liveness_ops_per_client)
        self.workloads.enter_liveness()
        converged: list[bool] = []

        def poll() -> None:
            if (
                all(c.done for c in self.clients)
                and self.workloads.settled()
                and (self.membership is None or self.membership.done)
                and self.convergence_gap() is None
            ):
                converged.append(True)
            else:
                self.after(LIVENESS_POLL_MS, poll)

        self.after(LIVENESS_POLL_MS, poll)
        self.run_until(heal_ms + cfg.liveness_budget_ms, stop=lambda: bool(converged))
        if not converged:
            open_ops = "; ".join(
                [c.describe_open() for c in self.clients if not c.done] + self.workloads.describe_open()
            )
            self.fail(
                "liveness",
                f"no convergence {cfg.liveness_budget_ms} ms after healing (at {heal_ms} "
                f"ms): {self.convergence_gap() or 'cluster converged'}; open: {open_ops or 'none'}",
            )
        self.check_history()
        self.workloads.check_final()
        return self._report(heal_ms)

    def leader_of(self, gid: int) -> str | None:
        """The live node leading ``gid`` in the highest term, if any."""
        best: tuple[int, str] | None = None
        for n in self.node_ids:
            core = self.nodes[n].core
            g = core.groups.get(gid) if core is not None else None
            if g is not None and g.raft.role is Role.LEADER and (best is None or g.raft.term > best[0]):
                best = (g.raft.term, n)
        return best[1] if best else None

    def heal(self) -> None:
        """Stop every fault: heal partitions and clogs, restart crashed nodes, lossless network."""
        self.nemesis.stop()
        self.network.faults_enabled = False
        self.network.heal_all()
        for node in self.nodes.values():
            node.paused_until = 0
            if node.core is not None and node.crash_point is not None:
                node.crash_point = None  # a crash that had not landed yet is called off
            if node.core is None:
                self._start(node)

    def convergence_gap(self) -> str | None:
        """Why the cluster has not converged yet, or None: every group has one leader and all its
        replicas applied exactly its whole log. Replicas that applied the same index must also
        hold the same key/value data — if not, that is a safety failure, not a wait. With
        membership changes, every group's Raft membership must be its placement's replicas."""
        if self.membership is not None:
            gap = self.membership.members_gap()
            if gap is not None:
                return gap
        for gid in range(self.config.shard_count + 1):
            replicas = self.placement.replicas(gid)
            cores = [self.nodes[r].core for r in replicas]
            if any(c is None for c in cores):
                return f"group {gid}: a replica is down"
            if any(gid not in c.groups for c in cores if c is not None):
                return f"group {gid}: not hosted by every replica yet"
            groups = [c.groups[gid] for c in cores if c is not None]
            confs = {g.raft.conf for g in groups}
            if confs != {membership(replicas)}:
                return f"group {gid}: memberships {sorted(map(str, confs))}, placement {replicas}"
            leaders = [r for r, g in zip(replicas, groups, strict=True) if g.raft.role is Role.LEADER]
            if len(leaders) != 1:
                return f"group {gid}: leaders {leaders}"
            marks = {(g.raft.applying_index, g.raft.commit_index, g.raft.log.last_index) for g in groups}
            if len(marks) != 1:
                return f"group {gid}: (applied, commit, last) per replica {sorted(marks)}"
            if gid != 0:
                images = [g.machine.services["kv"].data for g in groups]  # type: ignore[attr-defined]
                if any(image != images[0] for image in images):
                    self.fail(
                        "replica agreement",
                        f"group {gid} replicas applied the same index "
                        f"{groups[0].raft.applying_index} but hold different data: {images}",
                    )
        return None

    @property
    def history(self) -> list[Operation]:
        return [op for c in self.clients for op in c.history]

    def check_history(self) -> None:
        result = check_kv_history(self.history)
        if not result.ok:
            what = "inconclusive (history too large)" if result.inconclusive else result.explanation
            self.fail("linearizability", f"key {result.key!r}: {what}")

    def _report(self, heal_ms: int) -> SimReport:
        history = self.history
        return SimReport(
            seed=self.seed,
            config=self.config,
            sim_time_ms=self.now,
            heal_ms=heal_ms,
            turns=self.turns,
            ops=len(history),
            ops_unknown=sum(c.unknown for c in self.clients),
            ops_liveness=sum(c.liveness_completed for c in self.clients),
            retries=sum(c.retries for c in self.clients),
            crashes=self.nemesis.crashes,
            majority_losses=self.nemesis.majority_losses,
            partitions=self.nemesis.partitions,
            swizzles=self.nemesis.swizzles,
            pauses=self.nemesis.pauses,
            elections=self.checker.elections,
            entries_applied=self.checker.entries_applied,
            snapshots_taken=self.checker.snapshots_taken,
            snapshots_installed=sum(self.checker.snapshots_installed.values()),
            truncations=self.checker.truncations,
            network=dict(sorted(self.network.stats.items())),
            digest=self._trace.hexdigest(),
            history=history,
            workloads=self.config.workloads,
            workload_stats=self.workloads.stats(),
        )


def run_simulation(seed: int, **overrides: Any) -> SimReport:
    """Run one seed end to end; any failure raises ``SimulationFailure`` whose message starts
    with the seed and the command that replays it. ``overrides`` replace ``SimConfig`` knobs."""
    sim = Simulation(seed, **overrides)
    try:
        return sim.run()
    except SimulationFailure:
        raise
    except Exception as e:
        # A crash inside the system under test (an assertion in RaftCore, a store error) is a
        # failure of the seed like any broken invariant.
        raise SimulationFailure(f"{failure_prefix(seed)}t={sim.now}ms {type(e).__name__}: {e}") from e
