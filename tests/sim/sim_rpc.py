"""The simulated native client: a driver of the ``ClientCore`` that ships, and scripts on it.

Every client of the simulation — the KV history clients, the lock, queue and cache clients, the
shared lock-op coalescer and a scenario's probe — is an ``RpcClient``, and an ``RpcClient``
decides nothing: request ids and the acked floor, routing to the leader a reply named, retries
of the same bytes, backoff, deadlines and the coalescing of lock ops and produces are all
fabric/core/client_core.py's, the class AsyncClient and the gateway drive. This driver only
does what AsyncClient's I/O does, on simulated time: it hands a call to the core, sends the
core's outbox (each request as its own message), feeds replies back, keeps one timer at the
core's next one, and answers each caller from the core's completions. So every seed is a run
of the real client against the real nodes under the seed's faults.

A call out of time — ``timeout`` (``GAVE_UP``), or its latest retryable answer — has an unknown
outcome: its caller gets None, as the checkers expect. A call with no deadline never gives up.

A *script* is a generator that yields ``Call(op)`` (resumed with the Result, or None when the
outcome is unknown) or ``Sleep(ms)``; ``run_script`` drives it on the simulation's clock. That
keeps a workload's logic (acquire, hold, use, release) in the order a reader expects, while many
scripts — a client's main loop and its lease keepalive — interleave in one thread.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from sim_config import SimConfig

from syncfab.actors.results import RETRYABLE, Err, Result
from syncfab.fabric.core.client_core import GAVE_UP, ClientConfig, ClientCore
from syncfab.fabric.core.codec import Reply, decode_request

# A coalescing client sends what piled up this long (at most) after the first call: concurrent
# lock ops meet in one LockBatch, as calls within one loop iteration of AsyncClient do.
COALESCE_MS_MAX = 8


class RpcHost(Protocol):
    """What a client needs from the simulation."""

    now: int
    node_ids: list[str]
    config: SimConfig

    def at(self, time_ms: int, fn: Any, *args: Any) -> None: ...

    def after(self, delay_ms: int, fn: Any, *args: Any) -> None: ...

    def send_request(self, client: Any, node: str, raw: bytes) -> None: ...

    def add_endpoint(self, endpoint: Any) -> None: ...

    def fail(self, invariant: str, detail: str) -> NoReturn: ...


@dataclass(frozen=True, slots=True)
class Call:
    """Script action: send ``op``; ``deadline_ms`` (a duration) None means never give up."""

    op: Any
    deadline_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Sleep:
    ms: int


Script = Generator[Call | Sleep, Result | None, None]
Done = Callable[[Result | None], None]


def client_config(cfg: SimConfig, **overrides: Any) -> ClientConfig:
    """The seed's client knobs as the core's: each call's own deadline bounds it (none: never
    give up), not a count of attempts; a retry waits ``randint(1, retry_backoff_ms_max)``."""
    config = ClientConfig(
        timeout_ms=None,
        attempt_timeout_ms=cfg.attempt_timeout_ms,
        attempts_max=None,
        backoff_ms_min=cfg.retry_backoff_ms_max,
        backoff_ms_max=cfg.retry_backoff_ms_max,
        leader_hint_probability=cfg.sticky_client_probability,
    )
    return dataclasses.replace(config, **overrides) if overrides else config


def outcome_unknown(result: Result) -> bool:
    """A call that ran out of time: it may or may not have taken effect."""
    return isinstance(result, Err) and (result.code == GAVE_UP or result.code in RETRYABLE)


class RpcClient:
    def __init__(
        self,
        name: str,
        host: RpcHost,
        rng: random.Random,
        *,
        coalescing: bool = False,
        core_config: ClientConfig | None = None,
    ) -> None:
        self.name = name
        self.route = name.encode()
        self.host = host
        self.rng = rng
        self.config = host.config
        self.coalescing = coalescing
        nodes = list(host.node_ids)
        self.core = ClientCore(
            name, nodes, random.Random(rng.getrandbits(64)), core_config or client_config(host.config)
        )
        # What a native client learns from ClusterInfo; a simulated node's id is its address.
        self.core.members = {n: n for n in nodes}
        self.core.shard_count = host.config.shard_count
        self.pending: dict[int, Done] = {}  # handle -> its caller, until the core answers it
        self.sent: dict[int, tuple[int, Any]] = {}  # request id -> (first sent at, op), finished too
        self.unknown = 0
        self.scripts_running = 0
        self._flush_due = False
        self._timer_ms: int | None = None
        self._timer_token = 0
        host.add_endpoint(self)

    @property
    def calls(self) -> int:
        return self.core.stats["calls"]

    @property
    def retries(self) -> int:
        return self.core.stats["retries"]

    # -- calls -------------------------------------------------------------------------------

    def call(
        self,
        op: Any,
        on_done: Done,
        deadline_ms: int | None,
        *,
        node: str | None = None,
        attempt_timeout_ms: int | None = None,
    ) -> int:
        """Start ``op`` (``node``: pinned there); ``on_done(result)`` once, with None if it ran
        out of ``deadline_ms`` (None: never). Returns the core's handle."""
        handle = self.core.call(
            op, self.host.now, node=node, timeout_ms=deadline_ms, attempt_timeout_ms=attempt_timeout_ms
        )
        self.pending[handle] = on_done
        if not self._flush_due:
            self._flush_due = True
            delay = self.rng.randint(0, COALESCE_MS_MAX) if self.coalescing else 0
            self.host.after(delay, self._flush)
        return handle

    def _flush(self) -> None:
        self._flush_due = False
        self.flush_now()

    def flush_now(self) -> None:
        """Send what the core has to send, answer what it finished, keep its timer."""
        now = self.host.now
        for node, raws in self.core.outbox(now).items():
            for raw in raws:
                request = decode_request(raw)
                self.sent.setdefault(request.id, (now, request.op))
                self.host.send_request(self, node, raw)
        self._settle()

    def _settle(self) -> None:
        for handle, result in self.core.completions():
            on_done = self.pending.pop(handle)
            if outcome_unknown(result):
                self.unknown += 1
                on_done(None)
            else:
                on_done(result)
        at_ms = self.core.next_timer_ms()
        if at_ms is not None and (self._timer_ms is None or at_ms < self._timer_ms):
            self._timer_ms = at_ms
            self._timer_token += 1
            self.host.at(at_ms, self._on_timer, self._timer_token)

    def _on_timer(self, token: int) -> None:
        if token != self._timer_token:
            return  # an earlier one was armed since
        self._timer_ms = None
        self.core.tick(self.host.now)
        self.flush_now()

    # -- replies -----------------------------------------------------------------------------

    def on_reply(self, data: bytes) -> None:
        for reply in self.core.receive(data, self.host.now):
            self.observe_reply(reply)
        self._settle()

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
        return f"{self.name}: {len(self.pending)} calls open; {self.core.describe_open()}"
