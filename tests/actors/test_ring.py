"""Key-to-shard hashing and shard-to-node placement: stable, spread out, and moving little."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from syncfab.actors.ring import HashRing, ShardPlacement, shard_for_key, stable_hash

THREE = ["n1", "n2", "n3"]
FOUR = ["n1", "n2", "n3", "n4"]
FIVE = ["n1", "n2", "n3", "n4", "n5"]


def owner_map(placement: ShardPlacement) -> dict[int, tuple[str, ...]]:
    return {shard: placement.replicas(shard) for shard in placement.shards}


# --- stability: data placement depends on these values, so they are pinned forever ---------------


def test_shard_for_key_matches_the_crc32_check_value() -> None:
    # 0xCBF43926 is the published CRC-32 check value for b"123456789": an anchor outside our code.
    assert shard_for_key("123456789", 8) == 0xCBF43926 % 8 + 1 == 7


@pytest.mark.parametrize(
    ("key", "shard_count", "expected"),
    [("", 8, 1), ("orders", 8, 7), ("orders", 16, 15), ("user:42", 8, 7), ("ключ", 8, 3), ("ключ", 16, 11)],
)
def test_shard_for_key_is_pinned(key: str, shard_count: int, expected: int) -> None:
    assert shard_for_key(key, shard_count) == expected


def test_stable_hash_is_pinned() -> None:
    assert stable_hash("") == 16476032584258269876
    assert stable_hash("shard/1") == 5879271572404517807
    assert stable_hash("syncfab") == 12364053410997509857


def test_shard_for_key_rejects_no_shards() -> None:
    with pytest.raises(ValueError):
        shard_for_key("k", 0)


def test_shard_for_key_spreads_keys_evenly() -> None:
    counts = Counter(shard_for_key(f"key-{i}", 8) for i in range(10_000))
    assert sorted(counts) == list(range(1, 9))
    even = 10_000 / 8
    assert all(0.8 * even <= n <= 1.2 * even for n in counts.values()), counts


# --- determinism -----------------------------------------------------------------------------------


def test_same_inputs_give_the_same_placement_whatever_the_input_order() -> None:
    a = ShardPlacement.build(FIVE, 16)
    b = ShardPlacement.build(list(reversed(FIVE)), 16)
    assert a == b
    assert a.as_dict() == b.as_dict()


@pytest.mark.parametrize("seed", ["0", "1", "4242"])
def test_placement_is_identical_in_another_process(seed: str) -> None:
    code = (
        "import json; from syncfab.actors.ring import ShardPlacement, shard_for_key; "
        f"p = ShardPlacement.build({FIVE!r}, 16); "
        "print(json.dumps([p.as_dict(), [shard_for_key(f'k{i}', 16) for i in range(50)]]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": seed}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    here = ShardPlacement.build(FIVE, 16)
    expected = [here.as_dict(), [shard_for_key(f"k{i}", 16) for i in range(50)]]
    assert json.loads(out.stdout) == expected


# --- shape of a placement --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "replication", "width"), [(THREE, 3, 3), (FIVE, 3, 3), (FIVE, 1, 1), (THREE, 5, 3)]
)
def test_replicas_are_distinct_members_and_exactly_r(nodes: list[str], replication: int, width: int) -> None:
    placement = ShardPlacement.build(nodes, 32, replication=replication)
    assert placement.replication == width
    for shard in placement.shards:
        replicas = placement.replicas(shard)
        assert len(replicas) == width
        assert len(set(replicas)) == width
        assert set(replicas) <= set(nodes)
        assert placement.preferred_leader(shard) in replicas


def test_control_group_has_every_node_and_no_preferred_leader() -> None:
    placement = ShardPlacement.build(FIVE, 8)
    assert placement.replicas(0) == tuple(FIVE)
    assert placement.preferred_leader(0) is None
    for node in FIVE:
        groups = placement.groups_of(node)
        assert groups[0] == 0
        assert groups == sorted(groups)
        assert groups[1:] == [s for s in placement.shards if node in placement.replicas(s)]


def test_unknown_group_or_node_is_an_error() -> None:
    placement = ShardPlacement.build(THREE, 8)
    for group in (-1, 9):
        with pytest.raises(KeyError):
            placement.replicas(group)
    with pytest.raises(KeyError):
        placement.groups_of("n9")


def test_preferred_leaders_spread_3_3_2_over_three_nodes() -> None:
    placement = ShardPlacement.build(THREE, 8)
    assert sorted(placement.leader_counts().values()) == [2, 3, 3]


@pytest.mark.parametrize(("nodes", "shard_count"), [(FOUR, 8), (FOUR, 64), (FIVE, 16), (FIVE, 64)])
def test_preferred_leaders_differ_by_at_most_one(nodes: list[str], shard_count: int) -> None:
    counts = ShardPlacement.build(nodes, shard_count).leader_counts().values()
    assert max(counts) - min(counts) <= 1


def test_as_dict_is_json_ready() -> None:
    placement = ShardPlacement.build(THREE, 4)
    data = json.loads(json.dumps(placement.as_dict()))
    assert data["groups"][0] == {"group": 0, "replicas": THREE, "preferred_leader": None}
    assert [g["group"] for g in data["groups"]] == [0, 1, 2, 3, 4]


# --- membership changes ----------------------------------------------------------------------------


def test_adding_a_node_moves_about_a_quarter_of_the_shards_all_to_the_new_node() -> None:
    before = owner_map(ShardPlacement.build(THREE, 64, replication=1))
    after = owner_map(ShardPlacement.build(FOUR, 64, replication=1))
    moved = [shard for shard in before if before[shard] != after[shard]]
    assert 0.10 <= len(moved) / 64 <= 0.45, len(moved)
    assert all(after[shard] == ("n4",) for shard in moved)


def test_adding_a_node_changes_at_most_one_replica_per_shard() -> None:
    before = owner_map(ShardPlacement.build(FOUR, 64))
    after = owner_map(ShardPlacement.build(FIVE, 64))
    for shard in before:
        gained = set(after[shard]) - set(before[shard])
        assert gained <= {"n5"}
        assert len(set(before[shard]) - set(after[shard])) == len(gained)


@pytest.mark.parametrize("replication", [1, 3])
def test_removing_a_node_only_moves_shards_it_held(replication: int) -> None:
    before = owner_map(ShardPlacement.build(FIVE, 64, replication=replication))
    after = owner_map(ShardPlacement.build([n for n in FIVE if n != "n2"], 64, replication=replication))
    for shard in before:
        if "n2" in before[shard]:
            # The survivors keep their order; one newcomer joins at the end.
            survivors = tuple(n for n in before[shard] if n != "n2")
            assert after[shard][: len(survivors)] == survivors
        else:
            assert after[shard] == before[shard]


# --- the ring itself -------------------------------------------------------------------------------


def test_ring_walk_visits_every_node_once() -> None:
    ring = HashRing(FIVE, vnodes=16)
    for point in (0, 1 << 63, (1 << 64) - 1, stable_hash("x")):
        walked = list(ring.walk(point))
        assert sorted(walked) == FIVE


def test_ring_owners_follow_the_walk_from_the_keys_point() -> None:
    ring = HashRing(FIVE)
    assert ring.owners("k", 3) == list(ring.walk(stable_hash("k")))[:3]
    assert ring.owners("k", 0) == []
    assert len(ring.owners("k", 9)) == 5


def test_ring_add_and_remove_round_trip() -> None:
    ring = HashRing(THREE)
    owners = {f"k{i}": ring.owners(f"k{i}", 2) for i in range(200)}
    ring.add("n4")
    assert ring.nodes == tuple(FOUR)
    ring.remove("n4")
    assert ring.nodes == tuple(THREE)
    assert {key: ring.owners(key, 2) for key in owners} == owners


def test_ring_membership_errors() -> None:
    ring = HashRing(THREE)
    with pytest.raises(ValueError):
        ring.add("n1")
    with pytest.raises(KeyError):
        ring.remove("n9")
    with pytest.raises(ValueError):
        HashRing(THREE, vnodes=0)
    assert list(HashRing().walk(0)) == []
    with pytest.raises(ValueError):
        ShardPlacement.build([], 8)
