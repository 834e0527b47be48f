"""One contract for every LogStore: the same tests run on LMDB (fsync on and off, and folding its WAL
every other write) and in memory."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from syncfab.actors.messages import Entry, HardState, Snapshot
from syncfab.actors.ready import Persist
from syncfab.storage.lmdb_store import LmdbLogStore
from syncfab.storage.log_store import LogStore, StoredGroup
from syncfab.storage.memory_store import MemoryLogStore

# Small WAL segments: they roll often (worth exercising) and allocate little disk per test.
SEGMENT_BYTES = 64 << 10


class Disk:
    """A store plus a way to "restart the process" over the same disk."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.store: LogStore = self._open()

    def _open(self) -> LogStore:
        match self.kind:
            case "memory":
                return MemoryLogStore()
            case "lmdb":
                return LmdbLogStore(str(self.path), segment_bytes=SEGMENT_BYTES)
            case "lmdb-nofsync":
                return LmdbLogStore(
                    str(self.path), fsync=False, map_size_bytes=64 << 20, segment_bytes=SEGMENT_BYTES
                )
            case "lmdb-autocheckpoint":
                # Every other write folds the WAL inside write_encoded.
                return LmdbLogStore(
                    str(self.path),
                    fsync=False,
                    map_size_bytes=64 << 20,
                    checkpoint_records_max=1,
                    segment_bytes=SEGMENT_BYTES,
                )
        raise ValueError(self.kind)

    def reopen(self) -> None:
        if isinstance(self.store, MemoryLogStore):
            # The simulator's restart: the new node gets an image of the old one's disk.
            image = self.store.copy()
            self.store.close()
            self.store = image
        else:
            self.store.close()
            self.store = self._open()


@pytest.fixture(params=["memory", "lmdb", "lmdb-nofsync", "lmdb-autocheckpoint"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    d = Disk(request.param, tmp_path / "node")
    yield d
    d.store.close()


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, f"cmd{i}".encode()) for i in range(first, last + 1)]


def indexes(stored: StoredGroup) -> list[int]:
    return [e.index for e in stored.entries]


def test_fresh_store_is_empty(disk: Disk) -> None:
    assert disk.store.groups() == []
    assert disk.store.load(7) == StoredGroup()


def test_append_survives_reopen(disk: Disk) -> None:
    hs = HardState(term=3, vote="n2", commit=4)
    disk.store.write([(1, Persist(hard_state=hs, entries=entries(1, 5, term=3)))])
    disk.store.write([(1, Persist(entries=entries(6, 8, term=3)))])
    disk.reopen()
    assert disk.store.load(1) == StoredGroup(hard_state=hs, entries=entries(1, 8, term=3))


def test_truncate_suffix_then_append(disk: Disk) -> None:
    disk.store.write([(1, Persist(entries=entries(1, 10)))])
    disk.store.write([(1, Persist(truncate_from=6, entries=entries(6, 7, term=2)))])
    assert disk.store.load(1).entries == entries(1, 5) + entries(6, 7, term=2)


def test_append_replaces_overlapping_suffix_without_truncate_from(disk: Disk) -> None:
    disk.store.write([(1, Persist(entries=entries(1, 10)))])
    disk.store.write([(1, Persist(entries=entries(4, 5, term=2)))])
    assert disk.store.load(1).entries == entries(1, 3) + entries(4, 5, term=2)


def test_compact_prefix_keeps_base_entry(disk: Disk) -> None:
    disk.store.write([(1, Persist(entries=entries(1, 10)))])
    disk.store.write([(1, Persist(snapshot=Snapshot(6, 1, b"img"), compact_to=6))])
    disk.reopen()
    stored = disk.store.load(1)
    assert indexes(stored) == [6, 7, 8, 9, 10]
    assert stored.snapshot == Snapshot(6, 1, b"img")


def test_snapshot_beyond_log_leaves_no_entries(disk: Disk) -> None:
    disk.store.write([(1, Persist(entries=entries(1, 4)))])
    disk.store.write([(1, Persist(snapshot=Snapshot(20, 5, b"img"), compact_to=20))])
    disk.reopen()
    assert disk.store.load(1) == StoredGroup(snapshot=Snapshot(20, 5, b"img"))
    disk.store.write([(1, Persist(entries=entries(21, 22, term=5)))])
    assert indexes(disk.store.load(1)) == [21, 22]


def test_groups_in_one_batch_are_isolated(disk: Disk) -> None:
    disk.store.write(
        [
            (1, Persist(entries=entries(1, 3))),
            (2, Persist(entries=entries(1, 9, term=2), hard_state=HardState(term=2))),
            (3, Persist(hard_state=HardState(term=7, vote="n1"))),
        ]
    )
    disk.store.write([(2, Persist(truncate_from=2, compact_to=1))])
    disk.reopen()
    assert disk.store.load(1) == StoredGroup(entries=entries(1, 3))
    assert disk.store.load(2) == StoredGroup(hard_state=HardState(term=2), entries=entries(1, 1, term=2))
    assert disk.store.load(3) == StoredGroup(hard_state=HardState(term=7, vote="n1"))


def test_same_group_twice_in_one_batch_applies_in_order(disk: Disk) -> None:
    disk.store.write(
        [
            (1, Persist(entries=entries(1, 5), hard_state=HardState(term=1))),
            (1, Persist(truncate_from=3, entries=entries(3, 4, term=2), hard_state=HardState(term=2))),
        ]
    )
    assert disk.store.load(1) == StoredGroup(
        hard_state=HardState(term=2), entries=entries(1, 2) + entries(3, 4, term=2)
    )


def test_hard_state_overwrites(disk: Disk) -> None:
    disk.store.write([(1, Persist(hard_state=HardState(term=1, vote="a")))])
    disk.store.write([(1, Persist(hard_state=HardState(term=2, vote=None, commit=9)))])
    disk.reopen()
    assert disk.store.load(1).hard_state == HardState(term=2, vote=None, commit=9)


def test_groups_lists_only_groups_with_something_stored(disk: Disk) -> None:
    disk.store.write(
        [
            (5, Persist(entries=entries(1, 2))),
            (2, Persist(hard_state=HardState(term=1))),
            (9, Persist(snapshot=Snapshot(3, 1, b""))),
            (4, Persist()),
        ]
    )
    assert disk.store.groups() == [2, 5, 9]
    disk.store.write([(5, Persist(compact_to=100))])  # a log compacted to nothing stores nothing
    disk.reopen()
    assert disk.store.groups() == [2, 9]


@pytest.mark.parametrize(
    "bad",
    [
        Persist(entries=entries(8, 9)),  # gap after 5
        Persist(entries=[Entry(1, 6, b""), Entry(1, 8, b"")]),  # not contiguous
        Persist(entries=[Entry(1, 6, b""), Entry(1, 6, b""), Entry(1, 8, b"")]),  # repeats
    ],
)
def test_rejected_batch_changes_nothing(disk: Disk, bad: Persist) -> None:
    disk.store.write([(1, Persist(entries=entries(1, 5)))])
    with pytest.raises(ValueError):
        disk.store.write([(1, Persist(entries=entries(6, 6))), (2, Persist(entries=entries(1, 3))), (1, bad)])
    assert disk.store.groups() == [1]
    assert disk.store.load(1) == StoredGroup(entries=entries(1, 5))
    # A group first opened inside the aborted transaction must still be usable.
    disk.store.write([(2, Persist(entries=entries(1, 1)))])
    disk.reopen()
    assert disk.store.load(2) == StoredGroup(entries=entries(1, 1))


def test_memory_copy_is_independent() -> None:
    store = MemoryLogStore()
    store.write([(1, Persist(entries=entries(1, 3)))])
    image = store.copy()
    store.write([(1, Persist(truncate_from=2, hard_state=HardState(term=4)))])
    image.write([(1, Persist(entries=entries(4, 4)))])
    assert store.load(1) == StoredGroup(hard_state=HardState(term=4), entries=entries(1, 1))
    assert image.load(1) == StoredGroup(entries=entries(1, 4))


def test_lmdb_size_bytes_grows(tmp_path: Path) -> None:
    store = LmdbLogStore(
        str(tmp_path / "node"), fsync=False, map_size_bytes=64 << 20, segment_bytes=SEGMENT_BYTES
    )
    before = store.size_bytes()
    store.write([(1, Persist(entries=[Entry(1, i, bytes(500)) for i in range(1, 201)]))])
    assert store.size_bytes() > before + 200 * 500
    store.close()


@dataclass
class Model:
    """The reference: one group's disk as plainly as it can be written."""

    hard_state: HardState | None = None
    snapshot: Snapshot | None = None
    log: dict[int, Entry] = field(default_factory=dict)

    def apply(self, p: Persist) -> None:
        if p.snapshot is not None:
            self.snapshot = p.snapshot
        if p.compact_to is not None:
            self.log = {i: e for i, e in self.log.items() if i >= p.compact_to}
        if p.truncate_from is not None:
            self.log = {i: e for i, e in self.log.items() if i < p.truncate_from}
        if p.entries:
            self.log = {i: e for i, e in self.log.items() if i < p.entries[0].index}
            self.log.update((e.index, e) for e in p.entries)
        if p.hard_state is not None:
            self.hard_state = p.hard_state

    def stored(self) -> StoredGroup:
        return StoredGroup(
            hard_state=self.hard_state or HardState(),
            snapshot=self.snapshot,
            entries=[self.log[i] for i in sorted(self.log)],
        )

    def __bool__(self) -> bool:
        return self.hard_state is not None or self.snapshot is not None or bool(self.log)


def random_persist(rng: random.Random, m: Model) -> Persist:
    """A valid Persist for ``m``'s current state (and applies it to ``m``)."""

    def span() -> tuple[int, int]:
        return (min(m.log), max(m.log)) if m.log else (0, 0)

    p = Persist()
    first, last = span()
    if rng.random() < 0.1:
        p.snapshot = Snapshot(rng.randint(first, last + 5), rng.randint(1, 9), rng.randbytes(4))
        p.compact_to = p.snapshot.index + rng.choice([0, 0, 1, 50])
    elif rng.random() < 0.15:
        p.compact_to = rng.randint(first - 2, last + 3)
    if rng.random() < 0.15:
        p.truncate_from = rng.randint(first - 2, last + 3)
    # Where entries may start depends on what the deletions above leave.
    trial = Model(log=dict(m.log))
    trial.apply(Persist(compact_to=p.compact_to, truncate_from=p.truncate_from))
    if rng.random() < 0.6:
        lo, hi = (min(trial.log), max(trial.log)) if trial.log else (1, rng.randint(0, 60))
        # Mostly plain appends, so logs grow long enough to span pages.
        start = hi + 1 if rng.random() < 0.7 else rng.randint(lo, hi + 1)
        term = rng.randint(1, 9)
        p.entries = [
            Entry(term, i, rng.randbytes(rng.randint(0, 40))) for i in range(start, start + rng.randint(1, 8))
        ]
    if rng.random() < 0.4:
        p.hard_state = HardState(rng.randint(0, 9), rng.choice([None, "n1", "n2"]), rng.randint(0, 50))
    m.apply(p)
    return p


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_random_persists_match_reference_model(disk: Disk, seed: int) -> None:
    rng = random.Random(seed)
    models: dict[int, Model] = {}
    for step in range(120):
        batch = []
        for _ in range(rng.randint(1, 4)):
            group = rng.randint(0, 4)
            batch.append((group, random_persist(rng, models.setdefault(group, Model()))))
        disk.store.write(batch)
        if step % 40 == 39:
            disk.reopen()
        for group, model in models.items():
            assert disk.store.load(group) == model.stored(), f"seed={seed} step={step} group={group}"
        want_groups = sorted(g for g, m in models.items() if m)
        assert disk.store.groups() == want_groups, f"seed={seed} step={step}"
    disk.reopen()
    for group, model in models.items():
        assert disk.store.load(group) == model.stored(), f"seed={seed} after reopen group={group}"
