"""The lock manager end to end on real processes: HTTP and the native client, waiters, deadlocks,
leases, and a lock that outlives a kill -9 of the control group's leader."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import pytest

from syncfab.actors.locks import Acquire, Release
from syncfab.actors.results import Ok
from syncfab.fabric.client import AsyncClient, Client, Deadlock, LockTimeout
from syncfab.fabric.server.local import LocalCluster

from .helpers import control_leader, http, wait_for


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(size=3) as c:
        yield c


def acquire(
    c: LocalCluster, node: str, resource: str, owner: str, mode: str = "exclusive", **extra: Any
) -> tuple[int, Any]:
    return http(
        c, node, "POST", "/lock/acquire", {"resource": resource, "mode": mode, "client_id": owner, **extra}
    )


def release(c: LocalCluster, node: str, resource: str, owner: str) -> tuple[int, Any]:
    return http(c, node, "POST", "/lock/release", {"resource": resource, "client_id": owner})


def info(c: LocalCluster, node: str, resource: str) -> dict[str, Any]:
    status, body = http(c, node, "GET", f"/lock/{resource}")
    assert status == 200, body
    return body


def waiters(c: LocalCluster, resource: str) -> list[str]:
    return [w["owner"] for w in info(c, "n1", resource)["waiters"]]


# ---- HTTP -----------------------------------------------------------------------------------


def test_acquire_and_release_through_any_node(cluster: LocalCluster) -> None:
    status, grant = acquire(cluster, "n1", "happy/r", "alice")
    assert status == 200
    assert grant == {
        "granted": True,
        "fencing_token": grant["fencing_token"],
        "resource": "happy/r",
        "mode": "exclusive",
    }
    assert isinstance(grant["fencing_token"], int) and grant["fencing_token"] > 0
    # Re-entrant: the holder asking again gets its own hold back, not a new token.
    assert acquire(cluster, "n3", "happy/r", "alice") == (200, grant)
    for node in cluster.ids:
        assert info(cluster, node, "happy/r") == {
            "resource": "happy/r",
            "waiters": [],
            "holders": [{"owner": "alice", "mode": "exclusive", "fencing_token": grant["fencing_token"]}],
        }
    assert release(cluster, "n2", "happy/r", "alice") == (200, {"released": True})
    assert info(cluster, "n3", "happy/r") == {"resource": "happy/r", "holders": [], "waiters": []}
    status, again = acquire(cluster, "n2", "happy/r", "bob")
    assert status == 200 and again["fencing_token"] > grant["fencing_token"]
    assert release(cluster, "n1", "happy/r", "bob")[0] == 200


def test_release_of_a_lock_not_held_is_a_conflict(cluster: LocalCluster) -> None:
    status, body = release(cluster, "n1", "nothold/r", "carol")
    assert status == 409 and body["error"] == "not_held" and body["resource"] == "nothold/r"
    assert acquire(cluster, "n1", "nothold/r", "dave")[0] == 200
    status, body = release(cluster, "n2", "nothold/r", "carol")  # held, but by someone else
    assert status == 409 and body["error"] == "not_held"
    assert [h["owner"] for h in info(cluster, "n3", "nothold/r")["holders"]] == ["dave"]
    assert release(cluster, "n1", "nothold/r", "dave") == (200, {"released": True})


def test_shared_holders_coexist_and_exclude_a_writer(cluster: LocalCluster) -> None:
    r = "shared/r"
    tokens = {}
    for node, reader in (("n1", "reader-1"), ("n2", "reader-2")):
        status, grant = acquire(cluster, node, r, reader, "shared")
        assert status == 200 and grant["mode"] == "shared"
        tokens[reader] = grant["fencing_token"]
    assert info(cluster, "n3", r)["holders"] == [
        {"owner": reader, "mode": "shared", "fencing_token": token}
        for reader, token in sorted(tokens.items())
    ]
    status, body = acquire(cluster, "n3", r, "writer", "exclusive", wait_ms=0)
    assert status == 408 and body["granted"] is False and body["error"] == "lock_timeout"
    for reader in tokens:
        assert release(cluster, "n1", r, reader)[0] == 200
    status, grant = acquire(cluster, "n3", r, "writer", "exclusive")
    assert status == 200 and grant["fencing_token"] > max(tokens.values())
    # An exclusive holder keeps readers out too.
    status, body = acquire(cluster, "n2", r, "reader-1", "shared")
    assert status == 408 and body["granted"] is False and body["error"] == "lock_timeout"
    assert release(cluster, "n3", r, "writer")[0] == 200


def test_try_lock_on_a_held_lock_answers_408(cluster: LocalCluster) -> None:
    assert acquire(cluster, "n1", "try/r", "holder")[0] == 200
    status, body = acquire(cluster, "n2", "try/r", "trier", wait_ms=0)
    assert status == 408
    assert body["granted"] is False and body["error"] == "lock_timeout" and body["resource"] == "try/r"
    # A try-lock never queues.
    assert info(cluster, "n3", "try/r")["waiters"] == []
    assert release(cluster, "n1", "try/r", "holder")[0] == 200


def test_a_waiter_is_granted_when_the_holder_releases(cluster: LocalCluster) -> None:
    r = "wait/r"
    status, first = acquire(cluster, "n1", r, "holder")
    assert status == 200
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(acquire, cluster, "n2", r, "waiter", "exclusive", wait_ms=20_000)
        wait_for("the waiter to queue", lambda: waiters(cluster, r) == ["waiter"])
        seen = info(cluster, "n3", r)
        assert seen["holders"] == [
            {"owner": "holder", "mode": "exclusive", "fencing_token": first["fencing_token"]}
        ]
        assert [(w["owner"], w["mode"]) for w in seen["waiters"]] == [("waiter", "exclusive")]
        assert isinstance(seen["waiters"][0]["since_ms"], int)
        assert not waiting.done()
        assert release(cluster, "n3", r, "holder") == (200, {"released": True})
        status, second = waiting.result(timeout=30)
    assert status == 200 and second["granted"] is True and second["mode"] == "exclusive"
    assert second["fencing_token"] > first["fencing_token"]
    assert info(cluster, "n1", r) == {
        "resource": r,
        "waiters": [],
        "holders": [{"owner": "waiter", "mode": "exclusive", "fencing_token": second["fencing_token"]}],
    }
    assert release(cluster, "n1", r, "waiter")[0] == 200


def test_a_waiter_whose_wait_runs_out_gets_408(cluster: LocalCluster) -> None:
    assert acquire(cluster, "n1", "waitout/r", "holder")[0] == 200
    status, body = acquire(cluster, "n2", "waitout/r", "patient", wait_ms=300)
    assert status == 408 and body["granted"] is False and body["error"] == "lock_timeout"
    assert info(cluster, "n3", "waitout/r")["waiters"] == []
    assert release(cluster, "n1", "waitout/r", "holder")[0] == 200


def test_deadlock_between_two_http_clients(cluster: LocalCluster) -> None:
    held = {"dl-a": "deadlock/1", "dl-b": "deadlock/2"}
    wants = {"dl-a": "deadlock/2", "dl-b": "deadlock/1"}
    tokens = {}
    for owner, resource in held.items():
        status, grant = acquire(cluster, "n1", resource, owner)
        assert status == 200
        tokens[owner] = grant["fencing_token"]
    with ThreadPoolExecutor(2) as pool:
        futures = {}
        for owner, node in (("dl-a", "n2"), ("dl-b", "n3")):
            futures[owner] = pool.submit(acquire, cluster, node, wants[owner], owner, wait_ms=20_000)
            wait_for(
                f"{owner} to wait", lambda o=owner: waiters(cluster, wants[o]) == [o] or futures[o].done()
            )
        done, _ = wait(futures.values(), timeout=30, return_when=FIRST_COMPLETED)
        assert len(done) == 1, "the cycle was not broken"
        (victim,) = [o for o, f in futures.items() if f in done]
        (survivor,) = [o for o in futures if o != victim]
        status, body = futures[victim].result()
        assert status == 409 and body["error"] == "deadlock" and body["granted"] is False
        assert sorted(body["cycle"]) == ["dl-a", "dl-b"] and body["cycle"][0] == victim
        assert not futures[survivor].done()
        # The victim keeps what it held until it lets go; then the survivor gets it.
        assert [h["owner"] for h in info(cluster, "n1", held[victim])["holders"]] == [victim]
        assert release(cluster, "n1", held[victim], victim)[0] == 200
        status, grant = futures[survivor].result(timeout=30)
    assert status == 200 and grant["resource"] == held[victim]
    assert grant["fencing_token"] > max(tokens.values())
    for owner, resource in ((survivor, held[survivor]), (survivor, held[victim])):
        assert release(cluster, "n2", resource, owner)[0] == 200


def test_renew_extends_the_lease(cluster: LocalCluster) -> None:
    assert acquire(cluster, "n1", "renew/r", "renewer", ttl_ms=10_000)[0] == 200
    status, first = http(cluster, "n2", "POST", "/lock/renew", {"client_id": "renewer", "ttl_ms": 20_000})
    assert status == 200 and first["renewed"] is True
    status, owner = http(cluster, "n3", "GET", "/lock-owner/renewer")
    assert status == 200 and owner["lease_expires_at_ms"] == first["lease_expires_at_ms"]
    assert [h["resource"] for h in owner["held"]] == ["renew/r"]
    status, second = http(cluster, "n1", "POST", "/lock/renew", {"client_id": "renewer", "ttl_ms": 60_000})
    assert status == 200 and second["lease_expires_at_ms"] > first["lease_expires_at_ms"]
    status, body = http(cluster, "n1", "POST", "/lock/renew", {"client_id": "never-seen"})
    assert status == 409 and body["error"] == "lease_expired"
    assert release(cluster, "n1", "renew/r", "renewer")[0] == 200


def test_a_client_that_stops_renewing_loses_its_locks(cluster: LocalCluster) -> None:
    status, ghost = acquire(cluster, "n1", "lease/r", "ghost", ttl_ms=1500)
    assert status == 200
    assert acquire(cluster, "n2", "lease/r", "heir")[0] == 408

    def heir_gets_it() -> Any:
        status, grant = acquire(cluster, "n2", "lease/r", "heir", wait_ms=0)
        return grant if status == 200 else None

    grant = wait_for("the ghost's lease to run out", heir_gets_it)
    assert grant["fencing_token"] > ghost["fencing_token"]
    assert [h["owner"] for h in info(cluster, "n3", "lease/r")["holders"]] == ["heir"]
    status, body = http(cluster, "n3", "POST", "/lock/renew", {"client_id": "ghost"})
    assert status == 409 and body["error"] == "lease_expired"
    assert release(cluster, "n1", "lease/r", "ghost")[1]["error"] == "not_held"
    assert release(cluster, "n1", "lease/r", "heir")[0] == 200


GOOD = {"resource": "bad/r", "mode": "exclusive", "client_id": "x"}


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/lock/acquire", {**GOOD, "mode": "upgradable"}, "mode"),
        ("/lock/acquire", {**GOOD, "mood": "shared"}, "mood"),  # unknown: named, not ignored
        ("/lock/acquire", {"resource": "bad/r", "mode": "shared"}, "client_id"),
        ("/lock/acquire", {"mode": "shared", "client_id": "x"}, "resource"),
        ("/lock/acquire", {**GOOD, "ttl_ms": -5}, "ttl_ms"),
        ("/lock/acquire", {**GOOD, "ttl_ms": 0}, "ttl_ms"),
        ("/lock/acquire", {**GOOD, "wait_ms": -1}, "wait_ms"),
        ("/lock/acquire", {**GOOD, "wait_ms": "soon"}, "wait_ms"),
        ("/lock/acquire", {**GOOD, "ttl_ms": 1.5}, "ttl_ms"),
        ("/lock/acquire", {**GOOD, "resource": 42}, "resource"),
        ("/lock/acquire", {**GOOD, "resource": ""}, "resource"),
        ("/lock/acquire", {**GOOD, "mode": ["shared"]}, "mode"),
        ("/lock/acquire", ["bad/r", "exclusive", "x"], "body"),
        ("/lock/release", {"client_id": "x"}, "resource"),
        ("/lock/release", {"resource": "bad/r", "client_id": None}, "client_id"),
        ("/lock/renew", {"client_id": "x", "ttl_ms": "long"}, "ttl_ms"),
        ("/lock/renew", {"client_id": "x", "ttl_ms": -1}, "ttl_ms"),
        ("/lock/renew", {}, "client_id"),
        ("/lock/acquire", {**GOOD, "client_id": ""}, "client_id"),
    ],
)
def test_bad_lock_input_names_the_field(cluster: LocalCluster, path: str, body: Any, field: str) -> None:
    status, got = http(cluster, "n2", "POST", path, body)
    assert status == 400, got
    assert got["error"] == "bad_request" and got["field"] == field, got


@pytest.mark.parametrize(
    ("raw", "status", "error"),
    [
        (b'{"resource": "bad/r", "mode": ', 400, "bad_request"),
        (b"not json at all", 400, "bad_request"),
        (b"", 400, "bad_request"),
        (
            b'{"resource": "' + b"r" * (1 << 20) + b'", "mode": "shared", "client_id": "x"}',
            413,
            "payload_too_large",
        ),
    ],
)
def test_malformed_or_oversized_lock_bodies(
    cluster: LocalCluster, raw: bytes, status: int, error: str
) -> None:
    got_status, got = http(cluster, "n1", "POST", "/lock/acquire", raw=raw)
    assert (got_status, got["error"], got["field"]) == (status, error, "body")
    assert info(cluster, "n1", "bad/r")["holders"] == []  # nothing was taken on the way


# ---- the native client ----------------------------------------------------------------------


def test_lock_context_manager_gives_increasing_fencing_tokens(cluster: LocalCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as one, AsyncClient(cluster.addresses) as two:
            tokens = []
            async with one.lock("native/ctx") as grant:
                assert grant.resource == "native/ctx" and grant.mode == "exclusive"
                tokens.append(grant.fencing_token)
                holders = (await two.lock_info("native/ctx"))["holders"]
                assert holders == [
                    {"owner": one.client_id, "mode": "exclusive", "fencing_token": grant.fencing_token}
                ]
                with pytest.raises(LockTimeout):
                    await two.acquire("native/ctx")
                # A waiter behind the block is granted as soon as it ends.
                waiter = asyncio.ensure_future(two.acquire("native/ctx", wait_ms=20_000))
                while not (await one.lock_info("native/ctx"))["waiters"]:
                    await asyncio.sleep(0.02)
                assert not waiter.done()
            second = await asyncio.wait_for(waiter, 30)
            tokens.append(second.fencing_token)
            assert await two.release("native/ctx") is True
            async with one.lock("native/ctx", "shared") as grant:
                tokens.append(grant.fencing_token)
            assert tokens == sorted(set(tokens)), tokens
            assert (await one.lock_info("native/ctx"))["holders"] == []

    asyncio.run(run())


def test_concurrent_native_calls_share_requests_and_each_gets_its_own_answer(cluster: LocalCluster) -> None:
    """Many owners' acquires and releases issued at once through one client leave as LockBatches
    (fabric/core/client_core.py): each still gets its own grant, and a wait in one batch is decided
    by a release in the same batch or a later one."""

    async def run() -> None:
        async with AsyncClient(cluster.addresses) as client:
            owners = [f"batch-owner-{i}" for i in range(40)]
            grants = await asyncio.gather(
                *(client.call(Acquire(f"batch/{o}", "exclusive", o, 0, 30_000)) for o in owners)
            )
            tokens = [g.value["fencing_token"] for g in grants if isinstance(g, Ok)]
            assert len(set(tokens)) == len(owners), grants
            assert client.stats["batched_lock_ops"] >= len(owners)
            batches_before = client.stats["lock_batches"]
            # One iteration: a wait behind a holder, and that holder's release, in one batch.
            waiting, released = await asyncio.gather(
                client.call(Acquire(f"batch/{owners[0]}", "exclusive", "batch-waiter", 10_000, 30_000)),
                client.call(Release(f"batch/{owners[0]}", owners[0])),
            )
            assert isinstance(released, Ok) and released.value == {"released": True}
            assert isinstance(waiting, Ok) and waiting.value["fencing_token"] > max(tokens), waiting
            assert client.stats["lock_batches"] == batches_before + 1
            # A wait decided by a later batch: its answer comes on its own.
            later = asyncio.ensure_future(
                client.call(Acquire(f"batch/{owners[1]}", "exclusive", "batch-late", 10_000, 30_000))
            )
            while not (await client.lock_info(f"batch/{owners[1]}"))["waiters"]:
                await asyncio.sleep(0.02)
            results = await asyncio.gather(*(client.call(Release(f"batch/{o}", o)) for o in owners[1:]))
            assert all(isinstance(r, Ok) and r.value["released"] for r in results), results
            granted = await asyncio.wait_for(later, 30)
            assert isinstance(granted, Ok) and granted.value["granted"], granted
            for owner, resource in (("batch-waiter", owners[0]), ("batch-late", owners[1])):
                assert isinstance(await client.call(Release(f"batch/{resource}", owner)), Ok)

    asyncio.run(run())


def test_two_readers_upgrading_one_lock_deadlock(cluster: LocalCluster) -> None:
    async def run() -> None:
        async with AsyncClient(cluster.addresses) as one, AsyncClient(cluster.addresses) as two:
            for client in (one, two):
                assert (await client.acquire("native/upgrade", "shared")).mode == "shared"
            first = asyncio.ensure_future(one.acquire("native/upgrade", "exclusive", wait_ms=20_000))
            while not (await two.lock_info("native/upgrade"))["waiters"]:
                await asyncio.sleep(0.02)
            with pytest.raises(Deadlock) as raised:
                await two.acquire("native/upgrade", "exclusive", wait_ms=20_000)
            assert sorted(raised.value.detail["cycle"]) == sorted([one.client_id, two.client_id])
            assert not first.done()
            # The victim keeps its shared hold until it releases; then the other upgrade goes ahead.
            assert await two.release("native/upgrade") is True
            upgraded = await asyncio.wait_for(first, 30)
            assert upgraded.mode == "exclusive"
            holders = (await two.lock_info("native/upgrade"))["holders"]
            assert holders == [
                {"owner": one.client_id, "mode": "exclusive", "fencing_token": upgraded.fencing_token}
            ]
            assert await one.release("native/upgrade") is True

    asyncio.run(run())


# ---- failures (their own cluster) -----------------------------------------------------------


def test_a_lock_survives_kill_9_of_the_control_leader() -> None:
    with LocalCluster(size=3) as c:
        victim = control_leader(c, "n1")
        assert victim is not None
        survivors = [n for n in c.ids if n != victim]
        with Client(c.addresses, client_id="survivor-holder") as holder:
            grant = holder.acquire("failover/r", "exclusive")
            # An HTTP client that never renews: its lease must end under the next leader too.
            status, ghost = acquire(c, survivors[0], "failover/ghost", "ghost", ttl_ms=2000)
            assert status == 200

            c.kill(victim)
            wait_for(
                "a new control leader", lambda: all(control_leader(c, n) in survivors for n in survivors)
            )

            token = grant.fencing_token
            expected = [{"owner": "survivor-holder", "mode": "exclusive", "fencing_token": token}]
            assert holder.lock_info("failover/r")["holders"] == expected
            for node in survivors:
                assert info(c, node, "failover/r")["holders"] == expected
            status, body = acquire(c, survivors[1], "failover/r", "intruder", wait_ms=0)
            assert status == 408 and body["error"] == "lock_timeout"
            assert holder.renew() > 0  # the lease session goes on through the new leader

            def heir_gets_it() -> Any:
                status, got = acquire(c, survivors[1], "failover/ghost", "heir", wait_ms=0)
                return got if status == 200 else None

            heir = wait_for("the ghost's lease to end", heir_gets_it)
            assert heir["fencing_token"] > ghost["fencing_token"]
            assert info(c, survivors[0], "failover/r")["holders"] == expected
            assert holder.release("failover/r") is True
        status, after = acquire(c, survivors[0], "failover/r", "intruder", wait_ms=0)
        assert status == 200 and after["fencing_token"] > grant.fencing_token
