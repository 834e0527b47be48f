"""The consume fan-out's give-back of what a long poll took too late, with a real event loop."""

from __future__ import annotations

import asyncio
from typing import Any

from syncfab.actors.queues import Return
from syncfab.actors.results import Ok, Result
from syncfab.fabric.client import fanout


def test_a_late_poll_gives_back_its_messages_and_a_cancelled_one_is_let_go() -> None:
    sent: list[Any] = []

    async def call(op: Any) -> Result:
        sent.append(op)
        return Ok({"returned": 1})

    async def scenario() -> list[BaseException | None]:
        loop = asyncio.get_running_loop()
        errors: list[BaseException | None] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))
        late: asyncio.Future[Result] = loop.create_future()
        cancelled: asyncio.Future[Result] = loop.create_future()
        for fut in (late, cancelled):
            fut.add_done_callback(lambda f: fanout._return_unwanted(call, "jobs", f))
        late.set_result(Ok({"messages": [{"message_id": "2:7"}]}))
        cancelled.cancel()  # a client closing while a poll was pending
        for _ in range(3):
            await asyncio.sleep(0)
        return errors

    assert asyncio.run(scenario()) == []
    [give_back] = sent
    assert give_back.op == Return("jobs", ["2:7"])
