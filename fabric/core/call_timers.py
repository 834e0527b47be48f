"""The client core's timers: when each call's live attempt or backoff ends.

Every call has one live timer, named by its request id and a token the call moves on with each
send and answer; a timer whose token is stale is skipped (answered, or superseded). Most timers
are attempts of the configured length, started as time moves on, so they end in the order they
began: those wait in a FIFO (O(1) a call); the rest (backoffs, attempts of another length, a
deadline that comes first) in a heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any


class CallTimers:
    def __init__(self, fifo_ms: int) -> None:
        self.fifo_ms = fifo_ms  # the attempt length the FIFO holds
        self._heap: list[tuple[int, int, int, int, int]] = []  # (at, seq, kind, rid, token)
        self._fifo: deque[tuple[int, int, int, int]] = deque()  # (at, kind, rid, token)
        self._fifo_from_ms = 0  # the latest start in the FIFO: later ones keep it in order
        self._seq = itertools.count()

    def add(
        self,
        at_ms: int,
        kind: int,
        rid: int,
        token: int,
        started_ms: int | None = None,
        deadline_ms: int | None = None,
    ) -> None:
        """A timer ending at ``at_ms``, or at ``deadline_ms`` if that comes first (a call's
        timer is never later than its deadline); ``started_ms`` for an attempt that runs its
        full length."""
        if deadline_ms is not None and deadline_ms < at_ms:
            at_ms, started_ms = deadline_ms, None
        started = started_ms if started_ms is not None else -1
        if started >= self._fifo_from_ms and at_ms - started == self.fifo_ms:
            self._fifo_from_ms = started
            self._fifo.append((at_ms, kind, rid, token))
        else:
            heapq.heappush(self._heap, (at_ms, next(self._seq), kind, rid, token))

    def next_ms(self, tokens: Mapping[int, Any]) -> int | None:
        """When the first live timer ends: one whose call is in ``tokens`` (request id -> an
        object with the call's ``token``) with the same token. Stale ones at the front are
        dropped (checked inline: this runs after every drain)."""
        heap, fifo = self._heap, self._fifo
        while heap:
            call = tokens.get(heap[0][3])
            if call is not None and call.token == heap[0][4]:
                break
            heapq.heappop(heap)
        while fifo:
            call = tokens.get(fifo[0][2])
            if call is not None and call.token == fifo[0][3]:
                break
            fifo.popleft()
        if heap and fifo:
            return min(heap[0][0], fifo[0][0])
        return heap[0][0] if heap else fifo[0][0] if fifo else None

    def due(self, now_ms: int) -> list[tuple[int, int, int]]:
        """Every timer ended by ``now_ms``, in the order they end: (kind, rid, token)."""
        heap, fifo = self._heap, self._fifo
        out: list[tuple[int, int, int, int]] = []
        while heap and heap[0][0] <= now_ms:
            at, _, kind, rid, token = heapq.heappop(heap)
            out.append((at, kind, rid, token))
        while fifo and fifo[0][0] <= now_ms:
            out.append(fifo.popleft())
        out.sort(key=lambda t: t[0])  # stable: ties keep the order they were set in
        return [(kind, rid, token) for _, kind, rid, token in out]
