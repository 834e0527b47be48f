"""What the lock benchmarks could reach on this machine with no Raft, no lock table and no
client library in the way: ``python -m loadtest.floor handoff`` and ``python -m loadtest.floor cycles``.

Both keep the shape every durable lock operation has here: the caller's message travels to a
leader, the leader ships it to two followers, a follower writes it and ``fdatasync``s it and
acknowledges, and the leader answers on the first acknowledgement (itself and one follower are a
majority of three). Three processes and a caller, blocking pyzmq DEALER/ROUTER over loopback
TCP as the nodes use, followers that ``pwrite`` into a preallocated, already written file (the
WAL's cheapest sync), a leader that decodes nothing and writes nothing of its own. Whatever
these reach, syncfab's ``bench.py lock`` cannot beat here; ``--fsync off`` shows what the
messages alone cost.

- ``handoff``: one closed-loop caller, so each round trip is one link of a contended lock's
  chain — the holder's release must commit before the next waiter hears of its grant, and that
  waiter's release is the next link. Compare with ``bench.py lock --hot 1``.
- ``cycles``: ``--clients`` closed-loop callers of 100-byte requests, two per cycle (an
  acquire and a release); the leader puts whatever arrived since its last poll into one entry
  and keeps any number in flight, as syncfab does. Compare with ``bench.py lock``.

Prints per-second figures and p50/p95/p99 and writes a JSON result (``--out``, default
loadtest/results/floor-<workload>-<time>.json).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from typing import Any

import zmq

from loadtest.bench import percentile, write_result
from syncfab.fabric.server.local import free_ports

FILE_BYTES = 16 << 20  # like a WAL segment: written once, then overwritten in place
REQUEST_BYTES = 100
STOP = b"stop"


def _follower(address: str, path: str, fsync: bool) -> None:
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    os.pwrite(fd, bytes(FILE_BYTES), 0)  # written blocks: a sync then flushes data, not extents
    os.fsync(fd)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.connect(f"tcp://{address}")
    sock.send(b"ready")
    offset = 0
    while (entry := sock.recv()) != STOP:
        if offset + len(entry) > FILE_BYTES:
            offset = 0
        os.pwrite(fd, entry, offset)
        offset += len(entry)
        if fsync:
            os.fdatasync(fd)
        sock.send(entry[:8])  # the entry's number
    os.close(fd)


def _leader(client_address: str, follower_address: str) -> None:
    """Each poll: every waiting request becomes one entry, sent to both followers; each first
    ack commits its entry and those before it, whose requests are answered (one frame per
    caller socket)."""
    ctx = zmq.Context.instance()
    followers = ctx.socket(zmq.ROUTER)
    followers.bind(f"tcp://{follower_address}")
    clients = ctx.socket(zmq.ROUTER)
    clients.bind(f"tcp://{client_address}")
    ids = [followers.recv_multipart()[0] for _ in range(2)]
    poller = zmq.Poller()
    poller.register(clients, zmq.POLLIN)
    poller.register(followers, zmq.POLLIN)
    number = committed = 0
    in_flight: dict[int, list[tuple[bytes, bytes]]] = {}
    while True:
        ready = dict(poller.poll())
        if clients in ready:
            batch = []
            while True:
                try:
                    route, request = clients.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if request == STOP:
                    for follower in ids:
                        followers.send_multipart([follower, STOP])
                    return
                batch.append((route, request))
            if batch:
                number += 1
                entry = number.to_bytes(8, "big") + b"".join(request for _, request in batch)
                for follower in ids:
                    followers.send_multipart([follower, entry])
                in_flight[number] = batch
        if followers in ready:
            while True:
                try:
                    _, ack = followers.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                acked = int.from_bytes(ack, "big")
                while committed < acked:  # the slower follower's acks find nothing left
                    committed += 1
                    by_route: dict[bytes, list[bytes]] = {}
                    for route, request in in_flight.pop(committed):
                        by_route.setdefault(route, []).append(request)
                    for route, answers in by_route.items():
                        clients.send_multipart([route, b"".join(answers)])


def _handoffs(sock: zmq.Socket, count: int) -> tuple[float, list[float]]:
    release = b"r" * REQUEST_BYTES
    latencies = []
    began = time.perf_counter()
    for _ in range(count):
        sent = time.perf_counter()
        sock.send(release)
        sock.recv()
        latencies.append(time.perf_counter() - sent)
    return time.perf_counter() - began, latencies


def _cycles(sock: zmq.Socket, clients: int, seconds: float) -> tuple[float, list[float]]:
    """Every caller alternates acquire and release; a cycle ends with its release's answer."""
    filler = b"a" * (REQUEST_BYTES - 4)
    started = [0.0] * clients  # when each caller's current cycle began
    second = [False] * clients  # whether its next answer ends a cycle
    latencies = []
    began = time.perf_counter()
    for caller in range(clients):
        started[caller] = began
        sock.send(caller.to_bytes(4, "big") + filler)
    end = began + seconds
    while (now := time.perf_counter()) < end:
        answers = sock.recv()
        for offset in range(0, len(answers), REQUEST_BYTES):
            caller = int.from_bytes(answers[offset : offset + 4], "big")
            if second[caller]:
                latencies.append(now - started[caller])
                started[caller] = now
            second[caller] = not second[caller]
            sock.send(answers[offset : offset + REQUEST_BYTES])
    return time.perf_counter() - began, latencies


def run(workload: str, fsync: bool, count: int, clients: int, seconds: float) -> dict[str, Any]:
    client_port, follower_port = free_ports(2)
    client_address, follower_address = f"127.0.0.1:{client_port}", f"127.0.0.1:{follower_port}"
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="syncfab-floor-") as tmp:
        procs = [ctx.Process(target=_leader, args=(client_address, follower_address))]
        procs += [
            ctx.Process(target=_follower, args=(follower_address, os.path.join(tmp, f"f{i}"), fsync))
            for i in (1, 2)
        ]
        for p in procs:
            p.start()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(f"tcp://{client_address}")
        try:
            _handoffs(sock, 300)  # warm-up: connections, page cache
            if workload == "handoff":
                elapsed, latencies = _handoffs(sock, count)
            else:
                elapsed, latencies = _cycles(sock, clients, seconds)
            sock.send(STOP)
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
            sock.close(linger=0)
    latencies.sort()
    return {
        "workload": f"floor-{workload}",
        "fsync": "on" if fsync else "off",
        "clients": 1 if workload == "handoff" else clients,
        "count": len(latencies),
        "per_s": round(len(latencies) / elapsed),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3),
        "p95_ms": round(percentile(latencies, 0.95) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", choices=["handoff", "cycles"])
    parser.add_argument("--fsync", choices=["on", "off"], default="on")
    parser.add_argument("--count", type=int, default=5_000, help="handoff: handoffs measured")
    parser.add_argument("--clients", type=int, default=64, help="cycles: closed-loop callers")
    parser.add_argument("--seconds", type=float, default=5.0, help="cycles: how long to measure")
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    report = run(args.workload, args.fsync == "on", args.count, args.clients, args.seconds)
    unit = "handoffs" if args.workload == "handoff" else "cycles"
    print(
        f"floor {args.workload} (fsync {report['fsync']}, {report['clients']} callers): "
        f"{report['per_s']:,} {unit}/s  p50 {report['p50_ms']} ms  p95 {report['p95_ms']} ms  "
        f"p99 {report['p99_ms']} ms  ({report['count']:,} {unit})"
    )
    write_result(report, f"floor-{args.workload}", args.out)


if __name__ == "__main__":
    main()
