"""What each node did during a benchmark: ``python -m loadtest.node_stats produce --clients 192``.

Starts a 3-node cluster (fsync on, 8 shards), runs ``loadtest.bench`` against it with the
arguments given, and over a window in the middle of the run scrapes every node's ``/metrics``
twice and reads its CPU from /proc. Prints per node: CPU (cores), loop turns/s, disk writes/s
and their mean duration, WAL folds/s and their mean duration, Raft entries committed/s over
the groups it hosts, and how many groups it leads. The disk write time is the figure to watch:
on this machine throughput follows it more closely than any other (see README, Benchmarks).
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from loadtest.bench import proc_cpu_s
from syncfab.fabric.server.local import LocalCluster

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Sample:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(sample: Sample, name: str) -> float:
    return sum(v for (n, _), v in sample.items() if n == name)


def main(argv: list[str]) -> None:
    cluster = LocalCluster(size=3, extra_args=["--fsync", "on", "--shards", "8"])
    cluster.start()
    cluster.wait_ready(balanced=True)
    try:
        bench = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loadtest.bench",
                *argv,
                "--target",
                ",".join(cluster.addresses),
                "--seconds",
                "8",
                "--warmup",
                "1",
            ],
        )
        time.sleep(3)  # past the warm-up and the clients' start
        pids = cluster.pids()
        before = {n: (scrape(cluster.url(n)), proc_cpu_s(p)) for n, p in pids.items()}
        started = time.monotonic()
        time.sleep(5)
        after = {n: (scrape(cluster.url(n)), proc_cpu_s(p)) for n, p in pids.items()}
        elapsed = time.monotonic() - started
        bench.wait()
    finally:
        cluster.stop()

    for node in cluster.ids:
        (a, cpu_a), (z, cpu_z) = before[node], after[node]

        def rate(name: str, z: Sample = z, a: Sample = a) -> float:
            return (total(z, name) - total(a, name)) / elapsed

        def mean_ms(name: str, z: Sample = z, a: Sample = a) -> float:
            count = total(z, name + "_count") - total(a, name + "_count")
            return 1000 * (total(z, name + "_sum") - total(a, name + "_sum")) / count if count else 0.0

        leads = sum(1 for (n, _), v in z.items() if n == "syncfab_raft_is_leader" and v == 1)
        print(
            f"{node}: cpu {(cpu_z - cpu_a) / elapsed:.2f} cores, "
            f"turns {rate('syncfab_turns_total'):.0f}/s, "
            f"disk writes {rate('syncfab_disk_write_seconds_count'):.0f}/s "
            f"mean {mean_ms('syncfab_disk_write_seconds'):.2f} ms, "
            f"folds {rate('syncfab_wal_fold_seconds_count'):.1f}/s "
            f"mean {mean_ms('syncfab_wal_fold_seconds'):.1f} ms, "
            f"entries committed {rate('syncfab_raft_commit_index'):.0f}/s, leads {leads} groups"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
