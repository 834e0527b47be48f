"""The lock table of group 0: shared/exclusive locks, FIFO waiters, leases, fencing tokens.

Applied identically on every replica: time is the leader's stamp (``ctx.now_ms``), order is
list order or ``sorted``, never set or hash order.

- **Fairness.** A request waits behind every earlier waiter it conflicts with, so readers cannot
  starve a queued writer; the queue's front is granted once compatible with the holders.
- **Upgrades** (a shared holder asks exclusive) go ahead of the queue and wait only for the other
  holders: behind a queued writer an upgrade would always deadlock (the writer waits for the
  upgrader's shared hold, the upgrader for the writer). Two upgraders still deadlock; the younger
  request is aborted and its owner keeps its shared hold until it releases it.
- **Deadlocks.** Only a starting wait adds reachability, so the cycle search runs from its owner.
  The victim is the youngest *request* on the cycle (highest arrival among the waits behind its
  edges): as the graph is acyclic before every apply, the one that closed the cycle, which fails
  at once (notifying an older victim stays as a defence). Edges are reduced to stay linear in the
  queue: a waiter behind a queued writer points at it (a writer also at the readers between),
  and it reaches everything further ahead. Every edge is a real conflict and reachability is
  unchanged, so the cycles found are exactly the real deadlocks.
- **Leases.** Acquire and Renew raise an owner's deadline to ``now + ttl``, and so does a grant
  after a wait (a wait longer than the lease needs renewals). A lease ends when ``ExpireLocks`` is
  applied, earliest deadline first, granting as it goes: a waiter whose holder expired before its
  own wait ran out is granted, not timed out.
- **Costs and bounds.** ``waiters_max`` per resource (then ``busy``, retryable), names up to
  ``NAME_BYTES_MAX`` bytes, ``ttl_ms_max``, ``wait_ms_max``. An append is O(1); a change in a
  queue revisits it only up to the next writer whose blockers stay the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import takewhile
from typing import TYPE_CHECKING, Any

import msgspec

from syncfab.actors.limits import NAME_BYTES_MAX
from syncfab.actors.lock_deadlines import LEASE, LockDeadlines
from syncfab.actors.lock_ops import (
    Acquire,
    ExpireLocks,
    LockBatch,
    LockInfo,
    OwnerInfo,
    Release,
    ReleaseAll,
    Renew,
)
from syncfab.actors.lock_state import Hold, LockImage, Owner, Resource, Wait
from syncfab.actors.results import WAITING, Err, Ok, Result, Waiting, bad_request
from syncfab.actors.wait_for import WaitForGraph

if TYPE_CHECKING:
    from syncfab.actors.machine import ApplyContext

__all__ = [
    "COMPATIBLE",
    "COVERS",
    "EXCLUSIVE",
    "MODES",
    "NAME_BYTES_MAX",
    "SHARED",
    "Acquire",
    "ExpireLocks",
    "LockBatch",
    "LockInfo",
    "LockTable",
    "OwnerInfo",
    "Release",
    "ReleaseAll",
    "Renew",
]

SHARED, EXCLUSIVE = "shared", "exclusive"
MODES = (SHARED, EXCLUSIVE)
# (held by another owner, requested) -> both may be held at once.
COMPATIBLE: dict[tuple[str, str], bool] = {
    (SHARED, SHARED): True,
    (SHARED, EXCLUSIVE): False,
    (EXCLUSIVE, SHARED): False,
    (EXCLUSIVE, EXCLUSIVE): False,
}
# (held by the asking owner, requested) -> that hold already grants the request (re-entrancy);
# the one pair that does not is an upgrade.
COVERS: dict[tuple[str, str], bool] = {
    (SHARED, SHARED): True,
    (SHARED, EXCLUSIVE): False,
    (EXCLUSIVE, SHARED): True,
    (EXCLUSIVE, EXCLUSIVE): True,
}
_COUNTERS = ("grants", "waits", "timeouts", "deadlocks", "expiries", "releases")


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(LockImage).decode


def _grant(resource: str, hold: Hold) -> Ok:
    return Ok({"granted": True, "fencing_token": hold.token, "resource": resource, "mode": hold.mode})


class LockTable:
    commands = (Acquire, Release, ReleaseAll, Renew, ExpireLocks)
    queries = (LockInfo, OwnerInfo)
    locals = ()
    batches = (LockBatch,)

    def __init__(
        self, *, ttl_ms_max: int = 3_600_000, wait_ms_max: int = 3_600_000, waiters_max: int = 10_000
    ) -> None:
        self.ttl_ms_max = ttl_ms_max
        self.wait_ms_max = wait_ms_max  # deadlines must stay in the snapshot's 64-bit integers
        self.waiters_max = waiters_max  # per resource
        # Command -> (its validation, its application).
        self._commands: dict[
            type, tuple[Callable[[Any], Err | None], Callable[[ApplyContext, Any], Result | Waiting]]
        ] = {
            Acquire: (self._check_acquire, self._acquire),
            Release: (self._check_release, self._release),
            ReleaseAll: (self._check_owner, self._release_all),
            Renew: (self._check_renew, self._renew),
            ExpireLocks: (self._check_nothing, self._expire),
        }
        self._reset()

    def _reset(self) -> None:
        self._resources: dict[str, Resource] = {}
        self._owners: dict[str, Owner] = {}
        self._waits: dict[int, Wait] = {}  # arrival -> wait
        self._deadlines = LockDeadlines(self._owners, self._waits)
        self.graph = WaitForGraph()
        self._tokens = self._arrivals = 0
        self._stats = dict.fromkeys(_COUNTERS, 0)
        self._ctx: ApplyContext | None = None
        self._current: Wait | None = None  # the wait of the Acquire being applied
        self._decided: Result | None = None  # its answer, when decided within that apply

    # -- the Service protocol ------------------------------------------------------------

    def apply(self, ctx: ApplyContext, op: Any) -> Result | Waiting:
        command = self._commands.get(type(op))
        if command is None:  # a subclass of a command, if anyone makes one
            kind = next((c for c in self.commands if isinstance(op, c)), None)
            if kind is None:
                raise TypeError(f"not a lock command: {op!r}")
            command = self._commands[kind]
        check, handler = command
        bad = check(op)
        if bad is not None:
            return bad
        self._ctx = ctx
        try:
            return handler(ctx, op)
        finally:
            self._ctx = None

    def query(self, op: Any) -> Result:
        match op:
            case LockInfo(resource=r):
                res = self._resources.get(r) or Resource()
                holders = [
                    {"owner": o, "mode": h.mode, "fencing_token": h.token}
                    for o, h in sorted(res.holders.items())
                ]
                waiters = [{"owner": w.owner, "mode": w.mode, "since_ms": w.since_ms} for w in res.queue]
                return Ok({"resource": r, "holders": holders, "waiters": waiters})
            case OwnerInfo(owner=o):
                rec = self._owners.get(o)
                if rec is None:
                    return Err("not_found", f"no lease for owner {o!r}", {"owner": o})
                holds = [(r, self._resources[r].holders[o]) for r in sorted(rec.held)]
                return Ok(
                    {
                        "owner": o,
                        "lease_expires_at_ms": rec.lease_ms,
                        "held": [{"resource": r, "mode": h.mode, "fencing_token": h.token} for r, h in holds],
                        "waiting": [
                            {"resource": r, "mode": rec.waits[r].mode, "since_ms": rec.waits[r].since_ms}
                            for r in sorted(rec.waits)
                        ],
                    }
                )
        raise TypeError(f"not a lock query: {op!r}")

    def local(self, now_ms: int, op: object) -> Result:
        raise TypeError("the lock table has no leader-only operations")

    def due(self, now_ms: int) -> list[Any]:
        """[ExpireLocks()] while some lease or wait deadline has passed (actors/lock_deadlines.py)."""
        return [ExpireLocks()] if self._deadlines.due(now_ms) else []

    def hand_over(self) -> list[object]:
        return []

    def reset_local(self, leading: bool) -> None:
        pass

    def stats(self) -> dict[str, int]:
        held = sum(len(res.holders) for res in self._resources.values())
        return {**self._stats, "locks_held": held, "waiters": len(self._waits), "owners": len(self._owners)}

    def snapshot(self) -> bytes:
        names = sorted(self._resources)
        return _encode(
            LockImage(
                self._tokens,
                self._arrivals,
                dict(self._stats),
                sorted((o, rec.lease_ms) for o, rec in self._owners.items()),
                [(r, o, h) for r in names for o, h in sorted(self._resources[r].holders.items())],
                [w for r in names for w in self._resources[r].queue],
            )
        )

    def restore(self, data: bytes) -> None:
        image = _decode(data)
        self._reset()
        self._tokens, self._arrivals = image.tokens, image.arrivals
        self._stats = {k: image.stats.get(k, 0) for k in _COUNTERS}
        # Filled, not rebound: _deadlines holds this map (and _waits).
        self._owners.update((o, Owner(lease_ms)) for o, lease_ms in image.leases)
        for r, o, hold in image.holds:
            self._resources.setdefault(r, Resource()).holders[o] = hold
            self._owners[o].held.add(r)
        for w in image.waits:
            self._resources.setdefault(w.resource, Resource()).queue.append(w)
            self._owners[w.owner].waits[w.resource] = w
            self._waits[w.arrival] = w
            w.blockers = ()  # derived: recomputed below, with the graph
        self._deadlines.compact()
        for r in sorted(self._resources):
            self._rewire(self._resources[r])

    # -- commands ------------------------------------------------------------------------

    # Validation: the first bad field, in declaration order, named in ``detail["field"]``.

    def _check_acquire(self, op: Acquire) -> Err | None:
        if not _name_ok(op.resource):
            return _bad_name("resource")
        if op.mode not in MODES:
            return _bad_field("mode", f"must be one of {', '.join(MODES)}")
        if not _name_ok(op.owner):
            return _bad_name("owner")
        if not 0 <= op.wait_ms <= self.wait_ms_max:
            return _bad_field("wait_ms", f"must be 0..{self.wait_ms_max}")
        return self._check_ttl(op)

    def _check_release(self, op: Release) -> Err | None:
        if not _name_ok(op.resource):
            return _bad_name("resource")
        return self._check_owner(op)

    def _check_owner(self, op: Release | ReleaseAll | Renew) -> Err | None:
        return None if _name_ok(op.owner) else _bad_name("owner")

    def _check_renew(self, op: Renew) -> Err | None:
        return self._check_owner(op) or self._check_ttl(op)

    def _check_ttl(self, op: Acquire | Renew) -> Err | None:
        if not 0 < op.ttl_ms <= self.ttl_ms_max:
            return _bad_field("ttl_ms", f"must be 1..{self.ttl_ms_max}")
        return None

    def _check_nothing(self, op: ExpireLocks) -> None:
        return None

    def _acquire(self, ctx: ApplyContext, op: Acquire) -> Result | Waiting:
        r, o, mode, now_ms = op.resource, op.owner, op.mode, ctx.now_ms
        rec = self._owners.get(o)
        if rec is None:
            rec = self._owners[o] = Owner(0)
        self._deadlines.extend_lease(o, rec, now_ms + op.ttl_ms)
        res = self._resources.get(r)
        if res is None:
            # Safe to create: unless granted, the request is refused only when a hold or wait exists.
            res = self._resources[r] = Resource()
        holders = res.holders
        hold = holders.get(o)
        if hold is not None and COVERS[hold.mode, mode]:
            return _grant(r, hold)
        if r in rec.waits:
            return Err("already_waiting", f"{o!r} already waits for {r!r}", {"resource": r})
        upgrade = hold is not None
        free = not holders or all(COMPATIBLE[h.mode, mode] for h_owner, h in holders.items() if h_owner != o)
        # A normal request also queues behind any waiter: the front is blocked by something this
        # request conflicts with too, or it would have been granted.
        if free and (upgrade or not res.queue):
            grant = self._grant_to(r, res, o, rec, mode)
            if res.queue:
                self._rewire(res)  # the upgraded holder now blocks the queue as a writer
            return grant
        if op.wait_ms == 0:
            self._stats["timeouts"] += 1
            return Err("lock_timeout", "lock is held", {"resource": r})
        if len(res.queue) >= self.waiters_max:
            return Err("busy", f"{self.waiters_max} requests already wait for {r!r}", {"resource": r})
        self._arrivals += 1
        w = Wait(
            r,
            o,
            mode,
            upgrade,
            now_ms,
            now_ms + op.wait_ms,
            op.ttl_ms,
            self._arrivals,
            ctx.client,
            ctx.request_id,
        )
        rec.waits[r] = self._waits[w.arrival] = w
        self._deadlines.wait(w)
        self._stats["waits"] += 1
        if upgrade:
            res.queue.insert(sum(1 for _ in takewhile(lambda q: q.upgrade, res.queue)), w)
            self._rewire(res)  # everyone queued now waits for the upgrade too
        else:  # appending changes nobody else's blockers
            res.queue.append(w)
            w.blockers = self._blockers(res, res.queue, len(res.queue) - 1)
            self._reedge(o)
        self._current, self._decided = w, None
        try:
            self._break_cycles(o)
            return WAITING if self._decided is None else self._decided
        finally:
            self._current = self._decided = None

    def _release(self, ctx: ApplyContext, op: Release) -> Result:
        r, o = op.resource, op.owner
        rec, res = self._owners.get(o), self._resources.get(r)
        wait = None if rec is None else rec.waits.get(r)
        held = rec is not None and res is not None and o in res.holders
        if not held and wait is None:
            return Err("not_held", f"{o!r} neither holds nor waits for {r!r}", {"resource": r})
        assert rec is not None and res is not None
        start = 0
        if wait is not None:  # a plain wait, or the upgrade of the hold released below
            start = self._unqueue(wait)
            self._answer(wait, Err("cancelled", "released while waiting", {"resource": r}))
        if held:
            del res.holders[o]
            rec.held.discard(r)
            self._stats["releases"] += 1
        self._settle(r, 0 if held else start)
        return Ok({"released": True}) if held else Ok({"released": False, "cancelled": True})

    def _release_all(self, ctx: ApplyContext, op: ReleaseAll) -> Result:
        o = op.owner
        rec = self._owners.get(o)
        if rec is None:
            return Ok({"released": 0})
        released = len(rec.held)
        self._stats["releases"] += released
        self._drop_owner(o, Err("cancelled", "the owner released everything", {"owner": o}))
        return Ok({"released": released})

    def _renew(self, ctx: ApplyContext, op: Renew) -> Result:
        o = op.owner
        rec = self._owners.get(o)
        if rec is None:
            return Err("lease_expired", f"{o!r} has no lease", {"owner": o})
        self._deadlines.extend_lease(o, rec, ctx.now_ms + op.ttl_ms)
        return Ok({"lease_expires_at_ms": rec.lease_ms})

    def _expire(self, ctx: ApplyContext, op: ExpireLocks) -> Result:
        """Every deadline up to ``ctx.now_ms``, earliest first, as if each had been handled on time."""
        now_ms = ctx.now_ms
        leases = timeouts = 0
        while (deadline := self._deadlines.earliest()) is not None and deadline <= now_ms:
            _, kind, o, arrival = self._deadlines.pop()
            if kind == LEASE:
                leases += 1
                self._drop_owner(o, Err("lease_expired", f"the lease of {o!r} expired", {"owner": o}))
                continue
            w = self._waits[arrival]
            timeouts += 1
            stood = self._unqueue(w)
            waited = f"waited {w.deadline_ms - w.since_ms} ms"
            self._answer(w, Err("lock_timeout", waited, {"resource": w.resource}))
            self._settle(w.resource, stood)
        self._stats["expiries"] += leases
        self._stats["timeouts"] += timeouts
        return Ok({"leases_expired": leases, "waits_timed_out": timeouts})

    # -- grants, queues and edges --------------------------------------------------------

    def _grant_to(self, r: str, res: Resource, o: str, rec: Owner, mode: str) -> Ok:
        self._tokens += 1
        self._stats["grants"] += 1
        hold = res.holders[o] = Hold(mode, self._tokens)
        rec.held.add(r)
        return _grant(r, hold)

    def _answer(self, w: Wait, result: Result) -> None:
        if w is self._current:
            self._decided = result  # its own apply returns it; no notice
        else:
            assert self._ctx is not None
            self._ctx.notify(w.client, w.request_id, result)

    def _unqueue(self, w: Wait) -> int:
        """Take ``w`` out of its queue; returns where it stood."""
        queue = self._resources[w.resource].queue
        stood = queue.index(w)
        del queue[stood]
        del self._owners[w.owner].waits[w.resource]
        del self._waits[w.arrival]
        self._reedge(w.owner)
        return stood

    def _settle(self, r: str, start: int = 0) -> None:
        """After holders of ``r`` left (``start`` 0) or a waiter at ``start`` did: grant from the
        front while compatible, then recompute the blockers of those still waiting. Nothing
        behind a blocked front can be granted: it conflicts with the front or (two readers) with
        what blocks the front."""
        res = self._resources.get(r)
        if res is None:
            return
        while res.queue:
            w = res.queue[0]
            if not all(COMPATIBLE[h.mode, w.mode] for o, h in res.holders.items() if o != w.owner):
                break
            self._unqueue(w)
            rec = self._owners[w.owner]
            grant = self._grant_to(r, res, w.owner, rec, w.mode)
            assert self._ctx is not None
            self._deadlines.extend_lease(w.owner, rec, self._ctx.now_ms + w.ttl_ms)
            self._answer(w, grant)
            start = 0
        if res.holders or res.queue:
            self._rewire(res, start)
        else:
            del self._resources[r]

    @staticmethod
    def _blockers(res: Resource, q: Sequence[Wait], i: int) -> tuple[str, ...]:
        """The owners ``q[i]`` waits for, reduced to keep the graph linear (module docstring):
        each is a real conflict, and everything it conflicts with is reachable from them. Needs
        the blockers of ``q[i - 1]`` current. A writer scans back over the readers just ahead of
        it, and only the next writer scans them again, so a walk of the queue stays linear."""
        w = q[i]
        if w.upgrade:  # the other holders, not the queue (module docstring)
            return tuple(sorted(o for o in res.holders if o != w.owner))
        j = i - 1
        if w.mode == SHARED:
            if j >= 0 and not q[j].upgrade:  # behind a writer: it; behind a reader: what it waits for
                return (q[j].owner,) if q[j].mode == EXCLUSIVE else q[j].blockers
            upgraders = {q[k].owner for k in range(i)}  # all that is ahead
            return tuple(sorted({o for o, h in res.holders.items() if h.mode == EXCLUSIVE} | upgraders))
        readers = set()
        while j >= 0 and not q[j].upgrade and q[j].mode == SHARED:
            readers.add(q[j].owner)
            j -= 1
        # The writer ahead reaches every holder; with none, wait for the holders themselves.
        ahead = {q[j].owner} if j >= 0 and not q[j].upgrade else set(res.holders)
        return tuple(sorted(ahead | readers))

    def _rewire(self, res: Resource, start: int = 0) -> None:
        """Recompute blockers from ``start`` (where the queue changed; 0 when the holders did),
        and the edges of owners that changed. It stops at the first writer whose blockers stay:
        those behind it see the holders and the queue ahead only through it."""
        q = res.queue
        changed: set[str] = set()
        for i in range(start, len(q)):
            w = q[i]
            blockers = self._blockers(res, q, i)
            if blockers != w.blockers:
                w.blockers = blockers
                changed.add(w.owner)
            elif w.mode == EXCLUSIVE and not w.upgrade:
                break
        for o in sorted(changed):
            self._reedge(o)

    def _reedge(self, o: str) -> None:
        rec = self._owners.get(o)
        self.graph.set_edges(o, () if rec is None else {b for w in rec.waits.values() for b in w.blockers})

    def _break_cycles(self, start: str) -> None:
        while (cycle := self.graph.find_cycle(start)) is not None:
            n = len(cycle)
            victim = max(
                (
                    w
                    for i, o in enumerate(cycle)
                    for w in self._owners[o].waits.values()
                    if cycle[(i + 1) % n] in w.blockers
                ),
                key=lambda w: w.arrival,
            )
            k = cycle.index(victim.owner)
            cycle = cycle[k:] + cycle[:k]  # the victim's owner first, then whom it waits for
            self._stats["deadlocks"] += 1
            stood = self._unqueue(victim)
            message = f"aborted to break the cycle {' -> '.join(cycle)}"
            self._answer(victim, Err("deadlock", message, {"cycle": cycle, "resource": victim.resource}))
            self._settle(victim.resource, stood)

    def _drop_owner(self, o: str, err: Err) -> None:
        """End an owner's lease: answer its waits with ``err``, drop its holds, grant what that frees."""
        rec = self._owners[o]
        # Where each resource changed: a wait's place in its queue, 0 where a hold went. Settling
        # a wait-only queue from 0 stopped rewiring at the first unchanged writer, leaving those
        # behind the dropped wait with an edge to it: replicas that applied the log and replicas
        # restored from a snapshot disagreed on the wait-for graph, so on deadlocks (found by
        # tests/sim: SYNCFAB_SIM_SEED=63, and tests/sim/test_sim_locks.py has the case).
        starts: dict[str, int] = {}
        for r in sorted(rec.waits):
            w = rec.waits[r]
            starts[r] = self._unqueue(w)
            self._answer(w, err)
        for r in rec.held:
            del self._resources[r].holders[o]
            starts[r] = 0
        del self._owners[o]
        for r in sorted(starts):
            self._settle(r, starts[r])


def _bad_field(name: str, problem: str) -> Err:
    return bad_request(name, f"{name} {problem}")


def _name_ok(name: str) -> bool:
    """1..NAME_BYTES_MAX bytes of UTF-8; a short name needs no encoding to know (4 bytes a
    character at most), and every op of every replica asks."""
    n = len(name)
    return n > 0 and (n <= NAME_BYTES_MAX // 4 or len(name.encode()) <= NAME_BYTES_MAX)


def _bad_name(name: str) -> Err:
    return _bad_field(name, f"must be 1..{NAME_BYTES_MAX} bytes")
