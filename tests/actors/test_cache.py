"""The cache protocol, pure: both transition tables, and the races a near cache must survive,
each driven step by step through one home and three holders (tests/actors/cache_rig.py)."""

from __future__ import annotations

import msgspec
import pytest
from cache_rig import Rig

from syncfab.actors.cache_directory import DIRECTORY, UNCACHED
from syncfab.actors.cache_lines import NEAR, step
from syncfab.actors.cache_ops import (
    EXCLUSIVE,
    INVALID,
    MODIFIED,
    SHARED,
    VERSION_STEP,
    WRITE_BACK,
    CacheConfig,
    CacheRead,
    CacheWrite,
)
from syncfab.actors.messages import Beat, CacheFetch
from syncfab.actors.results import Err, Ok
from syncfab.fabric.core.node_cache import home_receives

STATES = (MODIFIED, EXCLUSIVE, SHARED, INVALID)

# -- the tables ----------------------------------------------------------------------------

# Every (state, event) pair a node's line has, and where it goes; anything else is a bug.
NODE_SIDE = {
    (SHARED, "inval"): INVALID,
    (INVALID, "inval"): INVALID,
    (EXCLUSIVE, "write"): MODIFIED,
    (MODIFIED, "write"): MODIFIED,
    (EXCLUSIVE, "recall_shared"): SHARED,
    (MODIFIED, "recall_shared"): SHARED,
    (EXCLUSIVE, "recall"): INVALID,
    (MODIFIED, "recall"): INVALID,
    (SHARED, "recall"): INVALID,
    (MODIFIED, "flushed"): EXCLUSIVE,
    **{(s, "lost"): INVALID for s in (MODIFIED, EXCLUSIVE, SHARED)},
    **{(s, "evict"): INVALID for s in (MODIFIED, EXCLUSIVE, SHARED)},
    **{(s, f"grant_{g}"): g for s in (INVALID, SHARED, EXCLUSIVE) for g in STATES},
    (MODIFIED, "grant_M"): MODIFIED,
    (MODIFIED, "grant_E"): EXCLUSIVE,
    (MODIFIED, "grant_I"): INVALID,
}
EVENTS = sorted({e for _, e in NODE_SIDE})


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("event", EVENTS)
def test_every_node_side_transition(state: str, event: str) -> None:
    expected = NODE_SIDE.get((state, event))
    if expected is None:
        with pytest.raises(AssertionError, match="no MESI transition"):
            step(state, event)
    else:
        assert step(state, event) == expected
    assert NEAR == NODE_SIDE


def test_the_directory_table_names_every_owner_change() -> None:
    # The home's view: a grant makes an owner or a sharer; an owner leaves by recall, drop or lapse.
    assert DIRECTORY[(UNCACHED, "grant_E")] == EXCLUSIVE and DIRECTORY[(SHARED, "grant_S")] == SHARED
    assert {DIRECTORY[(s, "recall_shared")] for s in (EXCLUSIVE, MODIFIED)} == {SHARED}
    owners_leave = ("recall", "dropped", "lapsed")
    assert {DIRECTORY[(s, e)] for s in (EXCLUSIVE, MODIFIED) for e in owners_leave} == {UNCACHED}
    assert (SHARED, "grant_M") in DIRECTORY and (UNCACHED, "recall") not in DIRECTORY


# -- reads and writes ------------------------------------------------------------------------


def test_a_miss_then_hits_and_sharers() -> None:
    rig = Rig()
    assert isinstance(rig.write("n1", "k", {"v": 1}), Ok)
    first = value_of_read(rig, "n2")  # n1, the writer, owns it (E): recalled to S first
    assert (first.hit, first.state, first.version) == (False, SHARED, rig.memory("k")[1])
    again = value_of_read(rig, "n2")
    assert again.hit and msgspec.msgpack.decode(again.value) == {"v": 1}
    rig.read("n3", "k")
    assert rig.holders("k") == {"n1": SHARED, "n2": SHARED, "n3": SHARED}


def value_of_read(rig: Rig, node: str, key: str = "k") -> object:
    result = rig.read(node, key)
    assert isinstance(result, Ok), result
    return result.value


def test_alone_a_reader_gets_exclusive_and_a_second_one_recalls_it_to_shared() -> None:
    rig = Rig()
    rig.write("n1", "k", 1)
    rig.invalidate("n1", "k")  # nobody caches it now
    assert rig.holders("k") == {}
    assert value_of_read(rig, "n2").state == EXCLUSIVE
    assert value_of_read(rig, "n3").state == SHARED
    assert rig.line("n2", "k") == SHARED and rig.holders("k") == {"n2": SHARED, "n3": SHARED}


def test_a_write_invalidates_every_other_copy_before_it_commits() -> None:
    rig = Rig()
    rig.write("n1", "k", "old")
    rig.read("n2", "k")
    rig.read("n3", "k")
    written = rig.write("n3", "k", "new")
    assert isinstance(written, Ok) and written.value.state == EXCLUSIVE
    assert (rig.line("n1", "k"), rig.line("n2", "k"), rig.line("n3", "k")) == (INVALID, INVALID, EXCLUSIVE)
    again = value_of_read(rig, "n2")
    assert msgspec.msgpack.decode(again.value) == "new" and not again.hit


def test_a_write_waits_for_a_silent_holder_until_its_lease_has_run_out() -> None:
    rig = Rig()
    rig.write("n1", "k", "old")
    rig.read("n2", "k")
    rig.hold("n2", up=True)  # n2 hears nothing and says nothing: a partition
    rid = rig.ask("n3", msgspec_write("k", "new"))
    rig.run()
    assert rid not in rig.answers and rig.memory("k")[0] == "old"  # not logged before n2 is safe
    rig.tick(rig.config.lease_ms // 2)
    assert rid not in rig.answers
    rig.tick(rig.config.home_lease_ms)
    assert isinstance(rig.answers[rid], Ok) and rig.memory("k")[0] == "new"
    # n2 still holds its line, but its own clock says the lease is over: it serves nothing.
    n2 = rig.nears["n2"]
    assert n2.sessions[1].lease_until_ms <= rig.now
    assert rig.home.lapsed == {"n2"}
    rig.release("n2")
    rig.tick(100)  # n2 asks for its lease, is told to resync, and drops what it had
    assert rig.line("n2", "k") == INVALID and n2.counters["resyncs"] == 1
    assert msgspec.msgpack.decode(value_of_read(rig, "n2").value) == "new"


def msgspec_write(key: str, value: object, policy: str = "write_through", **kw: object) -> object:
    return CacheWrite(key, msgspec.Raw(msgspec.msgpack.encode(value)), policy, **kw)  # type: ignore[arg-type]


def test_versions_grow_with_every_write_and_a_recreated_key_never_repeats_one() -> None:
    rig = Rig()
    v1 = rig.write("n1", "k", 1).value.version
    v2 = rig.write("n2", "k", 2).value.version
    assert v1 % VERSION_STEP == 0 and v2 > v1
    assert rig.delete("n3", "k") == Ok({"key": "k", "deleted": True})
    assert isinstance(rig.read("n1", "k"), Err)
    v3 = rig.write("n1", "k", 3).value.version
    assert v3 > v2
    mismatch = rig.write("n2", "k", 4, expected_version=v2)
    assert isinstance(mismatch, Err) and mismatch.code == "version_mismatch"
    assert mismatch.detail["version"] == v3
    assert rig.write("n2", "k", 4, expected_version=v3).value.version > v3
    created = rig.write("n2", "fresh", 0, expected_version=0)
    assert isinstance(created, Ok)


def test_write_back_writes_are_local_once_the_line_is_owned() -> None:
    rig = Rig()
    first = rig.write("n2", "k", 1, policy=WRITE_BACK).value
    assert first.state == MODIFIED and rig.holders("k") == {"n2": MODIFIED}
    proposals = rig.index
    second = rig.write("n2", "k", 2, policy=WRITE_BACK).value
    assert (second.version, second.state) == (first.version + 1, MODIFIED)
    assert rig.index == proposals and rig.memory("k") == (1, first.version)  # nothing logged yet
    rig.tick(rig.config.flush_ms + 20)  # flushed: memory has it, the line is clean E again
    assert rig.memory("k") == (2, second.version) and rig.line("n2", "k") == EXCLUSIVE
    # Another node's read recalls the owner to S and is answered with the owner's latest.
    rig.write("n2", "k", 3, policy=WRITE_BACK)
    got = value_of_read(rig, "n3")
    assert msgspec.msgpack.decode(got.value) == 3 and rig.line("n2", "k") == SHARED


# -- races ------------------------------------------------------------------------------


def test_a_retry_of_a_write_back_write_sent_home_is_not_applied_on_a_line_owned_since() -> None:
    # Seed 110 of the simulation, in small: a write_back write that went home is retried after
    # its node came to own the line. Applied there too, it would be applied twice (the second
    # time over whatever was written in between); sent home again, the session table answers it.
    rig = Rig()
    rig.hold("n2", down=False, up=True)  # n2's request waits on its way home...
    op = msgspec_write("k", "w", WRITE_BACK)
    rid = rig.ask("n2", op)
    rig.tick(rig.config.op_deadline_ms)  # ...until n2 gives up on it
    assert rig.answers[rid] == Err("unavailable", "the home of 'k' did not answer")
    rig.release("n2")  # then it arrives and commits: n2 owns the line, M
    version = rig.memory("k")[1]
    assert rig.memory("k")[0] == "w" and rig.line("n2", "k") == MODIFIED
    rig.settled(rig.ask("n2", CacheRead("other"), client="reader"))  # and has a live lease
    local = rig.nears["n2"].counters["local_writes"]
    del rig.answers[rid]
    again = rig.settled(rig.ask("n2", op, again=rid)).value  # the client's retry
    assert again.version == version and rig.memory("k") == ("w", version)
    assert rig.nears["n2"].counters["local_writes"] == local


def test_an_owner_whose_flush_goes_unconfirmed_stops_writing_locally() -> None:
    # Cut off from its home, an owner's local writes would be lost with its lease (a read
    # elsewhere then sees memory's older value): once a flush has waited a flush period, its
    # writes go home instead, so at most ~2 flush periods of them are at risk, as with a crash.
    rig = Rig()
    rig.write("n2", "k", 1, policy=WRITE_BACK)
    assert rig.write("n2", "k", 2, policy=WRITE_BACK).value.state == MODIFIED  # local
    near = rig.nears["n2"]
    local = near.counters["local_writes"]
    rig.hold("n2", down=True, up=True)
    rig.tick(2 * rig.config.flush_ms + 20)  # the flush went, and nothing came back
    assert rig.nears["n2"].lines.get("k").pending
    rid = rig.ask("n2", msgspec_write("k", 3, WRITE_BACK))
    rig.run()
    assert rid not in rig.answers and near.counters["local_writes"] == local  # it went home
    rig.release("n2")
    assert rig.settled(rid).value.version > 2000 and rig.memory("k")[0] == 3


def test_a_flush_crossing_a_recall_is_not_taken_for_its_answer() -> None:
    rig = Rig()
    rig.write("n2", "k", 1, policy=WRITE_BACK)
    rig.write("n2", "k", 2, policy=WRITE_BACK)
    rig.hold("n2")  # n2 does not see the recall yet...
    rid = rig.ask("n3", msgspec_write("k", 9))
    rig.run()
    rig.tick(rig.config.flush_ms + 20)  # ...and sends its flush home meanwhile
    assert rid not in rig.answers and rig.holders("k") == {"n2": MODIFIED}
    rig.release("n2")
    assert isinstance(rig.answers[rid], Ok) and rig.memory("k")[0] == 9
    assert rig.line("n2", "k") == INVALID


def test_a_recall_of_a_line_on_its_way_out_is_answered_with_what_is_going_home() -> None:
    rig = Rig(config=CacheConfig(lines_max=1, lease_ms=1_000, op_retry_ms=200))
    rig.write("n1", "other", 0)
    rig.write("n2", "k", 1, policy=WRITE_BACK)
    rig.write("n2", "k", 2, policy=WRITE_BACK)
    rig.hold("n2")
    rig.ask("n2", CacheRead("other"))
    rig.run()  # the fetch is out, its grant held
    rig.hold("n2", down=False, up=True)
    rig.release("n2", up=False)  # the grant lands: k is evicted, dirty, and its write-back held
    line = rig.nears["n2"].lines.get("k")
    assert line is not None and line.releasing
    rid = rig.ask("n3", msgspec_write("k", 9))
    rig.run()
    rig.release("n2")
    assert isinstance(rig.answers[rid], Ok)
    assert rig.memory("k")[0] == 9 and rig.line("n2", "k") == INVALID


def test_a_gap_in_the_stream_drops_every_line_of_the_shard() -> None:
    rig = Rig()
    rig.write("n1", "a", 1)
    rig.write("n1", "b", 2)
    rig.read("n2", "a")
    rig.read("n2", "b")
    rig.drop_down.add("n2")
    rid = rig.ask("n3", msgspec_write("a", 3))  # its invalidation is lost on the way to n2
    rig.run()
    assert rid not in rig.answers  # n2 has not acknowledged: the write waits
    # The home's beat names a seq n2 never saw: n2 drops the shard and says so.
    n2 = rig.nears["n2"]
    n2.on_beat([(1, rig.home.epoch, rig.home.published)], rig.now)
    assert n2.counters["gaps"] == 1 and len(n2.lines) == 0
    rig.run()
    assert isinstance(rig.answers[rid], Ok)
    assert rig.holders("b") == {"n1": SHARED}  # n2 told the home what it dropped


def test_a_duplicate_grant_does_not_overwrite_a_dirty_line() -> None:
    rig = Rig()
    rig.write("n2", "k", 1, policy=WRITE_BACK)  # n2 owns k: M, committed
    rig.write("n2", "k", 2, policy=WRITE_BACK)  # local: M, dirty
    # An old fetch of n2's, sent twice, reaches the home late: it grants E with memory's value.
    assert home_receives(rig.home, "n2", CacheFetch(op_id=12345, key="k"))
    rig.run()
    assert any("op_id=12345" in t for t in rig.trace)
    line = rig.nears["n2"].lines.get("k")
    assert line is not None and line.state == MODIFIED and msgspec.msgpack.decode(line.value) == 2


def test_an_m_owner_that_sees_a_new_epoch_writes_back_to_the_new_home_first() -> None:
    rig = Rig()
    rig.write("n2", "k", 1, policy=WRITE_BACK)
    version = rig.write("n2", "k", 2, policy=WRITE_BACK).value.version
    # Leadership moves (same node object, a new term): the directory is gone, memory is not.
    rig.home.reset()
    rig.home.start(epoch=2, now_ms=rig.now, epoch_start_index=rig.index)
    n2 = rig.nears["n2"]
    n2.on_beat([(1, 2, 0)], rig.now)
    assert n2.counters["epochs"] == 1
    rig.run()
    assert not rig.home.ready and rig.memory("k") == (2, version)  # accepted during the wait
    assert rig.line("n2", "k") == INVALID


def test_a_new_home_serves_nothing_until_one_lease_has_passed() -> None:
    rig = Rig()
    rig.write("n1", "k", 1)
    rig.home.reset()
    rig.home.start(epoch=2, now_ms=rig.now, epoch_start_index=rig.index)
    rid = rig.ask("n3", msgspec_write("k", 2))
    rig.run()
    assert rid not in rig.answers
    rig.tick(rig.config.home_lease_ms - 10)
    assert rid not in rig.answers
    rig.tick(20)
    assert isinstance(rig.answers[rid], Ok)


def test_a_beat_from_a_deposed_home_changes_nothing() -> None:
    rig = Rig()
    rig.write("n1", "k", 1)
    rig.read("n2", "k")
    n2 = rig.nears["n2"]
    n2.on_beat([(1, 0, 999)], rig.now)  # an older epoch
    assert rig.line("n2", "k") == SHARED and n2.counters["gaps"] == 0
    assert Beat(1).cache_streams == []


def test_a_ttl_is_decided_by_the_home_which_invalidates_every_copy_before_the_delete() -> None:
    rig = Rig()
    rig.write("n1", "k", 1, ttl_ms=200)
    rig.read("n2", "k")
    assert rig.line("n2", "k") == SHARED
    rig.tick(150)
    assert rig.memory("k")[0] == 1
    rig.tick(100)
    assert rig.memory("k") == (None, 0) and rig.line("n2", "k") == INVALID and rig.line("n1", "k") == INVALID
    assert rig.home.counters["expiries"] == 1


def test_a_full_directory_caches_nothing_more_and_evicts_its_least_recently_used_entry() -> None:
    rig = Rig(config=CacheConfig(directory_entries_max=1, lease_ms=1_000, op_retry_ms=200))
    rig.write("n1", "a", 1)
    rig.write("n1", "b", 2)  # no room: answered, not cached; 'a' is evicted (its copies first)
    assert rig.line("n1", "b") == INVALID
    assert list(rig.home.directory.entries) == [] and rig.line("n1", "a") == INVALID
    assert value_of_read(rig, "n2", "b").state == EXCLUSIVE  # room again
    assert rig.home.counters["evictions"] == 1


def test_a_write_back_from_an_owner_that_lost_the_line_is_refused() -> None:
    rig = Rig()
    rig.write("n2", "k", 1, policy=WRITE_BACK)
    rig.write("n2", "k", 2, policy=WRITE_BACK)
    rig.hold("n2", up=True)
    rig.tick(rig.config.home_lease_ms + 20)  # n2 lapses at the home; its lines are forgotten
    assert rig.home.lapsed == {"n2"}
    rig.write("n3", "k", 9)  # the key moves on
    rig.release("n2")
    rig.tick(100)  # n2 resyncs; its write-back of 2 cannot undo 9
    assert rig.memory("k")[0] == 9
    assert rig.nears["n2"].counters["write_backs_refused"] == 1


def test_during_the_takeover_wait_a_write_back_goes_ahead_of_the_reads_that_wait() -> None:
    rig = Rig()
    rig.write("n2", "k", 1, policy=WRITE_BACK)
    version = rig.write("n2", "k", 2, policy=WRITE_BACK).value.version  # dirty at n2
    rig.home.reset()
    rig.home.start(epoch=2, now_ms=rig.now, epoch_start_index=rig.index)
    rid = rig.ask("n3", CacheRead("k"))  # queued: the new home is not ready
    rig.run()
    rig.nears["n2"].on_beat([(1, 2, 0)], rig.now)  # n2 learns the epoch and sends its value home
    rig.run()
    assert rig.memory("k") == (2, version) and rid not in rig.answers
    rig.tick(rig.config.home_lease_ms + 20)
    assert msgspec.msgpack.decode(rig.answers[rid].value.value) == 2


def test_a_grant_held_past_the_lease_answers_only_the_reads_that_came_before_its_end() -> None:
    # Chaos (isolate-leader, suite seed 454005): a fetch's grant held in a partition arrived
    # after the lease it carried had run out, and answered a read that had joined the fetch
    # after that end with a value the home had overwritten before the read was asked.
    rig = Rig()
    assert isinstance(rig.write("n1", "k", "a"), Ok)
    rig.hold("n2")  # the home's stream to n2 is held (a partition in one direction)
    first = rig.ask("n2", CacheRead("k"))  # the fetch goes home; its grant waits before n2
    rig.run()
    overwrite = rig.ask("n3", CacheWrite("k", msgspec.Raw(msgspec.msgpack.encode("b"))))
    rig.tick(rig.config.home_lease_ms + 100)  # n2 never acks: its lease runs out, "b" commits
    assert isinstance(rig.settled(overwrite), Ok)
    late = rig.ask("n2", CacheRead("k"))  # joins the fetch still in flight, after the lease's end
    rig.release("n2")
    rig.tick(500)
    assert answered_value(rig, first) == "a"  # asked within the lease: "a" was memory's then
    assert late not in rig.answers or answered_value(rig, late) == "b"


def answered_value(rig: Rig, rid: int) -> object:
    result = rig.answers[rid]
    assert isinstance(result, Ok), result
    return msgspec.msgpack.decode(result.value.value)
