"""The session table: retries answered from the record, acknowledged ids stale, pruning amortised
and invisible (answers and snapshots never depend on when results below the floor were dropped)."""

from __future__ import annotations

from syncfab.actors.results import WAITING, Err, Ok
from syncfab.actors.sessions import PRUNE_ENTRIES_MIN, SessionTable


def ok(n: int) -> Ok:
    return Ok({"n": n})


def pipeline(table: SessionTable, client: str, ids: range, window: int) -> None:
    """Records as a pipelining client's requests arrive: ``acked`` lags each id by ``window``."""
    for rid in ids:
        table.record(client, rid, max(1, rid - window + 1), ok(rid))


def test_a_new_request_is_none_and_a_retry_gets_its_recorded_result() -> None:
    table = SessionTable()
    assert table.lookup("c", 1, 1) is None
    table.record("c", 1, 1, ok(1))
    table.record("c", 2, 1, WAITING)
    assert table.lookup("c", 1, 1) == ok(1)
    assert table.lookup("c", 2, 1) is WAITING
    assert table.lookup("c", 3, 1) is None
    assert table.lookup("other", 1, 1) is None


def test_a_waiting_record_is_replaced_by_its_answer() -> None:
    table = SessionTable()
    table.record("c", 1, 1, WAITING)
    table.replace("c", 1, ok(7))
    table.replace("c", 9, ok(9))  # never recorded: nothing to replace
    table.replace("nobody", 1, ok(1))
    assert table.lookup("c", 1, 1) == ok(7)
    assert table.lookup("c", 9, 1) is None


def test_an_id_below_the_floor_is_stale_even_while_its_result_is_still_kept() -> None:
    table = SessionTable()
    for rid in range(1, 5):
        table.record("c", rid, 1, ok(rid))
    table.record("c", 5, 4, ok(5))  # ids 1..3 acknowledged; too few results to prune yet
    assert 1 in table._sessions["c"].results
    stale = Err("stale_request", "request 1 was already acknowledged")
    assert table.lookup("c", 1, 4) == stale
    assert table.lookup("c", 3, 4) == Err("stale_request", "request 3 was already acknowledged")
    assert table.lookup("c", 4, 4) == ok(4)


def test_the_floor_never_moves_back() -> None:
    table = SessionTable()
    table.record("c", 10, 10, ok(10))
    table.record("c", 11, 3, ok(11))  # a late copy of an older request's acked
    assert table.lookup("c", 9, 3) == Err("stale_request", "request 9 was already acknowledged")
    assert table.lookup("c", 10, 3) == ok(10)


def test_pruning_is_amortised_and_keeps_the_map_within_twice_what_is_outstanding() -> None:
    table = SessionTable()
    window = 32
    prunes = 0
    last = None
    for rid in range(1, 10_001):
        pipeline(table, "c", range(rid, rid + 1), window)
        results = table._sessions["c"].results
        if results is not last:
            prunes += 1
            last = results
        assert len(results) <= max(PRUNE_ENTRIES_MIN, 2 * window) + 1
    # Every record used to prune a map of this size; now about once per window of records.
    assert prunes <= 10_000 // (window // 2)


def test_snapshots_and_answers_do_not_depend_on_when_pruning_happened() -> None:
    """One table lives through the whole history; another is restored from a snapshot midway,
    so their maps are pruned at different times and hold different ids below the floor."""
    lived = SessionTable()
    pipeline(lived, "a", range(1, 200), 32)
    pipeline(lived, "b", range(1, 5), 2)
    restored = SessionTable()
    restored.restore(lived.snapshot())
    maps_differed = False
    for step in range(200, 400):
        for table in (lived, restored):
            pipeline(table, "a", range(step, step + 1), 32)
            if step % 50 == 0:
                pipeline(table, "b", range(step, step + 1), 2)
        assert lived.snapshot() == restored.snapshot()
        maps_differed |= lived._sessions["a"].results.keys() != restored._sessions["a"].results.keys()
        for rid in range(step - 70, step + 2):
            assert lived.lookup("a", rid, 1) == restored.lookup("a", rid, 1)
    assert maps_differed


def test_a_snapshot_leaves_out_results_below_the_floor() -> None:
    table = SessionTable()
    for rid in range(1, 5):
        table.record("c", rid, 1, ok(rid))
    table.record("c", 5, 4, ok(5))
    restored = SessionTable()
    restored.restore(table.snapshot())
    assert list(restored._sessions["c"].results) == [4, 5]
    assert restored.lookup("c", 2, 4) == table.lookup("c", 2, 4)


def test_the_least_recently_active_client_is_forgotten_first() -> None:
    table = SessionTable(clients_max=2)
    table.record("a", 1, 1, ok(1))
    table.record("b", 1, 1, ok(1))
    table.record("a", 2, 1, ok(2))  # a is now the more recently active
    table.record("c", 1, 1, ok(1))
    assert len(table) == 2
    assert table.lookup("b", 1, 1) is None  # forgotten: a retry would apply again
    assert table.lookup("a", 1, 1) == ok(1) and table.lookup("c", 1, 1) == ok(1)


def test_a_session_handed_out_answers_as_the_table_does() -> None:
    table = SessionTable()
    table.record("c", 1, 1, ok(1))
    session = table.session("c", 3)  # what a batch does first: the floor rises to 3
    assert session.lookup(1) == Err("stale_request", "request 1 was already acknowledged")
    assert session.lookup(4) is None
    session.record(4, ok(4))
    assert table.lookup("c", 4, 3) == ok(4) and table.lookup("c", 2, 3) == session.lookup(2)
    table.record("d", 1, 1, ok(1))
    table.session("c", 3)  # most recently active again: "d" would be forgotten first
    assert list(table._sessions) == ["d", "c"]
