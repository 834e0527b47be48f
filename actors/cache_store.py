"""The cache's memory: one shard's slice of the cache key space, replicated by the shard's log.

It is its own key space, apart from the key/value store's. Every value is kept as MessagePack
bytes with its version (actors/cache_ops.py says what versions are) and an optional expiry
(the leader's wall clock, stamped into the entry). Commands come only from the key's home
(actors/cache_home.py), which invalidates or recalls every cached copy before it logs one, so
applying a command never has to think about caches. The home's directory is leader-local
state and lives beside the memory, reset with every change of leadership.
"""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Any

import msgspec

from syncfab.actors.cache_ops import (
    VERSION_STEP,
    CacheBump,
    CacheConfirm,
    CacheDelete,
    CacheExpire,
    CacheLine,
    CacheWrite,
    CacheWriteBack,
    check_op,
    version_mismatch,
)
from syncfab.actors.results import Err, Ok, Result

if TYPE_CHECKING:
    from syncfab.actors.cache_home import CacheHome
    from syncfab.actors.machine import ApplyContext

EXPIRE_SCAN_MAX = 256  # expired keys handed to the home per call


class Stored(msgspec.Struct, array_like=True, gc=False):
    value: bytes  # MessagePack
    version: int
    expires_ms: int = 0  # leader wall clock; 0: never


class CacheStore:
    commands = (CacheWrite, CacheDelete, CacheWriteBack, CacheBump, CacheExpire)
    queries = (CacheConfirm,)
    locals = (CacheLine,)
    batches = ()

    def __init__(self, home: CacheHome) -> None:
        self.data: dict[str, Stored] = {}
        self._expiries: list[tuple[int, str]] = []  # heap of (expires_ms, key); stale ones skipped
        self.home = home
        home.memory = self

    def peek(self, key: str) -> Stored | None:
        return self.data.get(key)

    def version_of(self, key: str) -> int:
        stored = self.data.get(key)
        return stored.version if stored is not None else 0

    def apply(self, ctx: ApplyContext, op: Any) -> Result:
        match op:
            case CacheWrite():
                err = check_op(op)
                if err is not None:
                    return err
                current = self.version_of(op.key)
                if op.expected_version is not None and op.expected_version != current:
                    return version_mismatch(op.key, current)
                version = ctx.index * VERSION_STEP
                expires = ctx.now_ms + op.ttl_ms if op.ttl_ms else 0
                self.data[op.key] = Stored(bytes(op.value), version, expires)
                if expires:
                    heapq.heappush(self._expiries, (expires, op.key))
                    if len(self._expiries) > 2 * len(self.data) + 64:
                        self._rebuild_expiries()  # rewritten keys leave stale entries behind
                return Ok(version)
            case CacheDelete(key=key):
                return Ok(self.data.pop(key, None) is not None)
            case CacheWriteBack(items=items):
                return Ok(
                    [self._write_back(item.key, bytes(item.value), item.version, item.base) for item in items]
                )
            case CacheBump(key=key):
                stored = self.data.get(key)
                if stored is None:
                    return Ok(0)
                stored.version = ctx.index * VERSION_STEP
                return Ok(stored.version)
            case CacheExpire(key=key, version=version):
                stored = self.data.get(key)
                if stored is None or stored.version != version:
                    return Ok(False)
                del self.data[key]
                return Ok(True)
        raise TypeError(f"not a cache command: {op!r}")

    def _write_back(self, key: str, value: bytes, version: int, base: int) -> bool:
        """In if memory still holds ``base`` or a later version of this same owner's (an earlier
        write-back of its, which only it can have made: a version in its step), or already
        holds ``version`` (a retried write-back). Anyone else's write starts a new step."""
        current = self.version_of(key)
        if current == version:
            return True
        if not (0 < base <= current < version and current // VERSION_STEP == version // VERSION_STEP):
            return False
        # The owner's writes carried no ttl: like Redis's SET, a plain write clears it.
        self.data[key] = Stored(value, version)
        return True

    def expired(self, wall_ms: int) -> list[tuple[str, int]]:
        """(key, version) of keys whose ttl has passed, oldest first (the home expires them)."""
        out: list[tuple[str, int]] = []
        heap = self._expiries
        while heap and heap[0][0] <= wall_ms and len(out) < EXPIRE_SCAN_MAX:
            expires, key = heapq.heappop(heap)
            stored = self.data.get(key)
            if stored is not None and stored.expires_ms == expires:
                out.append((key, stored.version))
        return out

    def query(self, op: Any) -> Result:
        if isinstance(op, CacheConfirm):
            return Ok(None)
        return Err("bad_request", f"{type(op).__name__} is not a cache query")

    def local(self, now_ms: int, op: Any) -> Result:
        if isinstance(op, CacheLine):
            return Ok(self.home.line_info(op.key))
        return Err("bad_request", f"{type(op).__name__} is not a cache op")

    def due(self, now_ms: int) -> list[object]:
        return []  # the home expires keys itself: their copies must go first

    def hand_over(self) -> list[object]:
        return []  # a new home waits out one lease instead (actors/cache_home.py)

    def reset_local(self, leading: bool) -> None:
        self.home.reset()
        self._rebuild_expiries()  # a home that lost its lead may have taken some off the heap

    def _rebuild_expiries(self) -> None:
        self._expiries = [(s.expires_ms, k) for k, s in self.data.items() if s.expires_ms]
        heapq.heapify(self._expiries)

    def snapshot(self) -> bytes:
        return _encode(self.data)

    def restore(self, data: bytes) -> None:
        self.data = _decode(data)
        self._rebuild_expiries()


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(dict[str, Stored]).decode
