"""The chaos suite: real node processes in network namespaces, a nemesis per test, checked
histories from clients on both interfaces (see the README's Tests section).

``SYNCFAB_CHAOS_SEED=<n>`` fixes the seed (each round's choices — victims, partitions, every
worker's ops — follow from it; the processes' timing does not). ``SYNCFAB_CHAOS_MINUTES=<m>``
runs long: rounds of each nemesis, with fault times drawn from 4 to 12 s, until the minutes
(shared among the nemeses) are used. A failed round writes its history, schedule and
violations to ``$SYNCFAB_CHAOS_DIR`` (default ``<tmp>/syncfab-chaos``) and names the file.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import pytest

from .cluster import ChaosCluster
from .nemesis import Clock, Nemesis, every_nemesis
from .netns import ChaosNet, remove_stale, unavailable_reason
from .rounds import RoundResult, run_round

NEMESES = every_nemesis()
SEED = int(os.environ.get("SYNCFAB_CHAOS_SEED") or random.SystemRandom().randrange(1, 10**6))
MINUTES = float(os.environ.get("SYNCFAB_CHAOS_MINUTES", "0"))
FAULT_S = 4.0  # the short run's: longer than a lock lease (3 s), a cache lease (2 s), an election
FAULT_S_LONG = (4.0, 12.0)
NODE_ARGS = ["--shards", "3"]  # 4 Raft groups a node: room on 2 cores for 3 nodes and the clients
REPORT_DIR = os.environ.get("SYNCFAB_CHAOS_DIR") or os.path.join(tempfile.gettempdir(), "syncfab-chaos")

_why_not = unavailable_reason()
pytestmark = pytest.mark.skipif(_why_not is not None, reason=_why_not or "")


@pytest.fixture(scope="module")
def chaos_cluster() -> Iterator[ChaosCluster]:
    remove_stale()
    net = ChaosNet(["n1", "n2", "n3"])
    data_dir = tempfile.mkdtemp(prefix="syncfab-chaos-")
    cluster = ChaosCluster(net, data_dir, NODE_ARGS)

    def teardown() -> None:
        cluster.stop()
        net.down()

    # Also if the run is cut short by anything but SIGKILL (the next run's remove_stale is
    # for that): nodes die with this process (their parent-death signal), links here.
    atexit.register(teardown)
    try:
        net.up()
        cluster.start_all()
        cluster.wait_ready()
        yield cluster
    finally:
        teardown()
        atexit.unregister(teardown)
        shutil.rmtree(data_dir, ignore_errors=True)


def _restore(c: ChaosCluster) -> None:
    """Whatever a failed round left: every node running on true time, the network whole."""
    c.net.heal()
    for n in c.ids:
        c.resume(n)
        if n in c.clocks and n in c.procs:
            c.kill(n)
        if n not in c.procs:
            c.start(n)
    c.wait_ready()


def _report(result: RoundResult, c: ChaosCluster) -> str:
    os.makedirs(REPORT_DIR, exist_ok=True)
    path = os.path.join(REPORT_DIR, f"{result.nemesis}-seed{result.seed}-{int(time.time())}.json")
    with open(path, "w") as f:
        json.dump(
            {
                "nemesis": result.nemesis,
                "suite_seed": SEED,
                "round_seed": result.seed,
                "violations": result.violations,
                "schedule": result.schedule.lines(),
                "node_addresses": {n: c.net.peer_address(n) for n in c.ids},
                "history": [e.as_json() for e in result.history.events],
                "resources": {k: r.accesses for k, r in result.resources.items()},
            },
            f,
            indent=1,
            default=repr,
        )
    _copy_logs(c, os.path.basename(path)[: -len(".json")] + "-logs")
    return path


def _copy_logs(c: ChaosCluster, name: str) -> str:
    logs = os.path.join(REPORT_DIR, name)
    os.makedirs(logs, exist_ok=True)
    for n in c.ids:
        log = os.path.join(c.data_dir, f"{n}.log")
        if os.path.exists(log):
            shutil.copy(log, logs)
    return logs


BUDGET_S = MINUTES * 60 / len(NEMESES)  # each nemesis's share of a long run
ROUND_SLACK_S = 150.0  # a round longer than its fault and this has hung: fail it, showing where


async def _bounded(round_: Coroutine[Any, Any, RoundResult], timeout_s: float) -> RoundResult:
    """The round, or (past ``timeout_s``) every task's stack printed and TimeoutError."""
    task = asyncio.ensure_future(round_)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        for t in asyncio.all_tasks():
            if t is not asyncio.current_task():
                t.print_stack(limit=8, file=sys.stdout)
        task.cancel()
        raise TimeoutError(f"the round ran past {timeout_s:.0f} s")
    return task.result()


@pytest.mark.timeout(BUDGET_S + 240)
@pytest.mark.parametrize("nemesis", NEMESES, ids=[n.name for n in NEMESES])
def test_history_stays_valid_under(chaos_cluster: ChaosCluster, nemesis: Nemesis) -> None:
    if isinstance(nemesis, Clock) and shutil.which("faketime") is None:
        pytest.skip("no faketime (apt-get install faketime)")
    c = chaos_cluster
    _restore(c)
    budget_s = BUDGET_S
    started = time.monotonic()
    rounds = 0
    while True:
        seed = random.Random(f"{SEED}/{nemesis.name}/{rounds}").getrandbits(32)
        fault_s = FAULT_S if not MINUTES else random.Random(seed).uniform(*FAULT_S_LONG)
        tag = f"{nemesis.name}-{rounds}-{seed}"
        try:
            result = asyncio.run(_bounded(run_round(c, nemesis, seed, fault_s, tag), fault_s + ROUND_SLACK_S))
        except BaseException:
            logs = _copy_logs(c, f"{nemesis.name}-seed{seed}-{int(time.time())}-logs")
            print(f"round failed to run: SYNCFAB_CHAOS_SEED={SEED} {nemesis.name} round {rounds} seed {seed}")
            print(f"node logs in {logs}")
            _restore(c)
            raise
        rounds += 1
        print(
            f"{nemesis.name} round {rounds}: seed {seed}, fault {fault_s:.1f} s, "
            f"{result.counts()}, {result.seconds:.1f} s"
        )
        if result.violations:
            path = _report(result, c)
            shown = "\n  ".join(result.violations[:5])
            pytest.fail(
                f"{nemesis.name} (SYNCFAB_CHAOS_SEED={SEED}, round seed {seed}): {len(result.violations)} "
                f"violations; history and schedule in {path}:\n  {shown}"
            )
        if time.monotonic() - started >= budget_s:
            break
    assert rounds >= 1
