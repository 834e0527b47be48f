"""The wire: the client API, the peer envelope, and the one Encoder/Decoder set both use.

Everything is MessagePack via msgspec, decoders built once. A ROUTER socket receives either
a client ``Request`` or a ``PeerBatch`` (every message one peer has for us this turn, for any
group), told apart by their tags. A log entry's payload is a list of encoded ``Request``s —
one turn's writes to one group — kept byte for byte as their clients sent them.
"""

from __future__ import annotations

import msgspec

from syncfab.actors.kv import Delete, Get, Put
from syncfab.actors.messages import Beat, Forward, ForwardReply, RaftMessage
from syncfab.actors.results import Err, Result


class ClusterInfo(msgspec.Struct, frozen=True, tag="cluster", array_like=True):
    """Ask a node for its view of the cluster (members, shard leaders); answered locally."""


Op = Put | Get | Delete | ClusterInfo


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
    result: Result
    leader: str | None = None


PeerMessage = RaftMessage | Beat | Forward | ForwardReply


class PeerBatch(msgspec.Struct, frozen=True, tag="pb", array_like=True):
    src: str
    items: list[tuple[int, PeerMessage]]


Inbound = Request | PeerBatch

encode = msgspec.msgpack.Encoder().encode
decode_inbound = msgspec.msgpack.Decoder(Inbound).decode
decode_request = msgspec.msgpack.Decoder(Request).decode
decode_reply = msgspec.msgpack.Decoder(Reply).decode
_decode_requests = msgspec.msgpack.Decoder(list[Request]).decode


def encode_batch(requests: list[bytes]) -> bytes:
    """A log entry's payload: the requests of one turn, each exactly as its client encoded it."""
    return encode([msgspec.Raw(r) for r in requests])


def decode_batch(data: bytes) -> list[Request]:
    return _decode_requests(data)

DecodeError = msgspec.DecodeError
ValidationError = msgspec.ValidationError


def error_reply(request_id: int, code: str, message: str, detail: object = None) -> bytes:
    return encode(Reply(request_id, Err(code, message, detail)))


class RequestIds:
    """A client's request numbering: fresh ids, and ``acked`` = the lowest still outstanding
    (every id below it has been answered, so replicas may forget those results)."""

    def __init__(self) -> None:
        self._next = 1
        self._open: dict[int, None] = {}  # insertion order is id order

    def next(self) -> int:
        rid = self._next
        self._next += 1
        self._open[rid] = None
        return rid

    def done(self, rid: int) -> None:
        self._open.pop(rid, None)

    @property
    def acked(self) -> int:
        return next(iter(self._open), self._next)
