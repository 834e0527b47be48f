"""How a home (actors/cache_home.py) reaches its shard's Raft group: through its node's
``HomePort``, for one leadership at a time.

An answer reaches the home only within the leadership (epoch) that asked, and only if it is a
verdict: a refusal because leadership is gone — reset() has dropped the op — never reaches it,
and a proposal the full log refused is made again at the next tick.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from syncfab.actors.results import Err, Ok, Result

Done = Callable[[Result], None]
NO_VERDICT = frozenset({"not_leader", "leader_changed", "no_leader", "unavailable"})


class HomePort(Protocol):
    """What a home needs from its node: log something in its shard, or confirm it still leads."""

    def propose(self, shard: int, payload: bytes | object, done: Done) -> None:
        """``payload``: a client's encoded request (logged as it is) or an op of the home's own."""

    def confirm(self, shard: int, done: Done) -> None: ...


class HomeLink:
    def __init__(self, shard: int, epoch: Callable[[], int]) -> None:
        self.shard = shard
        self.port: HomePort | None = None  # set by the node
        self._epoch = epoch  # the home's current one (0: not leading)
        self._retry: list[tuple[bytes | object, Done]] = []  # proposals the full log refused

    def forget(self) -> None:
        """Leadership is gone: nothing refused before is proposed again."""
        self._retry = []

    def retry(self) -> None:
        retry, self._retry = self._retry, []
        for payload, done in retry:
            self.propose(payload, done)

    def propose(self, payload: bytes | object, done: Done) -> None:
        """Log ``payload``; ``done`` gets the state machine's verdict."""
        epoch = self._epoch()

        def answered(result: Result) -> None:
            if epoch != self._epoch():
                return
            if isinstance(result, Err) and result.code == "busy":
                self._retry.append((payload, done))
            elif not (isinstance(result, Err) and result.code in NO_VERDICT):
                done(result)

        self._port.propose(self.shard, payload, answered)

    def confirm(self, done: Done) -> None:
        """``done`` runs once a ReadIndex round confirmed this home still leads (never if not)."""
        epoch = self._epoch()
        self._port.confirm(self.shard, lambda r: epoch == self._epoch() and isinstance(r, Ok) and done(r))

    @property
    def _port(self) -> HomePort:
        assert self.port is not None, "a CacheHome needs its node's port"
        return self.port
