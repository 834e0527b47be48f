"""The wait-for graph on its own: edges in and out, and cycles found the same way every time."""

from __future__ import annotations

import random

import pytest

from syncfab.actors.wait_for import WaitForGraph


def ring(owners: list[str]) -> WaitForGraph:
    graph = WaitForGraph()
    for a, b in zip(owners, owners[1:] + owners[:1], strict=True):
        graph.add_edge(a, b)
    return graph


def test_edges_are_added_removed_and_replaced() -> None:
    graph = WaitForGraph()
    graph.add_edge("a", "b")
    graph.add_edge("a", "c")
    graph.add_edge("a", "b")  # a set: adding twice is one edge
    assert graph.edges() == [("a", "b"), ("a", "c")]
    assert len(graph) == 2 and ("a", "c") in graph and ("c", "a") not in graph
    graph.remove_edge("a", "b")
    graph.remove_edge("a", "zz")  # absent: nothing happens
    graph.remove_edge("zz", "a")
    assert graph.successors("a") == ["c"]
    graph.set_edges("a", ["d", "b"])
    assert graph.successors("a") == ["b", "d"]
    graph.set_edges("a", [])
    assert graph.edges() == [] and len(graph) == 0


@pytest.mark.parametrize("bad", ["add", "set"])
def test_self_edges_are_refused(bad: str) -> None:
    graph = WaitForGraph()
    with pytest.raises(ValueError):
        if bad == "add":
            graph.add_edge("a", "a")
        else:
            graph.set_edges("a", ["b", "a"])
    assert graph.edges() == []


def test_no_cycle_in_a_chain_or_a_diamond() -> None:
    graph = WaitForGraph()
    for a, b in [("a", "b"), ("b", "c"), ("a", "d"), ("d", "c"), ("c", "e")]:
        graph.add_edge(a, b)
    assert all(graph.find_cycle(o) is None for o in "abcdez")
    assert graph.is_acyclic()


@pytest.mark.parametrize("length", [2, 3, 4, 5, 8])
def test_a_ring_is_found_from_every_member_in_edge_order(length: int) -> None:
    owners = [f"o{i}" for i in range(length)]
    graph = ring(owners)
    assert not graph.is_acyclic()
    for i, o in enumerate(owners):
        assert graph.find_cycle(o) == owners[i:] + owners[:i]


def test_the_cycle_must_pass_through_the_start() -> None:
    graph = ring(["b", "c"])
    graph.add_edge("a", "b")  # a reaches a cycle but is not on one
    assert graph.find_cycle("a") is None
    assert graph.find_cycle("b") == ["b", "c"]


def test_the_shortest_cycle_through_the_start_wins() -> None:
    graph = ring(["a", "b", "c", "d"])
    graph.add_edge("a", "x")
    graph.add_edge("x", "a")
    assert graph.find_cycle("a") == ["a", "x"]
    graph.remove_edge("x", "a")
    assert graph.find_cycle("a") == ["a", "b", "c", "d"]


def test_ties_are_broken_by_name_not_by_insertion_order() -> None:
    one, two = WaitForGraph(), WaitForGraph()
    edges = [("s", "m"), ("m", "s"), ("s", "k"), ("k", "s")]
    for a, b in edges:
        one.add_edge(a, b)
    for a, b in reversed(edges):
        two.add_edge(a, b)
    assert one.find_cycle("s") == two.find_cycle("s") == ["s", "k"]


@pytest.mark.parametrize("seed", range(20))
def test_find_cycle_agrees_with_a_brute_force_search(seed: int) -> None:
    rng = random.Random(seed)
    owners = [f"o{i}" for i in range(7)]
    graph = WaitForGraph()
    for _ in range(rng.randrange(4, 20)):  # every way in and out, so the waited-on counts are kept right
        a, b = rng.sample(owners, 2)
        roll = rng.random()
        if roll < 0.6:
            graph.add_edge(a, b)
        elif roll < 0.8:
            graph.remove_edge(a, b)
        else:
            graph.set_edges(a, rng.sample([o for o in owners if o != a], rng.randrange(0, 3)))
    edges = set(graph.edges())

    def reaches(src: str, dst: str) -> bool:
        seen, todo = {src}, [src]
        while todo:
            node = todo.pop()
            for a, b in edges:
                if a == node and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return dst in seen

    cyclic = False
    for o in owners:
        cycle = graph.find_cycle(o)
        on_cycle = any(reaches(b, o) for a, b in edges if a == o)
        assert (cycle is not None) == on_cycle, f"seed={seed} owner={o} edges={sorted(edges)}"
        if cycle is not None:
            cyclic = True
            assert cycle[0] == o and len(set(cycle)) == len(cycle), f"seed={seed}"
            closing = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
            assert all(e in edges for e in closing), f"seed={seed} cycle={cycle}"
    assert graph.is_acyclic() == (not cyclic), f"seed={seed}"
