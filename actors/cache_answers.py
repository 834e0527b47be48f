"""What a node's near cache (actors/cache_near.py) answers its clients, and what it remembers of
their requests so that each is answered once.

A write served on the node (a write_back write to a line it owns) is in no Raft session table,
so the near cache keeps its own: a retry of a request gets the answer it had; one still being
served is dropped (the first one's answer comes); one below the client's acknowledged floor is
refused. Reads are not remembered: a retried read is simply read again. A write_back write
this node sent home is remembered too: a retry of it goes home again, never onto a line the
node came to own since (the home's log may hold it, or will, and applies it once).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import msgspec

from syncfab.actors.cache_lines import Line
from syncfab.actors.cache_ops import CacheDelete, CacheRead, CacheValue, CacheWrite, CacheWritten, not_found
from syncfab.actors.messages import Grant
from syncfab.actors.results import Err, Ok, Result

ANSWERS_MAX = 4096  # writes' answers kept for a client's retry of the same request
FORWARDED_MAX = 4096  # write_back writes sent home, remembered so a retry is not applied here
CLIENTS_MAX = 10_000  # clients whose acknowledged floor is remembered


class ClientRequests:
    def __init__(self) -> None:
        self._answered: OrderedDict[tuple[str, int], Result] = OrderedDict()
        self._serving: set[tuple[str, int]] = set()
        self._floors: OrderedDict[str, int] = OrderedDict()  # client -> lowest id it still awaits
        self._forwarded: OrderedDict[tuple[str, int], None] = OrderedDict()

    def earlier(self, client: str, request_id: int, acked: int) -> Result | None:
        """The answer a request already has — what it was answered, or that it was acknowledged
        — or None. ``acked`` (the lowest id the client still awaits) raises its floor."""
        floor = self._floors.get(client, 0)
        if acked > floor:
            self._floors[client] = floor = acked
            self._floors.move_to_end(client)
            if len(self._floors) > CLIENTS_MAX:
                self._floors.popitem(last=False)
        answered = self._answered.get((client, request_id))
        if answered is not None:
            return answered
        if request_id < floor:
            return Err("stale_request", f"request {request_id} was already acknowledged")
        return None

    def serve(self, client: str, request_id: int) -> bool:
        """Start serving a request; False if it is being served already (a retry)."""
        if (client, request_id) in self._serving:
            return False
        self._serving.add((client, request_id))
        return True

    def forward(self, client: str, request_id: int) -> None:
        """A write_back write goes home: none of its retries may be applied on this node."""
        self._forwarded[(client, request_id)] = None
        if len(self._forwarded) > FORWARDED_MAX:
            self._forwarded.popitem(last=False)

    def forwarded(self, client: str, request_id: int) -> bool:
        return (client, request_id) in self._forwarded

    def answered(self, client: str, request_id: int, result: Result, *, keep: bool) -> None:
        """The request is answered; ``keep`` it (unless it failed) for a retry to get."""
        asked = (client, request_id)
        self._serving.discard(asked)
        if keep and not isinstance(result, Err):
            self._answered[asked] = result
            if len(self._answered) > ANSWERS_MAX:
                self._answered.popitem(last=False)


def line_value(line: Line, *, hit: bool) -> Result:
    """A read answered from this node's line."""
    if line.value is None:
        return Err("not_found", f"no key {line.key!r}", {"key": line.key, "hit": hit})
    return Ok(CacheValue(line.key, msgspec.Raw(line.value), line.version, line.state, hit))


def grant_result(op: Any, grant: Grant, state: str) -> Result:
    """What a caller whose op the grant answered is told."""
    if isinstance(op, CacheRead):
        if grant.version == 0:
            return not_found(grant.key)
        return Ok(CacheValue(grant.key, grant.value, grant.version, state, False))
    result = grant.result
    if not isinstance(result, Ok):
        return result if result is not None else Err("unavailable", "no answer")
    if isinstance(op, CacheWrite):
        return Ok(CacheWritten(grant.key, result.value, state))
    if isinstance(op, CacheDelete):
        return Ok({"key": grant.key, "deleted": result.value})
    return Ok({"key": grant.key, "invalidated": result.value})
