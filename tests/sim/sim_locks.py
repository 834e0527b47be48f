"""The lock workload: clients that acquire, hold, use and release locks of group 0, and the
resources those locks protect.

A ``LockClient`` is one owner (its client id), like a native client's lock session. Its plans:

- *single*: acquire one resource (shared or exclusive, a wait, a ttl), hold it a while, use it,
  release it;
- *pair*: acquire two neighbouring resources of a ring, in either direction, with a pause between
  — clients doing this concurrently close cycles of two or three owners: deadlocks on purpose;
- *upgrade*: acquire shared, then exclusive on the same resource (two upgraders deadlock too);
- *abandon*: wait for a lock and close the session (ReleaseAll) before the wait is over, so the
  wait ends in the middle of its queue;
- *die*: acquire, then stop renewing and go silent past the ttl (a crashed or paused process),
  then come back and use the resource with the old token before releasing — the zombie that
  fencing exists for.

While it holds anything, a living client renews its lease every third of its ttl (as
fabric/client/locks.py does). An acquire that gave up (outcome unknown) is followed by a release
of that resource that never gives up: the lock may have been granted later, and nobody else could
ever take it while our renewals keep it alive.

``FencedResource`` is the storage a lock protects: it accepts an operation only with a fencing
token no lower than the newest it has seen (a reader: no lower than the newest writer's). It is
the *check*: an accepted use by one holder never overlaps an accepted conflicting use by another
unless a higher token fenced the older holder off, and its tokens never go backwards. ``LockLedger``
checks the grants themselves: a token names one grant only, and a grant of a resource carries a
higher token than every conflicting grant whose reply arrived before it was asked for.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from sim_rpc import Call, Done, RpcClient, RpcHost, Script, Sleep

from syncfab.actors.locks import EXCLUSIVE, SHARED, Acquire, Release, ReleaseAll, Renew
from syncfab.actors.results import Ok, Result

# Outcomes a lock client may get besides Ok (anything else fails the seed).
ACQUIRE_ERRORS = {"lock_timeout", "deadlock", "lease_expired", "cancelled", "already_waiting"}
RELEASE_ERRORS = {"not_held"}
RENEW_ERRORS = {"lease_expired"}


@dataclass(slots=True)
class _Use:
    client: str
    token: int
    mode: str
    since_ms: int


class FencedResource:
    def __init__(self, name: str, host: RpcHost) -> None:
        self.name = name
        self._host = host
        self._newest = 0  # newest token of any accepted operation
        self._newest_writer = 0  # newest token of an accepted exclusive operation
        self._active: dict[str, _Use] = {}  # client -> its accepted, unfinished use
        self.accepted = self.rejected = 0

    def use(self, client: str, token: int, mode: str, phase: str) -> bool:
        """``phase`` "begin" or "end" of ``client``'s use under ``token``; False: fenced off."""
        floor = self._newest if mode == EXCLUSIVE else self._newest_writer
        if token < floor:
            self.rejected += 1
            self._active.pop(client, None)
            return False
        host = self._host
        for other in self._active.values():
            if other.client == client or (mode == SHARED and other.mode == SHARED):
                continue
            if other.token >= token:
                host.fail(
                    "fenced resource",
                    f"{self.name}: {client} (token {token}, {mode}) used it while "
                    f"{other.client} (token {other.token}, {other.mode}) was using it since "
                    f"{other.since_ms} ms",
                )
        # A higher token fences every conflicting older use off: their next operation is refused.
        for other in [u for u in self._active.values() if u.client != client]:
            if mode == EXCLUSIVE or other.mode == EXCLUSIVE:
                del self._active[other.client]
        self._newest = max(self._newest, token)
        if mode == EXCLUSIVE:
            self._newest_writer = max(self._newest_writer, token)
        self.accepted += 1
        if phase == "begin":
            self._active[client] = _Use(client, token, mode, host.now)
        else:
            self._active.pop(client, None)
        return True


class LockLedger:
    """Client-side record of every grant, checked as replies arrive."""

    def __init__(self, host: RpcHost) -> None:
        self._host = host
        self._tokens: dict[int, tuple[str, str]] = {}  # token -> (owner, resource)
        self._owned: set[tuple[str, str, int]] = set()  # (owner, resource, token) granted
        # resource -> newest token of any grant / of an exclusive grant whose reply has arrived
        self.newest: dict[str, int] = {}
        self.newest_writer: dict[str, int] = {}
        self.stats: Counter[str] = Counter()

    def floors(self, resource: str) -> tuple[int, int]:
        """What an acquire asked now must beat: (newest token, newest exclusive token)."""
        return self.newest.get(resource, 0), self.newest_writer.get(resource, 0)

    def granted(self, owner: str, resource: str, mode: str, token: int, floors: tuple[int, int]) -> None:
        host = self._host
        seen = self._tokens.setdefault(token, (owner, resource))
        if seen != (owner, resource):
            host.fail(
                "fencing tokens",
                f"token {token} granted to {owner} for {resource} and to {seen[0]} for {seen[1]}",
            )
        # Re-entrant: a hold this owner already had (a late duplicate re-acquired it) keeps its token.
        if (owner, resource, token) in self._owned:
            self.stats["reentrant"] += 1
        else:
            floor = floors[0] if mode == EXCLUSIVE else floors[1]
            if token <= floor:
                host.fail(
                    "fencing tokens",
                    f"{owner} was granted {resource} ({mode}) with token {token}, "
                    f"but a conflicting grant with token {floor} was answered before it asked",
                )
        self._owned.add((owner, resource, token))
        self.newest[resource] = max(self.newest.get(resource, 0), token)
        if mode == EXCLUSIVE:
            self.newest_writer[resource] = max(self.newest_writer.get(resource, 0), token)


class LockClient(RpcClient):
    def __init__(
        self,
        index: int,
        host: RpcHost,
        rng: random.Random,
        resources: dict[str, FencedResource],
        ledger: LockLedger,
    ) -> None:
        super().__init__(f"locker-{index}", host, rng)
        # A coalescing client shared by the seed's lockers (sim_workloads.py), or None: its
        # ClientCore sends the acquires and releases that pile up within a few ms as one LockBatch
        # (owners are named in the ops, so any client may carry them).
        self.batcher: RpcClient | None = None
        self.owner = self.name
        self._resources = resources
        self._names = sorted(resources)
        self._ledger = ledger
        cfg = host.config
        self.ttl_ms = rng.randint(cfg.lock_ttl_ms_min, cfg.lock_ttl_ms_max)
        self.held: dict[str, tuple[int, str]] = {}  # resource -> (token, mode) as we believe
        self._renewing = False
        self._alive = True  # False while "dead": no renewals
        self._liveness = False
        self._liveness_plans = 0
        self.finished = False
        self.stats: Counter[str] = Counter()

    def call(self, op: Any, on_done: Done, deadline_ms: int | None, **where: Any) -> int:
        if self.batcher is not None and type(op) in (Acquire, Release):
            return self.batcher.call(op, on_done, deadline_ms)
        return super().call(op, on_done, deadline_ms, **where)

    # -- driving -----------------------------------------------------------------------------

    def start(self) -> None:
        self.run_script(self._main())

    def enter_liveness(self, plans: int) -> None:
        self._liveness, self._liveness_plans = True, plans

    @property
    def done(self) -> bool:
        return self.finished and not self.pending

    def _deadline(self) -> int | None:
        return None if self._liveness else self.config.op_deadline_ms

    def _main(self) -> Script:
        cfg, rng = self.config, self.rng
        yield Sleep(rng.randint(0, cfg.think_time_ms_max))
        plans = cfg.lock_plans_per_client
        while plans > 0 and self.host.now < cfg.safety_duration_ms and not self._liveness:
            plans -= 1
            yield from self._plan(allow_death=True)
            yield Sleep(rng.randint(0, cfg.think_time_ms_max))
        while not self._liveness:  # idle until the liveness phase
            yield Sleep(50)
        for _ in range(self._liveness_plans):
            yield from self._plan(allow_death=False)
        # A clean close: whatever is left (a late duplicate's grant) goes now.
        result = yield Call(ReleaseAll(self.owner))
        self._expect(result, "release_all", set())
        self.held.clear()
        self.finished = True

    def _plan(self, allow_death: bool) -> Script:
        cfg, rng = self.config, self.rng
        roll = rng.random()
        wait_ms = 0 if rng.random() < 0.15 else rng.randint(50, cfg.lock_wait_ms_max)
        if rng.random() < 0.15:
            # Longer than the lease: a client holding nothing does not renew, so its lease may
            # end while it waits — in the middle of a queue.
            wait_ms = rng.randint(self.ttl_ms, 2 * self.ttl_ms)
        if roll < cfg.lock_pair_probability and len(self._names) > 1:
            k = rng.randrange(len(self._names))
            pair = [self._names[k], self._names[(k + 1) % len(self._names)]]
            if rng.random() < 0.5:
                pair.reverse()
            self.stats["pair_plans"] += 1
            yield from self._hold([(r, EXCLUSIVE) for r in pair], max(wait_ms, 200), die=False)
        elif roll < cfg.lock_pair_probability + cfg.lock_upgrade_probability:
            self.stats["upgrade_plans"] += 1
            r = self._pick()
            yield from self._hold([(r, SHARED), (r, EXCLUSIVE)], max(wait_ms, 100), die=False)
        elif roll < cfg.lock_pair_probability + cfg.lock_upgrade_probability + cfg.lock_abandon_probability:
            self.stats["abandon_plans"] += 1
            yield from self._abandon(self._pick(), max(wait_ms, 200))
        else:
            mode = SHARED if rng.random() < cfg.lock_shared_probability else EXCLUSIVE
            die = allow_death and rng.random() < cfg.lock_die_probability
            self.stats["die_plans" if die else "single_plans"] += 1
            yield from self._hold([(self._pick(), mode)], wait_ms, die)

    def _pick(self) -> str:
        # One hot resource: queues three or four deep are where waits start and end mid-queue.
        return self._names[0] if self.rng.random() < 0.4 else self.rng.choice(self._names)

    def _hold(self, wanted: list[tuple[str, str]], wait_ms: int, die: bool) -> Script:
        cfg, rng = self.config, self.rng
        for i, (r, mode) in enumerate(wanted):
            if i:
                yield Sleep(rng.randint(10, 150))  # the pause in which the other owner takes it
            floors = self._ledger.floors(r)
            result = yield Call(Acquire(r, mode, self.owner, wait_ms, self.ttl_ms), self._deadline())
            if result is None:
                yield from self._release(r, cleanup=True)
                break
            if not self._expect(result, "acquire", ACQUIRE_ERRORS):
                break
            value = result.value  # type: ignore[union-attr]
            token, granted_mode = value["fencing_token"], value["mode"]
            if value["resource"] != r or (granted_mode != mode and granted_mode != EXCLUSIVE):
                self.host.fail("client protocol", f"{self.owner} asked {r} {mode}, was granted {value}")
            self._ledger.granted(self.owner, r, granted_mode, token, floors)
            self.stats["granted"] += 1
            self.held[r] = (token, granted_mode)
            self._use(r, "begin")
            if not self._renewing:
                self.run_script(self._keepalive())
        if self.held:
            if die:
                self._alive = False  # silent: no renewals, no release, until past the lease
                yield Sleep(self.ttl_ms + rng.randint(100, 600))
                self._alive = True
            else:
                yield Sleep(rng.randint(10, cfg.lock_hold_ms_max))
            for r in sorted(self.held):
                self._use(r, "end")
            for r in sorted(self.held):
                yield from self._release(r, cleanup=False)

    def _abandon(self, r: str, wait_ms: int) -> Script:
        closed: list[bool] = []
        self.run_script(self._close_after(self.rng.randint(20, wait_ms), closed))
        floors = self._ledger.floors(r)
        result = yield Call(Acquire(r, EXCLUSIVE, self.owner, wait_ms, self.ttl_ms), self._deadline())
        while not closed:
            yield Sleep(20)
        if isinstance(result, Ok):
            # Granted before the close was applied (and released by it), or after it (a retry
            # that came late): a release settles which, and we never use it.
            self._ledger.granted(self.owner, r, result.value["mode"], result.value["fencing_token"], floors)
        if result is None or self._expect(result, "acquire", ACQUIRE_ERRORS):
            yield from self._release(r, cleanup=True)

    def _close_after(self, delay_ms: int, closed: list[bool]) -> Script:
        yield Sleep(delay_ms)
        result = yield Call(ReleaseAll(self.owner))  # must land: it is what ends the wait
        self._expect(result, "release_all", set())
        closed.append(True)

    def _use(self, r: str, phase: str) -> None:
        token, mode = self.held[r]
        if not self._resources[r].use(self.owner, token, mode, phase):
            self.stats["fenced"] += 1

    def _release(self, r: str, cleanup: bool) -> Script:
        # A release must land, or the lock would stay ours for as long as we renew: never give up.
        result = yield Call(Release(r, self.owner))
        self.held.pop(r, None)
        if self._expect(result, "release", RELEASE_ERRORS) and cleanup:
            self.stats["cleanup_released" if result.value.get("released") else "cleanup_nothing"] += 1  # type: ignore[union-attr]

    def _keepalive(self) -> Script:
        self._renewing = True
        try:
            while self.held:
                yield Sleep(self.ttl_ms // 3)
                if not self.held:
                    return
                if not self._alive:
                    continue
                deadline = None if self._liveness else self.ttl_ms // 3  # a late renewal is useless
                result = yield Call(Renew(self.owner, self.ttl_ms), deadline)
                if result is None:
                    continue
                if not self._expect(result, "renew", RENEW_ERRORS):
                    self.stats["lease_lost"] += 1
        finally:
            self._renewing = False

    def _expect(self, result: Result | None, what: str, allowed: set[str]) -> bool:
        """True for Ok; False for an allowed error; a seed failure for anything else."""
        assert result is not None
        if isinstance(result, Ok):
            return True
        if result.code not in allowed:
            self.host.fail("client protocol", f"{self.owner}: {what} failed with {result}")
        self.stats[f"{what}_{result.code}"] += 1
        return False
