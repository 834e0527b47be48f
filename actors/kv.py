"""The replicated key/value slice each shard group holds (the cache's backing "memory")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from syncfab.actors.limits import NAME_BYTES_MAX
from syncfab.actors.results import Err, Ok, Result

KEY_BYTES_MAX = NAME_BYTES_MAX  # every service's keys (KV, cache, routing)

if TYPE_CHECKING:
    from syncfab.actors.machine import ApplyContext


class Put(msgspec.Struct, frozen=True, tag="put", array_like=True):
    key: str
    value: Any


class Delete(msgspec.Struct, frozen=True, tag="del", array_like=True):
    key: str


class Get(msgspec.Struct, frozen=True, tag="get", array_like=True):
    key: str


class KvStore:
    commands = (Put, Delete)
    queries = (Get,)
    locals = ()
    batches = ()

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def apply(self, ctx: ApplyContext, op: Put | Delete) -> Result:
        match op:
            case Put(key=key, value=value):
                self.data[key] = value
                return Ok(ctx.index)
            case Delete(key=key):
                return Ok(self.data.pop(key, _ABSENT) is not _ABSENT)
        raise TypeError(f"not a kv command: {op!r}")

    def query(self, op: Get) -> Result:
        value = self.data.get(op.key, _ABSENT)
        if value is _ABSENT:
            return Err("not_found", f"no key {op.key!r}", {"key": op.key})
        return Ok(value)

    def local(self, now_ms: int, op: object) -> Result:
        raise TypeError("the key/value store has no leader-only operations")

    def due(self, now_ms: int) -> list[object]:
        return []

    def hand_over(self) -> list[object]:
        return []

    def reset_local(self, leading: bool) -> None:
        pass

    def snapshot(self) -> bytes:
        return _encode(self.data)

    def restore(self, data: bytes) -> None:
        self.data = _decode(data)


_ABSENT = object()
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict[str, Any]).decode
