"""Monitoring for real: a 3-node cluster scraped by a real ``prometheus`` process, run with the
compose file's config (docker/prometheus.yml) turned to loopback and this cluster's ports, and
the Grafana dashboard (docker/grafana-dashboard.json) held to what the nodes export and to what
that Prometheus answers for each of its expressions."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from syncfab.fabric.server.local import LocalCluster, die_with_parent, free_ports

from .helpers import http, wait_for

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = ROOT / "docker" / "prometheus.yml"
DASHBOARD = ROOT / "docker" / "grafana-dashboard.json"
SCRAPE_INTERVAL = "500ms"
RATE_WINDOW = "5s"  # what the dashboard's $__rate_interval stands for here: ten scrapes
QUEUE = "prom-jobs"
# Series Prometheus makes itself for every target; a dashboard may name them.
SCRAPE_SERIES = {"up"}
# Every area the dashboard must draw, by metric prefix.
AREAS = (
    "syncfab_raft_",
    "syncfab_http_",
    "syncfab_lock_",
    "syncfab_queue_",
    "syncfab_cache_",
    "syncfab_disk_",
)


# -- PromQL: the metric names an expression reads -------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPINGS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[a-zA-Z_:][\w:]*(?![\w:]|\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$")


def metric_names(expr: str) -> set[str]:
    """The metrics a PromQL expression selects: strings, label matchers, ranges and grouping
    clauses taken out, what is left that is a name and not a call or a keyword."""
    found = _LABEL_VALUES.match(expr)  # a Grafana variable's query
    if found:
        expr = found.group(1)
    expr = _STRINGS.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = _GROUPINGS.sub(" ", expr)
    return {name for name in _IDENTIFIER.findall(expr) if name.lower() not in _KEYWORDS}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) for every panel target and templating query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            out.append(
                (f"variable {variable['name']!r}", query["query"] if isinstance(query, dict) else query)
            )
    return out


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, endpoint) (rate(syncfab_http_request_seconds_bucket"
        '{instance=~"$i", method="GET"}[$__rate_interval]))) / on (endpoint) group_left max(up offset 5m)'
        " or vector(1e3)"
    )
    assert metric_names(expr) == {"syncfab_http_request_seconds_bucket", "up"}
    assert metric_names("label_values(syncfab_turns_total, instance)") == {"syncfab_turns_total"}
    assert metric_names('sum(a_total{x="b_total"}) - bool c') == {"a_total", "c"}


# -- the cluster, with a little traffic through every service --------------------------------


def drive_traffic(c: LocalCluster) -> None:
    """KV, a lock (granted, then waited on until it times out), a produce/consume/ack and a nack
    (a redelivery), cache writes and reads (a hit, a miss, an invalidation), a 404."""
    assert http(c, "n1", "PUT", "/kv/prom/a", {"x": 1})[0] == 200
    assert http(c, "n2", "GET", "/kv/prom/a") == (200, {"key": "prom/a", "value": {"x": 1}})
    assert http(c, "n3", "DELETE", "/kv/prom/a")[0] == 200
    assert http(c, "n1", "GET", "/kv/prom/a")[0] == 404

    lock = {"resource": "prom/r", "mode": "exclusive"}
    status, grant = http(c, "n1", "POST", "/lock/acquire", {**lock, "client_id": "prom-1"})
    assert status == 200 and grant["granted"], grant
    status, _ = http(c, "n2", "POST", "/lock/acquire", {**lock, "client_id": "prom-2", "wait_ms": 100})
    assert status == 408
    assert http(c, "n1", "POST", "/lock/release", {"resource": "prom/r", "client_id": "prom-1"})[0] == 200

    for i in range(2):
        assert http(c, "n1", "POST", "/queue/produce", {"queue": QUEUE, "data": i})[0] == 200
    status, got = http(c, "n2", "GET", f"/queue/consume?queue={QUEUE}&consumer=w1&max=2&wait_ms=2000")
    assert status == 200 and len(got["messages"]) == 2, got
    first, second = (m["message_id"] for m in got["messages"])
    assert http(c, "n3", "POST", "/queue/ack", {"queue": QUEUE, "message_ids": [first]})[1]["acked"] == 1
    assert http(c, "n3", "POST", "/queue/nack", {"queue": QUEUE, "message_ids": [second]})[0] == 200

    assert http(c, "n1", "POST", "/cache/write", {"key": "prom/k", "value": 1})[0] == 200
    assert http(c, "n1", "GET", "/cache/read?key=prom/k")[1]["hit"] is True
    assert http(c, "n2", "GET", "/cache/read?key=prom/k")[1]["hit"] is False
    assert http(c, "n2", "POST", "/cache/write", {"key": "prom/k", "value": 2})[0] == 200
    assert http(c, "n1", "GET", "/cache/read?key=prom/k")[1]["value"] == 2


# -- Prometheus ------------------------------------------------------------------------------


def loopback_config(c: LocalCluster) -> dict[str, Any]:
    """docker/prometheus.yml with each target ``nX:port`` turned into node nX's gateway here,
    scrapes every ``SCRAPE_INTERVAL``, and only the jobs that scrape nodes (one scraping
    Prometheus itself would reach for the compose file's port 9090)."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"]["scrape_interval"] = config["global"]["scrape_timeout"] = SCRAPE_INTERVAL
    nodes, jobs = [], []
    for job in config["scrape_configs"]:
        statics = job.get("static_configs", [])
        hosts = [target.split(":")[0] for static in statics for target in static["targets"]]
        if not hosts or not set(hosts) <= set(c.ids):
            continue
        nodes += hosts
        for static in statics:
            static["targets"] = [c.url(t.split(":")[0]).removeprefix("http://") for t in static["targets"]]
        jobs.append(job)
    assert sorted(nodes) == c.ids, f"{PROMETHEUS_CONFIG} scrapes {nodes}, not the cluster's {c.ids}"
    config["scrape_configs"] = jobs
    return config


def api(url: str, path: str, **params: str) -> Any:
    """One Prometheus HTTP API call: its ``data``, or an AssertionError naming its error."""
    query = urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(f"{url}{path}?{query}", timeout=5) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
    assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
    return body["data"]


@dataclass
class PrometheusProcess:
    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def wait_ready(self, timeout_s: float = 20.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                log = self.log_path.read_text()[-3000:]
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{log}")
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200

        wait_for("prometheus to be ready", ready, timeout_s)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def unstarted() -> LocalCluster:
    return LocalCluster(size=3)  # its ports are chosen: Prometheus can be told them first


@pytest.fixture(scope="module")
def prometheus_process(
    unstarted: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess | None]:
    """Started before the nodes, so its discovery's first few seconds pass while they start
    (it scrapes nothing for ~5 s); None where there is no ``prometheus`` binary."""
    binary = shutil.which("prometheus")
    if binary is None:
        yield None
        return
    work = tmp_path_factory.mktemp("prometheus")
    config = work / "prometheus.yml"
    config.write_text(yaml.safe_dump(loopback_config(unstarted)))
    url = f"http://127.0.0.1:{free_ports(1)[0]}"
    log_path = work / "prometheus.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    process = PrometheusProcess(url, proc, log_path)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def cluster(unstarted: LocalCluster, prometheus_process: PrometheusProcess | None) -> Iterator[LocalCluster]:
    with unstarted as c:
        drive_traffic(c)
        yield c


@pytest.fixture(scope="module")
def prometheus(cluster: LocalCluster, prometheus_process: PrometheusProcess | None) -> str:
    if prometheus_process is None:
        pytest.skip("no prometheus binary on PATH (.ci/run installs Debian's prometheus package)")
    prometheus_process.wait_ready()
    return prometheus_process.url


def poll(what: str, checks: dict[str, Callable[[], bool]], timeout_s: float = 15.0) -> None:
    """Until every check holds at once; fail naming those that did not."""
    failing: list[str] = []

    def all_hold() -> bool:
        failing[:] = [name for name, check in checks.items() if not check()]
        return not failing

    try:
        wait_for(what, all_hold, timeout_s)
    except AssertionError as e:
        if not failing:
            raise  # a check's own failure: a query Prometheus refused, say
        raise AssertionError(f"{e}; still failing: {failing}") from None


def value(url: str, expr: str) -> float | None:
    """An expression's one value now, or None while it has no series."""
    result = api(url, "/api/v1/query", query=expr)["result"]
    assert len(result) <= 1, f"{expr} has {len(result)} series"
    return float(result[0]["value"][1]) if result else None


def at_least(url: str, expr: str, least: float) -> Callable[[], bool]:
    return lambda: (found := value(url, expr)) is not None and found >= least


# -- the tests -------------------------------------------------------------------------------


def test_prometheus_scrapes_every_node(cluster: LocalCluster, prometheus: str) -> None:
    wanted = {cluster.url(n) + "/metrics" for n in cluster.ids}

    def all_up() -> bool:
        targets = api(prometheus, "/api/v1/targets", state="active")["activeTargets"]
        return {t["scrapeUrl"] for t in targets} == wanted and all(t["health"] == "up" for t in targets)

    wait_for("all three targets up", all_up, timeout_s=15)


def test_prometheus_has_a_metric_of_every_service(cluster: LocalCluster, prometheus: str) -> None:
    p = prometheus
    queue = f'queue="{QUEUE}"'
    groups = len(cluster.get_json("n1", "/status")["groups"])
    poll(
        "Prometheus to hold what the traffic did",
        {
            "kv": at_least(p, 'sum(syncfab_http_requests_total{endpoint="/kv/{key}", method="PUT"})', 1),
            "lock grants": at_least(p, "max(syncfab_lock_grants_total)", 1),
            "lock waits": at_least(p, "max(syncfab_lock_waits_total)", 1),
            "lock timeouts": at_least(p, "max(syncfab_lock_timeouts_total)", 1),
            "produced": at_least(p, f"max(syncfab_queue_produced_total{{{queue}}})", 2),
            "acked": at_least(p, f"max(syncfab_queue_acked_total{{{queue}}})", 1),
            "redelivered": at_least(p, f"max(syncfab_queue_redelivered_total{{{queue}}})", 1),
            "depth": at_least(p, f"max(syncfab_queue_depth{{{queue}}})", 1),
            "cache hits": at_least(p, 'sum(syncfab_cache_events_total{event="hits"})', 1),
            "cache invalidations": at_least(
                p, 'sum(syncfab_cache_home_events_total{event="invalidations"})', 1
            ),
            "one leader per group": at_least(
                p, "count(sum by (group) (syncfab_raft_is_leader) == 1)", groups
            ),
            "terms": at_least(p, "min(syncfab_raft_term)", 1),
            "commits": at_least(p, "sum(syncfab_raft_committed_entries_total)", 1),
            "disk writes on every node": at_least(p, "count(syncfab_disk_write_seconds_count > 0)", 3),
        },
    )


def test_dashboard_names_only_metrics_the_nodes_export(cluster: LocalCluster) -> None:
    names = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    assert all(any(n.startswith(area) for n in names) for area in AREAS), sorted(names)
    exported: set[str] = set()
    for node in cluster.ids:  # a queue's deliveries are counted on its shards' leaders only
        _, text = http(cluster, node, "GET", "/metrics")
        exported |= {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    missing = sorted(names - exported - SCRAPE_SERIES)
    assert not missing, f"{DASHBOARD.name} names metrics no node exports: {missing}"


def test_every_dashboard_query_answers_in_prometheus(cluster: LocalCluster, prometheus: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = [v["name"] for v in dashboard["templating"]["list"]]
    assert variables == ["datasource", "instance"]
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))

    def answers(expr: str) -> Callable[[], bool]:
        expr = expr.replace("$__rate_interval", RATE_WINDOW).replace("$instance", ".*")
        return lambda: bool(api(prometheus, "/api/v1/query", query=expr)["result"])

    checks = {where: answers(expr) for where, expr in dashboard_queries() if "label_values" not in expr}
    instances = {cluster.url(n).removeprefix("http://") for n in cluster.ids}
    checks["variable 'instance'"] = lambda: (
        set(api(prometheus, "/api/v1/label/instance/values", **{"match[]": "syncfab_turns_total"}))
        == instances
    )
    poll("every dashboard query to return a series", checks)
