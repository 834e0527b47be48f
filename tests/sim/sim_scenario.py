"""Helpers for hand-driven scenarios: a quiet cluster, and calls made through ``RpcClient`` — a
driver of the shipped ClientCore, so they route, retry and answer exactly as the workloads' calls
and a native client's do — that a test waits for in line; ``Probe`` asks one named node.
"""

from __future__ import annotations

import random
from typing import Any

from sim_config import SimConfig
from sim_rpc import RpcClient, client_config
from simulator import Simulation

from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.core.codec import Reply, Request, encode, replies_in


def quiet_simulation(seed: int, **knobs: Any) -> Simulation:
    """A fault-free cluster with no workload clients; the scenario brings its own."""
    sim = Simulation(seed, config=SimConfig(client_count=0, safety_duration_ms=0, workloads=(), **knobs))
    sim.start()
    return sim


def client(sim: Simulation, name: str) -> RpcClient:
    return RpcClient(name, sim, random.Random(name))


class Probe(RpcClient):
    """Sends one request to the node a scenario names: a ClientCore call pinned there, with one
    attempt as long as the scenario waits (``attempts_max=1``) — never to another node; a
    retryable answer is asked again there (the same bytes, the same id) until then. Every reply
    that comes is kept, late and duplicated ones too (``results``)."""

    def __init__(self, sim: Simulation, name: str) -> None:
        super().__init__(
            name, sim, random.Random(name), core_config=client_config(sim.config, attempts_max=1)
        )
        self._sim = sim
        self.replies: list[Reply] = []
        self.outcomes: dict[int, Result | None] = {}  # request id -> what the call ended with

    def observe_reply(self, reply: Reply) -> None:
        self.replies.append(reply)

    def send(self, node: str, op: Any, timeout_ms: int = 2_000) -> int:
        """Ask ``node`` now; returns the request id its replies carry."""
        rid = self.core.ids.reserve(0)  # the id the core gives a lone call next

        def done(result: Result | None) -> None:
            self.outcomes[rid] = result

        RpcClient.call(self, op, done, timeout_ms, node=node, attempt_timeout_ms=timeout_ms)
        self.flush_now()
        assert self.sent.get(rid, (0, None))[1] == op, f"{self.name}: {op} did not leave as request {rid}"
        return rid

    def results(self, rid: int) -> list[Result]:
        return [r.result for r in self.replies if r.id == rid]

    def call(self, node: str, op: Any, timeout_ms: int = 2_000) -> Result:  # type: ignore[override]
        """Ask ``node`` and run the simulation until the call ends: its answer."""
        rid = self.send(node, op, timeout_ms)
        sim = self._sim
        sim.run_until(sim.now + timeout_ms, stop=lambda: rid in self.outcomes)
        result = self.outcomes.get(rid)
        assert result is not None, (
            f"seed={sim.seed}: no answer from {node} to {op} within {timeout_ms} ms: {self.results(rid)}"
        )
        return result


class RawProbe:
    """Sends hand-made requests, each once, and keeps every reply: no ClientCore. Only for a test
    of the wire protocol itself that a ClientCore would not let it write — test_sim_locks sends a
    ``LockBatch`` and reads its ops' answers under the ids the replicas give them (the batch's id
    + 1 + place), then asks one of them again alone under that id at another node; a ClientCore
    picks those ids and makes those re-asks on its own."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.name = name
        self.route = name.encode()
        self.replies: list[Reply] = []
        self._sim = sim
        self._next_id = 1
        sim.add_endpoint(self)

    def on_reply(self, data: bytes) -> None:
        self.replies.extend(replies_in(data))

    def send(self, node: str, op: Any, ids: int = 1) -> int:
        """``ids``: how many request ids the op takes (a LockBatch: one, and one per op)."""
        rid = self._next_id
        self._next_id += ids
        self._sim.send_request(self, node, encode(Request(self.name, rid, rid, op)))
        return rid

    def results(self, rid: int) -> list[Result]:
        return [r.result for r in self.replies if r.id == rid]


class Pending:
    """A call in flight; ``result`` once answered (None while it is not)."""

    def __init__(self) -> None:
        self.answered = False
        self.result: Result | None = None
        self.at_ms = 0


def start(sim: Simulation, rpc: RpcClient, op: Any) -> Pending:
    pending = Pending()

    def done(result: Result | None) -> None:
        pending.answered, pending.result, pending.at_ms = True, result, sim.now

    rpc.call(op, done, None)
    return pending


def wait_for(sim: Simulation, what: str, cond: Any, timeout_ms: int = 5_000) -> None:
    if cond():
        return
    sim.run_until(sim.now + timeout_ms, stop=cond)
    assert cond(), f"seed={sim.seed}: {what} did not happen within {timeout_ms} ms"


def answer(sim: Simulation, pending: Pending, timeout_ms: int = 5_000) -> Result:
    wait_for(sim, "an answer", lambda: pending.answered, timeout_ms)
    assert pending.result is not None
    return pending.result


def call(sim: Simulation, rpc: RpcClient, op: Any, timeout_ms: int = 5_000) -> Result:
    return answer(sim, start(sim, rpc, op), timeout_ms)


def ok(result: Result) -> Any:
    assert isinstance(result, Ok), result
    return result.value


def err(result: Result) -> str:
    assert isinstance(result, Err), result
    return result.code
