"""Scale-out and replacement on real processes: a fourth node joins a running cluster with
``syncfab member add``, takes its share of replicas and leaderships, and a first node is then
removed with ``syncfab member remove`` — every write before, between and after kept, the
restarted nodes finding the new members from their own logs."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from syncfab.fabric.server.local import LocalCluster, placement_reached

from .helpers import http, wait_for


def cli(c: LocalCluster, node: str, *args: str) -> tuple[int, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "syncfab.fabric.server.cli", "member", *args, "--json",
         "--endpoints", c.url(node).removeprefix("http://")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    text = out.stdout or out.stderr
    return out.returncode, json.loads(text) if text.strip().startswith("{") else text


def test_a_node_joins_takes_its_share_and_another_is_removed(tmp_path: Any) -> None:
    c = LocalCluster(size=4, joining=1, data_dir=str(tmp_path))
    try:
        c.start()
        c.wait_ready(nodes=["n1", "n2", "n3"])
        keys = {f"k{i}": i for i in range(24)}
        for k, v in keys.items():
            assert http(c, "n1", "PUT", f"/kv/{k}", v)[0] == 200

        c.start("n4")
        code, table = cli(c, "n1", "add", "n4", c.address("n4"))
        assert code == 0, table
        assert [m["id"] for m in table["members"]] == ["n1", "n2", "n3", "n4"]
        assert cli(c, "n2", "add", "n4", c.address("n4"))[0] == 0  # asked twice: the same answer
        code, refused = cli(c, "n2", "add", "n4", "127.0.0.1:1")
        assert code == 1 and refused["error"] == "member_exists"
        all4 = ["n1", "n2", "n3", "n4"]
        wait_for(
            "every group on its replicas over four nodes", lambda: placement_reached(c.get_json, all4), 60
        )
        assert sorted(m["id"] for m in c.get_json("n4", "/cluster")["members"]) == all4
        for k, v in keys.items():
            assert http(c, "n4", "GET", f"/kv/{k}") == (200, {"key": k, "value": v})

        def n4_leads() -> bool:
            return any(s["leader"] == "n4" for s in c.get_json("n1", "/cluster")["shards"])

        wait_for("the balancer to hand n4 a shard", n4_leads, 30)

        code, table = cli(c, "n2", "remove", "n1")
        assert code == 0, table
        assert [m["id"] for m in table["members"]] == ["n2", "n3", "n4"]
        rest = ["n2", "n3", "n4"]
        wait_for("every group off n1", lambda: placement_reached(c.get_json, rest), 60)
        wait_for(
            "n1 to learn it left every group", lambda: c.get_json("n1", "/cluster/members")["groups"] == []
        )
        assert c.get_json("n1", "/status")["evicted"] is True
        c.kill("n1")
        code, refused = cli(c, "n2", "add", "n1", c.address("n1"))
        assert code == 1 and refused["error"] == "member_removed"  # a new id, not the old one
        code, refused = cli(c, "n2", "remove", "n2")
        assert code == 1 and refused["error"] == "too_few_members"

        # n2 restarts with its old --peers (no n4 there): its log has the members now.
        c.kill("n2")
        c.start("n2")
        wait_for("n2 back with the new members", lambda: placement_reached(c.get_json, rest), 60)
        assert http(c, "n2", "PUT", "/kv/after", "ok")[0] == 200
        for node in rest:
            assert http(c, node, "GET", "/kv/after") == (200, {"key": "after", "value": "ok"})
            assert http(c, node, "GET", "/kv/k7") == (200, {"key": "k7", "value": 7})
    finally:
        c.stop()
