"""The transcript file format the actors' transcripts share (etcd's datadriven style).

A file is a list of blocks, separated by blank lines::

    # optional comment lines
    command args
    ----
    the output the command printed

``replay_file`` runs every command of a file on a fresh scenario and compares what it prints
with what is recorded; ``SYNCFAB_REWRITE=1`` writes the replayed outputs instead (review the
diff!).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

REWRITE = os.environ.get("SYNCFAB_REWRITE") == "1"


@dataclasses.dataclass
class Block:
    comments: list[str]
    command: str
    output: list[str]


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    n = 0
    while n < len(lines):
        comments: list[str] = []
        while n < len(lines) and (not lines[n].strip() or lines[n].startswith("#")):
            if lines[n].startswith("#"):
                comments.append(lines[n])
            n += 1
        if n == len(lines):
            assert not comments, "comments after the last command"
            break
        command = lines[n]
        n += 1
        assert n < len(lines) and lines[n] == "----", f"line {n + 1}: expected ---- after {command!r}"
        n += 1
        output: list[str] = []
        while n < len(lines) and lines[n].strip():
            output.append(lines[n])
            n += 1
        blocks.append(Block(comments, command, output))
    return blocks


def render(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        parts.append("\n".join([*b.comments, b.command, "----", *(b.output or ["ok"])]))
    return "\n\n".join(parts) + "\n"


def replay(text: str, run: Callable[[str], list[str]]) -> str:
    """The text with every block's output replaced by what ``run`` prints for its command."""
    blocks = parse(text)
    for b in blocks:
        b.output = run(b.command) or ["ok"]
    return render(blocks)


def check_file(path: Path, run: Callable[[str], list[str]]) -> None:
    """Fail, with a diff, when the file replays differently (or rewrite it, under REWRITE)."""
    recorded = path.read_text()
    actual = replay(recorded, run)
    if REWRITE:
        path.write_text(actual)
        return
    if actual != recorded:
        diff = difflib.unified_diff(
            recorded.splitlines(), actual.splitlines(), "recorded", "replayed", lineterm=""
        )
        pytest.fail(f"{path.name} replays differently (SYNCFAB_REWRITE=1 to accept):\n" + "\n".join(diff))
