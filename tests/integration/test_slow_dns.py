"""A peer whose host name takes seconds to resolve must not stall a node's other peers.

libzmq resolves a peer's name on the I/O thread that connects to it and blocks that thread
until DNS answers; a compose network's resolver left a stopping container's name unanswered
for 5 s, and on one shared thread every socket of the survivors froze with it (they lost
their leaders). Here two real nodes run in mount namespaces whose resolv.conf names a DNS
server that never answers (timeout 2 s), and the third member's address is a host name: with
each peer on its own I/O thread the two keep a working majority and answer writes promptly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from syncfab.fabric.server.local import die_with_parent, free_ports

from .helpers import wait_for

SILENT_DNS = ("127.0.0.99", 53)
DNS_TIMEOUT_S = 2
WRITE_MAX_S = 1.0  # a write on a healthy majority (a loaded machine); a stall costs DNS_TIMEOUT_S


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--", "true"], capture_output=True, timeout=10)
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not _namespaces_work(), reason="needs root and mount namespaces")


@contextlib.contextmanager
def silent_dns_server() -> Iterator[None]:
    """A UDP port 53 that reads every query and answers none."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(SILENT_DNS)
    sock.settimeout(0.2)
    stop = threading.Event()

    def swallow() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sock.recv(512)

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2)
        sock.close()


def _put(url: str, key: str, value: Any) -> int:
    request = urllib.request.Request(f"{url}/kv/{key}", data=json.dumps(value).encode(), method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


def test_a_peer_name_that_resolves_slowly_does_not_stall_the_others(tmp_path: Any) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {SILENT_DNS[0]}\noptions timeout:{DNS_TIMEOUT_S} attempts:1\n")
    p1, p2, p3, h1, h2 = free_ports(5)
    # n3 never starts; its name is looked up (and unanswered) on every reconnect.
    peers = f"n1=127.0.0.1:{p1},n2=127.0.0.1:{p2},n3=n3.syncfab-test:{p3}"
    http = {"n1": h1, "n2": h2}
    procs = []
    with silent_dns_server():
        try:
            for node in ("n1", "n2"):
                cmd = [sys.executable, "-m", "syncfab.fabric.server.cli", "node", "--id", node]
                cmd += ["--peers", peers, "--http", f"127.0.0.1:{http[node]}"]
                cmd += ["--data-dir", str(tmp_path / node), "--log-level", "warning"]
                in_namespace = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
                procs.append(
                    subprocess.Popen(
                        ["unshare", "--mount", "--", "sh", "-c", in_namespace, str(resolv), *cmd],
                        stdout=open(tmp_path / f"{node}.log", "wb"),  # noqa: SIM115 - the child's
                        stderr=subprocess.STDOUT,
                        preexec_fn=die_with_parent,
                    )
                )
            url = f"http://127.0.0.1:{h1}"
            # Every shard elects a leader among the two (a stalled pair keeps losing them).
            wait_for("a first write", lambda: _put(url, "warm-up", 0) == 200, timeout_s=30)
            slow = []
            for i in range(30):
                started = time.monotonic()
                status = _put(url if i % 2 else f"http://127.0.0.1:{h2}", f"k{i}", i)
                elapsed_s = time.monotonic() - started
                if status != 200 or elapsed_s > WRITE_MAX_S:
                    slow.append((i, status, round(elapsed_s, 3)))
            assert not slow, f"writes that stalled (index, status, seconds): {slow}"
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
