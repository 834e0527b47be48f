"""Load through the HTTP gateway, as outside clients would: a mixed workload of the three
services, the cache included. Point it at any node's gateway (every node forwards to the right leader):

    syncfab cluster &
    locust -f loadtest/locustfile.py --host http://127.0.0.1:8101 --headless -u 64 -r 16 -t 30s

Spread users over all gateways with several locust processes, one ``--host`` each. A gateway
that asks for a token gets the one in ``SYNCFAB_TOKEN``, or else the first line of the file
``SYNCFAB_AUTH_TOKEN_FILE`` names (the node's own variable), as ``Authorization: Bearer``.
"""

from __future__ import annotations

import itertools
import os
import random
import uuid

from locust import FastHttpUser, between, task

_ids = itertools.count()


def _auth_headers() -> dict[str, str] | None:
    token = os.environ.get("SYNCFAB_TOKEN")
    path = os.environ.get("SYNCFAB_AUTH_TOKEN_FILE")
    if not token and path:
        from syncfab.fabric.client.token_file import first_token

        token = first_token(path)
    return {"Authorization": f"Bearer {token}"} if token else None


class SyncfabUser(FastHttpUser):
    abstract = True
    default_headers = _auth_headers()


class KvUser(SyncfabUser):
    wait_time = between(0, 0.01)

    @task(3)
    def write(self) -> None:
        self.client.put(f"/kv/load-{random.randrange(10_000)}", json={"n": next(_ids)}, name="/kv/{key} PUT")

    @task(2)
    def read(self) -> None:
        with self.client.get(
            f"/kv/load-{random.randrange(10_000)}", name="/kv/{key} GET", catch_response=True
        ) as response:
            if response.status_code in (200, 404):
                response.success()


class LockUser(SyncfabUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.owner = f"locust-{uuid.uuid4().hex[:12]}"

    @task
    def cycle(self) -> None:
        resource = f"load-res-{self.owner}"
        body = {
            "resource": resource,
            "mode": "exclusive",
            "client_id": self.owner,
            "wait_ms": 1000,
            "ttl_ms": 30_000,
        }
        self.client.post("/lock/acquire", json=body, name="/lock/acquire")
        self.client.post(
            "/lock/release", json={"resource": resource, "client_id": self.owner}, name="/lock/release"
        )


class QueueUser(SyncfabUser):
    wait_time = between(0, 0.01)

    def on_start(self) -> None:
        self.consumer = f"locust-{uuid.uuid4().hex[:12]}"

    @task(2)
    def produce(self) -> None:
        self.client.post("/queue/produce", json={"queue": "load", "data": "x" * 100}, name="/queue/produce")

    @task(1)
    def consume_and_ack(self) -> None:
        response = self.client.get(
            f"/queue/consume?queue=load&consumer={self.consumer}&max=10", name="/queue/consume"
        )
        if response.status_code != 200:
            return
        ids = [m["message_id"] for m in response.json()["messages"]]
        if ids:
            self.client.post("/queue/ack", json={"queue": "load", "message_ids": ids}, name="/queue/ack")


class CacheUser(SyncfabUser):
    """Zipf-ish reads and some writes through this gateway's node's own cache lines."""

    wait_time = between(0, 0.01)

    @task(9)
    def read(self) -> None:
        key = f"load-c-{int(random.paretovariate(1.2)) % 1_000}"
        with self.client.get(f"/cache/read?key={key}", name="/cache/read", catch_response=True) as response:
            if response.status_code in (200, 404):
                response.success()

    @task(1)
    def write(self) -> None:
        key = f"load-c-{int(random.paretovariate(1.2)) % 1_000}"
        self.client.post("/cache/write", json={"key": key, "value": next(_ids)}, name="/cache/write")
