"""Simulated clients: sequential KV callers that retry exactly like the native client should.

Each client has one operation outstanding at a time and numbers them; a retry — after a
retryable error (``RETRYABLE``) or an attempt timeout — resends *the same* Request (same client,
same id, same bytes) to the hinted leader or another node, so the session table is what keeps it
from applying twice. In the safety phase a client gives up after ``op_deadline_ms`` and records
the outcome as unknown (``ret=None``: the write may or may not have happened); in the liveness
phase it never gives up, and an operation still open at the end is a liveness failure.

Every operation lands in ``history`` as a linearizability ``Operation`` (times in simulated ms).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from linearizability import Operation
from sim_config import SimConfig

from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.results import RETRYABLE, Err, Ok
from syncfab.fabric.core.codec import Reply, Request, decode_reply, encode


class ClientHost(Protocol):
    """What a client needs from the simulation."""

    now: int
    node_ids: list[str]

    def after(self, delay_ms: int, fn: Any, *args: Any) -> None: ...

    def send_request(self, client: Any, node: str, raw: bytes) -> None: ...

    def fail(self, invariant: str, detail: str) -> NoReturn: ...


@dataclass(slots=True)
class _Op:
    request: Request
    raw: bytes
    kind: str
    key: str
    value: str | None
    call_ms: int
    deadline_ms: int | None  # None: never give up (liveness phase)
    attempt: int = 0
    node: str | None = None  # where the current attempt went


class SimClient:
    def __init__(self, index: int, host: ClientHost, rng: random.Random, config: SimConfig) -> None:
        self.index = index
        self.name = f"client-{index}"
        self.route = self.name.encode()
        self._host = host
        self._rng = rng
        self._config = config
        self._keys = [f"k{i}" for i in range(config.key_count)]
        self._next_id = 1
        self._safety_ops_left = config.ops_per_client
        self._liveness_ops_left = 0
        self._liveness = False
        self._safety_end_ms = config.safety_duration_ms
        self.current: _Op | None = None
        self.history: list[Operation] = []
        self.unknown = 0
        self.retries = 0
        self.liveness_completed = 0
        # Like a native client, remember the leader the last reply about a key named and go
        # there first next time: it is how clients keep talking to a deposed leader.
        self._known_node: dict[str, str] = {}

    # -- driving ----------------------------------------------------------------------------

    def start(self) -> None:
        self._host.after(self._rng.randint(0, self._config.think_time_ms_max), self._next_op)

    def enter_liveness(self, ops: int) -> None:
        """From now on: ``ops`` more operations, each of which must complete."""
        self._liveness, self._liveness_ops_left = True, ops
        if self.current is None:
            self._host.after(self._rng.randint(0, 20), self._next_op)

    @property
    def done(self) -> bool:
        return self._liveness and self._liveness_ops_left == 0 and self.current is None

    def _next_op(self) -> None:
        if self.current is not None:
            return
        host, cfg = self._host, self._config
        if self._liveness:
            if self._liveness_ops_left == 0:
                return
            self._liveness_ops_left -= 1
            deadline = None
        elif self._safety_ops_left > 0 and host.now < self._safety_end_ms:
            self._safety_ops_left -= 1
            deadline = host.now + cfg.op_deadline_ms
        else:
            return  # idle until the liveness phase
        request_id = self._next_id
        self._next_id += 1
        key = self._rng.choice(self._keys)
        roll = self._rng.random()
        value: str | None = None
        if roll < cfg.read_probability:
            kind, op = "get", Get(key)
        elif roll < cfg.read_probability + cfg.delete_probability:
            kind, op = "delete", Delete(key)
        else:
            # Unique values keep the linearizability search cheap and every read attributable.
            value = f"{self.name}#{request_id}"
            kind, op = "put", Put(key, value)
        # One operation outstanding at a time: the lowest id still awaited is this one.
        request = Request(self.name, request_id, request_id, op)
        self.current = _Op(request, encode(request), kind, key, value, host.now, deadline)
        if deadline is not None:
            host.after(cfg.op_deadline_ms, self._give_up, request_id)
        known = self._known_node.get(key)
        if known is not None and self._rng.random() < cfg.sticky_client_probability:
            self._attempt(known)
        else:
            self._attempt(self._rng.choice(host.node_ids))

    def _attempt(self, node: str) -> None:
        op = self.current
        assert op is not None
        op.attempt += 1
        op.node = node
        self._host.send_request(self, node, op.raw)
        self._host.after(self._config.attempt_timeout_ms, self._on_timeout, op.request.id, op.attempt)

    def _retry(self, request_id: int, attempt: int, hint: str | None) -> None:
        op = self.current
        if op is None or op.request.id != request_id or op.attempt != attempt:
            return  # finished, or another attempt already went out
        self.retries += 1
        nodes = self._host.node_ids
        if hint is not None and hint in nodes and hint != op.node:
            target = hint
        else:
            others = [n for n in nodes if n != op.node] or nodes
            target = self._rng.choice(others)
        self._attempt(target)

    def _on_timeout(self, request_id: int, attempt: int) -> None:
        self._retry(request_id, attempt, None)

    def _give_up(self, request_id: int) -> None:
        op = self.current
        if op is None or op.request.id != request_id:
            return
        self.unknown += 1
        self._finish(op, None, None)

    # -- answers ----------------------------------------------------------------------------

    def on_reply(self, data: bytes) -> None:
        reply: Reply = decode_reply(data)
        op = self.current
        if op is None or reply.id != op.request.id:
            return  # a late or duplicated answer to an earlier operation
        if reply.leader is not None:
            self._known_node[op.key] = reply.leader
        match reply.result:
            case Err(code=code) if code in RETRYABLE:
                backoff = self._rng.randint(1, self._config.retry_backoff_ms_max)
                self._host.after(backoff, self._retry, op.request.id, op.attempt, reply.leader)
            case Err(code="not_found") if op.kind == "get":
                self._finish(op, self._host.now, None)
            case Ok(value=value):
                self._finish(op, self._host.now, value if op.kind == "get" else None)
            case Err() as err:
                self._host.fail(
                    "client protocol",
                    f"{self.name} request {op.request.id} ({op.kind} "
                    f"{op.key!r}) failed with a non-retryable error: {err}",
                )

    def _finish(self, op: _Op, ret_ms: int | None, output: object) -> None:
        self.history.append(Operation(self.index, op.call_ms, ret_ms, op.kind, op.key, op.value, output))
        self.current = None
        if op.deadline_ms is None and ret_ms is not None:
            self.liveness_completed += 1
        self._host.after(self._rng.randint(0, self._config.think_time_ms_max), self._next_op)

    def describe_open(self) -> str:
        op = self.current
        if op is None:
            return f"{self.name}: idle"
        return (
            f"{self.name}: {op.kind} {op.key!r} id={op.request.id} called at {op.call_ms} ms, "
            f"{op.attempt} attempts, last to {op.node}"
        )
