"""The queue service's operations and the checks every one of them passes first.

Ops are small frozen tagged Structs (tags prefixed ``q``) that travel through the log, the
ReadIndex path or the leader's local path (see actors/queues.py for what each one does).
Validation is deterministic, so a malformed command fails the same way on every replica.
"""

from __future__ import annotations

from typing import Any

import msgspec

from syncfab.actors.limits import NAME_BYTES_MAX
from syncfab.actors.results import Err, bad_request

# Bounds: a request can name at most this many ids or messages, a consume take at most this many.
IDS_MAX = 1000
BATCH_MAX = 1000
CONSUME_MAX = 1000
# Queue names (not counting ".dlq" suffixes), keys, dedup ids and consumers are names
# (actors/limits.py); a queue name with its suffixes is at most twice that.
# A dead-letter queue of a dead-letter queue adds ".dlq" again; this caps the whole chain.
QUEUE_NAME_BYTES_MAX = 2 * NAME_BYTES_MAX
HEADERS_MAX = 64
DLQ_SUFFIX = ".dlq"


class NewMessage(msgspec.Struct, frozen=True, array_like=True):
    data: Any
    key: str | None = None
    headers: dict[str, str] | None = None
    dedup_id: str | None = None


class Produce(msgspec.Struct, frozen=True, tag="qprod", array_like=True):
    queue: str
    data: Any
    key: str | None = None
    headers: dict[str, str] | None = None
    dedup_id: str | None = None


class ProduceBatch(msgspec.Struct, frozen=True, tag="qbatch", array_like=True):
    queue: str
    messages: list[NewMessage]


class Produced(msgspec.Struct, frozen=True, kw_only=True):
    """What a ProduceBatch answers: each message's id, in order, and the places of those a
    dedup id had seen before (omitted when none); clients read it typed."""

    message_ids: list[str]
    duplicates: list[int] = []


class Ack(msgspec.Struct, frozen=True, tag="qack", array_like=True):
    queue: str
    message_ids: list[str]


class Nack(msgspec.Struct, frozen=True, tag="qnack", array_like=True):
    queue: str
    message_ids: list[str]


class Redeliver(msgspec.Struct, frozen=True, tag="qredel", array_like=True):
    """Proposed by the leader when visibility deadlines pass. ``delivery_counts`` (one per id)
    makes it conditional: an id whose count moved on since the proposal (a nack, an earlier
    copy of this very command) is left alone, so a re-proposed or stale Redeliver counts once
    and never cancels a newer delivery. ``None`` redelivers unconditionally."""

    queue: str
    message_ids: list[str]
    delivery_counts: list[int] | None = None


class HandOver(msgspec.Struct, frozen=True, tag="qhand", array_like=True):
    """Proposed by a leader about to hand its group over (actors/queue_handover.py): messages
    of ``queue`` in flight, each with its consumer, deadline (log-clock ms) and count then."""

    queue: str
    message_ids: list[str]
    consumers: list[str]
    deadlines_ms: list[int]
    delivery_counts: list[int]


class ConfigureQueue(msgspec.Struct, frozen=True, tag="qconf", array_like=True):
    """Changes the settings it names of the queue's slice on this shard; one left None keeps
    its value (a new queue starts from ``QueueSettings``' defaults; 0 = forever / unbounded)."""

    queue: str
    visibility_ms: int | None = None
    max_deliveries: int | None = None
    retention_ms: int | None = None
    max_depth: int | None = None
    dedup_window_ms: int | None = None


class ExpireMessages(msgspec.Struct, frozen=True, tag="qexp", array_like=True):
    queue: str


class Consume(msgspec.Struct, frozen=True, tag="qcons", array_like=True):
    queue: str
    consumer: str
    max: int = 1
    visibility_ms: int | None = None
    wait_ms: int = 0


class Return(msgspec.Struct, frozen=True, tag="qret", array_like=True):
    queue: str
    message_ids: list[str]


class QueueStats(msgspec.Struct, frozen=True, tag="qstat", array_like=True):
    queue: str


QueueCommand = Produce | ProduceBatch | Ack | Nack | Redeliver | HandOver | ConfigureQueue | ExpireMessages
QueueQuery = QueueStats
QueueLocal = Consume | Return


def _fits(value: str, limit: int = NAME_BYTES_MAX) -> bool:
    # A character takes 1 to 4 bytes of UTF-8: most names are decided by their length alone
    # (this runs on every replica for every message).
    n = len(value)
    return n * 4 <= limit or (n <= limit and len(value.encode("utf-8")) <= limit)


def check_queue(name: object, field: str = "queue") -> Err | None:
    if type(name) is str and 0 < len(name) * 4 <= NAME_BYTES_MAX and not name.endswith(DLQ_SUFFIX):
        return None  # the common case, decided by the length alone (see _fits)
    if not isinstance(name, str) or not name:
        return bad_request(field, "a queue name is a non-empty string")
    if not _fits(name, QUEUE_NAME_BYTES_MAX):
        return bad_request(field, f"a queue name is at most {QUEUE_NAME_BYTES_MAX} bytes with its suffixes")
    base = name
    while base.endswith(DLQ_SUFFIX):
        base = base[: -len(DLQ_SUFFIX)]
    if not base or not _fits(base):
        return bad_request(field, f"a queue name is 1 to {NAME_BYTES_MAX} bytes (before any {DLQ_SUFFIX})")
    return None


def check_int(value: object, field: str, low: int, high: int | None = None) -> Err | None:
    if type(value) is not int or value < low or (high is not None and value > high):
        upper = "" if high is None else f" and at most {high}"
        return bad_request(field, f"{field} must be an integer of at least {low}{upper}")
    return None


def check_text(value: object, field: str, optional: bool = True) -> Err | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or not _fits(value):
        return bad_request(field, f"{field} must be a string of 1 to {NAME_BYTES_MAX} bytes")
    return None


def check_message(message: NewMessage | Produce, prefix: str = "") -> Err | None:
    """``prefix`` names the message in a batch (``messages[3].``) so the error points at it."""
    if message.key is None and message.dedup_id is None and message.headers is None:
        return None  # the common case, without building the field names
    err = check_text(message.key, f"{prefix}key") or check_text(message.dedup_id, f"{prefix}dedup_id")
    if err is not None:
        return err
    headers = message.headers
    if headers is None:
        return None
    if not isinstance(headers, dict) or len(headers) > HEADERS_MAX:
        return bad_request(f"{prefix}headers", f"headers are a map of at most {HEADERS_MAX} strings")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        return bad_request(f"{prefix}headers", "header names and values are strings")
    return None


def check_batch_size(messages: object) -> Err | None:
    if not isinstance(messages, list) or not 1 <= len(messages) <= BATCH_MAX:
        return bad_request("messages", f"a batch has 1 to {BATCH_MAX} messages")
    return None


def check_configure(op: ConfigureQueue) -> Err | None:
    for field, low in SETTINGS_LOW.items():
        value = getattr(op, field)
        err = None if value is None else check_int(value, field, low)
        if err is not None:
            return err
    return check_queue(op.queue)


# Each setting's least value; dict order is the order they are checked in.
SETTINGS_LOW = {
    "visibility_ms": 0,
    "max_deliveries": 1,
    "retention_ms": 0,
    "max_depth": 0,
    "dedup_window_ms": 0,
}


def check_consume(op: Consume) -> Err | None:
    return (
        check_queue(op.queue)
        or check_text(op.consumer, "consumer", optional=False)
        or check_int(op.max, "max", 1, CONSUME_MAX)
        or (None if op.visibility_ms is None else check_int(op.visibility_ms, "visibility_ms", 0))
        or check_int(op.wait_ms, "wait_ms", 0)
    )


def message_id(shard: int, seq: int) -> str:
    return f"{shard}:{seq}"


def parse_ids(ids: object, shard: int, field: str = "message_ids") -> list[int] | Err:
    """Sequence numbers of ``ids``, first occurrences only, in the given order. An id of another
    shard is an error rather than an unknown id: it means a routing bug, not a retried ack."""
    if not isinstance(ids, list) or len(ids) > IDS_MAX:
        return bad_request(field, f"{field} is a list of at most {IDS_MAX} message ids")
    prefix = f"{shard}:"
    seqs: dict[int, None] = {}
    for mid in ids:
        if not isinstance(mid, str) or not mid.startswith(prefix):
            return Err(
                "bad_request",
                f"{mid!r} is not a message id of shard {shard}",
                {"field": field, "message_id": mid},
            )
        tail = mid[len(prefix) :]
        # isdigit alone admits non-ASCII digits and int() admits "_" and signs: only the
        # canonical spelling names a message.
        if not (tail.isascii() and tail.isdigit()) or str(int(tail)) != tail:
            return Err("bad_request", f"{mid!r} is not a message id", {"field": field, "message_id": mid})
        seqs[int(tail)] = None
    return list(seqs)
