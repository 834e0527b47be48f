"""One Raft group's replicated state: a session table in front of the services the group hosts.

Shard groups host the key/value store and queue partitions; the control group hosts the lock
table. A service owns some op types and implements ``Service``. Four kinds of op:

- **commands** go through the log; ``apply`` runs on every replica in log order and must be
  deterministic: time comes from ``ctx.now_ms``, stamped into the entry by the leader;
- **queries** are linearizable reads: ReadIndex on the leader, then ``query``;
- **locals** run on the leader only, against state that is not replicated (a queue's in-flight
  marks): ``local``. A new leader starts that state afresh (``reset_local``);
- **housekeeping**: ``due(now_ms)`` lets the leader propose commands of its own (lease expiry,
  visibility deadlines) — decided by the leader's clock, applied everywhere from the log.

A service may also name *batches*: an op whose ``ops`` are commands applied one by one as if
each had come alone, the k-th under request id ``batch id + 1 + k`` (its session record, its
wait and its notice carry that id); the batch's answer is ``Answers``, one result per op. One
request, one decode and one reply for many commands is what makes a busy client cheap.

A command may leave its request *waiting* (a lock acquire behind a holder): ``apply`` returns
``WAITING`` and the answer comes later, when another command's apply decides it and calls
``ctx.notify(client, request_id, result)``. The session table records a waiting request as
such and replaces the record with the final answer, so a retry gets whichever is current.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from syncfab.actors.results import WAITING, Answers, Err, Result, Waiting, bad_request
from syncfab.actors.sessions import SessionTable

__all__ = ["BATCH_OPS_MAX", "WAITING", "ApplyContext", "GroupMachine", "Notice", "Service", "Waiting"]

BATCH_OPS_MAX = 1024


@dataclass(frozen=True, slots=True)
class Notice:
    """The answer to an earlier, waiting request."""

    client: str
    request_id: int
    result: Result


@dataclass(slots=True, init=False)
class ApplyContext:
    """What a command's application may know and do besides its op."""

    index: int  # the log entry's index
    now_ms: int  # the leader's wall clock when it proposed the entry
    client: str  # who sent the command ("" for the leader's own housekeeping)
    request_id: int
    notices: list[Notice]

    # Written out: one is made per applied command, and the generated __init__ (with a
    # default_factory) took half as long again.
    def __init__(
        self,
        index: int,
        now_ms: int,
        client: str = "",
        request_id: int = 0,
        notices: list[Notice] | None = None,
    ) -> None:
        self.index = index
        self.now_ms = now_ms
        self.client = client
        self.request_id = request_id
        self.notices = [] if notices is None else notices

    def notify(self, client: str, request_id: int, result: Result) -> None:
        self.notices.append(Notice(client, request_id, result))


class Service(Protocol):
    commands: tuple[type, ...]
    queries: tuple[type, ...]
    locals: tuple[type, ...]
    batches: tuple[type, ...]  # ops whose ``ops`` are this service's commands

    def apply(self, ctx: ApplyContext, op: Any) -> Result | Waiting: ...

    def query(self, op: Any) -> Result: ...

    def local(self, now_ms: int, op: Any) -> Result | Waiting: ...

    def due(self, now_ms: int) -> list[Any]: ...

    def hand_over(self) -> list[Any]: ...

    def reset_local(self, leading: bool) -> None: ...

    def snapshot(self) -> bytes: ...

    def restore(self, data: bytes) -> None: ...


class _Image(msgspec.Struct, array_like=True):
    sessions: bytes
    services: dict[str, bytes]


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Image).decode


class GroupMachine:
    def __init__(self, services: dict[str, Service], *, clients_max: int = 100_000) -> None:
        self.services = services
        self.sessions = SessionTable(clients_max)
        self._writes: dict[type, Service] = {}
        self._reads: dict[type, Service] = {}
        self._locals: dict[type, Service] = {}
        self._batches: set[type] = set()
        for service in services.values():
            self._batches.update(service.batches)
            self._writes.update(dict.fromkeys(service.commands, service))
            self._reads.update(dict.fromkeys(service.queries, service))
            self._locals.update(dict.fromkeys(service.locals, service))

    def accepts(self, op: Any) -> bool:
        kind = type(op)
        return kind in self._writes or kind in self._reads or kind in self._locals or kind in self._batches

    def is_query(self, op: Any) -> bool:
        return type(op) in self._reads

    def is_local(self, op: Any) -> bool:
        return type(op) in self._locals

    def apply(self, ctx: ApplyContext, acked: int, op: Any) -> Result | Waiting | Answers:
        """Apply a committed command once, however many times it was proposed. Notices for
        earlier waiting requests are left in ``ctx.notices`` (and recorded as their answers)."""
        if type(op) in self._batches:
            return self._apply_batch(ctx, acked, op.ops)
        request_id = ctx.request_id
        sessions = self.sessions
        if request_id:
            recorded = sessions.lookup(ctx.client, request_id, acked)
            if recorded is not None:
                return recorded
        service = self._writes.get(type(op))
        result: Result | Waiting = (
            service.apply(ctx, op)
            if service is not None
            else Err("bad_request", f"{type(op).__name__} is not a command of this group")
        )
        if request_id:
            sessions.record(ctx.client, request_id, acked, result)
        if ctx.notices:
            self._record_answers(ctx.notices)
        return result

    def _record_answers(self, notices: list[Notice]) -> None:
        """Waiting requests got their answers: a retry from now on gets those."""
        for notice in notices:
            self.sessions.replace(notice.client, notice.request_id, notice.result)

    def _apply_batch(self, ctx: ApplyContext, acked: int, ops: list[Any]) -> Answers | Err:
        """Each op as its own request (so each has its own session record, and a retried batch
        gets every recorded answer back); the batch itself is recorded nowhere."""
        if not ctx.request_id:
            return Err("bad_request", "a batch must come from a client")
        if not 0 < len(ops) <= BATCH_OPS_MAX:
            return bad_request("ops", f"a batch holds 1..{BATCH_OPS_MAX} ops")
        results: list[Result | Waiting] = []
        writes, first = self._writes, ctx.request_id + 1
        # The client's session once for the batch (its floor raised to ``acked`` first, which
        # a well-behaved client's ops, all above it, never notice).
        session = self.sessions.session(ctx.client, acked)
        sub = ApplyContext(ctx.index, ctx.now_ms, ctx.client)  # one for all: nothing keeps it
        for k, op in enumerate(ops):
            service = writes.get(type(op))
            if service is None:
                results.append(Err("bad_request", f"{type(op).__name__} cannot be batched"))
                continue
            rid = first + k
            result = session.lookup(rid)
            if result is None:
                sub.request_id = rid
                result = service.apply(sub, op)
                session.record(rid, result)
                if sub.notices:
                    self._record_answers(sub.notices)
                    ctx.notices += sub.notices
                    sub.notices = []
            results.append(result)
        return Answers(results)

    def query(self, op: Any) -> Result:
        service = self._reads.get(type(op))
        if service is None:
            return Err("bad_request", f"{type(op).__name__} is not a query of this group")
        return service.query(op)

    def local(self, now_ms: int, op: Any) -> Result | Waiting:
        service = self._locals.get(type(op))
        if service is None:
            return Err("bad_request", f"{type(op).__name__} is not a leader operation of this group")
        return service.local(now_ms, op)

    def due(self, now_ms: int) -> list[Any]:
        return [op for service in self.services.values() for op in service.due(now_ms)]

    def hand_over(self) -> list[Any]:
        """Commands a leader proposes before it hands the group to another node: the leader
        memory the next leader should keep (a queue's in-flight marks)."""
        return [op for service in self.services.values() for op in service.hand_over()]

    def reset_local(self, leading: bool) -> None:
        for service in self.services.values():
            service.reset_local(leading)

    def snapshot(self) -> bytes:
        return _encode(_Image(self.sessions.snapshot(), {n: s.snapshot() for n, s in self.services.items()}))

    def restore(self, data: bytes) -> None:
        image = _decode(data)
        self.sessions.restore(image.sessions)
        for name, service in self.services.items():
            if name in image.services:
                service.restore(image.services[name])
