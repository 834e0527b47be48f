"""Real ``syncfab node`` processes, each in its own network namespace of a ``ChaosNet``.

Every node listens on the same ports inside its own namespace (nothing clashes with the
clusters others run on the host); the test reaches them from the host namespace at their
bridge addresses. A node can be killed with -9, paused with SIGSTOP and restarted on its data
dir, optionally under ``faketime``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from syncfab.fabric.server.local import die_with_parent

from .netns import ChaosNet

# The test's own requests to the nodes never go through a proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """The node's process group (its leader's pid): the node, and faketime if it runs under it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@dataclass(frozen=True, slots=True)
class FakeClock:
    """How ``faketime`` runs a node. ``spec`` is its ``-f`` argument ('+5s', 'x1.5').
    libfaketime fakes CLOCK_MONOTONIC as well as the wall clock, and scales sleeps and poll
    timeouts by the same rate, unless ``wall_only`` (FAKETIME_DONT_FAKE_MONOTONIC=1): then only
    the wall clock, which the node stamps into log entries (lock leases, queue deadlines,
    cache ttl), is off; its timers (elections, heartbeats, cache leases) keep true time."""

    spec: str
    wall_only: bool


@dataclass
class ChaosCluster:
    net: ChaosNet
    data_dir: str
    extra_args: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    clocks: dict[str, FakeClock] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.net.node_ids)

    @property
    def addresses(self) -> list[str]:
        return [self.net.peer_address(n) for n in self.ids]

    def url(self, node: str) -> str:
        return f"http://{self.net.http_address(node)}"

    def start(self, node: str, clock: FakeClock | None = None) -> None:
        assert node not in self.procs, f"{node} is running"
        peers = ",".join(f"{n}={self.net.peer_address(n)}" for n in self.ids)
        wrap: list[str] = []
        env = dict(os.environ)
        if clock is not None:
            wrap = ["faketime", "-f", clock.spec]
            if clock.wall_only:
                env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"
            self.clocks[node] = clock
        else:
            self.clocks.pop(node, None)
        cmd = [
            "ip",
            "netns",
            "exec",
            self.net.netns(node),
            *wrap,
            sys.executable,
            "-m",
            "syncfab.fabric.server.cli",
            "node",
            "--id",
            node,
            "--peers",
            peers,
            "--http",
            self.net.http_address(node),
            "--data-dir",
            os.path.join(self.data_dir, node),
            "--log-level",
            "warning",
            *self.extra_args,
        ]
        with open(os.path.join(self.data_dir, f"{node}.log"), "ab") as log:
            # Its own process group: ip netns exec execs, but faketime forks the node and waits
            # (to clean up its shared memory), so signals go to the group, or a kill -9 would
            # leave the node running, orphaned, on its port.
            self.procs[node] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
                start_new_session=True,
            )

    def start_all(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        for n in self.ids:
            self.start(n)

    def kill(self, node: str) -> None:
        """kill -9: what was not fsynced is gone."""
        proc = self.procs.pop(node)
        _signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=10)
        self.paused.discard(node)

    def pause(self, node: str) -> None:
        _signal_group(self.procs[node], signal.SIGSTOP)
        self.paused.add(node)

    def resume(self, node: str) -> None:
        if node in self.paused:
            _signal_group(self.procs[node], signal.SIGCONT)
            self.paused.discard(node)

    def running(self) -> list[str]:
        return [n for n in self.ids if n in self.procs and n not in self.paused]

    def stop(self) -> None:
        for node in list(self.paused):
            self.resume(node)  # a stopped process would hold SIGTERM until continued
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # whatever of the group outlived its leader
        self.procs.clear()

    def exited(self) -> dict[str, int]:
        """Nodes that died without being killed by the test, with their exit status."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def get_json(self, node: str, path: str, timeout_s: float = 2.0) -> Any:
        with _OPENER.open(self.url(node) + path, timeout=timeout_s) as response:
            return json.loads(response.read())

    def views(self, nodes: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """``/cluster`` of each node that answers."""
        out = {}
        for n in nodes or self.running():
            try:
                out[n] = self.get_json(n, "/cluster", timeout_s=1.0)
            except (OSError, ValueError):
                continue
        return out

    def control_leader(self) -> str | None:
        leaders = {v["leader"] for v in self.views().values()} - {None}
        return leaders.pop() if len(leaders) == 1 else None

    def shard_leaders(self) -> dict[int, str]:
        for view in self.views().values():
            return {s["id"]: s["leader"] for s in view["shards"] if s["leader"]}
        return {}

    def wait_ready(self, timeout_s: float = 30.0) -> float:
        """Until every running node answers and all agree on a live leader of every group;
        returns the seconds it took."""
        started = time.monotonic()
        deadline = started + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            live = set(self.running())
            views = self.views(sorted(live))
            if len(views) == len(live):
                agreed = {(v["leader"], tuple(s["leader"] for s in v["shards"])) for v in views.values()}
                if len(agreed) == 1:
                    control, shards = agreed.pop()
                    if control in live and all(s in live for s in shards):
                        return time.monotonic() - started
                last = agreed
            else:
                last = f"answering: {sorted(views)} of {sorted(live)}"
            if self.exited():
                raise RuntimeError(f"nodes exited: {self.exited()}; logs in {self.data_dir}")
            time.sleep(0.05)
        raise TimeoutError(f"cluster not ready after {timeout_s} s (last: {last})")
