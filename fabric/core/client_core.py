"""A client's whole logic, with no I/O: ``ClientCore``.

The shape of h11's ``Connection`` and of ``RaftCore``: the caller feeds events in and takes
effects out, and passes the time in. ``call(op, now_ms)`` returns a handle;
``receive(frame, now_ms)`` takes a frame a node sent; ``tick(now_ms)`` lets time pass (when
``next_timer_ms()`` says); ``outbox()`` gives the encoded requests to send, per node address,
and ``completions()`` the calls finished since, with their results. The native client, the
gateway's runtime and the simulator drive this one class; nothing here opens a socket, reads a
clock or draws from an unseeded generator.

What it decides:

- **Ids.** Every request carries the client's id, a request id and the acked floor (the lowest
  id still awaited): a retry is the same bytes, so a replica applies it once.
- **Routing.** ``routing.group_for`` names the op's group; the call goes to that group's leader
  as the last reply named it, else to any node. A call pinned to a node (a cache op, served by
  that node's own cache) goes there, and elsewhere only once it has been silent twice; a
  write_back cache write never leaves it (that node may apply it locally, and nobody else
  could tell a second node's application of it from a new write).
- **Retries, one policy.** An attempt that times out goes to another node at once; a retryable
  error goes to the named leader (or, ``busy``, the same node) after a backoff with full jitter
  growing from ``backoff_ms_min`` to ``backoff_ms_max``, until the call's deadline (its
  ``timeout_ms`` plus however long its op may wait by design) or ``attempts_max`` attempts that
  nobody answered. A call out of time finishes with its latest retryable answer, or with
  ``timeout`` if there was none: either way its outcome is unknown.
- **Coalescing.** Lock acquires and releases called between two ``outbox()`` calls leave as
  one ``LockBatch`` (each op its own request id: the batch's + 1 + its place); an op the batch
  left waiting is answered later by its own reply, or asked again alone under its own id when
  that does not come in time. Single produces leave as one ``ProduceBatch`` per queue and shard
  (a key's shard, a dedup id's; keyless ones stick to one shard per batch, the next batch the
  next shard). Nothing waits for a batch to fill: a batch is what piled up meanwhile.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import msgspec

from syncfab.actors.cache_ops import WRITE_BACK, CacheWrite
from syncfab.actors.lock_ops import Acquire, LockBatch, Release
from syncfab.actors.machine import BATCH_OPS_MAX
from syncfab.actors.queue_ops import BATCH_MAX, Produce, ProduceBatch, Produced, check_message, check_queue
from syncfab.actors.queues import NewMessage
from syncfab.actors.results import RETRYABLE, Answers, Err, Ok, Result, Waiting, bad_request
from syncfab.actors.ring import CONTROL_GROUP
from syncfab.fabric.core.call_timers import CallTimers
from syncfab.fabric.core.client_batches import Queued, latest_deadline, split

# GAVE_UP is re-exported: callers import it from here.
from syncfab.fabric.core.client_calls import GAVE_UP as GAVE_UP
from syncfab.fabric.core.client_calls import ClientConfig, InFlight, timeout_error
from syncfab.fabric.core.codec import ClusterInfo, OnShard, Reply, Request, RequestIds, encode, replies_in
from syncfab.fabric.core.routing import NEVER_WAIT, NO_WAIT, group_for, produce_shard, wait_of

# A batch stays well under a node's 1 MiB request bound (names are at most 1 KiB each, a
# character at most 4 bytes; the estimates count characters, so allow for that).
LOCK_BATCH_BYTES_MAX = 128 * 1024
PRODUCE_BATCH_BYTES_MAX = 256 * 1024
_LOCK_FRAMING_BYTES = 32
_PRODUCE_FRAMING_BYTES = 16
BACKOFF_SHIFT_MAX = 16


# What msgspec's encoder raises for a value it cannot encode (too deep, not serializable).
UNENCODABLE = (RecursionError, TypeError, OverflowError, ValueError)
GOOD_QUEUES_MAX = 1_024  # queue names a client remembers as valid
_ATTEMPT, _BACKOFF = 0, 1  # what a call's one live timer ends: an attempt, or a backoff
_CONFIG: Any = object()  # a call's timeout: the config's
_TEXT = (bytes, str)  # a tuple: ``bytes | str`` in isinstance builds a union every time


class ClientCore:
    def __init__(
        self, client_id: str, seeds: list[str], rng: random.Random, config: ClientConfig | None = None
    ) -> None:
        assert seeds, "at least one node address"
        self.client_id = client_id
        self.config = config or ClientConfig()
        self.rng = rng
        self.ids = RequestIds()
        self.nodes: list[str] = list(dict.fromkeys(seeds))  # every address a call may go to
        self.members: dict[str, str] = {}  # node id -> address
        self.shard_count = 0
        self.leaders: dict[int, str] = {}  # group -> node id, as replies named it
        self._calls: dict[int, InFlight] = {}  # request id -> call in flight
        # A direct call's handle is its request id; a coalesced op's is negative (it has no id
        # until its batch leaves) and is mapped to the id it gets, for cancel.
        self._of_handle: dict[int, int] = {}
        self._handles = itertools.count(-1, -1)
        self._timers = CallTimers(self.config.attempt_timeout_ms)
        self._outbox: dict[str, list[bytes]] = {}
        self._done: list[tuple[int, Result]] = []
        self._lock_queue: list[Queued] = []
        self._produce_queue: dict[tuple[str, int | None], list[Queued]] = {}
        self._sticky = itertools.count(rng.randrange(1 << 16))
        self._early: dict[int, Reply] = {}  # a batched op's own reply that beat its batch's
        self._member_of: dict[int, int] = {}  # batched op's id -> its batch's id, while in flight
        self._cancelled: set[int] = set()  # handles given up on by their callers
        self._good_queues: set[str] = set()  # queue names check_queue passed (bounded)
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "calls",
                "retries",
                "timeouts",
                "lock_batches",
                "batched_lock_ops",
                "batch_waits",
                "produce_batches",
                "batched_produces",
            ),
            0,
        )

    # -- what the cluster looks like ---------------------------------------------------------

    def learn(self, view: dict[str, Any]) -> None:
        """Members, shard count and leaders from a node's ``ClusterInfo`` answer."""
        self.members = {m["id"]: m["address"] for m in view["members"]}
        self.shard_count = len(view["shards"])
        self.leaders = {s["id"]: s["leader"] for s in view["shards"] if s["leader"]}
        if view["leader"]:
            self.leaders[CONTROL_GROUP] = view["leader"]
        for address in self.members.values():
            if address not in self.nodes:
                self.nodes.append(address)

    # -- calls -------------------------------------------------------------------------------

    def call(
        self,
        op: Any,
        now_ms: int,
        *,
        node: str | None = None,
        timeout_ms: Any = _CONFIG,
        attempt_timeout_ms: int | None = None,
    ) -> int:
        """Start ``op``; returns its handle, which ``completions()`` names with its result.
        ``node``: pin it to that node (a cache op); ``timeout_ms`` (None: never give up) and
        ``attempt_timeout_ms``: this call's own, instead of the config's."""
        t = type(op)
        if node is None and t is Produce:  # a produce never waits
            message = NewMessage(op.data, op.key, op.headers, op.dedup_id)
            return self.produce(op.queue, message, now_ms, timeout_ms=timeout_ms)
        self.stats["calls"] += 1
        timeout = self.config.timeout_ms if timeout_ms is _CONFIG else timeout_ms
        wait_ms, long_poll = NO_WAIT if t in NEVER_WAIT else wait_of(op)  # the common ops: no call
        deadline_ms = None if timeout is None else now_ms + timeout + wait_ms
        if node is None and (t is Acquire or t is Release):
            handle = next(self._handles)
            size = len(op.resource) + len(op.owner) + _LOCK_FRAMING_BYTES
            self._lock_queue.append(Queued(handle, op, deadline_ms, size))
            return handle
        attempt_ms = attempt_timeout_ms or self.config.attempt_timeout_ms + (wait_ms if long_poll else 0)
        # A LockBatch's ops take the ids after its own (the replicas number them so).
        rid = self.ids.reserve(len(op.ops) + 1) if t is LockBatch else self.ids.next()
        self._start(rid, op, rid, now_ms, deadline_ms, attempt_ms, node)
        return rid

    def cancel(self, handle: int) -> None:
        """The caller stopped waiting: its answer, when it comes, is dropped."""
        rid = handle if handle > 0 else self._of_handle.pop(handle, None)
        if rid is not None and rid in self._calls:
            self._forget(rid)
        elif handle < 0:
            self._cancelled.add(handle)  # queued, or in a batch: dropped when it gets there
        # else a direct call already finished: nothing is left to drop

    def _start(
        self,
        handle: int | None,
        op: Any,
        rid: int,
        now_ms: int,
        deadline_ms: int | None,
        attempt_ms: int,
        pinned: str | None,
        locks: list[tuple[int, Acquire | Release, int | None]] | None = None,
        produces: list[int] | None = None,
    ) -> InFlight | None:
        group: int | None = None
        if self.shard_count and type(op) is not ClusterInfo and pinned is None:
            routed = group_for(op, self.shard_count, self.client_id, rid)
            if isinstance(routed, Err):
                self._refuse(handle, rid, routed, locks, produces)
                return None
            group = routed
        try:
            raw = encode(Request(self.client_id, rid, self.ids.acked, op))
        except UNENCODABLE as e:  # a value nested past the encoder's depth, say
            self._refuse(handle, rid, bad_request("value", f"cannot be sent: {e}"), locks, produces)
            return None
        # The first attempt, inline (every call passes here; _send is a retry's): the record
        # is built as sent, with its attempt's target, count and token.
        node = self._target(group, pinned)
        stays = pinned is not None and type(op) is CacheWrite and op.policy == WRITE_BACK
        call = InFlight(
            handle, rid, op, raw, group, pinned, deadline_ms, attempt_ms, node, 1, 1, locks, produces, stays
        )
        self._calls[rid] = call
        if handle is not None and handle != rid:
            self._of_handle[handle] = rid
        out = self._outbox.get(node)
        if out is None:
            self._outbox[node] = [raw]
        else:
            out.append(raw)
        self._timers.add(now_ms + attempt_ms, _ATTEMPT, rid, 1, now_ms, deadline_ms)
        return call

    def _send(self, call: InFlight, node: str, now_ms: int) -> None:
        """Another attempt (a retry: the first leaves in _start)."""
        call.attempt += 1
        call.token += 1
        call.node = node
        out = self._outbox.get(node)
        if out is None:
            self._outbox[node] = [call.raw]
        else:
            out.append(call.raw)
        # _timer's attempt case, inline: an attempt started now.
        self._timers.add(
            now_ms + call.attempt_timeout_ms, _ATTEMPT, call.rid, call.token, now_ms, call.deadline_ms
        )

    def _target(self, group: int | None, pinned: str | None) -> str:
        if pinned is not None:
            return pinned
        leader = self.leaders.get(group) if group is not None else None
        address = self.members.get(leader) if leader is not None else None
        p = self.config.leader_hint_probability
        if address is not None and (p >= 1.0 or self.rng.random() < p):
            return address
        return self.rng.choice(self.nodes)

    def _other(self, node: str) -> str:
        others = [n for n in self.nodes if n != node]
        return self.rng.choice(others) if others else node

    # -- time --------------------------------------------------------------------------------

    def _timer(self, call: InFlight, at_ms: int, kind: int) -> None:
        """A call has one live timer (its token's), never later than its deadline."""
        started = at_ms - call.attempt_timeout_ms if kind == _ATTEMPT else None
        self._timers.add(at_ms, kind, call.rid, call.token, started, call.deadline_ms)

    def next_timer_ms(self) -> int | None:
        """When ``tick`` has something to do next."""
        return self._timers.next_ms(self._calls)

    def tick(self, now_ms: int) -> None:
        for kind, rid, token in self._timers.due(now_ms):
            call = self._calls.get(rid)
            if call is None or call.token != token:
                continue  # answered, or another attempt went out since
            if call.deadline_ms is not None and now_ms >= call.deadline_ms:
                self._give_up(call, now_ms)
            else:
                self._retry(call, kind, now_ms)

    def _retry(self, call: InFlight, kind: int, now_ms: int) -> None:
        if kind == _ATTEMPT:
            call.silent += 1
            if self.config.attempts_max is not None and call.silent >= self.config.attempts_max:
                self._give_up(call, now_ms)
                return
        self.stats["retries"] += 1
        if kind == _BACKOFF:  # to the leader as now known; not again to a node that refused
            tried, target = call.node, self._target(call.group, call.pinned)
            if target == tried and call.pinned is None and call.last is not None and call.last.code != "busy":
                target = self._other(tried)
            self._send(call, target, now_ms)
        elif call.pinned is not None and (call.attempt == 1 or call.stays):
            self._send(call, call.pinned, now_ms)  # its own node twice, then the others
        else:
            self._send(call, self._other(call.node), now_ms)

    def _give_up(self, call: InFlight, now_ms: int) -> None:
        """Out of time or of unanswered attempts: the latest retryable answer, else timeout."""
        self.stats["timeouts"] += 1
        self._finish(call, call.last or timeout_error(self.config.timeout_ms), now_ms)

    # -- replies -----------------------------------------------------------------------------

    def receive(self, frame: bytes, now_ms: int) -> list[Reply]:
        """Take a frame from a node (one ``Reply`` or several); returns what it held."""
        try:
            replies = replies_in(frame)
        except Exception:  # garbage from the network: nothing to answer
            return []
        calls, ids, done = self._calls, self.ids, self._done
        for reply in replies:
            rid = reply.id
            call = calls.get(rid)
            if call is not None:
                result = reply.result
                if type(result) is Ok:  # the common answer: _on_reply's path for it, inline
                    if reply.leader is not None and call.group is not None:
                        self.leaders[call.group] = reply.leader
                    if call.handle == rid and type(call.op) is not LockBatch:
                        del calls[rid]  # a direct call: _finish's path for it, inline
                        ids.done(rid)
                        done.append((rid, result))
                    else:
                        self._finish(call, result, now_ms)
                else:
                    self._on_reply(call, reply, now_ms)
            elif rid in self._member_of:
                self._early[rid] = reply
        return replies

    def _on_reply(self, call: InFlight, reply: Reply, now_ms: int) -> None:
        if reply.leader is not None and call.group is not None:
            self.leaders[call.group] = reply.leader
        result = reply.result
        if isinstance(result, Err) and result.code in RETRYABLE:
            call.last = result  # asked again after a backoff (see _retry)
            cfg = self.config
            cap = min(cfg.backoff_ms_max, cfg.backoff_ms_min << min(call.retries, BACKOFF_SHIFT_MAX))
            call.retries += 1
            call.token += 1  # the attempt is answered: its timeout is void
            self._timer(call, now_ms + self.rng.randint(1, max(1, cap)), _BACKOFF)
            return
        self._finish(call, result, now_ms)

    def _finish(self, call: InFlight, result: Result | Answers, now_ms: int) -> None:
        del self._calls[call.rid]
        self.ids.done(call.rid)
        if call.locks is None and type(call.op) is LockBatch:  # a caller's own batch: its ops' ids
            for k in range(len(call.op.ops)):
                self.ids.done(call.rid + 1 + k)
        if call.handle is not None and call.handle < 0:
            self._of_handle.pop(call.handle, None)
        if call.locks is not None:
            self._answer_locks(call, result, now_ms)
        elif call.produces is not None:
            self._answer_produces(call, result)
        elif call.handle is not None:
            self._done.append((call.handle, result))  # type: ignore[arg-type]

    def _refuse(
        self,
        handle: int | None,
        rid: int,
        err: Err,
        locks: list[tuple[int, Acquire | Release, int | None]] | None,
        produces: list[int] | None,
    ) -> None:
        """A call refused before it left (unroutable): its caller, or its batch's, hear now."""
        self.ids.done(rid)
        if locks is not None:
            for k in range(len(locks)):
                self.ids.done(rid + 1 + k)
                self._member_of.pop(rid + 1 + k, None)
        for h in [q[0] for q in locks] if locks else produces or [handle]:
            if h is not None and not self._dropped(h):
                self._done.append((h, err))

    def _dropped(self, handle: int) -> bool:
        """Whether the caller gave up on this handle (forgotten as it is asked)."""
        if handle in self._cancelled:
            self._cancelled.discard(handle)
            return True
        return False

    def _forget(self, rid: int) -> None:
        call = self._calls.pop(rid, None)
        self.ids.done(rid)
        if call is not None and call.handle is not None and call.handle < 0:
            self._of_handle.pop(call.handle, None)

    # -- lock ops, coalesced ---------------------------------------------------------------

    def _flush_locks(self, now_ms: int) -> None:
        queued, self._lock_queue = self._lock_queue, []
        live = [q for q in queued if not self._dropped(q.handle)] if self._cancelled else queued
        attempt_ms = self.config.attempt_timeout_ms
        for batch in split(live, BATCH_OPS_MAX, LOCK_BATCH_BYTES_MAX):
            if len(batch) == 1:  # a lone op goes as it is
                q = batch[0]
                self._start(q.handle, q.op, self.ids.next(), now_ms, q.deadline_ms, attempt_ms, None)
                continue
            first = self.ids.reserve(len(batch) + 1)  # the batch's id, then one per op
            for k in range(len(batch)):
                self._member_of[first + 1 + k] = first
            self.stats["lock_batches"] += 1
            self.stats["batched_lock_ops"] += len(batch)
            members = [(q.handle, q.op, q.deadline_ms) for q in batch]
            self._start(
                None,
                LockBatch([q.op for q in batch]),
                first,
                now_ms,
                latest_deadline(batch),
                attempt_ms,
                None,
                locks=members,
            )

    def _answer_locks(self, batch: InFlight, result: Result | Answers, now_ms: int) -> None:
        """Each op its own answer; one left waiting becomes a call under its own id, answered
        by its own reply (perhaps already here) or asked again alone if that is late; one
        answered with a retryable error (busy, say) is asked again alone, as a lone op is."""
        members = batch.locks
        assert members is not None
        whole = isinstance(result, Answers) and len(result.results) == len(members)
        cancelled, early_replies = self._cancelled, self._early
        results: list[Any] = result.results if whole else []  # type: ignore[union-attr]
        if whole and not cancelled and not early_replies and set(map(type, results)) == {Ok}:
            # The common answer (every op granted or released): the loop below's path for it,
            # the batch's ids done together (map(type, ...): no Python frame per op).
            first, member_of = batch.rid + 1, self._member_of
            for rid in range(first, first + len(members)):
                member_of.pop(rid, None)
            self.ids.done_range(first, len(members))
            self._done += [(m[0], r) for m, r in zip(members, results, strict=True)]
            return
        for k, (handle, op, deadline_ms) in enumerate(members):
            rid = batch.rid + 1 + k
            self._member_of.pop(rid, None)
            early = early_replies.pop(rid, None) if early_replies else None
            answer = result.results[k] if whole else result  # type: ignore[union-attr]
            if cancelled and self._dropped(handle):
                self.ids.done(rid)
            elif not whole or type(answer) is Ok or not (isinstance(answer, Waiting) or _retryable(answer)):
                self.ids.done(rid)
                if not whole and not isinstance(result, Err):
                    answer = Err("bad_reply", f"a batch of {len(members)} answered {result!r}")
                self._done.append((handle, answer))  # type: ignore[arg-type]
            else:
                self.stats["batch_waits" if isinstance(answer, Waiting) else "retries"] += 1
                raw = encode(Request(self.client_id, rid, self.ids.acked, op))
                ms = self.config.attempt_timeout_ms
                call = InFlight(handle, rid, op, raw, CONTROL_GROUP, None, deadline_ms, ms, batch.node, 1, 1)
                self._calls[rid] = call
                self._of_handle[handle] = rid
                if isinstance(answer, Waiting):
                    self._timer(call, now_ms + wait_of(op)[0] + call.attempt_timeout_ms, _ATTEMPT)
                    if early is not None:
                        self._on_reply(call, early, now_ms)
                else:  # as if its own attempt had been answered so: a backoff, then alone
                    self._on_reply(call, Reply(rid, answer, None), now_ms)

    # -- produces, coalesced -----------------------------------------------------------------

    def produce(self, queue: str, message: NewMessage, now_ms: int, *, timeout_ms: Any = _CONFIG) -> int:
        """``call(Produce(...))`` for a message already built (a driver's hot path): coalesced
        with the others of its queue and shard; its handle completes with its message id."""
        self.stats["calls"] += 1
        timeout = self.config.timeout_ms if timeout_ms is _CONFIG else timeout_ms
        deadline_ms = None if timeout is None else now_ms + timeout
        handle = next(self._handles)
        plain = message.key is None and message.dedup_id is None and message.headers is None
        good = self._good_queues
        err = None
        if queue not in good:
            err = check_queue(queue)
            if err is None and len(good) < GOOD_QUEUES_MAX:
                good.add(queue)  # check_queue is pure: a name it passed passes again
        if err is None and not plain:
            err = check_message(message)
        if err is None and not self.shard_count:
            err = Err("unavailable", "the client has not learnt the cluster yet")
        if err is not None:
            self._done.append((handle, err))
            return handle
        # None: any shard (sticky per batch)
        shard = None if plain else produce_shard(queue, message.key, message.dedup_id, self.shard_count)
        data = message.data
        try:
            size = len(data) if plain and isinstance(data, _TEXT) else len(encode(message))
        except UNENCODABLE as e:  # refused alone, not with the batch it would have joined
            self._done.append((handle, bad_request("data", f"cannot be sent: {e}")))
            return handle
        queued = self._produce_queue.get((queue, shard))
        if queued is None:
            queued = self._produce_queue[queue, shard] = []
        queued.append(Queued(handle, message, deadline_ms, size + _PRODUCE_FRAMING_BYTES))
        return handle

    def _flush_produces(self, now_ms: int) -> None:
        queued, self._produce_queue = self._produce_queue, {}
        for (queue, shard), items in queued.items():
            live = [q for q in items if not self._dropped(q.handle)] if self._cancelled else items
            for batch in split(live, BATCH_MAX, PRODUCE_BATCH_BYTES_MAX):
                target = shard if shard is not None else next(self._sticky) % self.shard_count + 1
                messages = [q.op for q in batch]
                self.stats["produce_batches"] += 1
                self.stats["batched_produces"] += len(batch)
                self._start(
                    None,
                    OnShard(target, ProduceBatch(queue, messages)),
                    self.ids.next(),
                    now_ms,
                    latest_deadline(batch),
                    self.config.attempt_timeout_ms,
                    None,
                    produces=[q.handle for q in batch],
                )

    def _answer_produces(self, batch: InFlight, result: Result | Answers) -> None:
        handles = batch.produces
        assert handles is not None
        if not isinstance(result, Ok):
            err = result if isinstance(result, Err) else Err("bad_reply", f"a produce answered {result!r}")
            self._done += [(h, err) for h in handles if not self._dropped(h)]
            return
        try:
            produced = msgspec.convert(result.value, Produced)
        except msgspec.ValidationError as e:
            self._done += [(h, Err("bad_reply", f"a produce answered {e}")) for h in handles]
            return
        ids = produced.message_ids
        if not produced.duplicates and not self._cancelled:  # the common answer: no loop below
            self._done += [(h, Ok({"message_id": m})) for h, m in zip(handles, ids, strict=True)]
            return
        duplicates = set(produced.duplicates)
        cancelled = self._cancelled
        for n, (handle, message_id) in enumerate(zip(handles, ids, strict=True)):
            if not cancelled or not self._dropped(handle):
                value = (
                    {"message_id": message_id, "duplicate": True}
                    if n in duplicates
                    else {"message_id": message_id}
                )
                self._done.append((handle, Ok(value)))

    # -- what to send, what is done ----------------------------------------------------------

    def outbox(self, now_ms: int) -> dict[str, list[bytes]]:
        """The requests to send now, per node address (queued lock ops and produces leave
        here as batches); the driver sends each list as one frame."""
        if self._lock_queue:
            self._flush_locks(now_ms)
        if self._produce_queue:
            self._flush_produces(now_ms)
        out, self._outbox = self._outbox, {}
        return out

    def completions(self) -> list[tuple[int, Result]]:
        done, self._done = self._done, []
        return done

    @property
    def in_flight(self) -> int:
        return len(self._calls)

    def describe_open(self) -> str:
        return (
            ", ".join(
                f"{type(c.op).__name__} id={c.rid} ({c.attempt} attempts, last to {c.node})"
                for c in self._calls.values()
            )
            or "no call in flight"
        )


def _retryable(result: Any) -> bool:
    return isinstance(result, Err) and result.code in RETRYABLE
