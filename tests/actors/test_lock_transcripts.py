"""The lock table as text transcripts: every command the log applies, what it answered, and
the answers it gave earlier waiting requests (notices), step by step.

Each file in ``lock_transcripts/`` is in the shared transcript format (transcript_format.py);
``SYNCFAB_REWRITE=1 pytest tests/actors/test_lock_transcripts.py`` rewrites the outputs.

Commands (owners and resources are any words; ``x`` exclusive, ``s`` shared; times in ms):

    acquire a r x [wait=N] [ttl=N]   a asks for r (wait and ttl default to 60000; wait=0: try-lock)
    release a r | release-all a      a lets r (every lock and wait of a) go
    renew a ttl=N                    a's lease becomes now + N
    tick N                           N ms pass; the leader applies ExpireLocks while one is due
    show r                           r's holders and its queue
    owner a                          a's lease, holds and waits
    stats                            the table's counters

Each applied command prints ``#<request id> <its answer>``; a notice to an earlier waiting
request prints ``  -> #<request id> (<owner>) <its answer>``. Every command is applied as one
log entry at the current time, as a replica applies it, and the table's snapshot is restored
into a fresh table after each command to show that it carries everything (the transcript
would differ otherwise).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transcript_format import check_file

from syncfab.actors.lock_ops import Acquire, ExpireLocks, LockInfo, OwnerInfo, Release, ReleaseAll, Renew
from syncfab.actors.locks import EXCLUSIVE, SHARED, LockTable
from syncfab.actors.machine import ApplyContext
from syncfab.actors.results import Err, Ok, Result, Waiting

TRANSCRIPTS = Path(__file__).parent / "lock_transcripts"
MODES = {"x": EXCLUSIVE, "s": SHARED}
DEFAULT_MS = 60_000
EXPIRES_PER_TICK_MAX = 100  # a bound on one tick's ExpireLocks (each ends every deadline passed)


def fmt_value(value: Any) -> str:
    if isinstance(value, dict):
        return " ".join(f"{k}={fmt_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(fmt_value(v) for v in value) + "]"
    return str(value)


def fmt_result(result: Result | Waiting) -> str:
    match result:
        case Waiting():
            return "waiting"
        case Ok(value=value) if isinstance(value, dict) and "granted" in value:
            return f"granted {value['resource']} {value['mode']} token={value['fencing_token']}"
        case Ok(value=value):
            return "ok" if value is None else f"ok {fmt_value(value)}"
        case Err(code=code, detail=detail):
            return f"error {code}" + (f" {fmt_value(detail)}" if detail else "")
    raise TypeError(result)


class Scenario:
    def __init__(self) -> None:
        self.table = LockTable()
        self.now_ms = 0
        self.index = 0
        self.owners: dict[int, str] = {}  # request id -> the owner that asked

    def run(self, command: str) -> list[str]:
        words = command.split()
        name, args = words[0].replace("-", "_"), words[1:]
        pos = [a for a in args if "=" not in a]
        kw = {k: int(v) for k, v in (a.split("=", 1) for a in args if "=" in a)}
        out = getattr(self, f"cmd_{name}")(*pos, **kw)
        self._check_snapshot()
        return out

    def apply(self, owner: str, op: Any) -> list[str]:
        self.index += 1
        self.owners[self.index] = owner
        ctx = ApplyContext(self.index, self.now_ms, owner, self.index)
        result = self.table.apply(ctx, op)
        lines = [f"#{self.index} {fmt_result(result)}"]
        for n in ctx.notices:
            assert n.client == self.owners[n.request_id], (n, self.owners[n.request_id])
            lines.append(f"  -> #{n.request_id} ({n.client}) {fmt_result(n.result)}")
        return lines

    def _check_snapshot(self) -> None:
        image = self.table.snapshot()
        restored = LockTable()
        restored.restore(image)
        assert restored.snapshot() == image, "a restored table must snapshot the same bytes"

    # -- commands -----------------------------------------------------------------------

    def cmd_acquire(
        self, owner: str, resource: str, mode: str, wait: int = DEFAULT_MS, ttl: int = DEFAULT_MS
    ):
        return self.apply(owner, Acquire(resource, MODES.get(mode, mode), owner, wait, ttl))

    def cmd_release(self, owner: str, resource: str) -> list[str]:
        return self.apply(owner, Release(resource, owner))

    def cmd_release_all(self, owner: str) -> list[str]:
        return self.apply(owner, ReleaseAll(owner))

    def cmd_renew(self, owner: str, ttl: int) -> list[str]:
        return self.apply(owner, Renew(owner, ttl))

    def cmd_tick(self, ms: str) -> list[str]:
        self.now_ms += int(ms)
        lines = [f"@{self.now_ms}ms"]
        for _ in range(EXPIRES_PER_TICK_MAX):
            if not self.table.due(self.now_ms):
                return lines
            lines.append("expire")
            lines.extend(self.apply("", ExpireLocks()))
        raise AssertionError(f"still due after {EXPIRES_PER_TICK_MAX} ExpireLocks")

    def cmd_show(self, resource: str) -> list[str]:
        info = self.table.query(LockInfo(resource))
        assert isinstance(info, Ok)
        holders = ", ".join(
            f"{h['owner']} {h['mode']} token={h['fencing_token']}" for h in info.value["holders"]
        )
        queue = ", ".join(f"{w['owner']} {w['mode']} since={w['since_ms']}" for w in info.value["waiters"])
        return [f"holders: {holders or '-'}", f"queue: {queue or '-'}"]

    def cmd_owner(self, owner: str) -> list[str]:
        info = self.table.query(OwnerInfo(owner))
        if isinstance(info, Err):
            return [fmt_result(info)]
        v = info.value
        held = ", ".join(f"{h['resource']} {h['mode']} token={h['fencing_token']}" for h in v["held"])
        waits = ", ".join(f"{w['resource']} {w['mode']}" for w in v["waiting"])
        return [
            f"lease until {v['lease_expires_at_ms']}ms",
            f"held: {held or '-'}",
            f"waiting: {waits or '-'}",
        ]

    def cmd_stats(self) -> list[str]:
        return [" ".join(f"{k}={v}" for k, v in self.table.stats().items())]


@pytest.mark.parametrize("path", sorted(TRANSCRIPTS.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    check_file(path, Scenario().run)


def test_there_are_transcripts() -> None:
    assert len(list(TRANSCRIPTS.glob("*.txt"))) >= 5


def test_a_notice_names_the_request_that_waited() -> None:
    s = Scenario()
    s.run("acquire a r x")
    assert s.run("acquire b r x") == ["#2 waiting"]
    assert s.run("release a r") == ["#3 ok released=True", "  -> #2 (b) granted r exclusive token=2"]
