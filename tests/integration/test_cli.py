"""`syncfab cluster` and `syncfab status`, run the way the README tells a newcomer to."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncfab.fabric.client import Client, SyncfabError
from syncfab.fabric.server.curve import read_public_key, read_secret_key
from syncfab.fabric.server.local import LocalCluster, bindable, free_ports

from .helpers import self_signed, wait_for


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


def _free_bases(count: int) -> list[int]:
    while True:
        bases = free_ports(count)
        ports = [b + 100 * i + k for b in bases for i in range(3) for k in (0, 1)]
        if max(ports) < 65536 and len(set(ports)) == len(ports) and all(map(bindable, ports)):
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


def _start_cluster_lines(cmd: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    """A supervisor whose cluster is up, and what it printed up to its "up" line."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = proc.stdout.readline()
        assert line, "".join(lines)
        lines.append(line)
        if "cluster of 3 up" in line:
            return proc, lines


def _start_cluster(cmd: list[str]) -> tuple[subprocess.Popen[str], list[int]]:
    """A supervisor whose cluster is up, and its nodes' pids."""
    proc, _ = _start_cluster_lines(cmd)
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


def test_cluster_locked_down_with_a_token_https_and_curve(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "tokens").write_text("t0ken-cli-5e2a\n")
    keys = tmp_path / "keys"
    peer_base, http_base = _free_bases(2)
    cmd = _cluster_cmd(
        tmp_path, peer_base, http_base, "--auth-token-file", str(tmp_path / "tokens"),
        "--tls-cert", str(cert), "--tls-key", str(key), "--curve-dir", str(keys),
    )  # fmt: skip
    proc, lines = _start_cluster_lines(cmd)
    try:
        assert (keys / "cluster.key").stat().st_mode & 0o077 == 0  # the secrets are the owner's only
        assert (keys / "accept" / "client.key.pub").read_text() == (keys / "client.key.pub").read_text()
        assert any("fabric over CURVE" in line and str(keys / "client.key") in line for line in lines)
        assert any(f"--cacert {cert}" in line and "Authorization: Bearer" in line for line in lines)
        urls = [line.split()[1] for line in lines if line.startswith(("n1:", "n2:", "n3:"))]
        assert all(u.startswith("https://") for u in urls), urls
        tls = ssl.create_default_context(cafile=str(cert))
        put = urllib.request.Request(urls[0] + "/kv/locked", data=b'"down"', method="PUT")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=10, context=tls)
        assert refused.value.code == 401
        put.add_header("Authorization", "Bearer t0ken-cli-5e2a")
        wait_for(
            "a put with the token", lambda: urllib.request.urlopen(put, timeout=10, context=tls).status == 200
        )
        addresses = [f"127.0.0.1:{peer_base + 100 * i}" for i in range(3)]
        with Client(
            addresses, curve_server_key=read_public_key(str(keys / "cluster.key.pub")),
            curve_secret_key=read_secret_key(str(keys / "client.key"))[1],
        ) as client:  # fmt: skip
            assert client.get("locked") == "down"
        with pytest.raises(SyncfabError) as plain:
            Client(addresses, timeout_s=2.0)
        assert plain.value.code == "timeout"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0


# -- the service commands, as a user runs them ------------------------------------------------


@pytest.fixture(scope="module")
def gateways() -> Iterator[str]:
    with LocalCluster(size=3) as c:
        c.wait_ready(balanced=True)
        yield ",".join(c.url(n).removeprefix("http://") for n in c.ids)


def syncfab(endpoints: str, *args: str) -> tuple[int, str, str]:
    out = subprocess.run(
        [sys.executable, "-m", "syncfab.fabric.server.cli", *args, "--endpoints", endpoints],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return out.returncode, out.stdout, out.stderr


def test_kv_from_the_shell(gateways: str) -> None:
    assert syncfab(gateways, "kv", "put", "cli/x", '{"on": true}')[0] == 0
    code, out, _ = syncfab(gateways, "kv", "get", "cli/x")
    assert (code, json.loads(out)) == (0, {"on": True})
    code, _, err = syncfab(gateways, "kv", "get", "cli/missing")
    assert code == 1 and json.loads(err)["error"] == "not_found"
    code, _, err = syncfab(gateways, "kv", "put", "cli/x", "not-json")
    assert code == 2 and "not JSON" in err
    code, out, _ = syncfab(gateways, "kv", "delete", "cli/x", "--json")
    assert (code, json.loads(out)) == (0, {"key": "cli/x", "deleted": True})


def test_locks_from_the_shell(gateways: str) -> None:
    code, out, _ = syncfab(
        gateways, "lock", "acquire", "cli/r", "--client-id", "a", "--ttl-ms", "60000", "--json"
    )
    grant = json.loads(out)
    assert code == 0 and grant["granted"] and grant["mode"] == "exclusive"
    code, _, err = syncfab(gateways, "lock", "acquire", "cli/r", "--client-id", "b", "--mode", "shared")
    assert code == 1 and json.loads(err)["error"] == "lock_timeout"
    code, out, _ = syncfab(gateways, "lock", "show", "cli/r", "--json")
    assert json.loads(out)["holders"] == [
        {"owner": "a", "mode": "exclusive", "fencing_token": grant["fencing_token"]}
    ]
    assert syncfab(gateways, "lock", "renew", "--client-id", "a")[0] == 0
    assert syncfab(gateways, "lock", "release", "cli/r", "--client-id", "a")[0] == 0


def test_queues_from_the_shell(gateways: str) -> None:
    code, out, _ = syncfab(gateways, "queue", "produce", "cli-jobs", '{"id": 1}', "--key", "k", "--json")
    mid = json.loads(out)["message_id"]
    code, out, _ = syncfab(
        gateways, "queue", "consume", "cli-jobs", "--consumer", "w", "--wait-ms", "5000", "--json"
    )
    assert code == 0 and [m["message_id"] for m in json.loads(out)["messages"]] == [mid]
    assert json.loads(syncfab(gateways, "queue", "ack", "cli-jobs", mid, "--json")[1]) == {"acked": 1}
    code, out, _ = syncfab(gateways, "queue", "set", "cli-jobs", "--max-deliveries", "4", "--json")
    assert code == 0 and json.loads(out)["max_deliveries"] == 4
    code, out, _ = syncfab(gateways, "queue", "stats", "cli-jobs", "--json")
    assert (code, json.loads(out)["acked"], json.loads(out)["settings"]["max_deliveries"]) == (0, 1, 4)
    assert syncfab(gateways, "queue", "set", "cli-jobs")[0] == 2  # no setting named


def test_the_cache_from_the_shell(gateways: str) -> None:
    code, out, _ = syncfab(gateways, "cache", "write", "cli/c", '"v1"', "--json")
    version = json.loads(out)["version"]
    assert code == 0
    code, out, _ = syncfab(gateways, "cache", "read", "cli/c")
    assert (code, json.loads(out)) == (0, "v1")
    code, _, err = syncfab(
        gateways, "cache", "write", "cli/c", '"v2"', "--expected-version", str(version + 1)
    )
    assert code == 1 and json.loads(err)["error"] == "version_mismatch"
    code, out, _ = syncfab(gateways, "cache", "line", "cli/c", "--json")
    assert code == 0 and json.loads(out)["version"] == version
    assert syncfab(gateways, "cache", "delete", "cli/c")[0] == 0


def test_a_dead_gateway_is_passed_over_and_none_answering_is_exit_1(gateways: str) -> None:
    (dead,) = free_ports(1)
    code, _, _ = syncfab(f"127.0.0.1:{dead},{gateways}", "kv", "put", "cli/y", "1")
    assert code == 0
    code, _, err = syncfab(f"127.0.0.1:{dead}", "kv", "get", "cli/y")
    assert code == 1 and "no gateway answered" in err


def test_version_and_python_dash_m_syncfab() -> None:
    """``python -m syncfab`` is the ``syncfab`` command (run from elsewhere than the repo, so the
    installed package answers, not the working directory)."""
    out = subprocess.run(
        [sys.executable, "-m", "syncfab", "--version"], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert out.returncode == 0 and out.stdout.startswith("syncfab "), out.stderr
    out = subprocess.run([sys.executable, "-m", "syncfab", "kv", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "get" in out.stdout and "put" in out.stdout
