"""Tests for the KV linearizability checker: hand-written histories plus property tests
that generate histories from a real atomic register (must pass) and then corrupt one read
so that no linearization can explain it (must fail)."""

from __future__ import annotations

import dataclasses
import random

from linearizability import CheckResult, Operation, check_kv_history


def put(client: int, call: int, ret: int | None, value: object, key: str = "k") -> Operation:
    return Operation(client, call, ret, "put", key, value=value)


def get(client: int, call: int, ret: int | None, output: object, key: str = "k") -> Operation:
    return Operation(client, call, ret, "get", key, output=output)


def delete(client: int, call: int, ret: int | None, key: str = "k") -> Operation:
    return Operation(client, call, ret, "delete", key)


def assert_ok(ops: list[Operation]) -> None:
    result = check_kv_history(ops)
    assert result.ok, result.explanation
    assert not result.inconclusive


def assert_violation(ops: list[Operation], key: str = "k") -> CheckResult:
    result = check_kv_history(ops)
    assert not result.ok, "expected a violation"
    assert not result.inconclusive, result.explanation
    assert result.key == key
    return result


# --- hand-written histories -------------------------------------------------------------


def test_empty_history() -> None:
    assert_ok([])


def test_sequential_ok() -> None:
    assert_ok([get(0, 0, 1, None), put(0, 2, 3, "a"), get(1, 4, 5, "a"), put(1, 6, 7, "b"),
               get(0, 8, 9, "b")])


def test_concurrent_put_and_get_may_see_either_value() -> None:
    base = [put(0, 0, 1, "a"), put(1, 2, 10, "b")]
    assert_ok([*base, get(2, 3, 5, "a")])
    assert_ok([*base, get(2, 3, 5, "b")])


def test_stale_read_after_completed_put() -> None:
    result = assert_violation([put(0, 0, 1, "a"), put(0, 2, 3, "b"), get(1, 4, 5, "a")])
    assert "get('k') -> 'a'" in result.explanation


def test_read_of_value_never_written() -> None:
    result = assert_violation([put(0, 0, 1, "a"), get(1, 2, 3, "zzz")])
    assert "never written" in result.explanation


def test_read_from_the_future() -> None:
    # The get returned before the put was even called.
    assert_violation([get(1, 0, 1, "a"), put(0, 2, 3, "a")])


def test_ret_equal_to_call_counts_as_concurrent() -> None:
    # Same tick: lenient, the get may be ordered before the put.
    assert_ok([put(0, 0, 5, "a"), get(1, 5, 6, None)])
    assert_violation([put(0, 0, 5, "a"), get(1, 6, 7, None)])


def test_delete_semantics() -> None:
    assert_ok([put(0, 0, 1, "a"), delete(0, 2, 3), get(1, 4, 5, None), put(1, 6, 7, "b"), get(0, 8, 9, "b")])
    assert_violation([put(0, 0, 1, "a"), delete(0, 2, 3), get(1, 4, 5, "a")])
    assert_violation([put(0, 0, 1, "a"), get(1, 2, 3, None)])  # absent, but nothing deleted it
    assert_ok([put(0, 0, 1, "a"), delete(0, 2, 6), get(1, 3, 4, "a"), get(1, 5, 7, None)])


def test_unknown_outcome_put_read_later_is_ok() -> None:
    assert_ok([put(0, 0, 1, "a"), put(1, 2, None, "b"), get(2, 50, 51, "b")])


def test_unknown_outcome_put_never_read_is_ok() -> None:
    assert_ok([put(0, 0, 1, "a"), put(1, 2, None, "b"), get(2, 50, 51, "a"), get(2, 52, 53, "a")])
    assert_ok([put(0, 0, 1, "a"), delete(1, 2, None), get(2, 50, 51, "a")])


def test_unknown_outcome_put_read_then_older_value_is_violation() -> None:
    assert_violation([put(0, 0, 1, "a"), put(1, 2, None, "b"), get(2, 50, 51, "b"), get(2, 52, 53, "a")])


def test_unknown_outcome_put_cannot_take_effect_before_its_call() -> None:
    assert_violation([get(2, 0, 1, "b"), put(1, 2, None, "b")])


def test_unknown_outcome_get_is_ignored() -> None:
    assert_ok([put(0, 0, 1, "a"), get(1, 2, None, "garbage")])


def test_keys_are_independent() -> None:
    ops = [put(0, 0, 1, "a", key="x"), put(1, 0, 1, "b", key="y"), get(2, 2, 3, "a", key="x"),
           get(2, 4, 5, "b", key="y")]
    assert_ok(ops)
    bad = [*ops, get(3, 6, 7, "a", key="y")]  # "a" was only ever written to x
    assert_violation(bad, key="y")


def test_unhashable_values() -> None:
    assert_ok([put(0, 0, 1, [1, 2]), get(1, 2, 3, [1, 2])])
    assert_violation([put(0, 0, 1, [1, 2]), put(0, 2, 3, {"a": 1}), get(1, 4, 5, [1, 2])])


def test_budget_exhaustion_is_reported_as_inconclusive() -> None:
    result = check_kv_history([put(0, 0, 1, "a"), put(0, 2, 3, "b"), get(0, 4, 5, "b")], max_states=2)
    assert not result.ok and result.inconclusive
    assert result.explanation == "inconclusive: state budget exhausted"


def test_definite_violation_wins_over_inconclusive_key() -> None:
    ops = [put(0, 0, 1, "a", key="big"), put(0, 2, 3, "b", key="big"), get(0, 4, 5, "b", key="big"),
           put(0, 0, 1, "a", key="bad"), get(0, 2, 3, "zzz", key="bad")]
    result = check_kv_history(ops, max_states=2)
    assert not result.ok and not result.inconclusive and result.key == "bad"


def test_invalid_operations_are_rejected() -> None:
    for bad in (Operation(0, 0, 1, "cas", "k"), put(0, 5, 4, "a")):
        try:
            check_kv_history([bad])
        except ValueError:
            continue
        raise AssertionError(f"{bad} was accepted")


# --- property tests ---------------------------------------------------------------------


def generate_history(
    rng: random.Random, n_ops: int, n_clients: int, keys: list[str], p_unknown: float = 0.08
) -> list[Operation]:
    """A history from a true atomic register: each op takes effect at one point inside its
    interval (or, for unknown outcomes, at some point after its call, or never)."""
    drafts: list[dict[str, object]] = []
    points: list[tuple[float, int]] = []
    value_counter = 0
    next_free = [rng.randint(0, 3) for _ in range(n_clients)]
    for i in range(n_ops):
        client = i % n_clients
        call = next_free[client] + rng.randint(0, 3)
        ret = call + rng.randint(0, 12)
        kind = rng.choices(["put", "get", "delete"], weights=[4, 5, 1])[0]
        value = None
        if kind == "put":
            value_counter += 1
            value = f"v{value_counter}"
        draft: dict[str, object] = {"client": client, "call": call, "ret": ret, "kind": kind,
                                    "key": rng.choice(keys), "value": value, "output": None}
        next_free[client] = ret
        if rng.random() < p_unknown:  # client gives up; the op may still land much later
            draft["ret"] = None
            if rng.random() < 0.5:
                points.append((call + rng.uniform(0, 40), i))
        else:
            points.append((rng.uniform(call, ret), i))
        drafts.append(draft)

    state: dict[object, object] = {}
    for _, i in sorted(points):
        d = drafts[i]
        if d["kind"] == "get":
            d["output"] = state.get(d["key"])
        elif d["kind"] == "put":
            state[d["key"]] = d["value"]
        else:
            state.pop(d["key"], None)
    return [Operation(d["client"], d["call"], d["ret"], d["kind"], d["key"], d["value"], d["output"])  # type: ignore[arg-type]
            for d in drafts]


def impossible_reads(ops: list[Operation], g: Operation) -> list[object]:
    """Values (among those written to g's key, plus absent) that no linearization lets g
    read: every write of the value either starts after g returns, or is followed, strictly
    in real time, by a completed write of another value that itself finishes before g
    starts.  The initial "absent" is a write at time -inf."""
    writes = [(o.call, o.ret, o.value if o.kind == "put" else None)
              for o in ops if o.key == g.key and o.kind != "get"]
    writes.append((-(10**9), -(10**9), None))
    assert g.ret is not None
    result = []
    for v in {w[2] for w in writes}:
        def dead(w: tuple[int, int | None, object], v: object = v) -> bool:
            call, ret, _ = w
            if call > g.ret:  # type: ignore[operator]
                return True
            return ret is not None and any(
                o[2] != v and o[1] is not None and ret < o[0] and o[1] < g.call for o in writes
            )
        if all(dead(w) for w in writes if w[2] == v):
            result.append(v)
    return result


def test_property_true_register_histories_are_linearizable_and_corruptions_are_caught() -> None:
    nontrivial = 0
    for seed in range(200):
        rng = random.Random(seed)
        keys = ["a"] if seed % 2 else ["a", "b", "c"]
        ops = generate_history(rng, rng.randint(5, 60), rng.randint(1, 6), keys)
        result = check_kv_history(ops)
        assert result.ok, f"seed={seed}: true-register history rejected: {result.explanation}"

        gets = [i for i, o in enumerate(ops) if o.kind == "get" and o.ret is not None]
        if not gets:
            continue
        i = rng.choice(gets)
        candidates = [v for v in impossible_reads(ops, ops[i]) if v != ops[i].output]
        if candidates:
            nontrivial += 1
            bad_value = rng.choice(sorted(candidates, key=repr))
        else:
            bad_value = "never-written"
        corrupted = list(ops)
        corrupted[i] = dataclasses.replace(ops[i], output=bad_value)
        result = check_kv_history(corrupted)
        assert not result.ok and not result.inconclusive, (
            f"seed={seed}: corrupted read {corrupted[i]} accepted ({result.explanation})"
        )
        assert result.key == ops[i].key, f"seed={seed}: wrong key blamed: {result}"
    # Guard against the generator silently degenerating into "never written" corruptions,
    # which only exercise the fast path, not the search.
    assert nontrivial >= 100, nontrivial


def test_property_larger_concurrent_histories() -> None:
    for seed in range(1000, 1005):
        rng = random.Random(seed)
        ops = generate_history(rng, 600, 8, ["a"])
        result = check_kv_history(ops)
        assert result.ok, f"seed={seed}: {result.explanation}"
