"""Helpers for hand-driven scenarios: a quiet cluster, and calls made through ``RpcClient`` (so
they route, retry and answer exactly as the workloads' calls do) that a test waits for in line.
"""

from __future__ import annotations

import random
from typing import Any

from sim_config import SimConfig
from sim_rpc import RpcClient
from simulator import Simulation

from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.core.codec import Reply, Request, decode_reply, encode


def quiet_simulation(seed: int, **knobs: Any) -> Simulation:
    """A fault-free cluster with no workload clients; the scenario brings its own."""
    sim = Simulation(seed, config=SimConfig(client_count=0, safety_duration_ms=0, workloads=(), **knobs))
    sim.start()
    return sim


def client(sim: Simulation, name: str) -> RpcClient:
    return RpcClient(name, sim, random.Random(name))


class Probe:
    """Sends one request to the node a scenario names, once: no routing, no retry."""

    def __init__(self, sim: Simulation, name: str) -> None:
        self.name = name
        self.route = name.encode()
        self.replies: list[Reply] = []
        self._sim = sim
        self._next_id = 1
        sim.add_endpoint(self)

    def on_reply(self, data: bytes) -> None:
        self.replies.append(decode_reply(data))

    def send(self, node: str, op: Any, ids: int = 1) -> int:
        """``ids``: how many request ids the op takes (a LockBatch: one, and one per op)."""
        rid = self._next_id
        self._next_id += ids
        self._sim.send_request(self, node, encode(Request(self.name, rid, rid, op)))
        return rid

    def results(self, rid: int) -> list[Result]:
        return [r.result for r in self.replies if r.id == rid]

    def call(self, node: str, op: Any, timeout_ms: int = 2_000) -> Result:
        """Send and run the simulation until the first answer comes back."""
        rid = self.send(node, op)
        sim = self._sim
        sim.run_until(sim.now + timeout_ms, stop=lambda: bool(self.results(rid)))
        results = self.results(rid)
        assert results, f"seed={sim.seed}: no answer from {node} to {op} within {timeout_ms} ms"
        return results[0]


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
