"""The asyncio driver of a ClientCore (fabric/client/core_driver.py), on a real event loop."""

from __future__ import annotations

import asyncio
import random

from syncfab.actors.kv import Put
from syncfab.actors.queues import NewMessage
from syncfab.actors.results import Err
from syncfab.fabric.client.core_driver import CoreDriver
from syncfab.fabric.core.client_core import ClientConfig, ClientCore

VIEW = {"members": [{"id": "n1", "address": "n1"}], "leader": "n1", "shards": [{"id": 1, "leader": "n1"}]}


def test_a_call_answered_before_its_coroutine_first_runs_still_gets_its_answer() -> None:
    # The chaos suite's hang: fanout gathers calls, so each call's coroutine first runs a loop
    # step after the core took it; a settle() meanwhile (a reply drained for another call)
    # took its answer while no future was registered for it, and the caller waited forever.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sent: list[dict[str, list[bytes]]] = []
        core = ClientCore("c", ["n1"], random.Random(1), ClientConfig())
        core.learn(VIEW)
        driver = CoreDriver(core, loop, sent.append)
        handle = core.call(Put("", "v"), driver.now_ms())  # refused at once: the key is empty
        pending = driver.wait(handle)  # as asyncio.gather takes it: not run yet
        driver.settle()  # another call's reply drained first
        task = asyncio.ensure_future(pending)
        for _ in range(3):
            await asyncio.sleep(0)  # loop steps, not time: the answer is already there
        assert task.done(), "the answer was dropped: the call would wait forever"
        result = task.result()
        assert isinstance(result, Err) and result.detail == {"field": "key"}
        driver.close()

    asyncio.run(main())


def test_an_answer_for_a_cancelled_future_is_dropped() -> None:
    # A caller awaiting driver.future() is cancelled: its future is done before its frame
    # resumes to tell the driver, and an answer drained meanwhile must find nobody, quietly.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        core = ClientCore("c", ["n1"], random.Random(1), ClientConfig())
        core.learn(VIEW)
        driver = CoreDriver(core, loop, [].append)
        handle = core.call(Put("", "v"), driver.now_ms())  # refused at once: answered now
        fut = driver.future(handle)
        fut.cancel()
        driver.settle()  # must not raise InvalidStateError
        assert fut.cancelled() and not driver._futures
        driver.cancelled(handle)  # what the caller's frame then does: nothing left to drop
        # A coalesced op's handle (negative) answered before its caller said it gave up: the
        # core is not told, or it would keep the handle among the cancelled for good.
        queued = core.produce("", NewMessage("m"), driver.now_ms())  # refused at once: no name
        fut = driver.future(queued)
        fut.cancel()
        driver.settle()
        driver.cancelled(queued)
        assert queued < 0 and not core._cancelled
        driver.close()

    asyncio.run(main())
