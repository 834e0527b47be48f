"""The simulated network: every message's fate is drawn from the seed.

A message is handed to ``send`` with the callback that delivers it. It may be lost, duplicated,
delayed by a random time (reordering falls out of independent delays), or delayed a lot (a spike).
Directed links can be *cut* (partitions: messages are dropped, also those already on their way)
or *clogged* (swizzle-clog: messages are held and released, late and in a burst, when the link
unclogs). Cuts are counted, so overlapping partitions heal independently.

The network knows nothing about nodes crashing: the simulator checks incarnations on delivery.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from sim_config import SimConfig

Link = tuple[str, str]
Deliver = Callable[..., None]
Schedule = Callable[..., None]  # (delay_ms, fn, *args): run fn(*args) that much later


class SimNetwork:
    def __init__(
        self, rng: random.Random, config: SimConfig, schedule: Schedule, clock: Callable[[], int]
    ) -> None:
        self._rng = rng
        self._config = config
        self._schedule = schedule
        self._clock = clock
        # Ordered links (PUB/SUB over TCP: drops, never reorders): when the last message sent
        # on the link arrives, so none behind it arrives sooner.
        self._tails: dict[Link, int] = {}
        self._cuts: Counter[Link] = Counter()
        self._clogs: dict[Link, list[tuple[Deliver, tuple[Any, ...], bool]]] = {}
        # Off in the liveness phase: the network still delays and reorders, but loses nothing.
        self.faults_enabled = True
        self.stats: Counter[str] = Counter()

    # -- carrying messages ------------------------------------------------------------------

    def send(self, src: str, dst: str, deliver: Deliver, *args: Any, ordered: bool = False) -> None:
        """Put one message on the wire from ``src`` to ``dst``; ``deliver(*args)`` on arrival.
        ``ordered``: lost, maybe, but never duplicated nor overtaken by a later one."""
        link = (src, dst)
        self.stats["sent"] += 1
        if self._cuts[link]:
            self.stats["dropped_partition"] += 1
            return
        held = self._clogs.get(link)
        if held is not None:
            self.stats["clogged"] += 1
            held.append((deliver, args, ordered))
            return
        cfg, rng = self._config, self._rng
        if self.faults_enabled and rng.random() < cfg.packet_loss_probability:
            self.stats["dropped_loss"] += 1
            return
        if ordered:
            self._schedule(self._ordered_delay_ms(link), self._arrive, link, deliver, args)
            return
        copies = 1
        if self.faults_enabled and rng.random() < cfg.duplicate_probability:
            self.stats["duplicated"] += 1
            copies = 2
        for _ in range(copies):
            self._schedule(self._delay_ms(), self._arrive, link, deliver, args)

    def _delay_ms(self) -> int:
        cfg, rng = self._config, self._rng
        if self.faults_enabled and cfg.delay_spike_probability and rng.random() < cfg.delay_spike_probability:
            return rng.randint(cfg.delay_ms_max, max(cfg.delay_ms_max, cfg.delay_spike_ms_max))
        return rng.randint(cfg.delay_ms_min, cfg.delay_ms_max)

    def _ordered_delay_ms(self, link: Link) -> int:
        now = self._clock()
        at = max(now + self._delay_ms(), self._tails.get(link, 0))
        self._tails[link] = at
        return at - now

    def _arrive(self, link: Link, deliver: Deliver, args: tuple[Any, ...]) -> None:
        if self._cuts[link]:
            # The partition started while the message was on its way.
            self.stats["dropped_partition"] += 1
            return
        deliver(*args)

    # -- partitions and clogs ---------------------------------------------------------------

    def is_cut(self, src: str, dst: str) -> bool:
        return self._cuts[(src, dst)] > 0

    def cut(self, links: Iterable[Link]) -> None:
        for link in links:
            self._cuts[link] += 1

    def heal(self, links: Iterable[Link]) -> None:
        for link in links:
            if self._cuts[link] > 0:
                self._cuts[link] -= 1

    def clog(self, link: Link) -> None:
        """Hold the link's messages until ``unclog`` (the nemesis never clogs a link twice)."""
        self._clogs.setdefault(link, [])  # (deliver, args, ordered)

    def unclog(self, link: Link) -> None:
        """Release what the link held; each message then takes its own random delay."""
        for deliver, args, ordered in self._clogs.pop(link, []):
            delay = self._ordered_delay_ms(link) if ordered else self._delay_ms()
            self._schedule(delay, self._arrive, link, deliver, args)

    def heal_all(self) -> None:
        self._cuts.clear()
        for link in sorted(self._clogs):
            self.unclog(link)
