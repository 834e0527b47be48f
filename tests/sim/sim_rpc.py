"""A simulated native client for any op, and scripts that drive it.

``RpcClient`` does what fabric/client/zmq_client.py's ``call`` does, on simulated time: it numbers requests
with the real ``RequestIds`` (so ``acked`` is the lowest id still awaited, with several calls in
flight), routes each op with the real ``group_for`` to the leader it last heard of for that group
(or any node), and retries *the same bytes* — same client, same id — after a retryable error or an
attempt timeout. A call with a deadline gives up at it and reports ``None``: outcome unknown.
Attempt timeouts follow ``wait_of``: a long-polling consume must outlast its wait (a retry would
take more messages), a waiting lock acquire may be retried every attempt (it is logged).

A *script* is a generator that yields ``Call(op)`` (resumed with the Result, or None when the
outcome is unknown) or ``Sleep(ms)``; ``run_script`` drives it on the simulation's clock. That
keeps a workload's logic (acquire, hold, use, release) in the order a reader expects, while many
scripts — a client's main loop and its lease keepalive — interleave in one thread.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from sim_config import SimConfig

from syncfab.actors.results import RETRYABLE, Err, Result
from syncfab.fabric.core.codec import Reply, Request, RequestIds, decode_reply, encode
from syncfab.fabric.core.routing import group_for, wait_of


class RpcHost(Protocol):
    """What a client needs from the simulation."""

    now: int
    node_ids: list[str]
    config: SimConfig

    def after(self, delay_ms: int, fn: Any, *args: Any) -> None: ...

    def send_request(self, client: Any, node: str, raw: bytes) -> None: ...

    def add_endpoint(self, endpoint: Any) -> None: ...

    def fail(self, invariant: str, detail: str) -> NoReturn: ...


@dataclass(frozen=True, slots=True)
class Call:
    """Script action: send ``op``; ``deadline_ms`` None means never give up."""

    op: Any
    deadline_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    ms: int


Script = Generator[Call | Sleep, Result | None, None]
Done = Callable[[Result | None], None]


@dataclass(slots=True)
class _Pending:
    request: Request
    raw: bytes
    group: int
    on_done: Done
    call_ms: int
    attempt_timeout_ms: int
    attempt: int = 0
    node: str | None = None


class RpcClient:
    def __init__(self, name: str, host: RpcHost, rng: random.Random) -> None:
        self.name = name
        self.route = name.encode()
        self.host = host
        self.rng = rng
        self.config = host.config
        self.ids = RequestIds()
        self.pending: dict[int, _Pending] = {}
        self.sent: dict[int, tuple[int, Any]] = {}  # request id -> (asked at, op), finished ones too
        # group -> the leader the last reply named: like the native client, go there first.
        self.leaders: dict[int, str] = {}
        self.calls = self.retries = self.unknown = 0
        self.scripts_running = 0
        host.add_endpoint(self)

    # -- calls -------------------------------------------------------------------------------

    def call(self, op: Any, on_done: Done, deadline_ms: int | None, ids: int = 1) -> int:
        """Send ``op``; ``on_done(result)`` once, with None if it gave up. Returns the request id.
        ``ids``: how many consecutive request ids the op takes (a LockBatch: one, and one per op)."""
        host, cfg = self.host, self.config
        rid = self.ids.reserve(ids)
        group = group_for(op, cfg.shard_count, self.name, rid)
        if isinstance(group, Err):
            host.fail("client protocol", f"{self.name} built an unroutable op {op!r}: {group}")
        request = Request(self.name, rid, self.ids.acked, op)
        wait_ms, long_poll = wait_of(op)
        attempt_ms = cfg.attempt_timeout_ms + (wait_ms if long_poll else 0)
        call = _Pending(request, encode(request), group, on_done, host.now, attempt_ms)
        self.pending[rid] = call
        self.sent[rid] = (host.now, op)
        self.calls += 1
        if deadline_ms is not None:
            host.after(deadline_ms + wait_ms, self._give_up, rid)
        known = self.leaders.get(group)
        if known is not None and self.rng.random() < cfg.sticky_client_probability:
            self._attempt(call, known)
        else:
            self._attempt(call, self.rng.choice(host.node_ids))
        return rid

    def expect(self, rid: int, op: Any, on_done: Done, deadline_ms: int | None) -> None:
        """An op of a batch left waiting (fabric/client/lock_batcher.py): its own reply answers it. Until
        then it is a call in flight under its own id, asked again alone if no reply comes."""
        host, cfg = self.host, self.config
        request = Request(self.name, rid, self.ids.acked, op)
        group = group_for(op, cfg.shard_count, self.name, rid)
        assert not isinstance(group, Err)
        call = _Pending(request, encode(request), group, on_done, host.now, cfg.attempt_timeout_ms, attempt=1)
        self.pending[rid] = call
        self.sent[rid] = (host.now, op)
        if deadline_ms is not None:
            host.after(deadline_ms + wait_of(op)[0], self._give_up, rid)
        host.after(call.attempt_timeout_ms, self._retry, rid, 1, None)

    def _attempt(self, call: _Pending, node: str) -> None:
        call.attempt += 1
        call.node = node
        self.host.send_request(self, node, call.raw)
        self.host.after(call.attempt_timeout_ms, self._retry, call.request.id, call.attempt, None)

    def _retry(self, rid: int, attempt: int, hint: str | None) -> None:
        call = self.pending.get(rid)
        if call is None or call.attempt != attempt:
            return  # answered, or another attempt already went out
        self.retries += 1
        nodes = self.host.node_ids
        if hint is not None and hint in nodes and hint != call.node:
            target = hint
        else:
            others = [n for n in nodes if n != call.node] or nodes
            target = self.rng.choice(others)
        self._attempt(call, target)

    def _give_up(self, rid: int) -> None:
        if rid in self.pending:
            self.unknown += 1
            self._finish(rid, None)

    def _finish(self, rid: int, result: Result | None) -> None:
        call = self.pending.pop(rid)
        self.ids.done(rid)
        call.on_done(result)

    # -- replies -----------------------------------------------------------------------------

    def on_reply(self, data: bytes) -> None:
        reply: Reply = decode_reply(data)
        self.observe_reply(reply)
        call = self.pending.get(reply.id)
        if call is None:
            return  # a late or duplicated answer to a finished call
        if reply.leader is not None:
            self.leaders[call.group] = reply.leader
        result = reply.result
        if isinstance(result, Err) and result.code in RETRYABLE:
            backoff = self.rng.randint(1, self.config.retry_backoff_ms_max)
            self.host.after(backoff, self._retry, reply.id, call.attempt, reply.leader)
            return
        self._finish(reply.id, result)

    def observe_reply(self, reply: Reply) -> None:
        """Every reply that arrives, late and duplicated ones too (checks hook in here)."""

    # -- scripts -----------------------------------------------------------------------------

    def run_script(self, script: Script) -> None:
        self.scripts_running += 1
        self._step(script, None)

    def _step(self, script: Script, value: Result | None) -> None:
        try:
            action = script.send(value)
        except StopIteration:
            self.scripts_running -= 1
            return
        if isinstance(action, Sleep):
            self.host.after(max(0, action.ms), self._step, script, None)
        else:
            self.call(action.op, lambda result: self._step(script, result), action.deadline_ms)

    def describe_open(self) -> str:
        calls = ", ".join(
            f"{type(c.request.op).__name__} id={c.request.id} since {c.call_ms} ms "
            f"({c.attempt} attempts, last to {c.node})"
            for c in self.pending.values()
        )
        return f"{self.name}: {calls or 'no call in flight'}"
