"""What a node's near cache (actors/cache_near.py) keeps beside its lines: the one op in flight
per key, with the callers waiting for it, and its standing with each shard's home.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from syncfab.actors.messages import (
    CacheAck,
    CacheDropReq,
    CacheFetch,
    CacheRecalled,
    CacheWriteBackReq,
    CacheWriteReq,
)

# What a holder sends its homes.
ToHome = CacheAck | CacheDropReq | CacheFetch | CacheRecalled | CacheWriteBackReq | CacheWriteReq

FETCH, WRITE, DROP = "fetch", "write", "drop"
Caller = tuple[bytes, int, Any, bytes, str]  # (route, request id, op, the request's bytes, client)


@dataclass(slots=True)
class KeyOp:
    """The one op in flight for a key: a fetch, a write or delete, or an invalidate."""

    kind: str
    shard: int
    op_id: int
    message: ToHome
    first_ms: int
    sent_ms: int
    callers: list[Caller] = field(default_factory=list)
    joined_ms: list[int] = field(default_factory=list)  # when each caller came, in callers' order


@dataclass(slots=True)
class HomeSession:
    """This node's standing with one shard's home: where it is in the stream, and its lease."""

    epoch: int = 0
    applied: int = 0  # the last stream seq applied
    lease_until_ms: int = 0
    renews: dict[int, int] = field(default_factory=dict)  # renew id -> when it was asked
    ack_due: bool = False
    dropped: list[tuple[str, int]] = field(default_factory=list)  # evicted lines to report
    waiting: list[tuple[int, Caller]] = field(default_factory=list)  # reads waiting for a renewal
