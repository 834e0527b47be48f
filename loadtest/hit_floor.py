"""What ``bench.py cache`` could reach on this machine if every read were a hit served with no
cache, no Raft and no client library in the way: ``python -m loadtest.hit_floor``.

Three server processes, each a pyzmq ROUTER on loopback TCP as a node has, that drain whatever
has arrived, decode each request (a msgspec-tagged read of one key, as the native protocol's),
look the key up in a dict and send the encoded answer: the least work a hit can be. The callers
have the benchmark's shape and the native client's I/O: ``--processes`` client processes on
uvloop, ``--clients`` closed-loop callers spread over them and over the three servers, each
awaiting its own answer (a future matched by request id) through one DEALER per server per
process; what the callers of one loop iteration send leaves as one frame, replies are drained
when the socket's FD fires, and a server answers a frame's requests in one frame, as
``fabric/client/zmq_client.py`` and a node do. Whatever this reaches, ``bench.py cache`` cannot beat here,
with 100% hits.

Prints ops/s, p50/p95/p99, the CPU the servers and the callers used, and writes a JSON result
(``--out``, default loadtest/results/hit_floor-<time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from typing import Any

import msgspec
import zmq

from loadtest.bench import percentile, proc_cpu_s, write_result
from syncfab.fabric.server.local import free_ports

KEYS = 1_000
VALUE_BYTES = 100
STOP = b"stop"


class Read(msgspec.Struct, frozen=True, tag="cache_read"):
    id: int
    key: str


class Answer(msgspec.Struct, frozen=True, tag="cache_line"):
    id: int
    key: str
    value: bytes
    version: int
    state: str
    hit: bool


def _server(address: str) -> None:
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(f"tcp://{address}")
    decode = msgspec.msgpack.Decoder(list[Read]).decode
    encode = msgspec.msgpack.Encoder().encode
    values = {f"k{i}": b"v" * VALUE_BYTES for i in range(KEYS)}
    while True:
        sock.poll()
        while True:  # drain, as a node does, answering each frame's reads in one frame
            try:
                route, request = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if request == STOP:
                return
            answers = [Answer(r.id, r.key, values[r.key], 1000, "S", True) for r in decode(request)]
            sock.send_multipart([route, encode(answers)])


def _callers(
    addresses: list[str], first: int, count: int, warmup_s: float, seconds: float, out: mp.Queue
) -> None:
    import uvloop

    async def run() -> tuple[list[float], float]:
        ctx = zmq.Context.instance()
        loop = asyncio.get_running_loop()
        waiting: dict[int, asyncio.Future[bytes]] = {}
        decode = msgspec.msgpack.Decoder(list[Answer]).decode
        encode = msgspec.msgpack.Encoder().encode

        class Link:
            def __init__(self, address: str) -> None:
                self.sock = ctx.socket(zmq.DEALER)
                self.sock.connect(f"tcp://{address}")
                self.outbox: list[Read] = []
                loop.add_reader(self.sock.getsockopt(zmq.FD), self.drain)

            def drain(self) -> None:
                while True:
                    try:
                        data = self.sock.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        return
                    for answer in decode(data):
                        fut = waiting.pop(answer.id, None)
                        if fut is not None and not fut.done():
                            fut.set_result(answer.value)

        links = [Link(a) for a in addresses]
        flushing = False

        def flush() -> None:
            nonlocal flushing
            flushing = False
            for link in links:
                if link.outbox:
                    link.sock.send(encode(link.outbox), zmq.NOBLOCK)
                    link.outbox = []
                    if link.sock.get(zmq.EVENTS) & zmq.POLLIN:  # a send can swallow the FD's edge
                        link.drain()

        began = time.perf_counter()
        begin, end = began + warmup_s, began + warmup_s + seconds
        latencies: list[float] = []
        ids = iter(range(1, 1 << 62))

        async def caller(g: int) -> None:
            nonlocal flushing
            link = links[g % len(links)]
            key = g
            while (started := time.perf_counter()) < end:
                rid = next(ids)
                fut = waiting[rid] = loop.create_future()
                key = (key * 7 + 1) % KEYS
                link.outbox.append(Read(rid, f"k{key}"))
                if not flushing:
                    flushing = True
                    loop.call_soon(flush)
                await fut
                if started >= begin:
                    latencies.append(time.perf_counter() - started)

        cpu0 = time.process_time()
        await asyncio.gather(*(caller(first + n) for n in range(count)))
        cpu = time.process_time() - cpu0
        for link in links:
            loop.remove_reader(link.sock.getsockopt(zmq.FD))
            link.sock.close(linger=0)
        return latencies, cpu

    uvloop.install()
    out.put(asyncio.run(run()))


def run(clients: int, processes: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    addresses = [f"127.0.0.1:{p}" for p in free_ports(3)]
    ctx = mp.get_context("spawn")
    servers = [ctx.Process(target=_server, args=(a,)) for a in addresses]
    for s in servers:
        s.start()
    per_proc = [clients // processes + (i < clients % processes) for i in range(processes)]
    queue: mp.Queue = ctx.Queue()
    callers = [
        ctx.Process(target=_callers, args=(addresses, sum(per_proc[:i]), n, warmup_s, seconds, queue))
        for i, n in enumerate(per_proc)
        if n
    ]
    try:
        for c in callers:
            c.start()
        time.sleep(warmup_s)  # the servers' CPU is counted over the measured window only
        cpu0 = sum(proc_cpu_s(s.pid) for s in servers)
        results = [queue.get(timeout=warmup_s + seconds + 60) for _ in callers]
        server_cpu = sum(proc_cpu_s(s.pid) for s in servers) - cpu0
    finally:
        for c in callers:
            c.join(timeout=10)
        stop = zmq.Context.instance().socket(zmq.DEALER)
        for a in addresses:
            stop.connect(f"tcp://{a}")
        for _ in addresses:  # DEALER round-robins: one stop reaches each server
            stop.send(STOP)
        for s in servers:
            s.join(timeout=10)
            if s.is_alive():
                s.kill()
        stop.close(linger=0)
    latencies = sorted(x for lat, _ in results for x in lat)
    ops = len(latencies)
    return {
        "workload": "hit_floor",
        "clients": clients,
        "processes": processes,
        "seconds": seconds,
        "ops": ops,
        "per_s": round(ops / seconds),
        "p50_ms": round(percentile(latencies, 0.50) * 1e3, 3),
        "p95_ms": round(percentile(latencies, 0.95) * 1e3, 3),
        "p99_ms": round(percentile(latencies, 0.99) * 1e3, 3),
        "server_cpu_s": round(server_cpu, 2),
        "caller_cpu_s": round(sum(cpu for _, cpu in results), 2),
        "server_cpu_us_per_op": round(server_cpu / max(ops, 1) * 1e6, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.hit_floor",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--clients", type=int, default=64, help="closed-loop callers")
    parser.add_argument("--processes", type=int, default=2, help="client processes, as bench.py's")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    report = run(args.clients, args.processes, args.warmup, args.seconds)
    print(
        f"hit floor ({report['clients']} callers in {report['processes']} processes): "
        f"{report['per_s']:,} reads/s  p50 {report['p50_ms']} ms  p95 {report['p95_ms']} ms  "
        f"p99 {report['p99_ms']} ms  servers {report['server_cpu_s']} s CPU "
        f"({report['server_cpu_us_per_op']} us/op), callers {report['caller_cpu_s']} s"
    )
    write_result(report, "hit_floor", args.out)


if __name__ == "__main__":
    main()
