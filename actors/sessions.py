"""Exactly-once application of retried commands (Raft dissertation §6.3, RIFL-style pruning).

Each client numbers its requests; a request also says the lowest id it still awaits
(``acked``), so results below it can be forgotten. A retry of an applied command gets the
recorded result instead of a second application. Bounded: the least recently active clients
are forgotten first (deterministically — apply order, not a clock), and a retry from a
forgotten client would apply again; ``clients_max`` is sized so that takes days of churn.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from syncfab.actors.results import Err, Result, Waiting


class _Image(msgspec.Struct, array_like=True):
    client: str
    acked: int
    results: list[tuple[int, Result | Waiting]]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[_Image]).decode


class SessionTable:
    def __init__(self, clients_max: int = 100_000) -> None:
        self.clients_max = clients_max
        # client -> (acked, {request id: result})
        self._sessions: OrderedDict[str, tuple[int, dict[int, Result | Waiting]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, client: str, request_id: int, acked: int) -> Result | Waiting | None:
        """The recorded result of a retried request, an error for one the client already
        acknowledged, or None when it is new and must be applied."""
        session = self._sessions.get(client)
        if session is None:
            return None
        floor, results = session
        if request_id in results:
            return results[request_id]
        if request_id < floor:
            return Err("stale_request", f"request {request_id} was already acknowledged")
        return None

    def record(self, client: str, request_id: int, acked: int, result: Result | Waiting) -> None:
        session = self._sessions.pop(client, None)
        if session is None:
            floor, results = acked, {}
        else:
            floor, results = session
            if acked > floor:
                floor = acked
                # Prune once the map has grown: a pipelining client moves acked every request.
                if len(results) > 16:
                    results = {i: r for i, r in results.items() if i >= floor}
        results[request_id] = result
        self._sessions[client] = (floor, results)
        while len(self._sessions) > self.clients_max:
            self._sessions.popitem(last=False)

    def replace(self, client: str, request_id: int, result: Result) -> None:
        """A waiting request got its answer: a retry from now on gets the answer."""
        session = self._sessions.get(client)
        if session is not None and request_id in session[1]:
            session[1][request_id] = result

    def snapshot(self) -> bytes:
        return _encode([_Image(c, floor, list(res.items())) for c, (floor, res) in self._sessions.items()])

    def restore(self, data: bytes) -> None:
        self._sessions = OrderedDict((i.client, (i.acked, dict(i.results))) for i in _decode(data))
