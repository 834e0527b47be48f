"""REPORT.md from what loadtest/report.py gathered, and its plots (loadtest/report_plots.py)."""

from __future__ import annotations

import os
from typing import Any

from loadtest import availability, machine, report_plots

PLOTS = "report"  # the plots' folder, beside REPORT.md


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def _took(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


def _nodes(n: int) -> str:
    return f"{n} node{'s' * (n > 1)}"


def _machine_section(g: dict[str, Any]) -> list[str]:
    m = g["machine"]
    runs = [r["usage"] for r in g["runs"]] + ([g["failover"]["usage"]] if g.get("failover") else [])
    loads = [u[k] for u in runs for k in ("load_start", "load_end")]
    others = [u["others_cores"] for u in runs]
    lines = [
        f"Measured on {m['cores']} cores ({m['cpu_model']}), {m['ram_gib']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}, on {m['date_utc']} at commit `{m['commit']}`, by "
        f"`{g['command']}` ({_took(g.get('total_s', 0))}; the runs' own JSON results were in "
        f"`{g['raw_results']}`).",
        "",
    ]
    if loads:
        lines += [
            f"**The machine is shared**, and every node, client and load generator of a run shares its "
            f"{m['cores']} cores. The 1-minute load average went from {min(loads):.1f} to {max(loads):.1f} "
            "over the runs; it counts the benchmark's own runnable threads too (a run's nodes and clients "
            "want more than the cores), so it is high even when nothing else runs. What else ran is the "
            f"column *others*: {min(others):.2f} to {max(others):.2f} cores during the runs (the machine's "
            "busy CPU time from /proc/stat less the CPU time of the benchmark's processes, over the run's "
            "wall time; approximate). A run beside other work gives lower figures than the code can; "
            "compare rows with their *others* beside them.",
            "",
        ]
    return lines


def _service_section(g: dict[str, Any], by_name: dict[str, Any]) -> list[str]:
    runs = g["runs"]
    if not runs:
        return []
    node_counts = sorted({r["nodes"] for r in runs})
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    s = g["settings"]
    lines = [
        "## Throughput and latency per service",
        "",
        f"Each run starts its own cluster of real node processes on loopback (fsync on, 8 shards), "
        f"waits until every shard is led by its preferred leader, runs closed-loop clients for "
        f"{s['warmup']:g} s of warm-up and then {s['seconds']:g} s measured. Native runs use "
        f"{s['processes']} client process(es); HTTP runs one wrk or aiohttp process spread over every "
        f"node's gateway.",
        "",
        f"![throughput by cluster size]({PLOTS}/throughput.png)",
        "",
        "| workload | " + " | ".join(_nodes(n) for n in node_counts) + " |",
        "|---|" + "---|" * len(node_counts),
    ]
    for w in workloads:
        cells = []
        for n in node_counts:
            run = next((r for r in runs if r["workload"] == w and r["nodes"] == n), None)
            cells.append("-" if run is None or "failed" in run else f"{run['per_s']:,}")
        lines.append(f"| {by_name[w].label} ({by_name[w].unit}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![latency percentiles]({PLOTS}/latency.png)",
        "",
        "Every run (latency per call: a batch is one call; *load* is the 1-minute load average at the "
        "run's start → end; *others*: cores used by other processes meanwhile):",
        "",
        "| workload | nodes | throughput | p50 ms | p95 ms | p99 ms | errors | load | others |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        w = by_name[r["workload"]]
        u = r["usage"]
        load = f"{u['load_start']:.2f} → {u['load_end']:.2f}"
        if "failed" in r:
            lines.append(f"| {w.label} | {r['nodes']} | failed: {r['failed'][:160]!r} | | | | | {load} | |")
            continue
        extra = f" (hit rate {r['hit_rate']:.1%})" if r.get("hit_rate") is not None else ""
        lines.append(
            f"| {w.label} | {r['nodes']} | {r['per_s']:,} {w.unit}{extra} | {_ms(r['p50_ms'])} | "
            f"{_ms(r['p95_ms'])} | {_ms(r['p99_ms'])} | {r['errors']} | {load} | {u['others_cores']:.2f} |"
        )
    lines.append("")
    return lines


def _failover_section(g: dict[str, Any]) -> list[str]:
    f = g.get("failover")
    if not f:
        return []
    if "failed" in f:
        return ["## Failover", "", f"The failover run failed: {f['failed']!r}", ""]
    sm = f["summary"]
    verdict = "meets" if sm["meets_targets"] else "does **not** meet"
    lines = [
        "## Failover",
        "",
        f"{sm['rounds']} kills (`kill -9`) of a leader in a {f['nodes']}-node cluster ({f['shards']} shards, "
        "fsync on), alternating the control group's leader and a node leading shards but not the control "
        "group; one native client writes back to back to a key of every shard and retries (it gives up on "
        f"a silent node after {f.get('attempt_timeout_s', 0.3)} s and asks another). Each kill is "
        "timed until the first acknowledged write on *every* shard the killed node led (replies the "
        "victim sent before dying excluded); the node is restarted and leads its shards again before the "
        f"next kill. Load average {f['usage']['load_start']:.2f} → {f['usage']['load_end']:.2f}, others "
        f"{f['usage']['others_cores']:.2f} cores.",
        "",
        "| | median | max | target |",
        "|---|---|---|---|",
        f"| every led shard writable again, all kills | {_s(sm['recovery_median_s'])} | "
        f"{_s(sm['recovery_max_s'])} | median < {sm['target_median_s']} s, max < {sm['target_max_s']} s |",
        f"| the same, control-leader kills | {_s(sm['control_recovery_median_s'])} | "
        f"{_s(sm['control_recovery_max_s'])} | |",
        f"| the same, shard-leader kills | {_s(sm['shard_recovery_median_s'])} | "
        f"{_s(sm['shard_recovery_max_s'])} | |",
        f"| one shard writable again (each led shard of each kill) | "
        f"{_s(sm.get('each_shard_recovery_median_s'))} | {_s(sm.get('each_shard_recovery_max_s'))} | |",
        f"| a survivor names the shard's new leader (each led shard of each kill) | "
        f"{_s(sm.get('each_shard_elected_median_s'))} | {_s(sm.get('each_shard_elected_max_s'))} | |",
        f"| from that to the shard's first write (the client's part) | "
        f"{_s(sm.get('client_lag_median_s'))} | {_s(sm.get('client_lag_max_s'))} | |",
        f"| new control leader named (control kills) | {_s(sm['election_median_s'])} | "
        f"{_s(sm['election_max_s'])} | |",
        "",
        f"So this run {verdict} the targets"
        + (
            f"; {sm['unrecovered_rounds']} kills did not recover within the timeout."
            if sm["unrecovered_rounds"]
            else "."
        )
        + " (The system syncfab replaces took 8 to 15 s.)",
        "",
        f"![failover per kill]({PLOTS}/failover.png)",
        "",
    ]
    if f.get("traces"):
        lines += [f"![write latency through a leader kill]({PLOTS}/failover_trace.png)", ""]
    lines += [
        "| round | killed | victim | its shards | writable again | shards' new leaders named | "
        "control leader | longest stall |"
    ]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for r in f["rounds"]:
        lines.append(
            f"| {r['round']} | {r['kind']} leader | {r['victim']} | {', '.join(map(str, r['led_shards']))} | "
            f"{_s(r['recovery_s'])} | {_s(max(r.get('shard_elected_s', {}).values(), default=None))} | "
            f"{_s(r['election_s'])} | {_s(r['max_write_stall_s'])} |"
        )
    lines.append("")
    return lines


def _availability_section(g: dict[str, Any]) -> list[str]:
    lines = ["## Availability under the chaos suite's nemeses", ""]
    avail = g.get("availability")
    if not avail or not avail["nemeses"]:
        return [
            *lines,
            "Not measured in this report. `python -m loadtest.report --render loadtest/report/report.json "
            "--chaos-dir DIR` adds it from the chaos suite's round files (`loadtest/availability.py`: the "
            "share of operations that succeeded per service, and the longest time with no success). The "
            "suite writes a round's file (`SYNCFAB_CHAOS_DIR`) only when the round fails its checks, so a "
            "measurement of every nemesis needs it to record passing rounds too.",
            "",
        ]
    lines += [
        f"![availability]({PLOTS}/availability.png)",
        "",
        "| nemesis | rounds | service | ops | succeeded | longest gap with no success |",
        "|---|---|---|---|---|---|",
    ]
    for nemesis, data in avail["nemeses"].items():
        for name in availability.SERVICES:
            s = data["services"].get(name)
            if s:
                lines.append(
                    f"| {nemesis} | {data['rounds']} | {name} | {s['ops']:,} | {s['share']:.1%} | "
                    f"{s['longest_gap_s']:.2f} s |"
                )
    return [*lines, ""]


def write(g: dict[str, Any], out_dir: str, by_name: dict[str, Any]) -> str:
    """Draw the plots into <out_dir>/report/ and write <out_dir>/REPORT.md; return its path."""
    plots = os.path.join(out_dir, PLOTS)
    os.makedirs(plots, exist_ok=True)
    meta = g["machine"]
    labels = {name: w.label for name, w in by_name.items()}
    if g["runs"]:
        report_plots.throughput(g["runs"], meta, labels, os.path.join(plots, "throughput.png"))
        report_plots.latency(g["runs"], meta, labels, os.path.join(plots, "latency.png"))
    f = g.get("failover")
    if f and "failed" not in f:
        report_plots.failover_rounds(f, meta, os.path.join(plots, "failover.png"))
        if f.get("traces"):
            report_plots.failover_trace(f["traces"][0], f, meta, os.path.join(plots, "failover_trace.png"))
    if g.get("availability") and g["availability"]["nemeses"]:
        path = os.path.join(plots, "availability.png")
        report_plots.availability(g["availability"], availability.SERVICES, meta, path)
    lines = [
        "# syncfab benchmark report",
        "",
        "Generated by `python -m loadtest.report` (loadtest/report.py); do not edit by hand: run it again.",
        "",
        *_machine_section(g),
        *_service_section(g, by_name),
        *_failover_section(g),
        *_availability_section(g),
        "## Reproduce",
        "",
        "```sh",
        "pip install -e '.[report]'",
        g["command"],
        "```",
        "",
        "Each run was one of these (`--out` named its JSON result):",
        "",
        "```sh",
        *[r["command"] for r in g["runs"] if "command" in r],
        *([g["failover"]["command"]] if g.get("failover") and "command" in g["failover"] else []),
        "```",
        "",
        f"Machine: {machine.describe(meta)}.",
        "",
    ]
    path = os.path.join(out_dir, "REPORT.md")
    with open(path, "w") as fh:
        fh.write("\n".join(lines))
    return path
