"""The cache benchmark's workload (loadtest/cache_trace.py): Zipf-ranked keys, each client's
seeded op trace, the flags of a recorded op, and when the warm-up's hit rate is stable."""

from __future__ import annotations

import bisect
import itertools
import random
from typing import Any

try:  # not a dependency: only makes the Zipf sampler and the offline sort faster
    import numpy as np
except ImportError:  # pragma: no cover - exercised where numpy is absent
    np = None

WRITE, HIT, MEASURED = 1, 2, 4  # flags of a recorded op
WINDOW_S = 2.0  # warm-up: hit rate windows
STABLE_WINDOWS = 8
STABLE_POINTS = 1.0  # the most the trend may move the hit rate over the measured window
KINDS = ("read_hit", "read_miss", "write")


def key_name(rank: int) -> str:
    return f"ck{rank}"


class Zipf:
    """Ranks 0..n-1, P(r) proportional to 1/(r+1)^s, drawn by inverting the CDF."""

    def __init__(self, n: int, s: float) -> None:
        self.n = n
        if np is not None:
            cdf = np.cumsum(1.0 / np.arange(1, n + 1, dtype=np.float64) ** s)
            self._cdf: Any = cdf / cdf[-1]
        else:
            acc = list(itertools.accumulate(r**-s for r in range(1, n + 1)))
            self._cdf = [c / acc[-1] for c in acc]

    def ranks(self, uniforms: list[float]) -> list[int]:
        last = self.n - 1
        if np is not None:
            found = np.searchsorted(self._cdf, np.asarray(uniforms), side="right")
            return list(np.minimum(found, last).tolist())
        cdf = self._cdf
        return [min(bisect.bisect_right(cdf, u), last) for u in uniforms]

    def mass(self, top: int) -> float:
        """The share of draws that land on the ``top`` most popular keys."""
        return float(self._cdf[min(top, self.n) - 1]) if top > 0 else 0.0


class Trace:
    """One client's ops, (is_write, rank), from its own seeded generator, made in chunks."""

    CHUNK = 512

    def __init__(self, zipf: Zipf, read_ratio: float, seed: int) -> None:
        self._rng = random.Random(seed)
        self._zipf = zipf
        self._read_ratio = read_ratio
        self._ops: list[tuple[bool, int]] = []
        self._next = 0

    def next(self) -> tuple[bool, int]:
        if self._next == len(self._ops):
            draw = self._rng.random
            uniforms = [draw() for _ in range(2 * self.CHUNK)]
            ranks = self._zipf.ranks(uniforms[1::2])
            self._ops = [(u >= self._read_ratio, r) for u, r in zip(uniforms[0::2], ranks, strict=True)]
            self._next = 0
        op = self._ops[self._next]
        self._next += 1
        return op


def stable(windows: list[tuple[int, int]], seconds: float) -> bool:
    """The trend of the last windows' hit rates would move it by at most STABLE_POINTS over
    the measured window."""
    if len(windows) < STABLE_WINDOWS:
        return False
    last = windows[-STABLE_WINDOWS:]
    if any(reads == 0 for reads, _ in last):
        return False
    rates = [hits / reads for reads, hits in last]
    xs = [WINDOW_S * i for i in range(len(rates))]
    x_mean, y_mean = sum(xs) / len(xs), sum(rates) / len(rates)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, rates, strict=True)) / sum(
        (x - x_mean) ** 2 for x in xs
    )
    return abs(slope) * max(seconds, 10.0) <= STABLE_POINTS / 100
