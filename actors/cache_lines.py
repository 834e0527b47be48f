"""A node's cache lines: an LRU bounded in lines and bytes, each line in M, E or S.

A line carries the key's value (MessagePack bytes), its version, and ``base``: the version
memory is known to hold — an M line with ``version > base`` is dirty and must go home before
it may be dropped. Every state change goes through ``NEAR`` (h11's habit: the protocol is a
table; a pair missing from it is a bug, raised at once).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from syncfab.actors.cache_ops import EXCLUSIVE, INVALID, MODIFIED, SHARED

LINE_OVERHEAD_BYTES = 64  # what a line costs besides its key and value

# (state, event) -> state, for a node's line. "grant_X": the home's answer to our fetch or
# write; "write": a local write_back write; "flushed": an M line's value is in memory and the
# line stays the owner's; "lost": a gap in the home's stream, a new epoch, a resync or eviction.
NEAR: dict[tuple[str, str], str] = {
    **{
        (s, f"grant_{g}"): g
        for s in (INVALID, SHARED, EXCLUSIVE)
        for g in (SHARED, EXCLUSIVE, MODIFIED, INVALID)
    },
    (MODIFIED, "grant_M"): MODIFIED,
    (MODIFIED, "grant_E"): EXCLUSIVE,
    (MODIFIED, "grant_I"): INVALID,
    (EXCLUSIVE, "write"): MODIFIED,  # silent: nobody else holds the line
    (MODIFIED, "write"): MODIFIED,
    (SHARED, "inval"): INVALID,
    (INVALID, "inval"): INVALID,
    (EXCLUSIVE, "recall_shared"): SHARED,
    (MODIFIED, "recall_shared"): SHARED,
    (EXCLUSIVE, "recall"): INVALID,
    (MODIFIED, "recall"): INVALID,
    (SHARED, "recall"): INVALID,
    (MODIFIED, "flushed"): EXCLUSIVE,
    (SHARED, "lost"): INVALID,
    (EXCLUSIVE, "lost"): INVALID,
    (MODIFIED, "lost"): INVALID,
    (SHARED, "evict"): INVALID,
    (EXCLUSIVE, "evict"): INVALID,
    (MODIFIED, "evict"): INVALID,
}


def step(state: str, event: str) -> str:
    try:
        return NEAR[(state, event)]
    except KeyError:
        raise AssertionError(f"no MESI transition from {state} on {event}") from None


@dataclass(slots=True)
class Line:
    key: str
    shard: int
    state: str
    value: bytes | None  # None: the key does not exist (a negative entry)
    version: int
    base: int  # what memory holds, as far as we know
    grant_seq: int  # the stream seq of the grant that made this line
    may_dirty: bool = False  # E may turn M without asking
    pending: int = 0  # a write-back of this version is on its way home
    pending_ms: int = 0  # since when (a flush's)
    releasing: bool = False  # on its way out (evicted or recalled while dirty): not served
    size: int = 0

    @property
    def dirty(self) -> bool:
        return self.version != self.base


class LineTable:
    def __init__(self, lines_max: int, bytes_max: int) -> None:
        self.lines_max = lines_max
        self.bytes_max = bytes_max
        self._lines: OrderedDict[str, Line] = OrderedDict()  # least recently used first
        self._by_shard: dict[int, set[str]] = {}
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._lines)

    def __iter__(self) -> Iterator[Line]:
        return iter(self._lines.values())

    def get(self, key: str) -> Line | None:
        return self._lines.get(key)

    def touch(self, line: Line) -> None:
        self._lines.move_to_end(line.key)

    def put(self, line: Line) -> None:
        old = self._lines.pop(line.key, None)
        if old is not None:
            self.bytes -= old.size
            self._by_shard[old.shard].discard(old.key)
        line.size = len(line.key) + len(line.value or b"") + LINE_OVERHEAD_BYTES
        self._lines[line.key] = line
        self._by_shard.setdefault(line.shard, set()).add(line.key)
        self.bytes += line.size

    def resize(self, line: Line) -> None:
        """The line's value changed in place (a local write)."""
        size = len(line.key) + len(line.value or b"") + LINE_OVERHEAD_BYTES
        self.bytes += size - line.size
        line.size = size

    def drop(self, key: str) -> Line | None:
        line = self._lines.pop(key, None)
        if line is not None:
            self.bytes -= line.size
            keys = self._by_shard[line.shard]
            keys.discard(key)
            if not keys:
                del self._by_shard[line.shard]
        return line

    def of_shard(self, shard: int) -> list[Line]:
        return [self._lines[k] for k in sorted(self._by_shard.get(shard, ()))]

    def holds_shard(self, shard: int) -> bool:
        return bool(self._by_shard.get(shard))

    def over(self) -> bool:
        return len(self._lines) > self.lines_max or self.bytes > self.bytes_max

    def victims(self, busy: set[str] | dict[str, object]) -> list[Line]:
        """The least recently used lines whose going brings the table back within its bounds
        (lines already on their way out, and keys with an op in flight, are passed over)."""
        lines_over = len(self._lines) - self.lines_max
        bytes_over = self.bytes - self.bytes_max
        out: list[Line] = []
        for line in self._lines.values():
            if lines_over <= 0 and bytes_over <= 0:
                break
            if not line.releasing and line.key not in busy:
                out.append(line)
                lines_over -= 1
                bytes_over -= line.size
        return out

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys((MODIFIED, EXCLUSIVE, SHARED), 0)
        for line in self._lines.values():
            out[line.state] += 1
        return out
