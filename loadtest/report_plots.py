"""The report's figures (matplotlib, Agg): each carries the machine, date and commit it was
measured on and the load average at the start and end of every workload it shows."""

from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from loadtest import machine

NODE_COLORS = {1: "#8da0cb", 3: "#fc8d62", 5: "#66c2a5"}
QUANTILE_COLORS = {"p50_ms": "#a6cee3", "p95_ms": "#1f78b4", "p99_ms": "#08306b"}
DPI = 110
PLAIN = FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 x 10^1, on log axes


def _color(nodes: int) -> str:
    return NODE_COLORS.get(nodes, "#999999")


def _short(value: float) -> str:
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def _load(usage: dict[str, Any]) -> str:
    return f"{usage['load_start']:.1f}→{usage['load_end']:.1f}"


def _footer(fig: Figure, meta: dict[str, Any], note: str) -> None:
    fig.text(0.01, 0.005, machine.describe(meta) + "\n" + note, fontsize=7, va="bottom", ha="left", wrap=True)


def _load_table(ax: Any, runs: list[dict[str, Any]], node_counts: list[int]) -> None:
    """Under a figure: load average start→end of every run, a row per cluster size."""
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    cells = []
    for n in node_counts:
        row = []
        for w in workloads:
            run = next((r for r in runs if r["workload"] == w and r["nodes"] == n), None)
            row.append(f"{_load(run['usage'])} | {run['usage']['others_cores']:.1f}" if run else "")
        cells.append(row)
    ax.axis("off")
    table = ax.table(
        cellText=cells,
        rowLabels=[f"{n} node{'s' * (n > 1)}" for n in node_counts],
        colLabels=workloads,
        loc="center",
        cellLoc="center",
    )
    table.auto_set_font_size(False)
    table.set_fontsize(6.5)
    table.scale(1, 1.25)
    ax.set_title(
        "each run: 1-minute load average at its start → end | cores used meanwhile by other processes "
        "(the machine is shared)",
        fontsize=8,
    )


def throughput(runs: list[dict[str, Any]], meta: dict[str, Any], labels: dict[str, str], path: str) -> None:
    """Grouped bars: throughput of every workload, a bar per cluster size (log scale)."""
    ok = [r for r in runs if "failed" not in r]
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    node_counts = sorted({r["nodes"] for r in runs})
    fig = plt.figure(figsize=(13, 7.6), dpi=DPI)
    ax = fig.add_axes((0.06, 0.36, 0.92, 0.58))
    width = 0.8 / max(1, len(node_counts))
    for i, n in enumerate(node_counts):
        xs, ys = [], []
        for j, w in enumerate(workloads):
            run = next((r for r in ok if r["workload"] == w and r["nodes"] == n), None)
            if run and run["per_s"]:
                xs.append(j + (i - (len(node_counts) - 1) / 2) * width)
                ys.append(run["per_s"])
        bars = ax.bar(xs, ys, width, label=f"{n} node{'s' * (n > 1)}", color=_color(n))
        for bar, y in zip(bars, ys, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, y * 1.05, _short(y), ha="center", fontsize=6.5)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels([labels[w].replace(", ", ",\n", 1) for w in workloads], fontsize=7.5)
    ax.set_ylabel("operations (or messages) per second, log scale")
    ax.set_title("syncfab throughput by cluster size (fsync on, 8 shards, closed-loop clients)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    _load_table(fig.add_axes((0.12, 0.1, 0.86, 0.12)), runs, node_counts)
    _footer(fig, meta, "clients and nodes share the same cores; see loadtest/REPORT.md")
    fig.savefig(path)
    plt.close(fig)


def latency(runs: list[dict[str, Any]], meta: dict[str, Any], labels: dict[str, str], path: str) -> None:
    """A panel per workload: p50/p95/p99 of its calls, a group per cluster size."""
    ok = [r for r in runs if "failed" not in r and r.get("p50_ms") is not None]
    workloads = list(dict.fromkeys(r["workload"] for r in runs))
    node_counts = sorted({r["nodes"] for r in runs})
    cols = 3
    rows = math.ceil(len(workloads) / cols)
    fig = plt.figure(figsize=(13, 3.0 * rows + 2.0), dpi=DPI)
    top = 0.22 if rows > 1 else 0.4
    grid = fig.add_gridspec(rows, cols, left=0.06, right=0.98, top=0.94, bottom=top, hspace=0.55, wspace=0.22)
    for k, w in enumerate(workloads):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        for i, n in enumerate(node_counts):
            run = next((r for r in ok if r["workload"] == w and r["nodes"] == n), None)
            if run is None:
                continue
            for q_i, (q, color) in enumerate(QUANTILE_COLORS.items()):
                x = i + (q_i - 1) * 0.27
                ax.bar(x, run[q], 0.25, color=color, label=q[:3] if i == 0 else None)
                ax.text(x, run[q] * 1.04, f"{run[q]:.3g}", ha="center", fontsize=6)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(PLAIN)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(node_counts)))
        ax.set_xticklabels([f"{n} node{'s' * (n > 1)}" for n in node_counts], fontsize=7.5)
        ax.set_title(labels[w], fontsize=9)
        ax.set_ylabel("ms per call", fontsize=7.5)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", which="both", alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7)
    fig.suptitle("latency percentiles per call (a batch is one call), log scale", fontsize=11)
    _load_table(fig.add_axes((0.12, 0.07, 0.86, top - 0.12)), runs, node_counts)
    _footer(fig, meta, "p50/p95/p99 of calls in the measured window")
    fig.savefig(path)
    plt.close(fig)


def failover_rounds(failover: dict[str, Any], meta: dict[str, Any], path: str) -> None:
    """Per round: time until every shard the killed leader led took a write, and the election."""
    rounds = failover["rounds"]
    summary = failover["summary"]
    fig = plt.figure(figsize=(11, 5.4), dpi=DPI)
    ax = fig.add_axes((0.07, 0.22, 0.9, 0.68))
    for kind, color in (("control", "#d95f02"), ("shard", "#1b9e77")):
        chosen = [r for r in rounds if r["kind"] == kind]
        xs = [r["round"] for r in chosen]
        ys = [r["recovery_s"] if r["recovery_s"] is not None else float("nan") for r in chosen]
        ax.bar(xs, ys, 0.7, color=color, label=f"{kind} leader killed: every shard it led writable")
        elect = [(r["round"], r["election_s"]) for r in chosen if r["election_s"] is not None]
        if kind == "control" and elect:
            ax.plot(*zip(*elect, strict=True), "kx", label="new control leader named")
    ax.axhline(summary["target_median_s"], color="#555", ls="--", lw=1, label="target for the median")
    ax.axhline(summary["target_max_s"], color="#b00", ls=":", lw=1, label="target for the max")
    ax.set_xticks([r["round"] for r in rounds])
    ax.set_xlabel("round (kill -9 of a leader, then restart)")
    ax.set_ylabel("seconds from the kill")
    ax.set_title(
        f"failover, {failover['nodes']} nodes: median {summary['recovery_median_s']} s, "
        f"max {summary['recovery_max_s']} s over {summary['rounds']} kills"
    )
    ax.legend(fontsize=7.5, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    _footer(fig, meta, f"load average {_load(failover['usage'])} over the failover run")
    fig.savefig(path)
    plt.close(fig)


def failover_trace(trace: dict[str, Any], failover: dict[str, Any], meta: dict[str, Any], path: str) -> None:
    """Every write through one kill, by when it was acknowledged: its latency above, and the
    acknowledged writes per 50 ms below. The killed leader's shards stall; the others go on."""
    fig = plt.figure(figsize=(11, 6.6), dpi=DPI)
    ax = fig.add_axes((0.08, 0.44, 0.9, 0.49))
    rate = fig.add_axes((0.08, 0.17, 0.9, 0.2), sharex=ax)
    led = set(trace["led_shards"])
    bin_s = 0.05
    for mine, color, label, z in (
        (False, "#969696", "the other shards", 1),
        (True, "#d7301f", f"shards {sorted(led)}, led by the killed {trace['victim']}", 2),
    ):
        points = [(t + ms / 1e3, ms) for shard, t, ms in trace["writes"] if (shard in led) == mine]
        if not points:
            continue
        ax.scatter(*zip(*points, strict=True), s=5, color=color, label=label, alpha=0.8, zorder=z)
        bins: dict[int, int] = {}
        for done, _ in points:
            bins[math.floor(done / bin_s)] = bins.get(math.floor(done / bin_s), 0) + 1
        first, last = min(bins), max(bins)
        xs = [b * bin_s for b in range(first, last + 1)]
        rate.step(xs, [bins.get(b, 0) / bin_s for b in range(first, last + 1)], where="post", color=color)
    for a in (ax, rate):
        a.axvline(0, color="k", lw=1)
        if trace.get("recovery_s") is not None:
            a.axvline(trace["recovery_s"], color="#d7301f", ls="--", lw=1)
        a.grid(alpha=0.3)
    ax.text(0.01, 0.97, "kill -9", fontsize=8, va="top", transform=ax.get_xaxis_transform())
    if trace.get("recovery_s") is not None:
        ax.plot([], [], color="#d7301f", ls="--", lw=1, label="every led shard writable again")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(PLAIN)
    ax.set_ylabel("write latency, ms (log)")
    ax.tick_params(labelbottom=False)
    ax.set_title(
        f"KV writes through a kill of the {trace['kind']} leader (round {trace['round']}), "
        f"one writer per shard, {failover['nodes']} nodes"
    )
    ax.legend(fontsize=8, loc="upper right", markerscale=3)
    rate.set_ylabel("acks/s", fontsize=8)
    rate.set_xlabel("write acknowledged, seconds from the kill")
    _footer(fig, meta, f"load average {_load(failover['usage'])} over the failover run")
    fig.savefig(path)
    plt.close(fig)


def availability(avail: dict[str, Any], services: tuple[str, ...], meta: dict[str, Any], path: str) -> None:
    """Per nemesis: the share of operations that succeeded, a bar per service."""
    nemeses = list(avail["nemeses"])
    fig = plt.figure(figsize=(12, 5.4), dpi=DPI)
    ax = fig.add_axes((0.07, 0.3, 0.9, 0.6))
    width = 0.8 / len(services)
    for i, name in enumerate(services):
        xs = [j + (i - (len(services) - 1) / 2) * width for j in range(len(nemeses))]
        ys = [avail["nemeses"][n]["services"].get(name, {}).get("share") or 0 for n in nemeses]
        ax.bar(xs, [y * 100 for y in ys], width, label=name)
    ax.set_xticks(range(len(nemeses)))
    ax.set_xticklabels(nemeses, rotation=30, ha="right", fontsize=7.5)
    ax.set_ylabel("% of operations that succeeded")
    ax.set_ylim(0, 105)
    ax.set_title("availability under each nemesis of the chaos suite")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _footer(fig, meta, f"from {avail['files']} recorded round files in {avail['source']}")
    fig.savefig(path)
    plt.close(fig)
