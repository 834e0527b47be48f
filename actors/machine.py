"""One Raft group's replicated state: a session table in front of the services the group hosts.

Shard groups host the key/value store (and, later, queue partitions); the control group hosts
the lock table. A service is any object with ``commands`` / ``queries`` (the op types it owns),
``apply(index, op)``, ``query(op)``, ``snapshot() -> bytes`` and ``restore(bytes)``.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from syncfab.actors.results import Err, Result
from syncfab.actors.sessions import SessionTable


class Service(Protocol):
    commands: tuple[type, ...]
    queries: tuple[type, ...]

    def apply(self, index: int, op: Any) -> Result: ...

    def query(self, op: Any) -> Result: ...

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
        for service in services.values():
            self._writes.update(dict.fromkeys(service.commands, service))
            self._reads.update(dict.fromkeys(service.queries, service))

    def accepts(self, op: Any) -> bool:
        return type(op) in self._writes or type(op) in self._reads

    def is_query(self, op: Any) -> bool:
        return type(op) in self._reads

    def apply(self, index: int, client: str, request_id: int, acked: int, op: Any) -> Result:
        """Apply a committed command once, however many times it was proposed."""
        if request_id:
            recorded = self.sessions.lookup(client, request_id, acked)
            if recorded is not None:
                return recorded
        service = self._writes.get(type(op))
        result = (
            service.apply(index, op) if service is not None
            else Err("bad_request", f"{type(op).__name__} is not a command of this group")
        )
        if request_id:
            self.sessions.record(client, request_id, acked, result)
        return result

    def query(self, op: Any) -> Result:
        service = self._reads.get(type(op))
        if service is None:
            return Err("bad_request", f"{type(op).__name__} is not a query of this group")
        return service.query(op)

    def snapshot(self) -> bytes:
        return _encode(_Image(self.sessions.snapshot(), {n: s.snapshot() for n, s in self.services.items()}))

    def restore(self, data: bytes) -> None:
        image = _decode(data)
        self.sessions.restore(image.sessions)
        for name, service in self.services.items():
            if name in image.services:
                service.restore(image.services[name])
