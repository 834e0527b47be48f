"""A node's Raft logs in one LMDB environment: one named database per group, one ``meta`` database.

Log keys are 8-byte big-endian indexes, so LMDB's byte order is index order: appends go through
``MDB_APPEND`` (no key comparisons down the tree) and the first/last entry is one cursor move.
``meta`` holds each group's HardState and Snapshot under ``<group:8 bytes BE><kind:1 byte>``.

Limits: ``_DBS_MAX`` named databases per environment, one of them ``meta``, so at most
``GROUPS_MAX`` groups ever written (LMDB raises ``lmdb.DbsFullError`` past that); groups are
non-negative ints below 2**64; the map is ``map_size_bytes`` (``lmdb.MapFullError`` when full).
Not thread-safe: one thread owns a store, as one actor owns a node's disk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

import lmdb
import msgspec

from syncfab.actors.messages import Entry, HardState, Snapshot
from syncfab.actors.ready import Persist
from syncfab.storage.log_store import StoredGroup

_DBS_MAX = 256
GROUPS_MAX = _DBS_MAX - 1
# Only this process's own short transactions read, so a handful of reader slots is plenty.
_READERS_MAX = 16

_META = b"meta"
_LOG_PREFIX = b"log."
_HARD_STATE = b"h"
_SNAPSHOT = b"s"

_key = struct.Struct(">Q").pack
_encode = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(Entry).decode
_decode_hard_state = msgspec.msgpack.Decoder(HardState).decode
_decode_snapshot = msgspec.msgpack.Decoder(Snapshot).decode


def _index(key: bytes) -> int:
    return int.from_bytes(key, "big")


def _log_name(group: int) -> bytes:
    return _LOG_PREFIX + str(group).encode()


def _meta_key(group: int, kind: bytes) -> bytes:
    return _key(group) + kind


def _bounds(cursor: lmdb.Cursor) -> tuple[int, int] | None:
    """(first, last) index of a log, or None when it is empty."""
    if not cursor.last():
        return None
    last = _index(cursor.key())
    cursor.first()
    return _index(cursor.key()), last


def _delete_below(txn: lmdb.Transaction, db: lmdb._Database, index: int) -> None:
    cursor = txn.cursor(db)
    bounds = _bounds(cursor)
    if bounds is None or index <= bounds[0]:
        return
    first, last = bounds
    if index > last:
        txn.drop(db, delete=False)  # one C call instead of a delete per entry
        return
    cursor.first()
    # The log is contiguous, so the count is known and no key needs reading back.
    for _ in range(index - first):
        cursor.delete()


def _delete_from(txn: lmdb.Transaction, db: lmdb._Database, index: int) -> None:
    cursor = txn.cursor(db)
    bounds = _bounds(cursor)
    if bounds is None or index > bounds[1]:
        return
    first, last = bounds
    if index <= first:
        txn.drop(db, delete=False)
        return
    cursor.set_key(_key(index))
    for _ in range(last - index + 1):
        cursor.delete()


class LmdbLogStore:
    """LogStore on LMDB. ``write`` is one LMDB write transaction whatever the batch holds.

    With ``fsync=False`` commits skip fsync: a process crash loses nothing (the data is in the
    OS page cache), but a power loss or kernel crash may drop the last turns' writes — which
    breaks Raft's promises unless a quorum's disks survived.
    """

    def __init__(self, path: str, *, fsync: bool = True, map_size_bytes: int = 8 << 30) -> None:
        os.makedirs(path, exist_ok=True)
        self._env = lmdb.open(
            path,
            map_size=map_size_bytes,
            max_dbs=_DBS_MAX,
            max_readers=_READERS_MAX,
            sync=fsync,
            metasync=fsync,
            # With writemap a stray write through the map corrupts the file; readahead fills the
            # page cache with neighbours of pages we read once, at start-up, in key order anyway.
            writemap=False,
            readahead=False,
        )
        self._meta = self._env.open_db(_META)
        # Handles live as long as the environment; an entry is cached only once the transaction
        # that opened it has committed (an aborted one closes it).
        self._logs: dict[int, lmdb._Database] = {}

    def groups(self) -> list[int]:
        with self._env.begin() as txn:
            found = {_index(k[:8]) for k in txn.cursor(self._meta).iternext(values=False)}
            named = [
                int(k[len(_LOG_PREFIX) :])
                for k in txn.cursor().iternext(values=False)
                if k.startswith(_LOG_PREFIX)
            ]
        logs = {group: self._existing_log(group) for group in named if group not in found}
        with self._env.begin() as txn:
            # A compaction can leave a group's database empty, and an empty log is not "stored".
            found.update(group for group, db in logs.items() if db is not None and txn.stat(db)["entries"])
        return sorted(found)

    def load(self, group: int) -> StoredGroup:
        db = self._existing_log(group)
        with self._env.begin() as txn:
            hard_state = txn.get(_meta_key(group, _HARD_STATE), db=self._meta)
            snapshot = txn.get(_meta_key(group, _SNAPSHOT), db=self._meta)
            entries = (
                [_decode_entry(v) for v in txn.cursor(db).iternext(keys=False)] if db is not None else []
            )
        return StoredGroup(
            hard_state=_decode_hard_state(hard_state) if hard_state is not None else HardState(),
            snapshot=_decode_snapshot(snapshot) if snapshot is not None else None,
            entries=entries,
        )

    def write(self, batch: Iterable[tuple[int, Persist]]) -> None:
        work = [(group, persist) for group, persist in batch if persist]
        if not work:
            return  # no transaction, so no fsync, for a turn with nothing to keep
        opened: dict[int, lmdb._Database] = {}
        with self._env.begin(write=True) as txn:
            for group, persist in work:
                self._apply(txn, group, persist, opened)
        self._logs.update(opened)

    def size_bytes(self) -> int:
        """Bytes of the data file in use (the file itself is sparse up to the map size)."""
        return (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"]

    def close(self) -> None:
        self._logs.clear()
        self._env.close()

    def _existing_log(self, group: int) -> lmdb._Database | None:
        db = self._logs.get(group)
        if db is None:
            with self._env.begin() as txn:
                exists = txn.get(_log_name(group)) is not None
            if not exists:
                return None
            db = self._logs[group] = self._env.open_db(_log_name(group), create=False)
        return db

    def _log_in(self, txn: lmdb.Transaction, group: int, opened: dict[int, lmdb._Database]) -> lmdb._Database:
        db = self._logs.get(group)
        if db is None:
            db = opened.get(group)
        if db is None:
            # Opened inside the batch's transaction, so a new group costs no commit of its own.
            db = opened[group] = self._env.open_db(_log_name(group), txn=txn)
        return db

    def _apply(
        self, txn: lmdb.Transaction, group: int, persist: Persist, opened: dict[int, lmdb._Database]
    ) -> None:
        if persist.snapshot is not None:
            txn.put(_meta_key(group, _SNAPSHOT), _encode(persist.snapshot), db=self._meta)
        if persist.compact_to is not None or persist.truncate_from is not None or persist.entries:
            db = self._log_in(txn, group, opened)
            if persist.compact_to is not None:
                _delete_below(txn, db, persist.compact_to)
            if persist.truncate_from is not None:
                _delete_from(txn, db, persist.truncate_from)
            if persist.entries:
                self._append(txn, db, group, persist.entries)
        if persist.hard_state is not None:
            txn.put(_meta_key(group, _HARD_STATE), _encode(persist.hard_state), db=self._meta)

    def _append(self, txn: lmdb.Transaction, db: lmdb._Database, group: int, entries: list[Entry]) -> None:
        first = entries[0].index
        if entries[-1].index - first != len(entries) - 1:
            raise ValueError(f"group {group}: entries {first}..{entries[-1].index} are not contiguous")
        # As etcd's MemoryStorage does: new entries replace whatever the log held from their start.
        _delete_from(txn, db, first)
        cursor = txn.cursor(db)
        if cursor.last() and _index(cursor.key()) + 1 != first:
            raise ValueError(f"group {group}: entries from {first} leave a gap after {_index(cursor.key())}")
        consumed, added = cursor.putmulti([(_key(e.index), _encode(e)) for e in entries], append=True)
        # MDB_APPEND skips an out-of-order key silently; with the span checked above, every key
        # landing means the indexes were exactly first, first + 1, ...
        if added != consumed:
            raise ValueError(f"group {group}: entries from {first} are not in ascending order")
