"""The disk writer: group commit across turns, on its own thread, and folding on another.

The loop encodes each turn's writes into one record and carries on — receiving acks, taking
requests, running more turns. The writer thread takes every record queued, appends them to
the store's write-ahead log with one write and one fdatasync, and hands the flushes back to
the loop in the order they came. The slower the disk, the bigger each batch.

The fold thread moves the WAL into the store's per-group databases (``checkpoint``) once enough
has piled up: an LMDB commit with its own fsyncs, which used to share the writer's thread and
so delayed the next turn's write by a millisecond or more. Both threads spend their time in
calls that release the GIL (writes, syncs, LMDB's commit), so the loop keeps the interpreter.

A flush with nothing to write still queues behind pending ones: its after-persist messages may
acknowledge entries those writes carry. Those messages (a follower's append acks, votes) leave
from the writer's thread the moment the fsync returns (``send_durable``), on sockets of its
own: handing them to the loop first made them wait for whatever turn it was in, about half a
millisecond on every commit's path.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from syncfab.actors.ready import Persist
from syncfab.fabric.core.node import Flush


class WalStore(Protocol):
    def encode_batch(self, batch: list[tuple[int, Persist]]) -> bytes: ...

    def write_encoded(self, records: list[bytes]) -> None: ...

    def wal_records(self) -> int: ...

    def wal_bytes(self) -> int: ...

    def checkpoint(self, records_max: int | None = None) -> None: ...


# Records per write: a bound on how long the first turn of a big batch waits for the last.
RECORDS_PER_COMMIT_MAX = 32
# Fold once this much is in the WAL: a fold is one LMDB commit (two fsyncs) whatever its
# size, so not for every write; and early enough that the store's own backstop (a fold on the
# writer's thread, at its checkpoint limits) does not come into play.
FOLD_AFTER_RECORDS = 64
FOLD_AFTER_BYTES = 1 << 20


Done = Callable[[list[Flush], float], None]
Failed = Callable[[BaseException], None]
Folded = Callable[[float], None]  # called on the fold thread with the fold's duration
SendDurable = Callable[[list[Flush]], None]  # called on the writer thread once they are durable


class DiskWriter:
    def __init__(
        self,
        store: WalStore,
        loop: asyncio.AbstractEventLoop,
        on_done: Done,
        on_failed: Failed,
        on_folded: Folded | None = None,
        send_durable: SendDurable | None = None,
    ) -> None:
        self._store = store
        self._send_durable = send_durable
        self._on_folded = on_folded
        self._loop = loop
        self._on_done = on_done
        self._on_failed = on_failed
        self._queue: deque[tuple[Flush, bytes | None]] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.failed: BaseException | None = None
        self.in_flight = 0  # flushes submitted and not yet handed back (loop thread only)
        self._fold_cv = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="syncfab-disk", daemon=True)
        self._folder = threading.Thread(target=self._fold_run, name="syncfab-fold", daemon=True)
        self._thread.start()
        self._folder.start()

    def submit(self, flush: Flush) -> None:
        if self.failed is not None:
            raise RuntimeError("the disk writer failed; nothing more can be acknowledged") from self.failed
        record = self._store.encode_batch(flush.writes) if flush.writes else None
        self.in_flight += 1
        with self._cv:
            self._queue.append((flush, record))
            self._cv.notify()

    def completed(self, count: int) -> None:
        self.in_flight -= count

    def stop(self) -> None:
        """Finish what was submitted, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=30)
        with self._fold_cv:
            self._fold_cv.notify()
        self._folder.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if not self._queue and self._stopping:
                    return
                batch: list[tuple[Flush, bytes | None]] = []
                records = 0
                while self._queue and records < RECORDS_PER_COMMIT_MAX:
                    flush, record = self._queue.popleft()
                    batch.append((flush, record))
                    records += record is not None
            try:
                started = time.perf_counter()
                written = [record for _, record in batch if record is not None]
                if written:
                    self._store.write_encoded(written)
                elapsed = time.perf_counter() - started
            except BaseException as e:
                self._fail(e)
                return
            flushes = [flush for flush, _ in batch]
            if self._send_durable is not None:
                try:
                    self._send_durable(flushes)
                except BaseException as e:
                    self._fail(e)
                    return
            self._loop.call_soon_threadsafe(self._on_done, flushes, elapsed)
            if self._fold_due():
                with self._fold_cv:
                    self._fold_cv.notify()

    def _fail(self, error: BaseException) -> None:
        # Nothing after a failed write or fold may be acknowledged: hand nothing back, ever.
        if self.failed is None:
            self.failed = error
            self._loop.call_soon_threadsafe(self._on_failed, error)
        with self._fold_cv:
            self._fold_cv.notify()

    def _fold_due(self) -> bool:
        store = self._store
        return store.wal_records() >= FOLD_AFTER_RECORDS or store.wal_bytes() >= FOLD_AFTER_BYTES

    def _fold_run(self) -> None:
        while True:
            with self._fold_cv:
                while not self._fold_due() and not self._stopping and self.failed is None:
                    self._fold_cv.wait()
            if self._stopping or self.failed is not None:
                return  # an unfolded WAL is as good as folded: the next open folds it
            try:
                started = time.perf_counter()
                self._store.checkpoint()
                if self._on_folded is not None:
                    self._on_folded(time.perf_counter() - started)
            except BaseException as e:
                self._fail(e)
                return
