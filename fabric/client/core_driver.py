"""What every asyncio driver of a ``ClientCore`` does alike: a future per call, the core's
outbox sent once per loop iteration with calls made, finished calls answered, and one timer,
at the core's next. The native client sends over its DEALERs, the gateway into its own node's
inbox; each gives its ``send``, and feeds the core what comes back, then calls ``settle``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from syncfab.actors.results import Result
from syncfab.fabric.core.client_core import ClientCore

Send = Callable[[dict[str, list[bytes]]], None]  # {node: encoded requests}, one frame each


class CoreDriver:
    def __init__(self, core: ClientCore, loop: asyncio.AbstractEventLoop, send: Send) -> None:
        self.core = core
        self.loop = loop
        self._send = send
        self._futures: dict[int, asyncio.Future[Result]] = {}  # handle -> its caller's
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_ms = 0

    def now_ms(self) -> int:
        return int(self.loop.time() * 1000)

    def wait(self, handle: int) -> Coroutine[Any, Any, Result]:
        """The call's result; its request leaves with this loop iteration's others. Its future
        is registered now, not when the coroutine first runs: gathered calls run later, and a
        settle() in between (a reply drained for another call) would drop their answers.
        (``future``'s lines, not a call to it: this is every other call's path.)"""
        fut: asyncio.Future[Result] = self.loop.create_future()
        self._futures[handle] = fut
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return self._result(handle, fut)

    def future(self, handle: int) -> asyncio.Future[Result]:
        """``wait`` without its coroutine, for a caller that awaits the future in a coroutine
        of its own (one frame less a call: the client's put, get, delete and produce) and,
        cancelled there, calls ``cancelled(handle)``. Registered now, as ``wait`` does."""
        fut: asyncio.Future[Result] = self.loop.create_future()
        self._futures[handle] = fut
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        return fut

    def cancelled(self, handle: int) -> None:
        """The caller stopped waiting for ``handle``: the core drops the call. Not if its
        answer was already taken (settle popped its future): the core is done with it, and a
        coalesced op's handle it no longer knows would be kept in its cancelled set for good."""
        if self._futures.pop(handle, None) is not None:
            self.core.cancel(handle)

    async def _result(self, handle: int, fut: asyncio.Future[Result]) -> Result:
        try:
            return await fut
        except asyncio.CancelledError:
            self.cancelled(handle)
            raise

    def settle(self) -> None:
        """Answer finished calls; keep one timer, at the core's next one."""
        futures = self._futures
        for handle, result in self.core.completions():
            fut = futures.pop(handle, None)
            if fut is not None:
                # No done() first: that is a call on every answer; a try costs nothing.
                try:  # noqa: SIM105
                    fut.set_result(result)
                except asyncio.InvalidStateError:
                    pass  # cancelled, its caller not yet resumed to say so: nobody to answer
        at_ms = self.core.next_timer_ms()
        if at_ms is not None and (self._timer is None or at_ms < self._timer_ms):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_ms = at_ms
            self._timer = self.loop.call_at(at_ms / 1000, self._on_timer)

    def end(self, result: Result) -> None:
        """Answer every waiting caller with ``result`` now (a stopping node's gateway)."""
        futures, self._futures = self._futures, {}
        for handle, fut in futures.items():
            self.core.cancel(handle)
            if not fut.done():
                fut.set_result(result)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._send(self.core.outbox(self.now_ms()))
        self.settle()

    def _on_timer(self) -> None:
        self._timer = None
        now_ms = max(self.now_ms(), self._timer_ms)  # the loop may wake a hair early
        self.core.tick(now_ms)
        self._send(self.core.outbox(now_ms))
        self.settle()
