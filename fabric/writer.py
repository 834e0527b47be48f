"""The disk writer: group commit across turns, on its own thread.

The loop encodes each turn's writes into one record and carries on — receiving acks, taking
requests, running more turns. The writer thread takes every record queued, appends them to
the store's write-ahead log in one LMDB transaction with one fsync, and hands the flushes back
to the loop in the order they came. The slower the disk, the bigger each batch.

The thread does one ``put`` per commit and LMDB releases the GIL while it commits and syncs,
so the loop keeps the interpreter almost all of the time. (A writer that did a put per entry
held the GIL long enough to make every ZeroMQ send on the loop wait for it.)

A flush with nothing to write still queues behind pending ones: its after-persist messages may
acknowledge entries those writes carry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from syncfab.actors.ready import Persist
from syncfab.fabric.node import Flush


class WalStore(Protocol):
    def encode_batch(self, batch: list[tuple[int, Persist]]) -> bytes: ...

    def write_encoded(self, records: list[bytes]) -> None: ...

    def wal_records(self) -> int: ...

    def checkpoint(self, records_max: int | None = None) -> None: ...


# Past this many records one LMDB transaction gets slower per record (measured): commit the
# rest in the next round.
RECORDS_PER_COMMIT_MAX = 32
# When idle, fold the WAL into the per-group databases this many records at a time, so the
# store's own size-triggered fold (a much bigger commit) rarely lands on a client's write.
FOLD_AFTER_RECORDS = 64
FOLD_SLICE_RECORDS = 16


Done = Callable[[list[Flush], float], None]
Failed = Callable[[BaseException], None]


class DiskWriter:
    def __init__(self, store: WalStore, loop: asyncio.AbstractEventLoop, on_done: Done,
                 on_failed: Failed) -> None:
        self._store = store
        self._loop = loop
        self._on_done = on_done
        self._on_failed = on_failed
        self._queue: deque[tuple[Flush, bytes | None]] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self.failed: BaseException | None = None
        self.in_flight = 0  # flushes submitted and not yet handed back (loop thread only)
        self._thread = threading.Thread(target=self._run, name="syncfab-disk", daemon=True)
        self._thread.start()

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

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stopping:
                    if self._store.wal_records() >= FOLD_AFTER_RECORDS:
                        break
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
                if not batch:
                    self._store.checkpoint(FOLD_SLICE_RECORDS)
                    continue
                started = time.perf_counter()
                written = [record for _, record in batch if record is not None]
                if written:
                    self._store.write_encoded(written)
                elapsed = time.perf_counter() - started
            except BaseException as e:
                # Nothing after a failed write may be acknowledged: hand nothing back, ever.
                self.failed = e
                self._loop.call_soon_threadsafe(self._on_failed, e)
                return
            self._loop.call_soon_threadsafe(self._on_done, [flush for flush, _ in batch], elapsed)
