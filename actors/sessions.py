"""Exactly-once application of retried commands (Raft dissertation §6.3, RIFL-style pruning).

Each client numbers its requests; a request also says the lowest id it still awaits
(``acked``), so results below it can be forgotten. A retry of an applied command gets the
recorded result instead of a second application. Bounded: the least recently active clients
are forgotten first (deterministically — apply order, not a clock), and a retry from a
forgotten client would apply again; ``clients_max`` is sized so that takes days of churn.

Answers depend only on the floor (the highest ``acked`` seen), never on when results below
it were dropped: ``lookup`` checks the floor before the results and ``snapshot`` leaves out
what is below it. So pruning is free to be amortised — a pipelining client moves ``acked``
with every request, and pruning its map each time was O(outstanding) per command.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from syncfab.actors.results import Err, Result, Waiting

# A client's results are pruned once their map has this many entries and twice as many as
# were left by its last pruning: O(1) amortised, at most twice what it must keep (plus this).
PRUNE_ENTRIES_MIN = 16


class _Image(msgspec.Struct, array_like=True):
    client: str
    acked: int
    results: list[tuple[int, Result | Waiting]]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[_Image]).decode


class Session:
    """One client's records. ``SessionTable.session`` hands one out for a run of requests from
    that client (a batch's ops): ``lookup`` and ``record`` then answer as the table's would."""

    __slots__ = ("floor", "prune_at", "results")

    def __init__(self, floor: int, results: dict[int, Result | Waiting]) -> None:
        self.floor = floor  # every id below it was acknowledged: answered stale, kept or not
        self.results = results  # request id -> result, in apply order; may hold ids below floor
        self.prune_at = max(PRUNE_ENTRIES_MIN, 2 * len(results))

    def lookup(self, request_id: int) -> Result | Waiting | None:
        if request_id < self.floor:
            return Err("stale_request", f"request {request_id} was already acknowledged")
        return self.results.get(request_id)

    def record(self, request_id: int, result: Result | Waiting) -> None:
        self.results[request_id] = result

    def _prune(self) -> None:
        if len(self.results) >= self.prune_at:
            floor = self.floor
            self.results = {i: r for i, r in self.results.items() if i >= floor}
            self.prune_at = max(PRUNE_ENTRIES_MIN, 2 * len(self.results))


class SessionTable:
    def __init__(self, clients_max: int = 100_000) -> None:
        self.clients_max = clients_max
        self._sessions: OrderedDict[str, Session] = OrderedDict()  # least recently active first

    def __len__(self) -> int:
        return len(self._sessions)

    def lookup(self, client: str, request_id: int, acked: int) -> Result | Waiting | None:
        """The recorded result of a retried request, an error for one the client already
        acknowledged, or None when it is new and must be applied."""
        session = self._sessions.get(client)
        return None if session is None else session.lookup(request_id)

    def record(self, client: str, request_id: int, acked: int, result: Result | Waiting) -> None:
        self.session(client, acked).record(request_id, result)

    def session(self, client: str, acked: int) -> Session:
        """``client``'s session, made most recently active, its floor raised to ``acked`` and
        pruned when due — what ``record`` does before it records; a batch does it once."""
        sessions = self._sessions
        session = sessions.get(client)
        if session is None:
            session = sessions[client] = Session(acked, {})
            while len(sessions) > self.clients_max:
                sessions.popitem(last=False)
        else:
            sessions.move_to_end(client)
            if acked > session.floor:
                session.floor = acked
            session._prune()
        return session

    def replace(self, client: str, request_id: int, result: Result) -> None:
        """A waiting request got its answer: a retry from now on gets the answer."""
        session = self._sessions.get(client)
        if session is not None and request_id in session.results:
            session.results[request_id] = result

    def snapshot(self) -> bytes:
        return _encode(
            [
                _Image(c, s.floor, [(i, r) for i, r in s.results.items() if i >= s.floor])
                for c, s in self._sessions.items()
            ]
        )

    def restore(self, data: bytes) -> None:
        self._sessions = OrderedDict((i.client, Session(i.acked, dict(i.results))) for i in _decode(data))
