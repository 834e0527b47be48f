"""The wire: the client API, the peer envelope, and the one Encoder/Decoder set both use.

Everything is MessagePack via msgspec, decoders built once. A ROUTER socket receives either
a client ``Request`` (or several in one ``Requests`` frame) or a ``PeerBatch`` (every message
one peer has for us this turn, for any group), told apart by their tags; a client gets one
``Reply`` or several in a ``Replies`` frame. A log entry's payload is a ``Batch``: one turn's
writes to one group, kept byte for byte as their clients sent them, with the leader's
timestamp.
"""

from __future__ import annotations

import msgspec

from syncfab.actors.cache_ops import (
    CacheBump,
    CacheDelete,
    CacheExpire,
    CacheInvalidate,
    CacheLine,
    CacheRead,
    CacheStats,
    CacheWrite,
    CacheWriteBack,
)
from syncfab.actors.kv import Delete, Get, Put
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
from syncfab.actors.messages import (
    Beat,
    CacheAck,
    CacheDropReq,
    CacheFetch,
    CacheRecalled,
    CacheStream,
    CacheWriteBackReq,
    CacheWriteReq,
    Forward,
    ForwardReply,
    RaftMessage,
    Removed,
)
from syncfab.actors.queue_ops import QueueCommand, QueueLocal, QueueQuery
from syncfab.actors.results import Answers, Err, Result


class ClusterInfo(msgspec.Struct, frozen=True, tag="cluster", array_like=True):
    """Ask a node for its view of the cluster (members, shard leaders); answered locally."""


class OnShard(msgspec.Struct, frozen=True, tag="on", array_like=True):
    """Run ``op`` on a named shard (a queue consumer visiting each shard in turn, a setting
    applied to every shard, a batch a client has already split by shard)."""

    shard: int
    op: ShardOp


# Every op a Request may carry — clients' and the leaders' own housekeeping, which is logged
# as a Request too — so one decoder reads any log entry.
CacheShardOp = CacheWrite | CacheDelete | CacheWriteBack | CacheBump | CacheExpire | CacheLine
ShardOp = QueueCommand | QueueQuery | QueueLocal | Put | Get | Delete | CacheShardOp
LockOp = Acquire | Release | ReleaseAll | Renew | ExpireLocks | LockInfo | OwnerInfo | LockBatch
MemberOp = MemberAdd | MemberRemove | MemberSeed
# The cache ops a node's near cache serves itself (CacheWrite and CacheDelete are logged too).
NearOp = CacheRead | CacheInvalidate | CacheStats
Op = (
    Put
    | Get
    | Delete
    | ClusterInfo
    | OnShard
    | LockOp
    | MemberOp
    | QueueCommand
    | QueueQuery
    | QueueLocal
    | CacheShardOp
    | NearOp
)


class Request(msgspec.Struct, frozen=True, tag="rq", array_like=True):
    """``id`` is unique per ``client`` and is what makes a retry apply once; ``acked`` is the
    lowest id the client still waits for (the replicas may forget results below it)."""

    client: str
    id: int
    acked: int
    op: Op


class Reply(msgspec.Struct, frozen=True, tag="rp", array_like=True):
    """``leader`` is the node that leads the request's group, as far as the replier knows."""

    id: int
    result: Result | Answers
    leader: str | None = None


class Requests(msgspec.Struct, frozen=True, tag="rqs", array_like=True):
    """Several requests in one frame: what a client has for one node in one loop iteration.
    Each item is an encoded ``Request``, kept as its bytes (a write's bytes become its log
    entry as they are). One frame instead of one per request: ZeroMQ's cost is per frame."""

    items: list[msgspec.Raw]


class Replies(msgspec.Struct, frozen=True, tag="rps", array_like=True):
    """Several encoded ``Reply``s in one frame: what one client gets from a node in one turn."""

    items: list[msgspec.Raw]


class _DecodedReplies(msgspec.Struct, frozen=True, tag="rps", array_like=True):
    items: list[Reply]


CacheMessage = (
    CacheStream | CacheFetch | CacheWriteReq | CacheDropReq | CacheWriteBackReq | CacheAck | CacheRecalled
)
CACHE_MESSAGES = (
    CacheStream,
    CacheFetch,
    CacheWriteReq,
    CacheDropReq,
    CacheWriteBackReq,
    CacheAck,
    CacheRecalled,
)
PeerMessage = RaftMessage | Beat | Forward | ForwardReply | CacheMessage | Removed


class PeerBatch(msgspec.Struct, frozen=True, tag="pb", array_like=True):
    src: str
    items: list[tuple[int, PeerMessage]]


Inbound = Request | Requests | PeerBatch

encode = msgspec.msgpack.Encoder().encode
decode_inbound = msgspec.msgpack.Decoder(Inbound).decode
decode_request = msgspec.msgpack.Decoder(Request).decode
decode_reply = msgspec.msgpack.Decoder(Reply).decode
_decode_replies = msgspec.msgpack.Decoder(Reply | _DecodedReplies).decode


def frame_of(kind: type[Requests] | type[Replies], encoded: list[bytes]) -> bytes:
    """One frame for encoded requests (or replies): the lone one as it is, several together."""
    if len(encoded) == 1:
        return encoded[0]
    return encode(kind([msgspec.Raw(e) for e in encoded]))


def replies_in(frame: bytes) -> list[Reply]:
    """The replies a frame from a node holds: one ``Reply``, or several in a ``Replies``."""
    msg = _decode_replies(frame)
    return msg.items if isinstance(msg, _DecodedReplies) else [msg]


class Batch(msgspec.Struct, frozen=True, array_like=True):
    """A log entry's payload: one turn's writes to one group, each exactly as its client
    encoded it, and the leader's wall clock when it proposed them (the only time a replicated
    state machine ever sees)."""

    now_ms: int
    requests: list[msgspec.Raw]


class _DecodedBatch(msgspec.Struct, frozen=True, array_like=True):
    now_ms: int
    requests: list[Request]


_decode_batch = msgspec.msgpack.Decoder(_DecodedBatch).decode


class _BatchStamp(msgspec.Struct, frozen=True, array_like=True):
    now_ms: int
    requests: msgspec.Raw  # skipped, not decoded


_decode_stamp = msgspec.msgpack.Decoder(_BatchStamp).decode


def batch_stamp(data: bytes) -> int:
    """A log entry's stamp alone (its requests are skipped over)."""
    return _decode_stamp(data).now_ms


def encode_batch(now_ms: int, requests: list[bytes]) -> bytes:
    return encode(Batch(now_ms, [msgspec.Raw(r) for r in requests]))


def decode_batch(data: bytes) -> tuple[int, list[Request]]:
    batch = _decode_batch(data)
    return batch.now_ms, batch.requests


DecodeError = msgspec.DecodeError
ValidationError = msgspec.ValidationError


def error_reply(request_id: int, code: str, message: str, detail: object = None) -> bytes:
    return encode(Reply(request_id, Err(code, message, detail)))


class RequestIds:
    """A client's request numbering: fresh ids, and ``acked`` = the lowest still outstanding
    (every id below it has been answered, so replicas may forget those results). ``acked`` is
    a plain attribute, kept as ids finish (read for every request: a property is a call)."""

    def __init__(self) -> None:
        self._next = 1
        self._open: dict[int, None] = {}  # a dict, not a set: its item syntax is no method call
        self.acked = 1  # the first open id, or the next fresh one while none is open

    def next(self) -> int:
        rid = self._next
        self._next += 1
        self._open[rid] = None  # acked stays: it is the lowest open id, or was rid (none open)
        return rid

    def reserve(self, count: int) -> int:
        """``count`` consecutive fresh ids; returns the first."""
        first = self._next
        self._next += count
        self._open.update(dict.fromkeys(range(first, self._next)))
        return first

    def done(self, rid: int) -> None:
        still = self._open
        if rid not in still:
            return  # answered before (or never issued)
        del still[rid]
        if rid == self.acked:
            # The next open id: acked only moves up, so each id is stepped over once at most
            # (answers mostly come in order: one step).
            acked, end = rid + 1, self._next
            while acked < end and acked not in still:
                acked += 1
            self.acked = acked

    def done_range(self, first: int, count: int) -> None:
        """``done`` for the ``count`` ids from ``first`` (a lock batch's ops, answered together):
        one call, not one per id."""
        still, stop = self._open, min(first + count, self._next)  # ids never issued: none
        for rid in range(first, stop):
            if rid in still:
                del still[rid]
        if first <= self.acked < stop:  # the lowest open id was among them: the next above them
            acked, end = stop, self._next
            while acked < end and acked not in still:
                acked += 1
            self.acked = acked
