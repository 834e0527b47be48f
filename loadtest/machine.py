"""What a benchmark figure ran on and beside: the machine, the commit, and how busy the machine
was while it ran (it is shared, so the figures say so).

``Usage.begin()`` / ``.end()`` around a workload give the 1-minute load average at both ends,
the share of the machine's CPU that was busy, and how much of it was *not* this process's
children (the benchmark, its nodes and clients): the other processes on the machine.
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def ram_gib() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024**2, 1)
    return None


def git_commit() -> str:
    """The short commit, with ``+dirty`` when tracked files differ from it."""
    try:
        commit = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "ram_gib": ram_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
    }


def describe(m: dict[str, Any]) -> str:
    return (
        f"{m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; {m['date_utc']}; commit {m['commit']}"
    )


def load_1min() -> float:
    return os.getloadavg()[0]


def _cpu_ticks() -> tuple[int, int]:
    """(busy, steal) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in _read("/proc/stat").split("\n", 1)[0].split()[1:]]
    if len(fields) < 8:
        return 0, 0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@dataclass
class Usage:
    """The machine around one workload (children must have been waited for by ``end``)."""

    load_start: float
    started: float
    busy0: int
    steal0: int
    children0: float

    @classmethod
    def begin(cls) -> Usage:
        busy, steal = _cpu_ticks()
        return cls(load_1min(), time.monotonic(), busy, steal, _children_cpu_s())

    def end(self) -> dict[str, Any]:
        wall_s = max(1e-6, time.monotonic() - self.started)
        busy, steal = _cpu_ticks()
        hz = os.sysconf("SC_CLK_TCK")
        busy_s = (busy - self.busy0) / hz
        ours_s = _children_cpu_s() - self.children0
        return {
            "load_start": round(self.load_start, 2),
            "load_end": round(load_1min(), 2),
            "wall_s": round(wall_s, 1),
            "busy_cores": round(busy_s / wall_s, 2),
            # the kernel's softirq work for our sockets may land on others' time: approximate
            "others_cores": round(max(0.0, busy_s - ours_s) / wall_s, 2),
            "steal_cores": round((steal - self.steal0) / hz / wall_s, 2),
        }
