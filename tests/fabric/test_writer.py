"""DiskWriter with a real store on disk and a real event loop: what waited for the fsync leaves
from the writer's thread once the write is durable, before the loop hears of it, in turn order;
a failure there stops the writer like a failed write."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from syncfab.actors.messages import AppendReply, Entry, HardState
from syncfab.actors.ready import Persist
from syncfab.fabric.core.node import Flush
from syncfab.fabric.server.writer import DiskWriter
from syncfab.storage.lmdb_store import LmdbLogStore
from syncfab.storage.wal_file import WalFile

WAIT_S = 10.0


def _flush(index: int) -> Flush:
    persist = Persist(hard_state=HardState(1, "n1", index), entries=[Entry(1, index, b"e%d" % index)])
    ack = AppendReply(1, True, index)
    return Flush(writes=[(1, persist)], sends_after_persist={"n2": [(1, ack)]})


def _open(tmp_path: Path) -> LmdbLogStore:
    return LmdbLogStore(str(tmp_path), fsync=True, map_size_bytes=64 << 20, segment_bytes=64 << 10)


def test_after_persist_messages_leave_from_the_writer_thread_once_durable(tmp_path: Path) -> None:
    store = _open(tmp_path)
    events: list[tuple[str, int]] = []
    sent_on: set[str] = set()
    durable_when_sent: list[bool] = []

    def send_durable(flushes: list[Flush]) -> None:
        sent_on.add(threading.current_thread().name)
        for flush in flushes:
            index = flush.writes[0][1].entries[0].index
            # Its record is in the WAL file, where recovery would read it, before its ack
            # may leave (40 records: too few for a fold to move any out of the WAL).
            durable_when_sent.append(len(WalFile.scan(str(tmp_path / "wal"), 0)) >= index)
            events.append(("sent", index))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()

        def on_done(flushes: list[Flush], elapsed_s: float) -> None:
            writer.completed(len(flushes))
            events.extend(("done", f.writes[0][1].entries[0].index) for f in flushes)
            if writer.in_flight == 0:
                done.set()

        writer = DiskWriter(store, loop, on_done, lambda e: None, send_durable=send_durable)
        for i in range(1, 41):
            writer.submit(_flush(i))
        await asyncio.wait_for(done.wait(), WAIT_S)
        writer.stop()

    asyncio.run(main())
    assert sent_on == {"syncfab-disk"}
    assert all(durable_when_sent)
    sent = [i for kind, i in events if kind == "sent"]
    handed_back = [i for kind, i in events if kind == "done"]
    assert sent == handed_back == list(range(1, 41))
    for i in range(1, 41):
        assert events.index(("sent", i)) < events.index(("done", i)), i
    assert store.load(1).entries == [Entry(1, i, b"e%d" % i) for i in range(1, 41)]
    store.close()


def test_a_failure_sending_what_was_durable_stops_the_writer(tmp_path: Path) -> None:
    store = _open(tmp_path)

    def send_durable(flushes: list[Flush]) -> None:
        raise RuntimeError("socket gone")

    async def main() -> tuple[list[BaseException], int, DiskWriter]:
        loop = asyncio.get_running_loop()
        failed: list[BaseException] = []
        handed_back = 0
        stopped = asyncio.Event()

        def on_done(flushes: list[Flush], elapsed_s: float) -> None:
            nonlocal handed_back
            handed_back += len(flushes)

        def on_failed(error: BaseException) -> None:
            failed.append(error)
            stopped.set()

        writer = DiskWriter(store, loop, on_done, on_failed, send_durable=send_durable)
        writer.submit(_flush(1))
        await asyncio.wait_for(stopped.wait(), WAIT_S)
        writer.stop()
        return failed, handed_back, writer

    failed, handed_back, writer = asyncio.run(main())
    assert [str(e) for e in failed] == ["socket gone"]
    assert handed_back == 0  # nothing after a failure is acknowledged
    try:
        writer.submit(_flush(2))
    except RuntimeError as e:
        assert "failed" in str(e)
    else:
        raise AssertionError("a failed writer took more work")
    store.close()
