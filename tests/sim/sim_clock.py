"""Simulated time: one event queue, ``(time_ms, seq, fn, args)``, run in order.

``seq`` breaks ties in scheduling order, so two events at the same millisecond always run in
the same order for a seed. Nothing here reads a clock: time only moves when an event runs.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any, NoReturn

from sim_config import SimConfig

REPLAY = "SYNCFAB_SIM_SEED={seed} python -m pytest tests/sim/test_simulation.py"
# Simulated time has stopped if this many events run at one instant: something reschedules
# itself at once, for ever (a busy loop that would spin a real node's CPU too).
SAME_TIME_EVENTS_MAX = 20_000


class SimulationFailure(AssertionError):
    """A broken invariant, a liveness failure or a non-linearizable history, with its seed."""


def failure_prefix(seed: int) -> str:
    return f"seed={seed} | replay: {REPLAY.format(seed=seed)}\n"


class SimClock:
    def __init__(self, seed: int, config: SimConfig) -> None:
        self.seed = seed
        self.config = config
        self.now = 0
        self._queue: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def at(self, time_ms: int, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (max(time_ms, self.now), next(self._seq), fn, args))

    def after(self, delay_ms: int, fn: Callable[..., None], *args: Any) -> None:
        self.at(self.now + delay_ms, fn, *args)

    def run_until(self, time_ms: int, stop: Callable[[], bool] | None = None) -> None:
        """Run every event due by ``time_ms`` (or until ``stop()`` says so after one)."""
        queue = self._queue
        same_time = 0
        while queue and queue[0][0] <= time_ms:
            when, _, fn, args = heapq.heappop(queue)
            if when == self.now:
                same_time += 1
                if same_time > SAME_TIME_EVENTS_MAX:
                    self.fail(
                        "progress",
                        f"over {SAME_TIME_EVENTS_MAX} events at one instant "
                        f"(the last: {getattr(fn, '__name__', fn)}): a busy loop",
                    )
            else:
                same_time = 0
            self.now = when
            fn(*args)
            if stop is not None and stop():
                return
        self.now = max(self.now, time_ms)

    def fail(self, invariant: str, detail: str) -> NoReturn:
        prefix = failure_prefix(self.seed)
        raise SimulationFailure(f"{prefix}t={self.now}ms invariant '{invariant}' violated: {detail}")
