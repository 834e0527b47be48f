"""Phi-accrual failure detection (Hayashibara et al., 2004), in Akka's formulation.

Instead of a yes/no timeout, each peer gets a suspicion level phi: -log10 of the probability that a
heartbeat would still be on its way after this much silence, given the inter-arrival times seen so far.
phi = 1 means a 10% chance the peer is merely slow, phi = 8 about one in 10^8. The threshold adapts to
each link: a jittery link needs a longer silence before it is suspected than a steady one.

Like Akka, the intervals are modelled as a normal distribution over a sliding window, whose CDF is
approximated by a logistic function; ``min_std_deviation_ms`` keeps a perfectly regular peer from being
suspected after a few ms of delay, and ``acceptable_heartbeat_pause_ms`` adds planned slack (GC, load).

Pure: time is always an argument, in ms from one monotonic clock; nothing here reads a clock.
"""

from __future__ import annotations

import math
from collections import deque

_LN10 = math.log(10.0)


class _History:
    """One peer's recent inter-arrival times, with running sums so phi costs O(1)."""

    __slots__ = ("interval_sum", "intervals", "last_ms", "squared_sum")

    def __init__(self, window_size: int, last_ms: int) -> None:
        self.intervals: deque[int] = deque(maxlen=window_size)
        # Whole-ms intervals keep the sums exact Python ints: no float drift however long a peer lives.
        self.interval_sum = 0
        self.squared_sum = 0
        self.last_ms = last_ms

    def add(self, interval_ms: int) -> None:
        if len(self.intervals) == self.intervals.maxlen:
            evicted = self.intervals[0]
            self.interval_sum -= evicted
            self.squared_sum -= evicted * evicted
        self.intervals.append(interval_ms)
        self.interval_sum += interval_ms
        self.squared_sum += interval_ms * interval_ms

    def mean_ms(self) -> float:
        return self.interval_sum / len(self.intervals)

    def std_deviation_ms(self) -> float:
        n = len(self.intervals)
        # n * sum(x^2) - sum(x)^2 is an exact non-negative int, so no clamp for rounding is needed.
        return math.sqrt(n * self.squared_sum - self.interval_sum * self.interval_sum) / n


class PhiAccrualDetector:
    """Suspicion levels for many peers, fed heartbeat arrival times by the runtime.

    A peer never heard from (or forgotten) is reported *not* alive, with phi = ``math.inf``: a node
    that has never answered must not count toward anything that needs live peers. (Akka reports such
    a peer as available; we deliberately do not.)
    """

    def __init__(
        self,
        threshold: float = 8.0,
        window_size: int = 100,
        min_std_deviation_ms: float = 50.0,
        acceptable_heartbeat_pause_ms: float = 0.0,
        first_heartbeat_estimate_ms: float = 500.0,
    ) -> None:
        if threshold <= 0.0:
            raise ValueError(f"threshold must be > 0, got {threshold}")
        # Two seed intervals are written at the first heartbeat, so the window must hold them.
        if window_size < 2:
            raise ValueError(f"window_size must be >= 2, got {window_size}")
        if min_std_deviation_ms <= 0.0:
            raise ValueError(f"min_std_deviation_ms must be > 0, got {min_std_deviation_ms}")
        if acceptable_heartbeat_pause_ms < 0.0:
            raise ValueError(
                f"acceptable_heartbeat_pause_ms must be >= 0, got {acceptable_heartbeat_pause_ms}"
            )
        if first_heartbeat_estimate_ms <= 0.0:
            raise ValueError(f"first_heartbeat_estimate_ms must be > 0, got {first_heartbeat_estimate_ms}")
        self.threshold = threshold
        self.window_size = window_size
        self.min_std_deviation_ms = min_std_deviation_ms
        self.acceptable_heartbeat_pause_ms = acceptable_heartbeat_pause_ms
        self.first_heartbeat_estimate_ms = first_heartbeat_estimate_ms
        self._peers: dict[str, _History] = {}

    def heartbeat(self, peer: str, now_ms: int) -> None:
        """Record that a heartbeat from ``peer`` arrived at ``now_ms``."""
        history = self._peers.get(peer)
        if history is None:
            self._peers[peer] = self._first_history(now_ms)
            return
        if now_ms < history.last_ms:
            raise ValueError(f"time went backwards for {peer!r}: {now_ms} < {history.last_ms}")
        # The first beat after a suspected outage is not a sample of the link's rhythm: a long pause
        # in the window would inflate mean and deviation and make the next real failure slow to spot.
        if self._phi(history, now_ms) < self.threshold:
            history.add(now_ms - history.last_ms)
        history.last_ms = now_ms

    def phi(self, peer: str, now_ms: int) -> float:
        """The suspicion level of ``peer`` at ``now_ms``; ``math.inf`` if it was never heard from."""
        history = self._peers.get(peer)
        if history is None:
            return math.inf
        if now_ms < history.last_ms:
            raise ValueError(f"time went backwards for {peer!r}: {now_ms} < {history.last_ms}")
        return self._phi(history, now_ms)

    def is_alive(self, peer: str, now_ms: int) -> bool:
        return self.phi(peer, now_ms) < self.threshold

    def last_heard_ms(self, peer: str) -> int | None:
        history = self._peers.get(peer)
        return None if history is None else history.last_ms

    def sample_count(self, peer: str) -> int:
        """How many intervals the window holds for ``peer`` (0 if unknown); never above ``window_size``."""
        history = self._peers.get(peer)
        return 0 if history is None else len(history.intervals)

    def forget(self, peer: str) -> None:
        """Drop everything about ``peer`` (it left the cluster); unknown peers are ignored."""
        self._peers.pop(peer, None)

    def _first_history(self, now_ms: int) -> _History:
        # With one arrival there is no interval yet; Akka seeds the window with estimate +/- estimate/4
        # so the first silence is judged against a plausible rhythm instead of dividing by nothing.
        history = _History(self.window_size, now_ms)
        spread = self.first_heartbeat_estimate_ms / 4.0
        history.add(round(self.first_heartbeat_estimate_ms - spread))
        history.add(round(self.first_heartbeat_estimate_ms + spread))
        return history

    def _phi(self, history: _History, now_ms: int) -> float:
        elapsed_ms = now_ms - history.last_ms
        mean_ms = history.mean_ms() + self.acceptable_heartbeat_pause_ms
        std_ms = max(history.std_deviation_ms(), self.min_std_deviation_ms)
        y = (elapsed_ms - mean_ms) / std_ms
        # Logistic approximation of the normal CDF: P(X > t) ~= 1 / (1 + e^z). Akka writes phi as
        # -log10(e / (1 + e)) with e = exp(-z), which overflows or hits log10(0) for |y| beyond ~20;
        # the same value is log10(1 + e^z), computed here as a numerically stable softplus.
        z = y * (1.5976 + 0.070566 * y * y)
        if z > 0.0:
            return (z + math.log1p(math.exp(-z))) / _LN10
        return math.log1p(math.exp(z)) / _LN10
