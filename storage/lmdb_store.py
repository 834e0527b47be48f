"""A node's Raft logs: folded state in one LMDB environment, written through a write-ahead log.

Layout. The WAL is a directory of segment files (``wal/``, storage/wal_file.py) holding whole
turns as ``encode_batch`` made them, numbered by sequence. Folded state lives in one named
database per group (``log.<group>``, keys are 8-byte big-endian indexes, values the msgpack
Entry) and in ``meta`` (HardState and Snapshot under ``<group:8 bytes BE><kind:1 byte>``, and
the sequence number of the last record folded). The state of the disk is the folded state with
every WAL record after that number applied on top, in order.

Why a WAL: a turn costs one append and one ``fdatasync`` instead of a transaction touching ~9
B-trees with hundreds of puts and LMDB's two syncs, and on a writer thread it holds the GIL for
almost nothing. ``checkpoint`` folds the oldest records (kept in memory, never read back) into
the group databases through ``apply_persist`` — as MemoryLogStore applies a Persist — in one
transaction that also records how far it got, then lets the WAL reuse their segments.
fabric/server/writer.py calls it from a thread of its own; ``write_encoded`` folds too, as a backstop,
when the WAL would pass ``checkpoint_records_max`` records or ``checkpoint_bytes_max`` bytes.

Reading: opening the store folds whatever WAL a previous run left and retires its segments
(a WAL torn by a crash ends at the tear: wal_file.py), and ``load``/``groups`` fold first too,
so reads only see the per-group databases: one read path.

Validation: a WAL record must never fail to fold, or the store could not open again. So
``encode_batch`` checks a batch against the span each group's log will have once every earlier
record is written (``apply_persist`` on ``LogSpan``s) and raises ValueError, changing nothing, as
``write`` always did. Records carry their sequence number: ``write_encoded`` rejects one written
out of order or after a skipped one.

Threads: one thread (the event loop) calls ``encode_batch``; one writer thread calls
``write_encoded``; one more may call ``checkpoint`` at the same time; ``size_bytes``,
``wal_records`` and ``wal_bytes`` may be called from any thread. ``load``, ``groups`` and
``write`` are for when no writer thread runs (start-up, tests, the simulator). If
``write_encoded`` raises, retry the same records or close the store: later records wait on them.
A fold that raises (``lmdb.MapFullError``: reopen with a larger ``map_size_bytes``) leaves the
WAL as it was.

Limits: ``GROUPS_MAX`` groups ever given entries (``lmdb.DbsFullError`` from ``encode_batch``
past that); groups are non-negative ints below 2**64; the map is ``map_size_bytes``.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from itertools import chain, islice

import lmdb
import msgspec

from syncfab.actors.messages import Entry, HardState, Snapshot
from syncfab.actors.ready import Persist
from syncfab.storage.log_store import StoredGroup
from syncfab.storage.persist_apply import LogSpan, apply_persist
from syncfab.storage.wal_file import WalFile

_DBS_MAX = 256
GROUPS_MAX = _DBS_MAX - 2  # named databases left once meta and wal have theirs
# Only this process's own short transactions read, so a handful of reader slots is plenty.
_READERS_MAX = 16

_META = b"meta"
_LEGACY_WAL = b"wal"  # the WAL's home before it moved to files (wal_file.py)
_WAL_DIR = "wal"
_LOG_PREFIX = b"log."
# In ``meta``: the seq of the last WAL record folded. Not 9 bytes long, so no group's key.
_FOLDED = b"wal-folded-through"
_HARD_STATE = b"h"
_SNAPSHOT = b"s"
_SEQ_BYTES = 8

_key = struct.Struct(">Q").pack
# Separate encoders for the loop thread (records) and the writer thread (checkpoints).
_encode_ops = msgspec.msgpack.Encoder().encode
_encode = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(Entry).decode
_decode_hard_state = msgspec.msgpack.Decoder(HardState).decode
_decode_snapshot = msgspec.msgpack.Decoder(Snapshot).decode


class _Op(msgspec.Struct, array_like=True, frozen=True):
    """One group's Persist in a WAL record. ``encode_batch`` writes plain tuples of this shape;
    entries decode as ``Raw``, the very bytes a group database stores, so folding copies them
    without building or re-encoding an Entry."""

    group: int
    hard_state: HardState | None
    snapshot: Snapshot | None
    compact_to: int | None
    truncate_from: int | None
    entries: list[msgspec.Raw]


_decode_ops = msgspec.msgpack.Decoder(list[_Op]).decode


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


class _DbLog:
    """A GroupLog over one group's database inside a checkpoint's write transaction. One serves
    every record of the checkpoint and tracks the span itself: the database is asked once."""

    __slots__ = ("_group", "_meta", "_span", "_txn", "db")

    def __init__(
        self, txn: lmdb.Transaction, db: lmdb._Database | None, meta: lmdb._Database, group: int
    ) -> None:
        self._txn, self.db, self._meta, self._group = txn, db, meta, group
        self._span = LogSpan(None if db is None else _bounds(txn.cursor(db)))

    def bounds(self) -> tuple[int, int] | None:
        return self._span.span

    def clear(self) -> None:
        self._txn.drop(self.db, delete=False)  # one C call instead of a delete per entry
        self._span.clear()

    def drop_first(self, count: int) -> None:
        cursor = self._txn.cursor(self.db)
        cursor.first()
        for _ in range(count):  # the log is contiguous: no key needs reading back
            cursor.delete()
        self._span.drop_first(count)

    def drop_last(self, count: int) -> None:
        assert self._span.span is not None
        cursor = self._txn.cursor(self.db)
        cursor.set_key(_key(self._span.span[1] - count + 1))
        for _ in range(count):
            cursor.delete()
        self._span.drop_last(count)

    def first_of(self, group: int, entries: Sequence[msgspec.Raw]) -> int:
        return _decode_entry(entries[0]).index  # the rest were checked by encode_batch

    def append(self, first: int, entries: Sequence[msgspec.Raw]) -> None:
        assert self.db is not None
        keys = map(_key, range(first, first + len(entries)))
        # MDB_APPEND: no key comparisons down the tree; zip/map/putmulti all iterate in C.
        consumed, added = self._txn.cursor(self.db).putmulti(zip(keys, entries, strict=True), append=True)
        if added != consumed:  # MDB_APPEND skips an out-of-order key silently
            raise ValueError(f"group {self._group}: entries from {first} are not in ascending order")
        self._span.append(first, entries)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._txn.put(_meta_key(self._group, _SNAPSHOT), _encode(snapshot), db=self._meta)

    def save_hard_state(self, hard_state: HardState) -> None:
        self._txn.put(_meta_key(self._group, _HARD_STATE), _encode(hard_state), db=self._meta)


class LmdbLogStore:
    """LogStore on LMDB: a turn is one WAL record, appended to a segment file with one fdatasync.

    With ``fsync=False`` nothing is synced: a process crash loses nothing (the data is in the
    OS page cache), but a power loss or kernel crash may drop the last turns' writes — which
    breaks Raft's promises unless a quorum's disks survived.
    """

    def __init__(
        self,
        path: str,
        *,
        fsync: bool = True,
        map_size_bytes: int = 8 << 30,
        checkpoint_records_max: int = 512,
        checkpoint_bytes_max: int = 16 << 20,
        segment_bytes: int = 16 << 20,
    ) -> None:
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
        self._checkpoint_records_max = checkpoint_records_max
        self._checkpoint_bytes_max = checkpoint_bytes_max
        # Records written and not folded yet, oldest first: the WAL's content, kept in memory so
        # folding never reads the files. Appended by the writer, taken by folds, under _lock.
        self._pending: deque[bytes] = deque()
        self._lock = threading.Lock()
        self._fold_lock = threading.Lock()  # one LMDB write transaction at a time
        self._wal_records = self._wal_bytes = 0
        with self._env.begin() as txn:
            names = [k for k in txn.cursor().iternext(values=False) if k.startswith(_LOG_PREFIX)]
            folded = txn.get(_FOLDED, db=self._meta)
        # Every group database is opened now, so a group missing here has none. An entry is added
        # only once the transaction that opened it has committed (an aborted one closes it).
        self._logs: dict[int, lmdb._Database] = {
            int(name[len(_LOG_PREFIX) :]): self._env.open_db(name, create=False) for name in names
        }
        self._folded_seq = _index(folded) if folded is not None else 0
        self._fold_legacy_wal()
        self._wal = WalFile(
            os.path.join(path, _WAL_DIR), after_seq=self._folded_seq, fsync=fsync, segment_bytes=segment_bytes
        )
        # Whatever a previous run left is folded (and synced) before the old segments go.
        self._fold(0, [record for _, record in self._wal.recovered])
        self._wal.recovered = []
        self._wal.start()
        # Keep counting after a crashed run's records, so sequence numbers never repeat.
        self._next_encoded = self._next_written = self._folded_seq + 1
        # Each log's span as it will be once every encoded record is written: encode_batch's
        # view, owned by the encoding thread (folding never changes a span). A group is here iff
        # it has a database or an encoded record will create one.
        with self._env.begin() as txn:
            self._spans = {group: LogSpan(_bounds(txn.cursor(db))) for group, db in self._logs.items()}

    def groups(self) -> list[int]:
        self.checkpoint()
        with self._env.begin() as txn:
            found = {_index(k[:8]) for k in txn.cursor(self._meta).iternext(values=False) if k != _FOLDED}
            # A compaction can leave a group's database empty, and an empty log is not "stored".
            found.update(group for group, db in self._logs.items() if txn.stat(db)["entries"])
        return sorted(found)

    def load(self, group: int) -> StoredGroup:
        self.checkpoint()
        db = self._logs.get(group)
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
        self.write_encoded([self.encode_batch(batch)])

    def encode_batch(self, batch: Iterable[tuple[int, Persist]]) -> bytes:
        """The batch as one WAL record, or ``b""`` when it holds nothing to keep.

        No I/O; call from one thread, in the order the records will be written. Raises
        ValueError (and changes nothing) for a batch the log could not take.
        """
        staged: dict[int, LogSpan] = {}
        created: set[int] = set()
        ops = []
        for group, persist in batch:
            if not persist:
                continue
            if not 0 <= group < 1 << 64:
                raise ValueError(f"group {group} is not a non-negative int below 2**64")
            span = staged.get(group)
            if span is None:
                current = self._spans.get(group)
                span = staged[group] = LogSpan(current.span if current is not None else None)
            apply_persist(span, group, persist)
            if persist.entries and group not in self._spans:
                created.add(group)  # folding this record will create the group's database
            # The shape of _Op; Entry structs encode themselves, in C.
            p = persist
            ops.append((group, p.hard_state, p.snapshot, p.compact_to, p.truncate_from, p.entries))
        if not ops:
            return b""
        if len(self._spans) + len(created) > GROUPS_MAX:
            raise lmdb.DbsFullError(f"more than {GROUPS_MAX} groups with a log")
        record = _key(self._next_encoded) + _encode_ops(ops)
        self._spans.update((g, span) for g, span in staged.items() if g in self._spans or g in created)
        self._next_encoded += 1
        return record

    def write_encoded(self, records: list[bytes]) -> None:
        """Append ``encode_batch``'s records to the WAL, durable when this returns (unless fsync
        is off). Meant for a writer thread: the Python work is a few operations per record, none
        per entry. Empty records are skipped; records that would take the WAL past either
        checkpoint limit are folded with it into the group databases instead (the bigger
        commit, a backstop for when ``checkpoint`` on another thread falls behind)."""
        records = [record for record in records if record]
        if not records:
            return  # no write, so no sync, for a turn with nothing to keep
        first = self._next_written
        for offset, record in enumerate(records):
            seq = _index(record[:_SEQ_BYTES])
            if seq != first + offset:
                raise ValueError(f"record {seq} written where record {first + offset} is due")
        size = sum(map(len, records))
        if (
            self._wal_records + len(records) > self._checkpoint_records_max
            or self._wal_bytes + size > self._checkpoint_bytes_max
        ):
            self._fold(None, records)
        else:
            self._wal.append([(first + offset, record) for offset, record in enumerate(records)])
            with self._lock:
                self._pending.extend(records)
                self._wal_records += len(records)
                self._wal_bytes += size
        self._next_written = first + len(records)

    def checkpoint(self, records_max: int | None = None) -> None:
        """Fold the oldest ``records_max`` WAL records (all by default) into the group databases
        in one transaction, then let the WAL reuse the segments that held them. Safe to call on
        one thread while another calls ``write_encoded``."""
        self._fold(records_max, [])

    def wal_records(self) -> int:
        return self._wal_records

    def wal_bytes(self) -> int:
        return self._wal_bytes

    def size_bytes(self) -> int:
        """Bytes in use: the data file's pages (it is sparse up to the map size) and the WAL's
        unfolded records."""
        return (self._env.info()["last_pgno"] + 1) * self._env.stat()["psize"] + self._wal_bytes

    def close(self) -> None:
        """Close without folding: the WAL is as good as folded state, and the next open folds it."""
        self._wal.close()
        self._logs.clear()
        self._env.close()

    def _fold(self, count: int | None, records: list[bytes]) -> None:
        """Fold the WAL's first ``count`` records (None: all), then ``records`` (which were never
        appended), recording the last seq folded in the same transaction."""
        with self._fold_lock:
            with self._lock:
                count = len(self._pending) if count is None else min(count, len(self._pending))
                folding = list(islice(self._pending, count))
            if not folding and not records:
                return
            last = _index((records or folding)[-1][:_SEQ_BYTES])
            opened: dict[int, lmdb._Database] = {}
            with self._env.begin(write=True) as txn:
                self._fold_into(txn, chain(folding, records), opened)
                txn.put(_FOLDED, _key(last), db=self._meta)
            self._logs.update(opened)
            self._folded_seq = last
            with self._lock:
                for _ in range(count):
                    self._pending.popleft()
                self._wal_records -= count
                self._wal_bytes -= sum(map(len, folding))
        if count:
            self._wal.release_through(last)

    def _fold_legacy_wal(self) -> None:
        """Data dirs written before the WAL moved to segment files keep it in a ``wal``
        database: fold it (in key order, which is record order) and drop it."""
        with self._env.begin() as txn:
            if txn.get(_LEGACY_WAL) is None:
                return
        legacy = self._env.open_db(_LEGACY_WAL)
        opened: dict[int, lmdb._Database] = {}
        with self._env.begin(write=True) as txn:
            last = txn.cursor(legacy)
            if last.last():
                self._folded_seq = _index(last.key())
                txn.put(_FOLDED, _key(self._folded_seq), db=self._meta)
            self._fold_into(txn, txn.cursor(legacy).iternext(keys=False), opened)
            txn.drop(legacy, delete=True)
        self._logs.update(opened)

    def _fold_into(
        self, txn: lmdb.Transaction, records: Iterable[bytes], opened: dict[int, lmdb._Database]
    ) -> None:
        """Inside ``txn``: apply ``records`` to the group databases, in order."""
        logs: dict[int, _DbLog] = {}
        for record in records:
            for op in _decode_ops(memoryview(record)[_SEQ_BYTES:]):
                log = logs.get(op.group)
                if log is None:
                    log = logs[op.group] = _DbLog(txn, self._logs.get(op.group), self._meta, op.group)
                if log.db is None and op.entries:
                    # Opened inside this transaction, so a new group costs no commit of its own.
                    log.db = opened[op.group] = self._env.open_db(_log_name(op.group), txn=txn)
                apply_persist(log, op.group, op)
