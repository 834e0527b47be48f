"""A 3-member etcd cluster of real processes on loopback, for side-by-side HTTP benchmarks.

etcd fsyncs its WAL on every commit, as syncfab does with fsync on; its JSON gateway (the
grpc-gateway at ``/v3/...``) is what HTTP clients of etcd use. Debian: ``apt-get install
etcd-server``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from syncfab.fabric.server.local import die_with_parent, free_ports


def etcd_binary() -> str | None:
    return shutil.which("etcd")


def etcd_version() -> str:
    binary = etcd_binary()
    if binary is None:
        return "absent"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].split(":", 1)[-1].strip() if out else "unknown"


@dataclass
class EtcdCluster:
    size: int = 3
    host: str = "127.0.0.1"
    ids: list[str] = field(init=False)
    client_ports: dict[str, int] = field(init=False)
    peer_ports: dict[str, int] = field(init=False)
    procs: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = [f"e{i}" for i in range(1, self.size + 1)]
        ports = free_ports(2 * self.size)
        self.client_ports = dict(zip(self.ids, ports[: self.size], strict=True))
        self.peer_ports = dict(zip(self.ids, ports[self.size :], strict=True))
        self._tmp = tempfile.TemporaryDirectory(prefix="etcd-bench-")

    def url(self, member: str) -> str:
        return f"http://{self.host}:{self.client_ports[member]}"

    @property
    def urls(self) -> list[str]:
        return [self.url(m) for m in self.ids]

    def start(self) -> None:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd is not installed (Debian: apt-get install etcd-server)")
        initial = ",".join(f"{m}=http://{self.host}:{self.peer_ports[m]}" for m in self.ids)
        for m in self.ids:
            peer = f"http://{self.host}:{self.peer_ports[m]}"
            cmd = [
                binary,
                "--name",
                m,
                "--data-dir",
                os.path.join(self._tmp.name, m),
                "--listen-client-urls",
                self.url(m),
                "--advertise-client-urls",
                self.url(m),
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--log-level",
                "error",
            ]
            log = open(os.path.join(self._tmp.name, f"{m}.log"), "ab")  # noqa: SIM115 - the child's
            self.procs[m] = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
            log.close()

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Until every member says it is healthy (which needs a leader)."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                healthy = []
                for m in self.ids:
                    with urllib.request.urlopen(self.url(m) + "/health", timeout=2) as r:
                        healthy.append(json.loads(r.read()).get("health") in ("true", True))
                if all(healthy):
                    return
            except OSError as e:
                last = e
            for m, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"etcd {m} exited with {proc.returncode}; see {self._tmp.name}/{m}.log"
                    )
            time.sleep(0.05)
        raise TimeoutError(f"etcd not ready after {timeout_s} s (last error: {last})")

    def pids(self) -> dict[str, int]:
        return {m: p.pid for m, p in self.procs.items()}

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
        self._tmp.cleanup()
