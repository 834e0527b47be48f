"""``python -m loadtest.report --quick`` end to end on real clusters, with very short runs (a
native and an HTTP workload on one node, two failover rounds on three; ~30 s): the page has its
tables and every plot is a PNG; and the chaos availability over a recorded history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import availability

ROOT = Path(__file__).resolve().parent.parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.timeout(180)
def test_quick_report_writes_its_tables_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    command = [sys.executable, "-m", "loadtest.report", "--quick", "--seconds", "0.5", "--warmup", "0.2"]
    command += ["--workloads", "kv,http-lock,failover", "--nodes", "1", "--failover-rounds", "2"]
    command += ["--out-dir", str(tmp_path), "--results-dir", str(tmp_path / "results")]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    page = (tmp_path / "REPORT.md").read_text()
    assert "| KV writes (writes/s) | " in page  # the table by cluster size
    assert "| workload | 1 node |" in page
    rows = [
        line
        for line in page.splitlines()
        if line.startswith(("| KV writes | ", "| HTTP lock cycles (aiohttp) | "))
    ]
    assert len(rows) == 2, rows  # every run, none failed
    assert not any("failed" in row for row in rows), rows
    assert "| every led shard writable again, all kills |" in page
    assert page.count("leader | n") == 2  # a row per failover round
    for name in ("throughput", "latency", "failover", "failover_trace"):
        assert f"(report/{name}.png)" in page
        width, height = _png_size(tmp_path / "report" / f"{name}.png")
        assert width > 500 and height > 300
    gathered = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["kind"] for r in gathered["failover"]["rounds"]] == ["control", "shard"]
    for r in gathered["failover"]["rounds"]:
        assert r["led_shards"], r  # every kill took down a node that led shards
        assert r["recovery_s"] is not None and r["recovery_s"] > 0, r
        assert set(r["shard_elected_s"]) == {str(s) for s in r["led_shards"]}, r
    assert all(r["per_s"] > 0 for r in gathered["runs"])
    assert all(r["usage"]["load_start"] >= 0 and r["usage"]["wall_s"] > 0 for r in gathered["runs"])
    # drawn again from report.json, with nothing run
    again = subprocess.run(
        [sys.executable, "-m", "loadtest.report", "--render", str(tmp_path / "report" / "report.json"),
         "--out-dir", str(tmp_path / "again")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "REPORT.md").read_text().count("\n|") == page.count("\n|")


def test_availability_counts_successes_and_the_longest_gap(tmp_path: Path) -> None:
    s = 1_000_000  # µs
    history = [
        {"process": "kv-native-0", "kind": "put", "key": "a", "call_us": 0, "ret_us": 1 * s},
        {"process": "kv-http-n1", "kind": "get", "key": "a", "call_us": 1 * s, "error": "timeout"},
        {"process": "kv-native-0", "kind": "get", "key": "a", "call_us": 2 * s, "ret_us": 5 * s},
        {"process": "lock-http-0", "kind": "acquire", "key": "l", "call_us": 0, "error": "refused"},
        {"process": "drain", "kind": "consume", "key": "q", "call_us": 0, "ret_us": 9 * s},
    ]
    (tmp_path / "partition-seed1-1.json").write_text(json.dumps({"nemesis": "partition", "history": history}))
    (tmp_path / "notes.json").write_text("{}")
    found = availability.from_dir(str(tmp_path))
    services = found["nemeses"]["partition"]["services"]
    assert services["kv"] == {"ops": 3, "succeeded": 2, "share": 0.6667, "longest_gap_s": 4.0, "span_s": 5.0}
    assert services["locks"]["share"] == 0.0 and services["locks"]["longest_gap_s"] == 0.0
    assert "queue" not in services  # the drain is the harness's, not load
