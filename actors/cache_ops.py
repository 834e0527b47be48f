"""The cache's operations (tags prefixed ``c``), its limits, and the checks every one passes first.

Client ops a node's near cache serves (actors/cache_near.py): ``CacheRead``, ``CacheWrite``,
``CacheDelete``, ``CacheInvalidate``, ``CacheStats``. ``CacheLine`` is answered by the key's
home (the shard leader's directory). ``CacheWrite`` and ``CacheDelete`` are also the commands the
home logs — the client's own request bytes, so the session table applies a retry once — and
``CacheWriteBack``, ``CacheBump`` and ``CacheExpire`` are commands the home logs for itself.

Versions: a value committed through Raft at log index ``i`` has version ``i * VERSION_STEP``; an
M owner's local writes count up from there (``+1`` each, at most ``VERSION_STEP - 1``). So every
version of a key is larger than the one before, a committed write is always larger than any
version an owner handed out before it (lost ones included), and a delete and re-create never
repeat a version. A key that does not exist has version 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import msgspec

from syncfab.actors.kv import KEY_BYTES_MAX
from syncfab.actors.results import Err, bad_request

VALUE_BYTES_MAX = 1 << 20  # a value, MessagePack-encoded
VERSION_STEP = 1000
TTL_MS_MAX = 1 << 40
WRITE_THROUGH, WRITE_BACK = "write_through", "write_back"
POLICIES = (WRITE_THROUGH, WRITE_BACK)
MODIFIED, EXCLUSIVE, SHARED, INVALID = "M", "E", "S", "I"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    lines_max: int = 100_000  # a node's lines
    bytes_max: int = 256 << 20  # a node's lines' values and keys
    lease_ms: int = 2_000  # how long a holder may serve its lines of a shard without hearing from home
    flush_ms: int = 100  # an M line is written back at most this long after its first dirty write
    # Leases assume clocks run at rates within this fraction of each other (Chubby's assumption).
    clock_drift_max: float = 0.01
    directory_entries_max: int = 100_000  # per shard, at its home
    op_retry_ms: int = 500  # a holder asks its home again after this long without an answer
    op_deadline_ms: int = 5_000  # and then gives up: the client is told ``unavailable``

    @property
    def home_lease_ms(self) -> int:
        """How long a home must count a lease it granted as live: the holder counts ``lease_ms``
        on its own clock from before it asked, and the two clocks' rates may differ."""
        drift = self.clock_drift_max
        return math.ceil(self.lease_ms * (1 + drift) / (1 - drift)) + 1


class CacheRead(msgspec.Struct, frozen=True, tag="cread", array_like=True):
    key: str


class CacheWrite(msgspec.Struct, frozen=True, tag="cwrite", array_like=True):
    """``value`` is MessagePack bytes (the node never decodes it); ``expected_version`` makes it
    a compare-and-set (0: the key must not exist)."""

    key: str
    value: msgspec.Raw
    policy: str = WRITE_THROUGH
    ttl_ms: int | None = None
    expected_version: int | None = None


class CacheDelete(msgspec.Struct, frozen=True, tag="cdel", array_like=True):
    key: str


class CacheInvalidate(msgspec.Struct, frozen=True, tag="cinv", array_like=True):
    """Drop every cached copy of ``key``; memory keeps the value."""

    key: str


class CacheStats(msgspec.Struct, frozen=True, tag="cstats", array_like=True):
    """This node's near-cache counters."""


class CacheLine(msgspec.Struct, frozen=True, tag="cline", array_like=True):
    """The home's directory entry for ``key`` (a leader-local op of the key's shard)."""

    key: str


class WriteBackItem(msgspec.Struct, frozen=True, array_like=True):
    """An M owner's value going home. Applied only if memory still holds ``base`` (the version
    the owner's line was last in step with), so a write-back from an owner that lost the line
    changes nothing. ``release``: the owner drops the line once this is in."""

    key: str
    value: msgspec.Raw
    version: int
    base: int
    release: bool = False


class CacheWriteBack(msgspec.Struct, frozen=True, tag="cwb", array_like=True):
    items: list[WriteBackItem]


class CacheBump(msgspec.Struct, frozen=True, tag="cbump", array_like=True):
    """Give ``key`` a fresh version (same value): after an owner was lost, so neither its
    write-back nor the versions it handed out can ever match again."""

    key: str


class CacheExpire(msgspec.Struct, frozen=True, tag="cexp", array_like=True):
    """Delete ``key`` if it still has ``version`` (its ttl passed; the home invalidated it)."""

    key: str
    version: int


class CacheConfirm(msgspec.Struct, frozen=True, tag="cconf", array_like=True):
    """A query that reads nothing: its ReadIndex round confirms the home still leads."""


NEAR_OPS = (CacheRead, CacheWrite, CacheDelete, CacheInvalidate, CacheStats)


class CacheValue(msgspec.Struct, frozen=True):
    """A read's answer. ``state`` is this node's line after the read (``I``: not cached)."""

    key: str
    value: msgspec.Raw
    version: int
    state: str
    hit: bool


class CacheWritten(msgspec.Struct, frozen=True):
    key: str
    version: int
    state: str


def check_key(key: object) -> Err | None:
    # A key of at most KEY_BYTES_MAX / 4 characters fits without encoding it (UTF-8: <= 4 each).
    if (
        not isinstance(key, str)
        or not key
        or (len(key) > KEY_BYTES_MAX // 4 and len(key.encode()) > KEY_BYTES_MAX)
    ):
        return bad_request("key", f"key must be 1..{KEY_BYTES_MAX} bytes")
    return None


def check_op(op: object) -> Err | None:
    """The same answer on every node and replica: a bad op fails before it goes anywhere."""
    err = check_key(getattr(op, "key", "x"))
    if err is not None or not isinstance(op, CacheWrite):
        return err
    if op.policy not in POLICIES:
        return bad_request("policy", f"policy must be one of {', '.join(POLICIES)}")
    if len(op.value) > VALUE_BYTES_MAX:
        return Err("payload_too_large", f"a value is at most {VALUE_BYTES_MAX} bytes", {"field": "value"})
    if op.ttl_ms is not None and not 0 < op.ttl_ms <= TTL_MS_MAX:
        return bad_request("ttl_ms", f"ttl_ms must be 1..{TTL_MS_MAX}")
    if op.expected_version is not None and op.expected_version < 0:
        return bad_request("expected_version", "expected_version must be >= 0")
    return None


def version_mismatch(key: str, version: int) -> Err:
    return Err("version_mismatch", f"{key!r} is at version {version}", {"key": key, "version": version})


def not_found(key: str) -> Err:
    return Err("not_found", f"no key {key!r}", {"key": key})
