"""Availability under each nemesis of the chaos suite, from its recorded round files.

A round file (tests/chaos/test_chaos.py ``_report``: ``{"nemesis", "history": [event...]}``,
each event ``{process, kind, key, call_us, ret_us?, error?, ...}``) holds every operation the
round's workers called. An operation *succeeded* when it has a return (``ret_us``): a definite
answer, a not-found or a version mismatch included; one without is an unknown outcome (a
timeout, a refused connection). Per nemesis and service: the share that succeeded, and the
longest time with no success, from the first call to the last, edges included.
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from typing import Any

# The worker's process name says its service (tests/chaos/rounds.py names them so).
SERVICE_OF_PREFIX = {
    "kv-": "kv",
    "cache-": "cache",
    "lock-": "locks",
    "produce-": "queue",
    "consume-": "queue",
}
SERVICES = ("kv", "locks", "queue", "cache")


def service(process: str) -> str | None:
    for prefix, name in SERVICE_OF_PREFIX.items():
        if process.startswith(prefix):
            return name
    return None  # the queue's drain and the directory poller are the harness's, not load


def of_history(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per service: ops, succeeded, share, longest gap with no success (s), span (s)."""
    by_service: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        name = service(e.get("process", ""))
        if name is not None:
            by_service.setdefault(name, []).append(e)
    out: dict[str, dict[str, Any]] = {}
    for name, ops in by_service.items():
        begin = min(e["call_us"] for e in ops)
        end = max(max(e["call_us"], e.get("ret_us") or 0) for e in ops)
        successes = sorted(e["ret_us"] for e in ops if e.get("ret_us") is not None)
        marks = [begin, *successes, end]
        gap_us = max(b - a for a, b in itertools.pairwise(marks))
        out[name] = {
            "ops": len(ops),
            "succeeded": len(successes),
            "share": round(len(successes) / len(ops), 4),
            "longest_gap_s": round(gap_us / 1e6, 3),
            "span_s": round((end - begin) / 1e6, 1),
        }
    return out


def merge(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Several rounds of one nemesis: shares pooled over ops, the longest gap of any round."""
    merged: dict[str, dict[str, Any]] = {}
    for r in rounds:
        for name, s in r.items():
            m = merged.setdefault(name, {"ops": 0, "succeeded": 0, "longest_gap_s": 0.0, "span_s": 0.0})
            m["ops"] += s["ops"]
            m["succeeded"] += s["succeeded"]
            m["longest_gap_s"] = max(m["longest_gap_s"], s["longest_gap_s"])
            m["span_s"] = round(m["span_s"] + s["span_s"], 1)
    for m in merged.values():
        m["share"] = round(m["succeeded"] / m["ops"], 4) if m["ops"] else None
    return merged


def from_dir(directory: str) -> dict[str, Any]:
    """Every ``*.json`` round file in ``directory``, by nemesis."""
    rounds: dict[str, list[dict[str, dict[str, Any]]]] = {}
    files = sorted(glob.glob(os.path.join(directory, "*.json")))
    for path in files:
        with open(path) as f:
            recorded = json.load(f)
        if "history" not in recorded or "nemesis" not in recorded:
            continue
        rounds.setdefault(recorded["nemesis"], []).append(of_history(recorded["history"]))
    return {
        "source": directory,
        "files": len(files),
        "nemeses": {n: {"rounds": len(r), "services": merge(r)} for n, r in sorted(rounds.items())},
    }
