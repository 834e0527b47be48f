"""RequestIds (fabric/core/codec.py): ``acked`` is kept as ids finish, not computed when read;
it must always be the lowest id still open, or the next fresh one while none is."""

from __future__ import annotations

import random

from syncfab.fabric.core.codec import RequestIds


def test_acked_is_always_the_lowest_open_id() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        ids = RequestIds()
        issued: list[int] = []
        for _ in range(300):
            x = rng.random()
            if x < 0.3:
                issued.append(ids.next())
            elif x < 0.4:
                first = ids.reserve(rng.randint(1, 5))
                issued += range(first, ids._next)
            elif x < 0.5 and issued:  # a batch's ids, answered together (some perhaps before)
                first = rng.choice(issued)
                ids.done_range(first, rng.randint(1, 6))
            elif issued and rng.random() < 0.9:
                ids.done(rng.choice(issued))  # perhaps again: done twice is done
            else:
                ids.done(rng.randint(-2, ids._next + 2))  # an id never issued changes nothing
            assert ids.acked == next(iter(ids._open), ids._next), f"seed {seed}"
