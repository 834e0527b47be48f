"""LmdbLogStore's write-ahead log: records survive reopening and crashes, folding changes nothing
visible, encode_batch never lets a bad record into the WAL, and a writer thread may write while
another thread encodes."""

from __future__ import annotations

import queue
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import lmdb
import pytest
from test_log_store import Model, entries, random_persist

from syncfab.actors.messages import Entry, HardState, Snapshot
from syncfab.actors.ready import Persist
from syncfab.storage.lmdb_store import GROUPS_MAX, LmdbLogStore
from syncfab.storage.log_store import StoredGroup
from syncfab.storage.wal_file import WalFile

Batch = list[tuple[int, Persist]]


def open_store(
    path: Path,
    *,
    fsync: bool = False,
    checkpoint_records_max: int = 512,
    checkpoint_bytes_max: int = 4 << 20,
    segment_bytes: int = 64 << 10,
) -> LmdbLogStore:
    return LmdbLogStore(
        str(path),
        fsync=fsync,
        map_size_bytes=64 << 20,
        checkpoint_records_max=checkpoint_records_max,
        checkpoint_bytes_max=checkpoint_bytes_max,
        segment_bytes=segment_bytes,
    )


def folded_through(path: Path) -> int:
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    try:
        with env.begin() as txn:
            value = txn.get(b"wal-folded-through", db=env.open_db(b"meta", txn=txn, create=False))
            return 0 if value is None else int.from_bytes(value, "big")
    finally:
        env.close()


def wal_on_disk(path: Path) -> int:
    """Unfolded records in the closed store's WAL, read without LmdbLogStore (which folds)."""
    return len(WalFile.scan(str(path / "wal"), folded_through(path)))


def random_batch(rng: random.Random, models: dict[int, Model]) -> Batch:
    batch = []
    for _ in range(rng.randint(1, 4)):
        group = rng.randint(0, 4)
        batch.append((group, random_persist(rng, models.setdefault(group, Model()))))
    return batch


def assert_matches(store: LmdbLogStore, models: dict[int, Model], where: str) -> None:
    for group, model in models.items():
        assert store.load(group) == model.stored(), f"{where} group={group}"
    assert store.groups() == sorted(g for g, m in models.items() if m), where


def assert_reopened_matches(path: Path, models: dict[int, Model], where: str) -> None:
    """What a restarted process would read from the closed store at ``path``."""
    store = open_store(path)
    assert_matches(store, models, where)
    store.close()


def test_wal_records_survive_reopen_without_checkpoint(tmp_path: Path) -> None:
    rng, models = random.Random(7), {}
    store = open_store(tmp_path, fsync=True)
    for _ in range(20):
        store.write_encoded([store.encode_batch(random_batch(rng, models))])
    assert store.wal_records() == 20
    assert store.wal_bytes() > 0
    store.close()
    assert wal_on_disk(tmp_path) == 20  # close folded nothing: the reopen must replay
    store = open_store(tmp_path)
    assert store.wal_records() == 0
    assert_matches(store, models, "after reopen")
    store.close()


def test_wal_survives_a_crash(tmp_path: Path) -> None:
    # A process that dies right after write_encoded returns, never closing the store.
    child = f"""
        import os
        from syncfab.actors.messages import Entry, HardState
        from syncfab.actors.ready import Persist
        from syncfab.storage.lmdb_store import LmdbLogStore
        store = LmdbLogStore({str(tmp_path)!r}, segment_bytes=64 << 10)
        for i in range(1, 4):
            entries = [Entry(1, i * 10 + j, b"x") for j in range(10)]
            rec = store.encode_batch([(5, Persist(hard_state=HardState(1, "n1", i), entries=entries))])
            store.write_encoded([rec])
        assert store.wal_records() == 3
        os._exit(0)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(child)], check=True, timeout=60)
    assert wal_on_disk(tmp_path) == 3
    store = open_store(tmp_path)
    want = [Entry(1, i, b"x") for i in range(10, 40)]
    assert store.load(5) == StoredGroup(hard_state=HardState(1, "n1", 3), entries=want)
    store.close()


@pytest.mark.parametrize("acks_before_kill", [1, 40, 300])
def test_kill_9_while_writing_and_folding_loses_nothing_acknowledged(
    tmp_path: Path, acks_before_kill: int
) -> None:
    # DiskWriter's shape in a real process: a writer appends and reports each record durable, a
    # fold thread checkpoints all along, tiny segments roll and get reused; then SIGKILL.
    child = f"""
        import sys, threading
        from syncfab.actors.messages import Entry, HardState
        from syncfab.actors.ready import Persist
        from syncfab.storage.lmdb_store import LmdbLogStore
        store = LmdbLogStore({str(tmp_path)!r}, segment_bytes=2048, map_size_bytes=64 << 20)
        def fold():
            while True:
                store.checkpoint()
        threading.Thread(target=fold, daemon=True).start()
        for i in range(1, 1_000_000):
            entries = [Entry(1, i, b"entry %d" % i)]
            rec = store.encode_batch([(1, Persist(hard_state=HardState(1, "n1", i), entries=entries))])
            store.write_encoded([rec])
            print(i, flush=True)
    """
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(child)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    acked = 0
    while acked < acks_before_kill:
        line = proc.stdout.readline()
        assert line, "the writer died before it was killed"
        acked = int(line)
    proc.kill()
    proc.wait(timeout=60)
    store = open_store(tmp_path)
    stored = store.load(1)
    last = stored.entries[-1].index
    assert last >= acked
    assert stored.entries == [Entry(1, i, b"entry %d" % i) for i in range(1, last + 1)]
    assert stored.hard_state == HardState(1, "n1", last)
    store.close()


def test_checkpoint_then_reopen(tmp_path: Path) -> None:
    rng, models = random.Random(8), {}
    store = open_store(tmp_path, fsync=True)
    for _ in range(10):
        store.write(random_batch(rng, models))
    store.checkpoint()
    assert (store.wal_records(), store.wal_bytes()) == (0, 0)
    store.close()
    assert wal_on_disk(tmp_path) == 0
    assert_reopened_matches(tmp_path, models, "after checkpoint and reopen")


def test_checkpoint_in_slices(tmp_path: Path) -> None:
    rng, models = random.Random(9), {}
    store = open_store(tmp_path)
    sizes = []
    for _ in range(10):
        record = store.encode_batch(random_batch(rng, models))
        store.write_encoded([record])
        sizes.append(len(record))
    store.checkpoint(3)
    assert (store.wal_records(), store.wal_bytes()) == (7, sum(sizes[3:]))
    store.checkpoint(5)
    assert (store.wal_records(), store.wal_bytes()) == (2, sum(sizes[8:]))
    store.close()
    assert wal_on_disk(tmp_path) == 2
    assert_reopened_matches(tmp_path, models, "after slices and reopen")


def test_auto_checkpoint_at_threshold_changes_nothing_visible(tmp_path: Path) -> None:
    store = open_store(tmp_path, checkpoint_records_max=3)
    for i in range(3):
        store.write([(1, Persist(entries=entries(i * 4 + 1, i * 4 + 4)))])
    assert store.wal_records() == 3
    # This record would make 4: it is folded with the other three instead of logged.
    store.write([(1, Persist(entries=entries(13, 16), hard_state=HardState(term=1)))])
    assert store.wal_records() == 0
    store.write([(2, Persist(snapshot=Snapshot(3, 1, b"s"), compact_to=3))])
    assert store.wal_records() == 1
    store.close()
    assert wal_on_disk(tmp_path) == 1
    store = open_store(tmp_path, checkpoint_records_max=3)
    assert store.load(1) == StoredGroup(hard_state=HardState(term=1), entries=entries(1, 16))
    assert store.load(2) == StoredGroup(snapshot=Snapshot(3, 1, b"s"))
    assert store.groups() == [1, 2]
    store.close()


def test_auto_checkpoint_at_byte_threshold(tmp_path: Path) -> None:
    def turn(i: int) -> Batch:  # every turn encodes to the same size
        return [(1, Persist(entries=[Entry(1, j, bytes(20)) for j in range(i * 10 + 1, i * 10 + 11)]))]

    store = open_store(tmp_path)
    record_bytes = len(store.encode_batch(turn(0)))
    store.close()
    store = open_store(tmp_path, checkpoint_bytes_max=2 * record_bytes + record_bytes // 2)
    for i in range(2):
        store.write(turn(i))
    assert (store.wal_records(), store.wal_bytes()) == (2, 2 * record_bytes)
    store.write(turn(2))  # would pass the cap: folded with the other two instead
    assert (store.wal_records(), store.wal_bytes()) == (0, 0)
    store.write(turn(3))
    assert store.wal_records() == 1
    assert store.load(1) == StoredGroup(entries=[Entry(1, j, bytes(20)) for j in range(1, 41)])
    store.close()


def test_records_must_be_written_in_the_order_encoded(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    r1 = store.encode_batch([(1, Persist(entries=entries(1, 2)))])
    r2 = store.encode_batch([(1, Persist(entries=entries(3, 4)))])
    with pytest.raises(ValueError):
        store.write_encoded([r2])
    with pytest.raises(ValueError):
        store.write_encoded([r2, r1])
    assert store.wal_records() == 0
    store.write_encoded([r1, r2])
    r3 = store.encode_batch([(1, Persist(entries=entries(5, 5)))])
    r4 = store.encode_batch([(1, Persist(entries=entries(6, 6)))])
    with pytest.raises(ValueError):
        store.write_encoded([r4])  # r3 skipped: r4 was checked against a log that holds 5
    store.write_encoded([r3, r4])
    assert store.load(1) == StoredGroup(entries=entries(1, 6))
    store.close()


def test_nothing_to_keep_encodes_to_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store.encode_batch([]) == b""
    assert store.encode_batch([(1, Persist()), (2, Persist())]) == b""
    store.write_encoded([b"", b""])
    assert (store.wal_records(), store.groups()) == (0, [])
    store.close()


def test_encode_rejects_what_could_not_be_folded(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    with pytest.raises(ValueError):
        store.encode_batch([(-1, Persist(hard_state=HardState(term=1)))])
    too_many = [(g, Persist(entries=entries(1, 1))) for g in range(GROUPS_MAX + 1)]
    with pytest.raises(lmdb.DbsFullError):
        store.encode_batch(too_many)
    store.write(too_many[:GROUPS_MAX])
    with pytest.raises(lmdb.DbsFullError):
        store.encode_batch(too_many[GROUPS_MAX:])
    store.write([(0, Persist(entries=entries(2, 2)))])  # a group with a database may still grow
    store.checkpoint()
    assert len(store.groups()) == GROUPS_MAX
    store.close()


def bad_batch(rng: random.Random, models: dict[int, Model]) -> Batch:
    """A batch with a valid part (on throwaway copies of the models) and then a rejected one."""
    scratch = {g: Model(m.hard_state, m.snapshot, dict(m.log)) for g, m in models.items()}
    group = rng.randint(0, 4)
    model = scratch.setdefault(group, Model())
    valid = random_persist(rng, model)
    last = max(model.log) if model.log else rng.randint(0, 30)
    bad = Persist(entries=[Entry(1, last + 1, b""), Entry(1, last + 3, b"")])  # not contiguous
    if model.log and rng.random() < 0.5:
        bad = Persist(entries=entries(last + 2, last + 3))  # a gap
    return [(group, valid), (group, bad)]


@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15, 16])
def test_random_writes_checkpoints_and_reopens_match_reference_model(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    models: dict[int, Model] = {}

    def reopen() -> LmdbLogStore:
        # Sometimes fold on every write, sometimes by count, sometimes by size, sometimes never.
        return open_store(
            tmp_path,
            checkpoint_records_max=rng.choice([0, 1, 2, 5, 50, 1000]),
            checkpoint_bytes_max=rng.choice([1, 300, 2000, 1 << 20]),
            segment_bytes=rng.choice([64, 1000, 4096, 1 << 20]),  # tiny ones roll every write
        )

    store = reopen()
    for step in range(150):
        where = f"seed={seed} step={step}"
        if rng.random() < 0.1:
            with pytest.raises(ValueError):
                store.encode_batch(bad_batch(rng, models))
        records = [store.encode_batch(random_batch(rng, models)) for _ in range(rng.randint(1, 3))]
        store.write_encoded(records)
        roll = rng.random()
        if roll < 0.1:
            before = store.wal_records()
            records_max = rng.choice([None, 1, 3])
            store.checkpoint(records_max)
            assert store.wal_records() == (0 if records_max is None else max(0, before - records_max)), where
        elif roll < 0.2:
            store.close()
            store = reopen()
        elif roll < 0.3:
            assert_matches(store, models, where)
    store.close()
    assert_reopened_matches(tmp_path, models, f"seed={seed} at the end")


def test_writer_thread_writes_while_main_thread_encodes(tmp_path: Path) -> None:
    rng, models = random.Random(21), {}
    store = open_store(tmp_path, fsync=True, checkpoint_records_max=7)
    pending: queue.Queue[bytes | None] = queue.Queue()
    errors: list[BaseException] = []
    written: list[int] = []

    def writer() -> None:
        try:
            done = False
            while not done:
                # Take whatever else is queued: one commit for every turn encoded meanwhile.
                records = [pending.get()]
                while not pending.empty():
                    records.append(pending.get())
                if None in records:  # the last thing queued
                    done = True
                    records.remove(None)
                store.write_encoded(records)  # type: ignore[arg-type]  # None removed above
                written.append(len(records))
        except BaseException as e:  # handed to the main thread, which asserts on it
            errors.append(e)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(300):
            pending.put(store.encode_batch(random_batch(rng, models)))
            # The calls the loop thread may make while the writer runs.
            assert store.size_bytes() > 0
            assert store.wal_records() <= 7
    finally:
        pending.put(None)
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    assert sum(written) == 300
    assert_matches(store, models, "after the writer thread")
    store.close()
    assert_reopened_matches(tmp_path, models, "after reopen")


def test_folding_on_one_thread_while_another_writes(tmp_path: Path) -> None:
    # DiskWriter's shape: the writer appends, a fold thread checkpoints whenever it likes.
    rng, models = random.Random(22), {}
    store = open_store(tmp_path, fsync=True, segment_bytes=4096)
    records = [store.encode_batch(random_batch(rng, models)) for _ in range(400)]
    stop = threading.Event()
    errors: list[BaseException] = []

    def fold() -> None:
        try:
            while not stop.is_set():
                store.checkpoint(rng.choice([None, 1, 5]))
        except BaseException as e:  # handed to the main thread, which asserts on it
            errors.append(e)

    folder = threading.Thread(target=fold)
    folder.start()
    try:
        for i in range(0, 400, 3):
            store.write_encoded(records[i : i + 3])
    finally:
        stop.set()
        folder.join(timeout=60)
    assert errors == []
    assert_matches(store, models, "after writing while folding")
    store.close()
    assert_reopened_matches(tmp_path, models, "after reopen")


def test_a_wal_left_in_lmdb_by_an_older_version_is_folded_at_open(tmp_path: Path) -> None:
    rng, models = random.Random(23), {}
    scratch = open_store(tmp_path / "scratch")
    records = [scratch.encode_batch(random_batch(rng, models)) for _ in range(10)]
    records = [record for record in records if record]  # b"": a batch with nothing to keep
    scratch.close()
    # The old layout: records in a "wal" database under their 8-byte sequence numbers.
    env = lmdb.open(str(tmp_path / "old"), max_dbs=8, map_size=64 << 20)
    wal = env.open_db(b"wal")
    with env.begin(write=True) as txn:
        for record in records:
            txn.put(record[:8], record, db=wal)
    env.close()
    store = open_store(tmp_path / "old")
    assert_matches(store, models, "legacy WAL folded")
    store.write([(9, Persist(hard_state=HardState(term=4)))])  # numbering goes on past the old
    store.close()
    store = open_store(tmp_path / "old")
    assert store.load(9) == StoredGroup(hard_state=HardState(term=4))
    store.close()
