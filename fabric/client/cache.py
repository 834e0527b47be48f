"""The native client's cache: reads and writes served by one node's near cache.

A client's cache node is the first address it was given unless ``cache_node=`` names another;
every cache op goes there (``line`` excepted: the key's home answers it), so reads that hit
cost one round trip to that node and no more. If the node does not answer, the op is asked
again there and then of the other nodes (every node's cache is coherent). A write_back write
that the cache node served locally and whose answer was lost is answered again by that node;
asked of another node instead, it is applied again (a plain write: the same value, a newer
version; a compare-and-set always goes home and is applied once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from syncfab.actors.cache_ops import (
    WRITE_THROUGH,
    CacheDelete,
    CacheInvalidate,
    CacheLine,
    CacheRead,
    CacheStats,
    CacheWrite,
    CacheWritten,
)

if TYPE_CHECKING:
    from syncfab.fabric.client.zmq_client import AsyncClient

_encode = msgspec.msgpack.Encoder().encode


@dataclass(frozen=True, slots=True)
class CachedValue:
    key: str
    value: Any
    version: int
    state: str  # this node's line after the read: M, E, S, or I (not cached)
    hit: bool  # served from the node's own line, without asking the home


@dataclass(frozen=True, slots=True)
class CacheWriteResult:
    key: str
    version: int
    state: str


class ClientCache:
    def __init__(self, client: AsyncClient, node: str) -> None:
        self._client = client
        self.node = node  # host:port of the node whose cache serves this client

    async def read(self, key: str) -> CachedValue:
        """Raises NotFound for a key that does not exist."""
        found = self._client._value(await self._client.call_at(self.node, CacheRead(key)))
        return CachedValue(found["key"], found["value"], found["version"], found["state"], found["hit"])

    async def write(
        self,
        key: str,
        value: Any,
        *,
        policy: str = WRITE_THROUGH,
        ttl_ms: int | None = None,
        expected_version: int | None = None,
    ) -> CacheWriteResult:
        """``expected_version`` makes it a compare-and-set (0: the key must not exist); raises
        VersionMismatch (``.detail["version"]``) if memory moved on."""
        op = CacheWrite(key, msgspec.Raw(_encode(value)), policy, ttl_ms, expected_version)
        answer = self._client._value(await self._client.call_at(self.node, op))
        written = msgspec.convert(answer, CacheWritten)
        return CacheWriteResult(written.key, written.version, written.state)

    async def delete(self, key: str) -> bool:
        return bool(self._client._value(await self._client.call_at(self.node, CacheDelete(key)))["deleted"])

    async def invalidate(self, key: str) -> int:
        """Drop every cached copy of ``key`` (memory keeps it); returns how many were dropped."""
        result = await self._client.call_at(self.node, CacheInvalidate(key))
        return int(self._client._value(result)["invalidated"])

    async def stats(self) -> dict[str, Any]:
        """The cache node's counters: hits, misses, lines per state, evictions, write-backs..."""
        return dict(self._client._value(await self._client.call_at(self.node, CacheStats())))

    async def line(self, key: str) -> dict[str, Any]:
        """The home's directory entry for ``key``: its version and who holds it in which state."""
        return dict(self._client._value(await self._client.call(CacheLine(key))))
