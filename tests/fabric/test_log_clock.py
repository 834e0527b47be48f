"""LogClock: a new leader whose wall clock runs ahead of the log's clock stamps less, and the
correction slews away at 1%; within the tolerance, or with nothing appended yet, the wall clock
is trusted."""

from __future__ import annotations

from syncfab.fabric.core.log_clock import LogClock


def clock() -> LogClock:
    return LogClock(skew_max_ms=100, correction_max_ms=600_000)


def test_nothing_appended_yet_trusts_the_wall_clock() -> None:
    c = clock()
    assert c.stamp(term=1, now_ms=0, wall_ms=50_000) == 50_000


def test_a_wall_clock_within_the_tolerance_is_trusted() -> None:
    c = clock()
    c.appended(10_000, now_ms=1_000)
    # 2 s of monotonic time later the log's clock reads 12,000; the wall clock is 80 ms ahead.
    assert c.stamp(term=2, now_ms=3_000, wall_ms=12_080) == 12_080


def test_a_wall_clock_ahead_is_corrected_and_the_correction_slews_away() -> None:
    c = clock()
    c.appended(10_000, now_ms=1_000)
    # Taking over at monotonic 3,000: the log reads 12,000, the wall clock 20,000 (8 s ahead).
    assert c.stamp(term=2, now_ms=3_000, wall_ms=20_000) == 12_100  # 7,900 off: the tolerance kept
    # 10 s later the correction has shrunk by 1% of that: 100 ms.
    assert c.stamp(term=2, now_ms=13_000, wall_ms=30_000) == 30_000 - 7_800
    # Far later it is gone, and stays gone.
    assert c.stamp(term=2, now_ms=800_000 + 3_000, wall_ms=1_000_000) == 1_000_000
    assert c.offset_ms == 0


def test_each_term_measures_afresh_and_corrections_are_bounded() -> None:
    c = LogClock(skew_max_ms=100, correction_max_ms=5_000)
    c.appended(10_000, now_ms=0)
    assert c.stamp(term=3, now_ms=0, wall_ms=60_000) == 55_000  # at most 5 s off
    c.appended(55_000, now_ms=1_000)
    # A later term, with a wall clock in step with the log: no correction.
    assert c.stamp(term=4, now_ms=2_000, wall_ms=56_000) == 56_000
