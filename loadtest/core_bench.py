"""Replica CPU per command, without a cluster: ``python -m loadtest.core_bench``.

Drives the pure state machines the way a replica applies committed entries (fabric/core/node.py,
``_machine_for`` and ``_apply_entry``): each entry is ``encode_batch`` of encoded ``Request``s,
decoded with ``decode_batch``, and every request is applied with its own ``ApplyContext``
through ``GroupMachine.apply(ctx, acked, op)``, notices included. No sockets, disk or Raft.

Workloads:

- ``lock``: ``GroupMachine({"locks": LockTable()})``; ``--owners`` lock owners (each its own
  resource, as ``bench.py lock`` without ``--hot``) spread over ``--clients`` client ids, each
  owner alternating Acquire and Release, one request per owner per entry;
- ``lock_batch``: the same ops, each client's ops of an entry in one LockBatch request (what
  fabric/core/client_core.py sends), figures per op;
- ``produce_batch``: the same machine, ProduceBatch requests of BATCH messages (per message);
- ``produce``: ``GroupMachine({"kv": KvStore(), "queues": QueuePartitions(1)})`` and a
  100-byte Produce per request.

Request ids increase per client and ``acked`` (the lowest id the client still awaits) lags
each id by the owners per client, as a pipelining client's does. Each round applies the same
entries to a fresh machine; the fastest round is reported (µs per op for decoding, applying,
and both; the medians too), with a digest of every result and notice, so that runs of
different code can be checked for identical answers. Written as JSON too (``--out``, default
loadtest/results/core-<workloads>-<time>.json). ``--profile N`` prints a cProfile top N.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import statistics
import time
from typing import Any

from loadtest.bench import write_result
from syncfab.actors.kv import KvStore
from syncfab.actors.locks import Acquire, LockBatch, LockTable, Release
from syncfab.actors.machine import ApplyContext, GroupMachine, Notice
from syncfab.actors.queues import NewMessage, Produce, ProduceBatch, QueuePartitions
from syncfab.actors.results import Err, Waiting
from syncfab.fabric.core.codec import OnShard, Request, decode_batch, encode, encode_batch

PAYLOAD = b"x" * 100
WORKLOADS = ("lock", "lock_batch", "produce", "produce_batch")
# produce_batch: messages per ProduceBatch request (what fabric/core/client_core.py sends for a
# pile of single produces); its figures are per message.
BATCH = 32


def machine_for(workload: str) -> GroupMachine:
    if workload.startswith("lock"):
        return GroupMachine({"locks": LockTable()})
    return GroupMachine({"kv": KvStore(), "queues": QueuePartitions(1)})


def build_entries(workload: str, entries: int, owners: int, clients: int) -> list[bytes]:
    """The log: ``entries`` entries of ``owners`` requests each, one per owner."""
    client_ids = [f"client/{chr(ord('a') + c)}" for c in range(clients)]
    per_client = [sum(1 for o in range(owners) if o % clients == c) for c in range(clients)]
    next_id = [1] * clients
    log = []
    for e in range(entries):
        requests = []
        if workload == "lock_batch":
            requests = [
                _lock_batch(client_ids[c], next_id, c, range(c, owners, clients), e) for c in range(clients)
            ]
            log.append(encode_batch(1_000_000 + e, requests))
            continue
        for o in range(owners):
            c = o % clients
            rid = next_id[c]
            next_id[c] += 1
            # The others of this client still await their previous request.
            acked = max(1, rid - per_client[c] + 1)
            op: Any
            if workload == "lock":
                owner = f"{client_ids[c]}/{o}"
                resource = f"res-{owner}"
                op = (
                    Acquire(resource, "exclusive", owner, 10_000, 30_000)
                    if e % 2 == 0
                    else Release(resource, owner)
                )
            elif workload == "produce":
                op = Produce("bench", PAYLOAD)
            else:
                op = OnShard(1, ProduceBatch("bench", [NewMessage(PAYLOAD)] * BATCH))
            requests.append(encode(Request(client_ids[c], rid, acked, op)))
        log.append(encode_batch(1_000_000 + e, requests))
    return log


def _lock_batch(client: str, next_id: list[int], c: int, owners: range, entry: int) -> bytes:
    """One client's ops of an entry as the lock batcher sends them: ids batch + 1 + position."""
    ops: list[Acquire | Release] = []
    for o in owners:
        owner = f"{client}/{o}"
        resource = f"res-{owner}"
        ops.append(
            Acquire(resource, "exclusive", owner, 10_000, 30_000)
            if entry % 2 == 0
            else Release(resource, owner)
        )
    rid = next_id[c]
    next_id[c] += len(ops) + 1
    return encode(Request(client, rid, rid, LockBatch(ops)))


def apply_entry(
    machine: GroupMachine, index: int, now_ms: int, requests: list[Request], results: list[Any] | None
) -> int:
    """fabric/core/node.py ``_apply_entry``, less the answering of waiters; the results and notices
    go to ``results`` when given. Returns how many requests were left waiting."""
    waiting = 0
    for request in requests:
        op = request.op.op if isinstance(request.op, OnShard) else request.op
        ctx = ApplyContext(index, now_ms, request.client, request.id)
        result = machine.apply(ctx, request.acked, op)
        if isinstance(result, Waiting):
            waiting += 1
        if results is not None:
            results.append(result)
            results.extend(ctx.notices)
    return waiting


def one_round(workload: str, log: list[bytes]) -> dict[str, float]:
    """Seconds spent decoding and applying the log entry by entry, as node.py does."""
    machine = machine_for(workload)
    clock = time.perf_counter
    decoding = applying = 0.0
    for index, data in enumerate(log, 1):
        t0 = clock()
        now_ms, requests = decode_batch(data)
        t1 = clock()
        apply_entry(machine, index, now_ms, requests, None)
        t2 = clock()
        decoding += t1 - t0
        applying += t2 - t1
    return {"decode": decoding, "apply": applying, "total": decoding + applying}


def digest(workload: str, log: list[bytes]) -> dict[str, Any]:
    """A hash of every result and notice, and how many results were errors or left waiting."""
    machine = machine_for(workload)
    results: list[Any] = []
    waiting = 0
    for index, data in enumerate(log, 1):
        now_ms, requests = decode_batch(data)
        waiting += apply_entry(machine, index, now_ms, requests, results)
    plain = [(n.client, n.request_id, n.result) if isinstance(n, Notice) else n for n in results]
    return {
        "errors": sum(1 for r in results if isinstance(r, Err)),
        "waiting": waiting,
        "results_sha256": hashlib.sha256(encode(plain)).hexdigest(),
    }


def run_workload(workload: str, args: argparse.Namespace) -> dict[str, Any]:
    # produce_batch: as many messages as the other workloads have ops (BATCH per request), so
    # every workload leaves a state of the same size (a bigger one costs more to collect).
    entries = max(1, args.entries // BATCH) if workload == "produce_batch" else args.entries
    log = build_entries(workload, entries, args.owners, args.clients)
    ops = entries * args.owners * (BATCH if workload == "produce_batch" else 1)
    checked = digest(workload, log)
    rounds = [one_round(workload, log) for _ in range(args.rounds)]
    us = {k: [r[k] / ops * 1e6 for r in rounds] for k in ("decode", "apply", "total")}
    best = min(range(len(rounds)), key=lambda i: rounds[i]["total"])
    report = {
        "ops": ops,
        **checked,
        "us_per_op": {k: round(v[best], 3) for k, v in us.items()},
        "us_per_op_median": {k: round(statistics.median(v), 3) for k, v in us.items()},
    }
    if args.profile:
        profile(workload, log, args.profile)
    return report


def profile(workload: str, log: list[bytes], top: int) -> None:
    profiler = cProfile.Profile()
    profiler.runcall(one_round, workload, log)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.core_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", nargs="*", help=f"any of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--entries", type=int, default=2_000, help="log entries per round")
    parser.add_argument("--owners", type=int, default=64, help="requests per entry, one per owner")
    parser.add_argument("--clients", type=int, default=2, help="client ids the owners share")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also run one round under cProfile and print its top N functions",
    )
    parser.add_argument("--out", help="JSON result path")
    args = parser.parse_args(argv)
    workloads = args.workload or list(WORKLOADS)
    for workload in workloads:
        if workload not in WORKLOADS:
            parser.error(f"unknown workload {workload!r}: choose from {', '.join(WORKLOADS)}")
    report: dict[str, Any] = {
        "workloads": {},
        "entries": args.entries,
        "owners": args.owners,
        "clients": args.clients,
        "rounds": args.rounds,
    }
    for workload in workloads:
        result = report["workloads"][workload] = run_workload(workload, args)
        us = result["us_per_op"]
        print(
            f"{workload:>8}: {us['total']:.2f} µs/op (decode {us['decode']:.2f} + apply "
            f"{us['apply']:.2f}), {result['ops']:,} ops, errors {result['errors']}, "
            f"results {result['results_sha256'][:16]}"
        )
    write_result(report, "core-" + "-".join(workloads), args.out)


if __name__ == "__main__":
    main()
