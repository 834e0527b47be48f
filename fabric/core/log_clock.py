"""The time a leader writes into its entries, kept honest against the log's own clock.

Every lease and deadline in a group's log is a time on the clock of the leader that stamped
it. A new leader whose wall clock runs ahead of that clock would read those deadlines early
and end leases early (the chaos suite's clock-skew nemesis: a second lock owner granted 1 s
into a 3 s lease). So each replica remembers the last stamp it appended and its monotonic time
then; that stamp, carried on by the monotonic clock, is the earliest the log's clock can read
now. A replica that takes a group over measures how far its wall clock runs ahead of it and,
beyond ``skew_max_ms``, takes that much off every stamp it writes and every deadline it reads,
slewing the correction away at 1% of the time since: a lease granted meanwhile is at most 1%
short (the clock rate error the cache assumes too), and a log clock held back always comes
back to the wall clock.

Pure: the node passes its monotonic and wall times in.
"""

from __future__ import annotations

from dataclasses import dataclass

SLEW_DIVISOR = 100  # the correction shrinks by 1 ms every 100 ms: 1%


@dataclass(slots=True)
class LogClock:
    skew_max_ms: int
    correction_max_ms: int
    # The last stamp this replica appended since its process started, and its monotonic time
    # then (None: none yet, and the wall clock is trusted).
    seen_stamp_ms: int | None = None
    seen_at_ms: int = 0
    # The correction measured when this replica began to lead, in that term.
    offset_ms: int = 0
    term: int = -1
    since_ms: int = 0

    def appended(self, stamp_ms: int, now_ms: int) -> None:
        """This replica appended an entry stamped ``stamp_ms`` (by whichever leader)."""
        self.seen_stamp_ms, self.seen_at_ms = stamp_ms, now_ms

    def ahead_ms(self, now_ms: int, wall_ms: int) -> int:
        """How far ``wall_ms`` runs ahead of the log's clock, beyond what is tolerated."""
        if self.seen_stamp_ms is None:
            return 0
        log_now = self.seen_stamp_ms + (now_ms - self.seen_at_ms)
        return min(max(wall_ms - log_now - self.skew_max_ms, 0), self.correction_max_ms)

    def stamp(self, term: int, now_ms: int, wall_ms: int) -> int:
        """The time to stamp and to read deadlines by, leading in ``term``: the wall clock less
        the correction found at the first stamp of the term, slewed away since."""
        if self.term != term:
            self.term, self.since_ms = term, now_ms
            self.offset_ms = self.ahead_ms(now_ms, wall_ms)
        if not self.offset_ms:
            return wall_ms
        offset = self.offset_ms - (now_ms - self.since_ms) // SLEW_DIVISOR
        if offset <= 0:
            self.offset_ms = 0
            return wall_ms
        assert offset <= self.correction_max_ms, "a correction only ever shrinks"
        return wall_ms - offset
