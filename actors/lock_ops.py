"""The lock table's operations (tags prefixed ``lk``): what clients send and what the leader
proposes for itself. actors/locks.py says what each one does.
"""

from __future__ import annotations

import msgspec


class Acquire(msgspec.Struct, frozen=True, tag="lkacq", array_like=True):
    resource: str
    mode: str
    owner: str
    wait_ms: int  # 0: try-lock
    ttl_ms: int


class Release(msgspec.Struct, frozen=True, tag="lkrel", array_like=True):
    resource: str
    owner: str


class ReleaseAll(msgspec.Struct, frozen=True, tag="lkrla", array_like=True):
    owner: str


class Renew(msgspec.Struct, frozen=True, tag="lkren", array_like=True):
    owner: str
    ttl_ms: int


class LockBatch(msgspec.Struct, frozen=True, tag="lkbat", array_like=True):
    """Acquires and releases sent together (a client coalesces what its callers issue in one
    loop iteration). Applied one by one, each as its own request: the k-th has request id
    ``batch id + 1 + k``, which is what its session record, its wait and its notice carry."""

    ops: list[Acquire | Release]


class ExpireLocks(msgspec.Struct, frozen=True, tag="lkexp", array_like=True):
    """Housekeeping the leader proposes when ``due``: every deadline up to ``ctx.now_ms``."""


class Granted(msgspec.Struct, frozen=True, kw_only=True):
    """What a granted acquire answers (a map on the wire and in JSON); clients read it typed:
    ``msgspec.convert(result.value, Granted)``."""

    granted: bool
    fencing_token: int
    resource: str
    mode: str


class LockInfo(msgspec.Struct, frozen=True, tag="lkinf", array_like=True):
    resource: str


class OwnerInfo(msgspec.Struct, frozen=True, tag="lkown", array_like=True):
    owner: str
