"""`syncfab cluster` and `syncfab status`, run the way the README tells a newcomer to."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from syncfab.fabric.server.local import free_ports


def test_cluster_command_serves_kv_and_stops_on_sigterm(tmp_path: Any) -> None:
    # Node i uses base + 100*(i-1) (and the next port for its PUB): all of them must be free.
    peer_base, http_base = _free_bases(2)
    cmd = [
        sys.executable,
        "-m",
        "syncfab.fabric.server.cli",
        "cluster",
        "--data-dir",
        str(tmp_path / "data"),
        "--base-port",
        str(peer_base),
        "--http-base-port",
        str(http_base),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "cluster of 3 up" in line:
                break
        assert any("cluster of 3 up" in line for line in lines), "".join(lines)
        urls = [line.split()[1] for line in lines if line.startswith(("n1:", "n2:", "n3:"))]
        assert len(urls) == 3
        put = urllib.request.Request(urls[0] + "/kv/hello", data=b'"world"', method="PUT")
        deadline = time.monotonic() + 20
        while True:
            try:
                assert urllib.request.urlopen(put, timeout=5).status == 200
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        got = json.loads(urllib.request.urlopen(urls[2] + "/kv/hello", timeout=5).read())
        assert got == {"key": "hello", "value": "world"}
        status = subprocess.run(
            [sys.executable, "-m", "syncfab.fabric.server.cli", "status", "--http", urls[1]],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert status.returncode == 0
        assert "control group leader" in status.stdout and status.stdout.count("alive") == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "syncfab cluster stopped" in out


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_bases(count: int) -> list[int]:
    while True:
        bases = free_ports(count)
        ports = [b + 100 * i + k for b in bases for i in range(3) for k in (0, 1)]
        if max(ports) < 65536 and len(set(ports)) == len(ports) and all(map(_bindable, ports)):
            return bases


def test_status_reports_an_unreachable_node() -> None:
    (port,) = free_ports(1)
    out = subprocess.run(
        [sys.executable, "-m", "syncfab.fabric.server.cli", "status", "--http", f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "no answer" in out.stderr


def _cluster_cmd(tmp_path: Any, peer_base: int, http_base: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "syncfab.fabric.server.cli", "cluster", "--data-dir", str(tmp_path / "data"),
        "--base-port", str(peer_base), "--http-base-port", str(http_base), *extra,
    ]  # fmt: skip


def _start_cluster(cmd: list[str]) -> tuple[subprocess.Popen[str], list[int]]:
    """A supervisor whose cluster is up, and its nodes' pids."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    while "cluster of 3 up" not in (line := proc.stdout.readline()):
        assert line, "".join(lines)
        lines.append(line)
    with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    assert len(children) == 3
    return proc, children


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_cluster_refuses_ports_that_are_taken_and_says_which(tmp_path: Any) -> None:
    peer_base, http_base = _free_bases(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", http_base + 100))  # n2's HTTP port
        holder.listen()
        out = subprocess.run(
            _cluster_cmd(tmp_path, peer_base, http_base), capture_output=True, text=True, timeout=60
        )
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"127.0.0.1:{http_base + 100} (n2's HTTP port)" in out.stderr
    assert "up" not in out.stdout


def test_a_node_that_dies_stops_the_cluster_with_status_1(tmp_path: Any) -> None:
    proc, children = _start_cluster(_cluster_cmd(tmp_path, *_free_bases(2)))
    try:
        os.kill(children[1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "n2 exited with status -9; stopping" in out
    assert not any(_alive(pid) for pid in children)


def test_killing_the_supervisor_leaves_no_orphan_nodes(tmp_path: Any) -> None:
    proc, children = _start_cluster(_cluster_cmd(tmp_path, *_free_bases(2)))
    proc.kill()  # SIGKILL: no chance to stop its nodes itself
    proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in children), "nodes outlived their supervisor"
