"""A cluster of real ``syncfab node`` processes on one machine: ``syncfab cluster``, the
integration tests and the benchmarks all start theirs here."""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PORTS_LOW = 20_000  # where free_ports draws from, up to the kernel's ephemeral range


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def bindable(port: int) -> bool:
    """Whether a socket could bind ``port`` on loopback just now."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """Ports that were free a moment ago (each with its successor, which a node's PUB takes),
    drawn below the ephemeral range: a port the kernel handed out for port 0 could be taken,
    before its node binds it, as the source port of another node's connection to its peers."""
    high = _ephemeral_low() - 2
    draw = random.SystemRandom().randrange
    ports: list[int] = []
    while len(ports) < count:
        if high - PORTS_LOW >= 1_000:
            port = draw(PORTS_LOW, high)
        else:  # an ephemeral range reaching this low: take what the kernel hands out
            with socket.socket() as a:
                a.bind(("127.0.0.1", 0))
                port = a.getsockname()[1]
        if port + 1 >= 65535 or {port - 1, port, port + 1} & set(ports):
            continue
        if bindable(port) and bindable(port + 1):
            ports.append(port)
    return ports


def placement_reached(get: Callable[[str, str], Any], nodes: list[str]) -> bool:
    """The members are ``nodes`` (as ``nodes[0]`` has applied them) and every group's Raft
    voters, as its leader has them, are its replicas by their placement: a membership change
    has moved every replica. ``get(node, path)``: that node's gateway's JSON answer."""
    view = get(nodes[0], "/cluster")
    if sorted(m["id"] for m in view["members"]) != sorted(nodes):
        return False  # the change has not reached this node's view yet
    want = {0: sorted(m["id"] for m in view["members"])} | {
        s["id"]: sorted(s["replicas"]) for s in view["shards"]
    }
    leaders = {0: view["leader"]} | {s["id"]: s["leader"] for s in view["shards"]}
    for gid, leader in leaders.items():
        if leader not in nodes:
            return False
        groups = {g["group"]: g for g in get(leader, "/cluster/members")["groups"]}
        if gid not in groups or groups[gid]["voters"] != want[gid] or groups[gid]["learners"]:
            return False
    return True


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a node's child process, before it runs: the kernel sends it SIGTERM when the process
    that started it dies, however it dies (a supervisor or a test run killed with -9), so no
    node lives on as an orphan holding its ports. Linux only; elsewhere a no-op."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


@dataclass
class LocalCluster:
    """Node processes n1..nN on ``host``. Ports are picked free unless given; ``extra_args``
    go to every node, then ``node_args`` to the one they are keyed by; ``log_to_files`` sends
    each node's output to <data_dir>/<id>.log. ``http_token`` is what its own HTTP calls bear
    (nodes run with --auth-token-file); ``tls_ca``, if set, the CA of nodes serving HTTPS.
    The last ``joining`` nodes are for a running cluster: started with --join, they know every
    node's address, the others only each other's (as a cluster they were added to later)."""

    size: int = 3
    joining: int = 0
    data_dir: str | None = None
    extra_args: list[str] = field(default_factory=list)
    node_args: dict[str, list[str]] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    peer_ports: dict[str, int] = field(default_factory=dict)
    http_ports: dict[str, int] = field(default_factory=dict)
    log_to_files: bool = True
    log_level: str = "warning"
    http_token: str | None = None
    tls_ca: str | None = None
    ids: list[str] = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [f"n{i}" for i in range(1, self.size + 1)]
        self.bootstrap = self.ids[: self.size - self.joining]
        if not self.peer_ports or not self.http_ports:
            ports = free_ports(2 * self.size)
            self.peer_ports = dict(zip(self.ids, ports[: self.size], strict=True))
            self.http_ports = dict(zip(self.ids, ports[self.size :], strict=True))
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="syncfab-")
            self.data_dir = self._tmp.name

    @property
    def peers(self) -> str:
        """The --peers of the nodes the cluster starts with."""
        return ",".join(f"{n}={self.host}:{self.peer_ports[n]}" for n in self.bootstrap)

    def address(self, node: str) -> str:
        return f"{self.host}:{self.peer_ports[node]}"

    def url(self, node: str) -> str:
        return f"{'https' if self.tls_ca else 'http'}://{self.host}:{self.http_ports[node]}"

    @property
    def addresses(self) -> list[str]:
        return [self.address(n) for n in self.ids]

    def start(self, node: str | None = None) -> None:
        """``node``, or every node the cluster starts with."""
        for n in [node] if node else self.bootstrap:
            joins = n not in self.bootstrap
            peers = (
                ",".join(f"{m}={self.host}:{self.peer_ports[m]}" for m in self.ids) if joins else self.peers
            )
            assert self.data_dir is not None
            cmd = [
                sys.executable,
                "-m",
                "syncfab.fabric.server.cli",
                "node",
                "--id",
                n,
                "--peers",
                peers,
                *(["--join"] if joins else []),
                "--http",
                f"{self.host}:{self.http_ports[n]}",
                "--data-dir",
                os.path.join(self.data_dir, n),
                "--log-level",
                self.log_level,
                *self.extra_args,
                *self.node_args.get(n, []),
            ]
            os.makedirs(self.data_dir, exist_ok=True)
            out = None
            if self.log_to_files:
                out = open(os.path.join(self.data_dir, f"{n}.log"), "ab")  # noqa: SIM115 - the child's
            self.procs[n] = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                env={**os.environ, **self.env},
                preexec_fn=die_with_parent,
            )
            if out is not None:
                out.close()

    def taken_ports(self) -> list[str]:
        """Each port a node would bind that something else holds now, named."""
        taken = []
        for n in self.ids:
            for port, what in (
                (self.peer_ports[n], "peer"),
                (self.peer_ports[n] + 1, "publish"),
                (self.http_ports[n], "HTTP"),
            ):
                if not port_free(self.host, port):
                    taken.append(f"{self.host}:{port} ({n}'s {what} port)")
        return taken

    def kill(self, node: str) -> None:
        """kill -9: no clean shutdown, whatever was not fsynced is gone."""
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def terminate(self, node: str) -> int:
        """A clean stop (SIGTERM); returns the exit status."""
        proc = self.procs.pop(node)
        proc.send_signal(signal.SIGTERM)
        return proc.wait(timeout=10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def pids(self) -> dict[str, int]:
        return {n: p.pid for n, p in self.procs.items()}

    def get_json(self, node: str, path: str, timeout_s: float = 2.0) -> Any:
        headers = {"Authorization": f"Bearer {self.http_token}"} if self.http_token else {}
        request = urllib.request.Request(self.url(node) + path, headers=headers)
        tls = ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None
        with urllib.request.urlopen(request, timeout=timeout_s, context=tls) as response:
            return json.loads(response.read())

    def wait_ready(
        self, timeout_s: float = 30.0, nodes: list[str] | None = None, *, balanced: bool = False
    ) -> None:
        """Until every node answers and every group has a leader every node agrees on (and,
        if ``balanced``, every shard is led by its preferred leader, as benchmarks want)."""
        deadline = time.monotonic() + timeout_s
        nodes = nodes or list(self.procs)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                views = [self.get_json(n, "/cluster") for n in nodes]
                leaders = [(v["leader"], tuple(s["leader"] for s in v["shards"])) for v in views]
                live = set(nodes)
                if (
                    all(lead in live and all(s in live for s in shards) for lead, shards in leaders)
                    and len(set(leaders)) == 1
                    and (
                        not balanced or all(s["leader"] == s["preferred_leader"] for s in views[0]["shards"])
                    )
                ):
                    return
            except OSError as e:
                last_error = e
            for n, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"node {n} exited with {proc.returncode}; see {self.data_dir}/{n}.log")
            time.sleep(0.05)
        raise TimeoutError(f"cluster not ready after {timeout_s} s (last error: {last_error})")

    def __enter__(self) -> LocalCluster:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
