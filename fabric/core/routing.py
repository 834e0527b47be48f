"""Which Raft group an operation belongs to: one function for the node and the native client.

- key/value ops: the key's shard;
- lock ops: the control group (one lock table, one wait-for graph), and member changes;
- a produce with a key: the shard of (queue, key), so one key keeps its order;
- a produce without one: the shard of its dedup id if it has one, else of (client, request id) —
  spread over the shards, and a retry lands where the first try did, so dedup holds;
- acks and nacks: the shard named in the message ids ("<shard>:<seq>"), all ids one shard;
- anything per shard (consume, stats, settings, a pre-split batch): wrapped in ``OnShard``.

Housekeeping commands (lease expiry, redelivery, retention) are the leaders' own and are
refused from clients.
"""

from __future__ import annotations

from typing import Any

from syncfab.actors.cache_ops import NEAR_OPS, CacheBump, CacheExpire, CacheLine, CacheWriteBack, check_key
from syncfab.actors.kv import KEY_BYTES_MAX, Delete, Get, Put
from syncfab.actors.locks import (
    Acquire,
    ExpireLocks,
    LockBatch,
    LockInfo,
    OwnerInfo,
    Release,
    ReleaseAll,
    Renew,
)
from syncfab.actors.members import MemberAdd, MemberRemove, MemberSeed
from syncfab.actors.queue_ops import HandOver
from syncfab.actors.queues import Ack, Consume, ExpireMessages, Nack, Produce, Redeliver
from syncfab.actors.results import Err, bad_request
from syncfab.actors.ring import CONTROL_GROUP, shard_for_key
from syncfab.fabric.core.codec import OnShard

HOUSEKEEPING = (
    ExpireLocks,
    Redeliver,
    HandOver,
    ExpireMessages,
    CacheWriteBack,
    CacheBump,
    CacheExpire,
    MemberSeed,
)
_CONTROL_OPS = (Acquire, Release, ReleaseAll, Renew, LockInfo, OwnerInfo, LockBatch, MemberAdd, MemberRemove)


def queue_key_shard(queue: str, key: str, shard_count: int) -> int:
    return shard_for_key(f"{queue}\x1f{key}", shard_count)


def produce_shard(queue: str, key: str | None, dedup_id: str | None, shard_count: int) -> int | None:
    """The shard a message must go to: its key's (one key keeps its order), else its dedup id's
    (a producer retrying under a new request id must reach the shard that remembers), else
    None: any shard will do."""
    if key is not None:
        return queue_key_shard(queue, key, shard_count)
    if dedup_id is not None:
        return queue_key_shard(queue, f"\x00dedup\x00{dedup_id}", shard_count)
    return None


def message_shard(message_id: str) -> int | None:
    shard, sep, seq = message_id.partition(":")
    if not sep or not shard.isdigit() or not seq.isdigit():
        return None
    return int(shard)


def group_for(op: Any, shard_count: int, client: str = "", request_id: int = 0) -> int | Err:
    match op:
        case Put(key=key) | Get(key=key) | Delete(key=key):
            if not key or len(key.encode()) > KEY_BYTES_MAX:
                return bad_request("key", f"key must be 1..{KEY_BYTES_MAX} bytes")
            return shard_for_key(key, shard_count)
        case CacheLine(key=key):
            return check_key(key) or shard_for_key(key, shard_count)
        case OnShard(shard=shard, op=inner):
            if isinstance(inner, HOUSEKEEPING):
                return bad_request("op", f"{type(inner).__name__} is not a client operation")
            if not 1 <= shard <= shard_count:
                return bad_request("shard", f"shard must be 1..{shard_count}")
            return shard
        case Produce(queue=queue, key=key, dedup_id=dedup_id):
            shard = produce_shard(queue, key, dedup_id, shard_count)
            # Spread, and a retry (same request id) lands where the first try did.
            return shard if shard is not None else shard_for_key(f"{client}\x1f{request_id}", shard_count)
        case Ack(message_ids=ids) | Nack(message_ids=ids):
            shards = {message_shard(i) for i in ids}
            if not ids or len(shards) != 1 or None in shards:
                return bad_request("message_ids", "message ids must be non-empty and all of one shard")
            shard = shards.pop()
            assert shard is not None
            if not 1 <= shard <= shard_count:
                return bad_request("message_ids", f"no shard {shard}")
            return shard
        case _ if isinstance(op, _CONTROL_OPS):
            return CONTROL_GROUP
        case _ if isinstance(op, HOUSEKEEPING):
            return bad_request("op", f"{type(op).__name__} is not a client operation")
        case _ if isinstance(op, NEAR_OPS):
            return bad_request("op", f"{type(op).__name__} is served by a node's own cache, not a group")
    return bad_request("op", f"{type(op).__name__} must name its shard (OnShard)")


NO_WAIT = (0, False)
# Ops with no wait_ms: wait_of's answer for them is NO_WAIT (a caller on a hot path may look first).
NEVER_WAIT = frozenset({Put, Get, Delete, Release, Produce})


def wait_of(op: Any) -> tuple[int, bool]:
    """(how long the op may legitimately wait in ms, whether a retry would repeat it).

    A waiting lock acquire is logged: a retry with the same request id finds the same wait, so
    callers may retry it every attempt. A long-polling consume runs on the leader only and is
    not deduplicated: an attempt must outlast its wait, or a retry would take more messages.
    """
    if type(op) in NEVER_WAIT:  # the common calls, without the lookups below
        return NO_WAIT
    inner = op.op if isinstance(op, OnShard) else op
    wait_ms = getattr(inner, "wait_ms", 0) or 0
    return wait_ms, isinstance(inner, Consume) and wait_ms > 0
