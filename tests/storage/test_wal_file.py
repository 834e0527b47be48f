"""WalFile: frames round-trip across segment rolls, recovery stops at the first torn or foreign
frame and never reads frames a crash left behind it, and released segments are reused."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from syncfab.storage.wal_file import WalFile


def records(first: int, count: int, size: int = 40) -> list[tuple[int, bytes]]:
    return [(seq, f"record {seq} ".encode().ljust(size, b".")) for seq in range(first, first + count)]


def open_wal(path: Path, after_seq: int = 0, segment_bytes: int = 256) -> WalFile:
    wal = WalFile(str(path), after_seq=after_seq, fsync=False, segment_bytes=segment_bytes)
    wal.start()
    return wal


def segments(path: Path) -> list[str]:
    return sorted(n for n in os.listdir(path) if n.endswith(".seg"))


def overwrite(path: Path, offset: int, data: bytes) -> None:
    """What a crash or a bad disk leaves: other bytes where a frame was."""
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_records_round_trip_across_segments(tmp_path: Path) -> None:
    wal = open_wal(tmp_path)
    written = records(1, 30)
    for i in range(0, 30, 4):
        wal.append(written[i : i + 4])
    assert wal.segment_count() > 3  # 256-byte segments hold four 64-byte frames
    wal.close()
    assert WalFile.scan(str(tmp_path), 0) == written
    assert WalFile.scan(str(tmp_path), 17) == written[17:]


def test_a_frame_bigger_than_a_segment_gets_one_to_itself(tmp_path: Path) -> None:
    wal = open_wal(tmp_path, segment_bytes=128)
    big = [(1, b"x" * 1000), (2, b"small"), (3, b"y" * 500)]
    wal.append(big[:1])
    wal.append(big[1:])
    wal.close()
    assert WalFile.scan(str(tmp_path), 0) == big


@pytest.mark.parametrize(
    ("written", "offset", "damage"),
    [
        pytest.param(5, 3 * 64 + 30, b"\xff", id="a torn frame: inside the fourth one's payload"),
        pytest.param(
            3,
            3 * 64,
            bytes(random.Random(5).getrandbits(8) for _ in range(500)),
            id="garbage after the last frame",
        ),
    ],
)
def test_recovery_ends_the_log_at_damage(tmp_path: Path, written: int, offset: int, damage: bytes) -> None:
    wal = open_wal(tmp_path, segment_bytes=1 << 16)
    wal.append(records(1, written))  # 64-byte frames
    wal.close()
    (name,) = segments(tmp_path)
    overwrite(tmp_path / name, offset, damage)
    assert [seq for seq, _ in WalFile.scan(str(tmp_path), 0)] == [1, 2, 3]


def test_frames_left_behind_a_torn_one_are_never_read_as_this_runs(tmp_path: Path) -> None:
    # A crash tore record 3 at the end of one segment, after record 4 had reached the next.
    wal = open_wal(tmp_path, segment_bytes=192)  # three frames per segment
    wal.append(records(1, 4))
    wal.close()
    first, _ = segments(tmp_path)
    overwrite(tmp_path / first, 2 * 64 + 20, b"torn")
    assert [seq for seq, _ in WalFile.scan(str(tmp_path), 0)] == [1, 2]
    # The next run recovers 1 and 2, its caller folds them, and it writes its own 3 and 4.
    wal = WalFile(str(tmp_path), after_seq=0, fsync=False, segment_bytes=192)
    assert [seq for seq, _ in wal.recovered] == [1, 2]
    wal.start()
    mine = [(3, b"three, this run"), (4, b"four, this run")]
    wal.append(mine)
    wal.close()
    # Crash again: the folded 1 and 2 are skipped, the old 4 is gone, this run's 3 and 4 stay.
    assert WalFile.scan(str(tmp_path), 2) == mine


def test_released_segments_are_written_over_and_their_old_frames_never_read(tmp_path: Path) -> None:
    wal = open_wal(tmp_path, segment_bytes=192)
    wal.append(records(1, 9))  # three segments of three
    assert len(segments(tmp_path)) == 3
    wal.release_through(6)  # the first two segments hold 1..6
    assert len(segments(tmp_path)) == 1
    spares = [n for n in os.listdir(tmp_path) if n.endswith(".spare")]
    assert len(spares) == 2
    wal.append(records(10, 5, size=20))  # 44-byte frames over the spares' 64-byte ones
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".spare")]  # both reused
    wal.close()
    assert [seq for seq, _ in WalFile.scan(str(tmp_path), 6)] == list(range(7, 15))


def test_open_retires_the_old_segments_and_keeps_numbering_upwards(tmp_path: Path) -> None:
    wal = open_wal(tmp_path, segment_bytes=192)
    wal.append(records(1, 7))
    wal.close()
    before = segments(tmp_path)
    wal = WalFile(str(tmp_path), after_seq=7, fsync=False, segment_bytes=192)
    assert wal.recovered == []
    wal.start()
    after = segments(tmp_path)
    assert len(after) == 1 and after[0] > before[-1]
    wal.append(records(8, 2))
    wal.close()
    assert [seq for seq, _ in WalFile.scan(str(tmp_path), 7)] == [8, 9]


def test_numbering_goes_past_spares_left_without_a_segment(tmp_path: Path) -> None:
    # A crash after open retired the old segments and before the new one was named: only
    # spares are left. Their old frames must never carry the number a new name gets.
    wal = open_wal(tmp_path, segment_bytes=192)
    wal.append(records(1, 6))  # segments 1 and 2, three frames each
    wal.close()
    for name in segments(tmp_path):
        os.rename(tmp_path / name, tmp_path / (name + ".spare"))
    wal = WalFile(str(tmp_path), after_seq=6, fsync=False, segment_bytes=192)
    wal.start()
    (name,) = segments(tmp_path)
    assert name > "wal-0000000000000002.seg"
    wal.append(records(7, 1))
    wal.close()
    assert [seq for seq, _ in WalFile.scan(str(tmp_path), 6)] == [7]
