"""The fastest a contended lock can change hands on this machine: ``python -m loadtest.handoff_floor``.

A handoff is a chain no implementation can shorten while a grant must be durable on a majority
before its holder hears of it: the holder's release travels to the leader, the leader ships it
to a follower, the follower syncs it to disk and acknowledges, and only then does the leader
tell the next waiter, whose own release is the next link. Four messages and one sync, one
after another, per handoff.

This measures that chain with nothing else in it: three processes (a leader and two followers)
and one closed-loop caller, blocking pyzmq DEALER/ROUTER over loopback TCP as the nodes use, a
follower that appends each entry with ``pwrite`` to a preallocated file and ``fdatasync``s it
(the WAL's cheapest sync), and a leader that decodes nothing, writes nothing of its own and
answers on the first follower's ack. Each round trip of the caller is one handoff. Whatever
rate it reaches, syncfab's ``lock --hot 1`` benchmark cannot beat it here; ``--fsync off`` shows
what the messages alone cost. Prints handoffs/s and p50/p95/p99 and writes a JSON result
(``--out``, default loadtest/results/handoff-floor-<time>.json).
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
from syncfab.fabric.local import free_ports

FILE_BYTES = 16 << 20  # like a WAL segment: written once, then overwritten in place
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
        sock.send(entry[:8])
    os.close(fd)


def _leader(client_address: str, follower_address: str, entry_bytes: int) -> None:
    ctx = zmq.Context.instance()
    followers = ctx.socket(zmq.ROUTER)
    followers.bind(f"tcp://{follower_address}")
    clients = ctx.socket(zmq.ROUTER)
    clients.bind(f"tcp://{client_address}")
    ids = [followers.recv_multipart()[0] for _ in range(2)]
    padding = b"e" * entry_bytes
    seq = 0
    while True:
        route, request = clients.recv_multipart()
        if request == STOP:
            for follower in ids:
                followers.send_multipart([follower, STOP])
            return
        seq += 1
        tag = seq.to_bytes(8, "big")
        for follower in ids:
            followers.send_multipart([follower, tag + request + padding])
        # Commit on the first ack of this entry (leader + one follower is a majority of three);
        # the slower follower's acks of earlier entries are passed over.
        while followers.recv_multipart()[1] != tag:
            pass
        clients.send_multipart([route, request])


def run(count: int, fsync: bool, entry_bytes: int) -> dict[str, Any]:
    client_port, follower_port = free_ports(2)
    client_address, follower_address = f"127.0.0.1:{client_port}", f"127.0.0.1:{follower_port}"
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="syncfab-floor-") as tmp:
        procs = [ctx.Process(target=_leader, args=(client_address, follower_address, entry_bytes))]
        procs += [ctx.Process(target=_follower, args=(follower_address, os.path.join(tmp, f"f{i}"), fsync))
                  for i in (1, 2)]
        for p in procs:
            p.start()
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(f"tcp://{client_address}")
        release = b"r" * 64
        try:
            for _ in range(max(count // 10, 100)):  # warm-up: connections, page cache, CPU caches
                sock.send(release)
                sock.recv()
            latencies = []
            began = time.perf_counter()
            for _ in range(count):
                sent = time.perf_counter()
                sock.send(release)
                sock.recv()
                latencies.append(time.perf_counter() - sent)
            elapsed = time.perf_counter() - began
            sock.send(STOP)
        finally:
            for p in procs:
                p.join(timeout=10)
                if p.is_alive():
                    p.kill()
            sock.close(linger=0)
    latencies.sort()
    return {
        "workload": "handoff-floor",
        "fsync": "on" if fsync else "off",
        "entry_bytes": entry_bytes,
        "count": count,
        "per_s": round(count / elapsed),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3),
        "p95_ms": round(percentile(latencies, 0.95) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.handoff_floor", description=__doc__)
    parser.add_argument("--count", type=int, default=5_000, help="handoffs measured")
    parser.add_argument("--fsync", choices=["on", "off"], default="on")
    parser.add_argument("--entry-bytes", type=int, default=200,
                        help="bytes the leader adds to each entry (a release and an acquire)")
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    report = run(args.count, args.fsync == "on", args.entry_bytes)
    print(f"handoff floor (fsync {report['fsync']}): {report['per_s']:,}/s  p50 {report['p50_ms']} ms  "
          f"p95 {report['p95_ms']} ms  p99 {report['p99_ms']} ms  ({report['count']:,} handoffs)")
    write_result(report, "handoff-floor", args.out)


if __name__ == "__main__":
    main()
