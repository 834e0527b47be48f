"""Network namespaces for a chaos cluster: one per node, a bridge in a namespace of its own, and
a veth from the host namespace into the bridge so the test's clients reach every node.

Every name starts with ``sfc`` and the pid of the process that made it (namespaces
``sfc-<pid>-<k>-...``, links ``sfc<pid>k<k>...``, 15 bytes at most as the kernel wants), so a
later run can tell what a dead run left behind (``remove_stale``) from what a live one uses.

Faults are iptables rules inside the node namespaces only (the host's tables are never
touched): ``heal`` flushes them all. Rules match the peers' addresses, so the test's clients
(from the host address) keep reaching every node, as clients of a partitioned cluster would.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

PEER_PORT = 7101  # in each node's own namespace: no clash with anything on the host
HTTP_PORT = 8101
_SERIALS = itertools.count()
_STALE_NETNS = re.compile(r"^sfc-(\d+)-")
_STALE_LINK = re.compile(r"^sfc(\d+)k")


def run_ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def run_iptables(netns: str, *args: str) -> None:
    # -w: wait for the xtables lock rather than fail while another namespace's rule goes in.
    cmd = ["ip", "netns", "exec", netns, "iptables", "-w", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip()}")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if os.geteuid() != 0:
        return "chaos suite skipped: network namespaces need root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"chaos suite skipped: no {tool} (apt-get install iproute2 iptables)"
    probe = f"sfc-{os.getpid()}-probe"
    try:
        run_ip("netns", "add", probe)
        run_iptables(probe, "-A", "INPUT", "-m", "statistic", "--mode", "random", "--probability", "0.5")
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        return f"chaos suite skipped: cannot make a namespace with iptables rules ({e})"
    finally:
        with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
            run_ip("netns", "del", probe)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Delete the namespaces and host links of chaos runs whose process is gone; returns them."""
    removed = []
    for line in run_ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        m = _STALE_NETNS.match(name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(RuntimeError):
                # A namespace lives on while a process runs in it: the dead run's nodes (one
                # under faketime escapes the parent-death signal) go first.
                for pid in run_ip("netns", "pids", name).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                run_ip("netns", "del", name)
                removed.append(name)
    for line in run_ip("-o", "link").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        m = _STALE_LINK.match(name)
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(RuntimeError):
                run_ip("link", "del", name)
                removed.append(name)
    return removed


def _free_subnet(serial: int) -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route of the host names, picked from pid and serial."""
    routes = run_ip("-4", "route", "show", "table", "all")
    start = (os.getpid() * 7 + serial * 131) % 60000
    for i in range(60000):
        n = (start + i) % 60000 + 2000
        net = ipaddress.IPv4Network(f"10.{n // 256}.{n % 256}.0/24")
        if f"10.{n // 256}.{n % 256}." not in routes:
            return net
    raise RuntimeError("no free 10.x.y.0/24 for a chaos network")


@dataclass
class ChaosNet:
    """A bridge namespace, one namespace per node id, and the host's way in."""

    node_ids: list[str]
    serial: int = field(default_factory=lambda: next(_SERIALS))
    created: list[str] = field(default_factory=list)  # namespaces, for teardown
    host_link: str = ""

    def __post_init__(self) -> None:
        pid = os.getpid()
        self._ns_prefix = f"sfc-{pid}-{self.serial}"
        self._link_prefix = f"sfc{pid}k{self.serial}"
        self.subnet = _free_subnet(self.serial)
        hosts = list(self.subnet.hosts())
        self.host_ip = str(hosts[0])
        self.ips = {n: str(hosts[10 + i]) for i, n in enumerate(self.node_ids)}
        self.bridge_ns = f"{self._ns_prefix}-br"

    def netns(self, node: str) -> str:
        return f"{self._ns_prefix}-{node}"

    def peer_address(self, node: str) -> str:
        return f"{self.ips[node]}:{PEER_PORT}"

    def http_address(self, node: str) -> str:
        return f"{self.ips[node]}:{HTTP_PORT}"

    def up(self) -> None:
        try:
            self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> None:
        prefix = self.subnet.prefixlen
        run_ip("netns", "add", self.bridge_ns)
        self.created.append(self.bridge_ns)
        run_ip("link", "set", "lo", "up", netns=self.bridge_ns)
        run_ip("link", "add", "br0", "type", "bridge", netns=self.bridge_ns)
        run_ip("link", "set", "br0", "up", netns=self.bridge_ns)
        self.host_link = f"{self._link_prefix}h"
        self._plug(self.host_link, f"{self._link_prefix}hb")
        run_ip("addr", "add", f"{self.host_ip}/{prefix}", "dev", self.host_link)
        run_ip("link", "set", self.host_link, "up")
        for i, node in enumerate(self.node_ids, 1):
            ns = self.netns(node)
            run_ip("netns", "add", ns)
            self.created.append(ns)
            inner = f"{self._link_prefix}n{i}"
            self._plug(inner, f"{self._link_prefix}b{i}")
            run_ip("link", "set", inner, "netns", ns)
            run_ip("link", "set", inner, "name", "eth0", netns=ns)
            run_ip("addr", "add", f"{self.ips[node]}/{prefix}", "dev", "eth0", netns=ns)
            run_ip("link", "set", "eth0", "up", netns=ns)
            run_ip("link", "set", "lo", "up", netns=ns)

    def _plug(self, outer: str, bridge_end: str) -> None:
        """A veth pair made in the host namespace with one end moved into the bridge."""
        run_ip("link", "add", outer, "type", "veth", "peer", "name", bridge_end)
        run_ip("link", "set", bridge_end, "netns", self.bridge_ns)
        run_ip("link", "set", bridge_end, "master", "br0", netns=self.bridge_ns)
        run_ip("link", "set", bridge_end, "up", netns=self.bridge_ns)

    def down(self) -> None:
        """Remove everything this net made (a namespace's links go with it)."""
        for ns in reversed(self.created):
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                run_ip("netns", "del", ns)
        self.created.clear()
        if self.host_link:
            with contextlib.suppress(RuntimeError, OSError, subprocess.TimeoutExpired):
                run_ip("link", "del", self.host_link)
            self.host_link = ""

    # -- faults: iptables rules in the node namespaces ------------------------------------

    def cut(self, a: str, b: str) -> None:
        """No packet between a and b, either way."""
        for here, there in ((a, b), (b, a)):
            ns = self.netns(here)
            run_iptables(ns, "-A", "INPUT", "-s", self.ips[there], "-j", "DROP")
            run_iptables(ns, "-A", "OUTPUT", "-d", self.ips[there], "-j", "DROP")

    def drop_inbound(self, node: str, probability: float = 1.0) -> None:
        """``node`` loses what its peers send it (with ``probability``); what it sends still
        leaves. Over TCP the acknowledgements it needs are lost too, so its own sends stall
        once a window is unacknowledged: it is deaf at once and mute soon after."""
        ns = self.netns(node)
        for peer in self.node_ids:
            if peer == node:
                continue
            rule = ["-A", "INPUT", "-s", self.ips[peer]]
            if probability < 1.0:
                rule += ["-m", "statistic", "--mode", "random", "--probability", f"{probability:.3f}"]
            run_iptables(ns, *rule, "-j", "DROP")

    def redirect(self, node: str, peer: str, port: int, to_host_port: int) -> None:
        """New TCP connections from ``node`` to ``peer``:``port`` go to the host's
        ``to_host_port`` (the delay relay) instead; the connections already open are reset,
        so they reconnect through it. (The filter table sees the address after DNAT, so the
        reset matches only connections that bypass the relay.)"""
        ns, ip, dport = self.netns(node), self.ips[peer], str(port)
        target = f"{self.host_ip}:{to_host_port}"
        run_iptables(
            ns,
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            ip,
            "--dport",
            dport,
            "-j",
            "DNAT",
            "--to-destination",
            target,
        )
        run_iptables(
            ns,
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            ip,
            "--dport",
            dport,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        )

    def heal(self) -> None:
        for node in self.node_ids:
            ns = self.netns(node)
            run_iptables(ns, "-F")
            run_iptables(ns, "-t", "nat", "-F")
