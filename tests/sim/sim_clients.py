"""Simulated KV clients: sequential callers whose every request goes through the real client.

Each client has one operation outstanding at a time, sent by its ``ClientCore`` (sim_rpc.py): a
retry — after a retryable error or an attempt timeout — resends *the same* Request (same client,
same id, same bytes), so the session table is what keeps it from applying twice. In the safety
phase an operation gives up after ``op_deadline_ms`` and is recorded as unknown (``ret=None``:
the write may or may not have happened); in the liveness phase it never gives up, and an
operation still open at the end is a liveness failure.

Every operation lands in ``history`` as a linearizability ``Operation`` (times in simulated ms).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from linearizability import Operation
from sim_config import SimConfig
from sim_rpc import RpcClient, RpcHost

from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.results import Err, Ok, Result


@dataclass(slots=True)
class _Op:
    kind: str
    key: str
    value: str | None
    call_ms: int
    deadline_ms: int | None  # None: never give up (liveness phase)


class SimClient(RpcClient):
    def __init__(self, index: int, host: RpcHost, rng: random.Random, config: SimConfig) -> None:
        super().__init__(f"client-{index}", host, rng)
        self.index = index
        self._keys = [f"k{i}" for i in range(config.key_count)]
        self._n = 0
        self._safety_ops_left = config.ops_per_client
        self._liveness_ops_left = 0
        self._liveness = False
        self._safety_end_ms = config.safety_duration_ms
        self.current: _Op | None = None
        self.history: list[Operation] = []
        self.liveness_completed = 0

    # -- driving ----------------------------------------------------------------------------

    def start(self) -> None:
        self.host.after(self.rng.randint(0, self.config.think_time_ms_max), self._next_op)

    def enter_liveness(self, ops: int) -> None:
        """From now on: ``ops`` more operations, each of which must complete."""
        self._liveness, self._liveness_ops_left = True, ops
        if self.current is None:
            self.host.after(self.rng.randint(0, 20), self._next_op)

    @property
    def done(self) -> bool:
        return self._liveness and self._liveness_ops_left == 0 and self.current is None

    def _next_op(self) -> None:
        if self.current is not None:
            return
        host, cfg = self.host, self.config
        if self._liveness:
            if self._liveness_ops_left == 0:
                return
            self._liveness_ops_left -= 1
            deadline = None
        elif self._safety_ops_left > 0 and host.now < self._safety_end_ms:
            self._safety_ops_left -= 1
            deadline = cfg.op_deadline_ms
        else:
            return  # idle until the liveness phase
        self._n += 1
        key = self.rng.choice(self._keys)
        roll = self.rng.random()
        value: str | None = None
        if roll < cfg.read_probability:
            kind, op = "get", Get(key)
        elif roll < cfg.read_probability + cfg.delete_probability:
            kind, op = "delete", Delete(key)
        else:
            # Unique values keep the linearizability search cheap and every read attributable.
            value = f"{self.name}#{self._n}"
            kind, op = "put", Put(key, value)
        self.current = _Op(kind, key, value, host.now, deadline)
        self.call(op, self._answered, deadline)

    # -- answers ----------------------------------------------------------------------------

    def _answered(self, result: Result | None) -> None:
        op = self.current
        assert op is not None
        now = self.host.now
        match result:
            case None:
                self._finish(op, None, None)  # out of time: outcome unknown
            case Err(code="not_found") if op.kind == "get":
                self._finish(op, now, None)
            case Ok(value=value):
                self._finish(op, now, value if op.kind == "get" else None)
            case Err() as err:
                self.host.fail(
                    "client protocol",
                    f"{self.name} op #{self._n} ({op.kind} {op.key!r}) failed, not retryably: {err}",
                )

    def _finish(self, op: _Op, ret_ms: int | None, output: object) -> None:
        self.history.append(Operation(self.index, op.call_ms, ret_ms, op.kind, op.key, op.value, output))
        self.current = None
        if op.deadline_ms is None and ret_ms is not None:
            self.liveness_completed += 1
        self.host.after(self.rng.randint(0, self.config.think_time_ms_max), self._next_op)

    def describe_open(self) -> str:
        op = self.current
        if op is None:
            return f"{self.name}: idle"
        return f"{self.name}: {op.kind} {op.key!r} called at {op.call_ms} ms; {self.core.describe_open()}"
