"""ClientCore as text transcripts: every step's sends and completions, as RaftCore's are.

Each file in ``client_transcripts/`` is a list of blocks::

    # comment lines
    command args
    ----
    what the step put out

``SYNCFAB_REWRITE=1 pytest tests/fabric/test_client_core.py`` rewrites the outputs (review the
diff!). Commands (times in ms; the clock starts at 0; node addresses are words):

    client n1 n2 n3 [seed=N] [<ClientConfig field>=N ...]   a fresh ClientCore with these seeds
    learn shards=N [leader=n1] [s1=n2 ...]     the cluster view: shard count, control and shard leaders
    call <op ...> [at=node] [+ <op ...>]        start calls in one step (ops below); prints handles
    cancel h3                                   its caller gives up
    reply <id> <result> [leader=n2]             a node answers request <id>
    garbage                                     a frame that is not a reply
    tick <ms>                                   let time pass, then run what fell due

Ops: ``put k v``, ``get k``, ``acquire r owner [wait_ms=N]``, ``release r owner``,
``produce q data [key=K]``, ``cache_read k``. Results: ``ok``, ``ok:<json>``, ``err:<code>``,
``wait``, ``answers:ok,wait,err:<code>,...``.

After every command the transcript shows what the core put out: ``n1 <- #4 put k=v acked=2``
per request sent (``#4`` its request id), then ``done h1: <result>`` per completion, and
``timer @T`` when the next timer is due.
"""

from __future__ import annotations

import difflib
import json
import os
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from syncfab.actors.cache_ops import CacheRead, CacheWrite
from syncfab.actors.kv import Get, Put
from syncfab.actors.lock_ops import Acquire, LockBatch, Release
from syncfab.actors.queue_ops import Produce, ProduceBatch
from syncfab.actors.results import Answers, Err, Ok, Waiting
from syncfab.fabric.core.client_core import ClientConfig, ClientCore
from syncfab.fabric.core.codec import OnShard, Reply, Request, decode_request, encode

TRANSCRIPTS = Path(__file__).parent / "client_transcripts"


def describe_op(op: Any) -> str:
    match op:
        case Put(key=k, value=v):
            return f"put {k}={v}"
        case Get(key=k):
            return f"get {k}"
        case Acquire(resource=r, owner=o, wait_ms=w):
            return f"acquire {r} by {o}" + (f" wait={w}" if w else "")
        case Release(resource=r, owner=o):
            return f"release {r} by {o}"
        case LockBatch(ops=ops):
            return "batch[" + "; ".join(describe_op(o) for o in ops) + "]"
        case OnShard(shard=s, op=ProduceBatch(queue=q, messages=ms)):
            return f"produce to shard {s} of {q}: " + ", ".join(str(m.data) for m in ms)
        case CacheRead(key=k):
            return f"cache_read {k}"
        case CacheWrite(key=k, policy=p):
            return f"cache_write {k} {p}"
    return type(op).__name__


def describe_result(result: Any) -> str:
    match result:
        case Ok(value=v):
            return "ok" if v is None else f"ok {json.dumps(v, sort_keys=True)}"
        case Err(code=c):
            return f"err {c}"
    return repr(result)


def parse_result(text: str) -> Any:
    if text == "ok":
        return Ok()
    if text == "wait":
        return Waiting()
    if text.startswith("ok:"):
        return Ok(json.loads(text[3:]))
    if text.startswith("err:"):
        return Err(text[4:], "")
    if text.startswith("answers:"):
        return Answers([parse_result(t) for t in text[8:].split(",")])
    raise ValueError(f"unknown result {text!r}")


class Rig:
    def __init__(self) -> None:
        self.core: ClientCore | None = None
        self.now = 0

    def run(self, line: str) -> list[str]:
        words = line.split()
        cmd, args = words[0], words[1:]
        kv = dict(a.split("=", 1) for a in args if "=" in a)
        pos = [a for a in args if "=" not in a]
        out: list[str] = []
        if cmd == "client":
            fields = {k: int(v) for k, v in kv.items() if k != "seed"}
            self.core = ClientCore("c", pos, random.Random(int(kv.get("seed", 1))), ClientConfig(**fields))
            return ["ok"]
        core = self.core
        assert core is not None, "start with: client <nodes>"
        if cmd == "learn":
            shards = int(kv["shards"])
            nodes = core.nodes
            core.learn(
                {
                    "members": [{"id": n, "address": n} for n in nodes],
                    "leader": kv.get("leader"),
                    "shards": [{"id": s, "leader": kv.get(f"s{s}")} for s in range(1, shards + 1)],
                }
            )
        elif cmd == "call":  # several ops, "+" between them, are called in one step
            for segment in " ".join(args).split(" + "):
                words = segment.split()
                at = next((w[3:] for w in words if w.startswith("at=")), None)
                op = self.op([w for w in words if not w.startswith("at=")])
                out.append(f"h{core.call(op, self.now, node=at)}")
        elif cmd == "cancel":
            core.cancel(int(pos[0].lstrip("h")))
        elif cmd == "reply":
            reply = Reply(int(pos[0]), parse_result(pos[1]), kv.get("leader"))
            core.receive(encode(reply), self.now)
        elif cmd == "garbage":
            core.receive(b"\xff\x00garbage", self.now)
        elif cmd == "tick":
            self.now += int(pos[0])
            out.append(f"@{self.now}")
            core.tick(self.now)
        else:
            raise ValueError(f"unknown command {cmd!r}")
        for node, raws in sorted(core.outbox(self.now).items()):
            for raw in raws:
                r: Request = decode_request(raw)
                out.append(f"{node} <- #{r.id} {describe_op(r.op)} acked={r.acked}")
        out += [f"done h{h}: {describe_result(res)}" for h, res in core.completions()]
        nxt = core.next_timer_ms()
        if nxt is not None:
            out.append(f"timer @{nxt}")
        return out or ["-"]

    @staticmethod
    def op(pos: list[str]) -> Any:
        kind, rest = pos[0], pos[1:]
        wait = [int(p.split("=")[1]) for p in rest if p.startswith("wait_ms=")]
        rest = [p for p in rest if "=" not in p]
        if kind == "put":
            return Put(rest[0], rest[1])
        if kind == "get":
            return Get(rest[0])
        if kind == "acquire":
            return Acquire(rest[0], "exclusive", rest[1], wait[0] if wait else 0, 10_000)
        if kind == "release":
            return Release(rest[0], rest[1])
        if kind == "produce":
            return Produce(rest[0], rest[1], rest[2] if len(rest) > 2 else None)
        if kind == "cache_read":
            return CacheRead(rest[0])
        if kind == "cache_write":  # cache_write <key> <value> <policy>
            return CacheWrite(rest[0], msgspec.Raw(msgspec.msgpack.encode(rest[1])), rest[2])
        raise ValueError(f"unknown op {kind!r}")


def run_transcript(path: Path) -> tuple[str, str]:
    """(recorded, replayed) text of one transcript file."""
    recorded = path.read_text()
    rig = Rig()
    blocks = []
    for block in recorded.strip().split("\n\n"):
        lines = block.splitlines()
        cut = lines.index("----")
        commands = lines[:cut]
        command = next(c for c in commands if not c.startswith("#"))
        blocks.append("\n".join([*commands, "----", *rig.run(command)]))
    return recorded, "\n\n".join(blocks) + "\n"


@pytest.mark.parametrize("path", sorted(TRANSCRIPTS.glob("*.txt")), ids=lambda p: p.stem)
def test_transcript(path: Path) -> None:
    recorded, replayed = run_transcript(path)
    if os.environ.get("SYNCFAB_REWRITE"):
        path.write_text(replayed)
        return
    diff = "".join(
        difflib.unified_diff(recorded.splitlines(True), replayed.splitlines(True), "recorded", "replayed")
    )
    assert recorded == replayed, f"{path.name} differs:\n{diff}"


# -- properties no transcript shows at a glance ---------------------------------------------


def test_a_retry_is_the_same_bytes_under_the_same_id() -> None:
    core = ClientCore("c", ["n1", "n2", "n3"], random.Random(3))
    core.call(Put("k", 1), 0)
    ((node, [first]),) = core.outbox(0).items()
    core.tick(1_000)  # the attempt timed out
    ((other, [again]),) = core.outbox(1_000).items()
    assert other != node and again == first


def test_the_acked_floor_is_the_lowest_id_still_awaited() -> None:
    core = ClientCore("c", ["n1"], random.Random(1))
    for i in range(3):
        core.call(Put(f"k{i}", i), 0)
    sent = [decode_request(r) for r in core.outbox(0)["n1"]]
    core.receive(encode(Reply(sent[1].id, Ok(1))), 0)  # the middle one answered: floor stays
    core.call(Put("k3", 3), 0)
    assert decode_request(core.outbox(0)["n1"][0]).acked == sent[0].id
    core.receive(encode(Reply(sent[0].id, Ok(1))), 0)
    core.call(Put("k4", 4), 0)
    assert decode_request(core.outbox(0)["n1"][0]).acked == sent[2].id


def test_attempts_are_bounded_and_the_deadline_holds() -> None:
    core = ClientCore(
        "c",
        ["n1", "n2"],
        random.Random(1),
        ClientConfig(timeout_ms=10_000, attempt_timeout_ms=1_000, attempts_max=3),
    )
    h = core.call(Get("k"), 0)
    sends = 0
    now = 0
    while not (done := core.completions()):
        sends += sum(len(v) for v in core.outbox(now).values())
        nxt = core.next_timer_ms()
        assert nxt is not None
        now = nxt
        core.tick(now)
    assert sends == 3 and now == 3_000
    assert done == [(h, Err("timeout", "no answer within 10000 ms"))]
    assert core.in_flight == 0 and core.ids.acked == core.ids.reserve(0)


def test_a_cancelled_call_is_forgotten_and_its_late_answer_dropped() -> None:
    core = ClientCore("c", ["n1"], random.Random(1))
    h = core.call(Get("k"), 0)
    rid = decode_request(core.outbox(0)["n1"][0]).id
    core.cancel(h)
    core.receive(encode(Reply(rid, Ok("v"))), 5)
    assert core.completions() == [] and core.in_flight == 0


def test_bad_input_is_answered_without_a_send() -> None:
    core = ClientCore("c", ["n1"], random.Random(1))
    core.learn(
        {"members": [{"id": "n1", "address": "n1"}], "leader": None, "shards": [{"id": 1, "leader": None}]}
    )
    h1 = core.call(Put("", 1), 0)
    h2 = core.call(Produce("", "x"), 0)
    assert core.outbox(0) == {}
    codes = {h: r.code for h, r in core.completions() if isinstance(r, Err)}
    assert codes == {h1: "bad_request", h2: "bad_request"}


def _known(core: ClientCore, shards: int = 4) -> ClientCore:
    core.learn(
        {
            "members": [{"id": n, "address": n} for n in core.nodes],
            "leader": core.nodes[0],
            "shards": [{"id": s, "leader": core.nodes[0]} for s in range(1, shards + 1)],
        }
    )
    return core


def test_a_batch_that_fails_whole_fails_every_caller_and_forgets_their_ids() -> None:
    core = _known(ClientCore("c", ["n1"], random.Random(1)))
    handles = [core.call(Acquire(f"r{i}", "exclusive", f"o{i}", 0, 1_000), 0) for i in range(3)]
    (raw,) = core.outbox(0)["n1"]
    core.receive(encode(Reply(decode_request(raw).id, Err("bad_request", "no"))), 1)
    assert [(h, r.code) for h, r in core.completions()] == [(h, "bad_request") for h in handles]
    assert core.in_flight == 0 and core.ids.acked == core.ids.reserve(0)


def test_big_piles_are_split_by_count_and_by_bytes() -> None:
    core = _known(ClientCore("c", ["n1"], random.Random(1)))
    for i in range(1_500):
        core.call(Release(f"r{i}", "owner"), 0)
    sizes = [len(decode_request(r).op.ops) for r in core.outbox(0)["n1"]]
    assert sizes == [1024, 476]
    for i in range(300):  # 300 x ~1 KiB: over a batch's bytes
        core.call(Release("x" * 1000 + str(i), "owner"), 0)
    assert len(core.outbox(0)["n1"]) == 3


def test_produces_are_batched_per_queue_and_a_bad_message_fails_alone() -> None:
    core = _known(ClientCore("c", ["n1"], random.Random(1)), shards=1)
    a = core.call(Produce("qa", "1"), 0)
    b = core.call(Produce("qb", "2"), 0)
    bad = core.call(Produce("qa", "3", headers={"h": 1}), 0)  # type: ignore[dict-item]
    requests = [decode_request(r) for r in core.outbox(0)["n1"]]
    assert [(r.op.op.queue, len(r.op.op.messages)) for r in requests] == [("qa", 1), ("qb", 1)]
    assert [(h, r.code) for h, r in core.completions()] == [(bad, "bad_request")]
    for n, request in enumerate(requests):
        core.receive(encode(Reply(request.id, Ok({"message_ids": [f"1:{n}"]}))), 1)
    assert core.completions() == [(a, Ok({"message_id": "1:0"})), (b, Ok({"message_id": "1:1"}))]


def test_a_produce_before_the_cluster_is_known_is_refused_as_unavailable() -> None:
    core = ClientCore("c", ["n1"], random.Random(1))
    h = core.call(Produce("q", "x"), 0)
    assert core.outbox(0) == {}
    assert [(x, r.code) for x, r in core.completions()] == [(h, "unavailable")]


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_a_value_that_cannot_be_encoded_is_refused_and_its_id_given_back() -> None:
    core = _known(ClientCore("c", ["n1"], random.Random(1)))
    put = core.call(Put("k", _nested(5_000)), 0)
    produce = core.call(Produce("q", {"deep": _nested(5_000)}), 0)
    fine = core.call(Produce("q", {"shallow": 1}), 0)
    assert [(h, r.code, r.detail) for h, r in core.completions()] == [
        (put, "bad_request", {"field": "value"}),
        (produce, "bad_request", {"field": "data"}),
    ]
    (raw,) = core.outbox(0)["n1"]  # the good produce goes on alone
    assert len(decode_request(raw).op.op.messages) == 1
    assert core.ids.acked == decode_request(raw).id  # no id left open by the refused put
    core.receive(encode(Reply(decode_request(raw).id, Ok({"message_ids": ["1:7"]}))), 1)
    assert core.completions() == [(fine, Ok({"message_id": "1:7"}))]
