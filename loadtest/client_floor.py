"""The native client's own CPU per op, against stand-in nodes that answer at once:
``python -m loadtest.client_floor kv|lock|produce``.

Three stand-in node processes, each a pyzmq ROUTER on loopback as a node has, answer every
request the moment it arrives with what a node would answer (a put its index, a lock a grant,
a produce batch its ids, the cluster view naming them as members and spreading the shards'
leadership over them) — no Raft, no disk, no state. The client is the build's real
``AsyncClient`` (``syncfab.fabric.client``) in one process on uvloop, ``--clients`` closed-loop
callers: what ``loadtest.bench`` runs, without the cluster's CPU and latency in the way. It
prints ops/s and the client process's CPU per op, and writes a JSON result (``--out``).

Self-contained on purpose (it imports only the package's client, codec and op types, which
every build since the client core has): to compare builds, run it with each build's package
on the path, alternating, e.g. ``/venv-old/bin/python loadtest/client_floor.py kv``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import time
from typing import Any

import msgspec
import zmq

from syncfab.actors.kv import Put
from syncfab.actors.lock_ops import Acquire, LockBatch, Release, Renew
from syncfab.actors.queue_ops import Produce, ProduceBatch
from syncfab.actors.results import Answers, Err, Ok
from syncfab.fabric.client import AsyncClient
from syncfab.fabric.core.codec import (
    ClusterInfo,
    OnShard,
    Replies,
    Reply,
    Request,
    Requests,
    encode,
    frame_of,
)

NODES = ("n1", "n2", "n3")
SHARDS = 8
_decode_inbound = msgspec.msgpack.Decoder(Request | Requests).decode
_decode_request = msgspec.msgpack.Decoder(Request).decode


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _answer(op: Any, view: dict[str, Any], counter: list[int]) -> Ok | Err | Answers:
    counter[0] += 1
    if isinstance(op, OnShard):
        op = op.op
    match op:
        case ClusterInfo():
            return Ok(view)
        case Put():
            return Ok(counter[0])
        case Acquire(resource=r, mode=m):
            return Ok({"granted": True, "fencing_token": counter[0], "resource": r, "mode": m})
        case Release():
            return Ok({"released": True})
        case Renew(ttl_ms=ttl_ms):
            return Ok({"lease_expires_at_ms": int(time.time() * 1000) + ttl_ms})
        case LockBatch(ops=ops):
            return Answers([_answer(o, view, counter) for o in ops])  # type: ignore[misc]
        case ProduceBatch(messages=messages):
            return Ok({"message_ids": [f"1:{counter[0]}:{i}" for i in range(len(messages))]})
        case Produce():
            return Ok({"message_id": f"1:{counter[0]}"})
    return Err("bad_request", f"the stand-in does not serve {type(op).__name__}")


def _stand_in(index: int, addresses: list[str]) -> None:
    """One stand-in node: answer every request of a frame, in one frame back."""
    view = {
        "node": NODES[index],
        "leader": NODES[0],
        "term": 1,
        "members": [
            {"id": n, "address": a, "pub_address": a, "alive": True}
            for n, a in zip(NODES, addresses, strict=True)
        ],
        "shards": [
            {"id": s, "leader": NODES[s % 3], "replicas": list(NODES), "preferred_leader": None}
            for s in range(1, SHARDS + 1)
        ],
    }
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(f"tcp://{addresses[index]}")
    counter = [0]
    while True:
        identity, frame = sock.recv_multipart()
        if frame == b"stop":
            return
        msg = _decode_inbound(frame)
        requests = [msg] if isinstance(msg, Request) else [_decode_request(bytes(r)) for r in msg.items]
        replies = [Reply(r.id, _answer(r.op, view, counter), None) for r in requests]
        out = encode(replies[0]) if len(replies) == 1 else frame_of(Replies, [encode(r) for r in replies])
        sock.send_multipart([identity, out])


async def _run_client(
    workload: str, addresses: list[str], clients: int, warmup_s: float, seconds: float
) -> dict:
    async with AsyncClient(addresses) as client:
        ops = 0
        measuring = False
        stop = False

        async def caller(g: int) -> None:
            nonlocal ops
            i = 0
            while not stop:
                if workload == "kv":
                    await client.put(f"k{g}/{i}", "v" * 16)
                elif workload == "lock":
                    await client.acquire(f"r/{g}", wait_ms=0)
                    await client.release(f"r/{g}")
                else:
                    await client.produce("q", {"g": g, "i": i})
                i += 1
                if measuring:
                    ops += 1

        tasks = [asyncio.create_task(caller(g)) for g in range(clients)]
        await asyncio.sleep(warmup_s)
        measuring = True
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        measuring = False
        cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
        stop = True
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "ops": ops,
        "ops_per_s": round(ops / wall_s),
        "client_us_per_op": round(cpu_s / max(ops, 1) * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m loadtest.client_floor", description=__doc__)
    parser.add_argument("workload", choices=["kv", "lock", "produce"])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    addresses = [f"127.0.0.1:{p}" for p in _free_ports(len(NODES))]
    servers = [mp.Process(target=_stand_in, args=(i, addresses), daemon=True) for i in range(len(NODES))]
    for s in servers:
        s.start()
    try:
        import uvloop

        result = uvloop.run(_run_client(args.workload, addresses, args.clients, args.warmup, args.seconds))
    finally:
        ctx = zmq.Context.instance()
        for a in addresses:
            stopper = ctx.socket(zmq.DEALER)
            stopper.setsockopt(zmq.LINGER, 500)
            stopper.connect(f"tcp://{a}")
            stopper.send(b"stop")
            stopper.close()
        for s in servers:
            s.join(2)
            if s.is_alive():
                s.kill()
    import syncfab.fabric.client as package

    build = os.path.dirname(os.path.dirname(os.path.dirname(package.__file__)))
    result = {"workload": args.workload, "clients": args.clients, "build": build, **result}
    print(
        f"{args.workload}: {result['ops_per_s']:,} ops/s, client {result['client_us_per_op']} µs CPU/op "
        f"({result['ops']:,} ops; package {result['build']})"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
