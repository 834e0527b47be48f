"""The queue workload: producers and consumers of one queue spread over every shard.

Producers send ``Produce`` (some with a key, some with a dedup id) and pre-split batches
(``OnShard(shard, ProduceBatch)``), every payload unique. A produce that gave up with a dedup id is
sometimes produced again under a new request id: the dedup window must answer with the first id.

Consumers visit the shards in a rotating order as fabric/client/fanout.py does, with a short visibility so
deadlines pass and the leaders redeliver; they ack most messages (an Ack routes by its ids), nack
some, give some back uncounted (``Return``, as fanout does with what a long poll took too many of),
let some deadlines lapse, and always nack *poison* payloads, which end in ``<queue>.dlq``.
Now and then they read the dead-letter queue too and ack what is there.

``QueueModel`` checks, as replies arrive:
- a delivered message carries the payload produced under its id, and a payload has one id (no
  message appears that was never produced; a retried produce is stored once) — a dead letter is
  mapped back through ``x-original-message-id``;
- a message whose ack was acknowledged is never delivered by a consume asked for after that
  acknowledgement (linearizable consume) — and one an ack removed never turns up as a dead letter.
At the end (``check_final``): every acknowledged produce was delivered at least once, or as a dead
letter. Produces whose outcome is unknown may or may not exist; if delivered, with their payload.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Generator
from typing import Any

from sim_rpc import Call, RpcClient, RpcHost, Script, Sleep

from syncfab.actors.queue_ops import DLQ_SUFFIX
from syncfab.actors.queues import (
    Ack,
    ConfigureQueue,
    Consume,
    Nack,
    NewMessage,
    Produce,
    ProduceBatch,
    Return,
)
from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.core.codec import OnShard, Reply
from syncfab.fabric.core.routing import message_shard, queue_key_shard

Visit = Generator[Call | Sleep, Result | None, bool]  # a script step that says if it got messages

QUEUE = "jobs"
DLQ = QUEUE + DLQ_SUFFIX
ORIGINAL = "x-original-message-id"


class QueueModel:
    def __init__(self, host: RpcHost) -> None:
        self._host = host
        self.attempted: set[str] = set()  # every payload a producer sent
        self.produced: dict[str, str] = {}  # acknowledged: message id -> payload
        self._payload_of: dict[str, str] = {}  # message id -> payload, from any evidence
        self._id_of: dict[str, str] = {}  # payload -> message id
        self._original_of: dict[str, str] = {}  # dead letter id -> original id
        self.acked_at: dict[tuple[str, str], int] = {}  # (queue, id) -> when its ack was acknowledged
        self.removed_by_ack: set[str] = set()  # original ids an acknowledged ack certainly removed
        self.delivered: set[str] = set()  # original ids handed to a consumer that processed them
        self.stats: Counter[str] = Counter()

    def evidence(self, message_id: str, payload: str, what: str) -> None:
        """``message_id`` holds ``payload``: consistent with everything seen so far?"""
        fail = self._host.fail
        if payload not in self.attempted:
            fail("queue integrity", f"{what}: {message_id} carries {payload!r}, which nobody produced")
        known = self._payload_of.setdefault(message_id, payload)
        if known != payload:
            fail("queue integrity", f"{what}: {message_id} carries {payload!r}, earlier {known!r}")
        other = self._id_of.setdefault(payload, message_id)
        if other != message_id:
            fail("queue integrity", f"{what}: payload {payload!r} stored twice, as {other} and {message_id}")

    def produce_acknowledged(self, message_id: str, payload: str) -> None:
        self.evidence(message_id, payload, "produce")
        self.produced[message_id] = payload

    def delivery(self, m: dict[str, Any], asked_ms: int, consumer: str) -> str:
        """A message in a consume reply to a call made at ``asked_ms``; returns its original id."""
        fail = self._host.fail
        queue, mid, payload = m["queue"], m["message_id"], m["data"]
        if queue == QUEUE:
            original = mid
        else:
            original = m["headers"].get(ORIGINAL, "")
            earlier = self._original_of.setdefault(mid, original)
            if earlier != original:
                fail("queue integrity", f"dead letter {mid} names {original}, earlier {earlier}")
            if original in self.removed_by_ack:
                fail("queue ack", f"{consumer} got {original} as dead letter {mid}, but an ack removed it")
        self.evidence(original, payload, f"{consumer} consuming {queue}")
        acked = self.acked_at.get((queue, mid))
        if acked is not None and acked < asked_ms:
            fail(
                "queue ack",
                f"{consumer} got {queue} {mid} from a consume asked at {asked_ms} ms; "
                f"its ack was acknowledged at {acked} ms",
            )
        return original

    def ack_acknowledged(self, queue: str, ids: list[str], acked: int) -> None:
        now = self._host.now
        for mid in ids:
            self.acked_at.setdefault((queue, mid), now)
        if queue == QUEUE and acked == len(ids):
            self.removed_by_ack.update(ids)  # every one of them was still there: none is a dead letter

    def check_final(self) -> None:
        lost = sorted(mid for mid in self.produced if mid not in self.delivered)
        if lost:
            self._host.fail(
                "queue liveness", f"{len(lost)} acknowledged messages never delivered: {lost[:10]}"
            )


class Producer(RpcClient):
    def __init__(self, index: int, host: RpcHost, rng: random.Random, model: QueueModel) -> None:
        super().__init__(f"producer-{index}", host, rng)
        self._model = model
        self._n = 0
        self._liveness = False
        self._liveness_produces = 0
        self.finished = False

    def start(self) -> None:
        self.run_script(self._main())

    def enter_liveness(self, produces: int) -> None:
        self._liveness, self._liveness_produces = True, produces

    @property
    def done(self) -> bool:
        return self.finished and not self.pending

    def _payload(self) -> str:
        self._n += 1
        poison = self.rng.random() < self.config.queue_poison_probability
        payload = f"{self.name}#{self._n}{'!poison' if poison else ''}"
        self._model.attempted.add(payload)
        return payload

    def _main(self) -> Script:
        cfg, rng = self.config, self.rng
        left = cfg.queue_produces_per_producer
        while left > 0 and self.host.now < cfg.safety_duration_ms and not self._liveness:
            left -= 1
            yield from self._produce_one(cfg.op_deadline_ms)
            yield Sleep(rng.randint(0, cfg.think_time_ms_max))
        while not self._liveness:
            yield Sleep(50)
        for _ in range(self._liveness_produces):
            # Spread over the first seconds after healing, when leaders that took over during the
            # faults hand leadership back (balancing): consumes keep meeting brand-new leaders.
            yield Sleep(self.rng.randint(0, 2 * self.config.liveness_produce_gap_ms))
            yield from self._produce_one(None)
        self.finished = True

    def _produce_one(self, deadline_ms: int | None) -> Script:
        cfg, rng, model = self.config, self.rng, self._model
        if rng.random() < cfg.queue_batch_probability:
            shard = rng.randint(1, cfg.shard_count)
            payloads = [self._payload() for _ in range(rng.randint(1, 5))]
            batch = ProduceBatch(QUEUE, [NewMessage(p) for p in payloads])
            result = yield Call(OnShard(shard, batch), deadline_ms)
            if self._expect(result):
                ids = result.value["message_ids"]  # type: ignore[union-attr]
                if len(ids) != len(payloads) or any(message_shard(i) != shard for i in ids):
                    self.host.fail("queue routing", f"batch on shard {shard} got ids {ids} for {payloads}")
                for mid, payload in zip(ids, payloads, strict=True):
                    model.produce_acknowledged(mid, payload)
            return
        payload = self._payload()
        key = f"key{rng.randrange(4)}" if rng.random() < cfg.queue_key_probability else None
        dedup = f"dd-{payload}" if rng.random() < cfg.queue_dedup_probability else None
        headers = {"from": self.name} if rng.random() < 0.3 else None
        op = Produce(QUEUE, payload, key, headers, dedup)
        result = yield Call(op, deadline_ms)
        # Gave up with a dedup id: a producer may try again under a new request id; the
        # partition must recognise it and answer with the first message's id, storing nothing.
        while result is None and dedup is not None and rng.random() < 0.6:
            model.stats["dedup_retries"] += 1
            result = yield Call(op, deadline_ms)
        if self._expect(result):
            mid = result.value["message_id"]  # type: ignore[union-attr]
            if key is not None and message_shard(mid) != queue_key_shard(QUEUE, key, cfg.shard_count):
                self.host.fail("queue routing", f"{payload} with key {key!r} stored as {mid}")
            model.produce_acknowledged(mid, payload)
            if result.value.get("duplicate"):  # type: ignore[union-attr]
                model.stats["dedup_hits"] += 1

    def _expect(self, result: Result | None) -> bool:
        if result is None:
            self._model.stats["produce_unknown"] += 1
            return False
        if isinstance(result, Err):
            self.host.fail("client protocol", f"{self.name}: produce failed with {result}")
        self._model.stats["produce_ok"] += 1
        return True


class Consumer(RpcClient):
    def __init__(self, index: int, host: RpcHost, rng: random.Random, model: QueueModel) -> None:
        super().__init__(f"consumer-{index}", host, rng)
        self._model = model
        self._draining = False
        self._rotation = rng.randrange(1_000)

    def start(self, configure: bool) -> None:
        if configure:
            self.run_script(self._configure())
        self.run_script(self._main())

    def enter_liveness(self) -> None:
        self._draining = True

    def observe_reply(self, reply: Reply) -> None:
        # Late and duplicated consume replies hand out messages too: check them all.
        asked_ms, op = self.sent.get(reply.id, (0, None))
        if isinstance(op, OnShard) and isinstance(op.op, Consume) and isinstance(reply.result, Ok):
            for m in reply.result.value["messages"]:
                self._model.delivery(m, asked_ms, self.name)

    def _configure(self) -> Script:
        # Per shard, as fabric/fanout.configure does, beside the consuming (not before it: under
        # faults it may take the whole phase); unknown is fine, the shard keeps the defaults.
        cfg = self.config
        settings = ConfigureQueue(QUEUE, cfg.queue_visibility_ms, cfg.queue_max_deliveries)
        for shard in range(1, cfg.shard_count + 1):
            result = yield Call(OnShard(shard, settings), cfg.op_deadline_ms)
            if isinstance(result, Err):
                self.host.fail("client protocol", f"{self.name}: configure failed with {result}")

    def _main(self) -> Script:
        cfg, rng = self.config, self.rng
        while True:
            if not self._draining and self.host.now >= cfg.safety_duration_ms:
                yield Sleep(50)  # idle until the liveness phase
                continue
            # Draining, every round empties both queues; otherwise the dead letters now and then.
            queues = [QUEUE, DLQ] if self._draining else [DLQ if rng.random() < 0.2 else QUEUE]
            self._rotation += 1
            order = [(self._rotation + i) % cfg.shard_count + 1 for i in range(cfg.shard_count)]
            for queue in queues:
                for shard in order:
                    # Stay on a shard while it has messages, as a consumer draining a partition
                    # does: the next consume follows the acks at once (after a leader change too).
                    while (yield from self._visit(shard, queue)) and (self._draining or rng.random() < 0.5):
                        pass
            yield Sleep(rng.randint(0, cfg.think_time_ms_max) + (20 if self._draining else 0))

    def _visit(self, shard: int, queue: str) -> Visit:
        cfg, rng, model = self.config, self.rng, self._model
        draining = self._draining
        visibility = 5_000 if draining else cfg.queue_visibility_ms
        wait_ms = 0 if draining or rng.random() >= cfg.queue_long_poll_probability else rng.randint(20, 300)
        consume = Consume(queue, self.name, 16 if draining else rng.randint(1, 4), visibility, wait_ms)
        result = yield Call(OnShard(shard, consume), None if draining else cfg.op_deadline_ms)
        if result is None:
            return False
        if isinstance(result, Err):
            self.host.fail("client protocol", f"{self.name}: consume failed with {result}")
        messages = result.value["messages"]  # type: ignore[union-attr]
        if not messages:
            return False
        model.stats["deliveries"] += len(messages)
        yield Sleep(rng.randint(0, 2 * cfg.queue_visibility_ms if rng.random() < 0.1 else 50))
        acks, nacks, returns = [], [], []
        lapse = cfg.queue_nack_probability + cfg.queue_lapse_probability
        for m in messages:
            poison = queue == QUEUE and m["data"].endswith("!poison")
            roll = rng.random()
            if poison or (not draining and roll < cfg.queue_nack_probability):
                nacks.append(m["message_id"])
            elif not draining and roll < lapse:
                model.stats["lapsed"] += 1  # its deadline passes; the leader redelivers it
            elif not draining and roll < lapse + cfg.queue_return_probability:
                returns.append(m["message_id"])
            else:
                acks.append(m["message_id"])
            # Processed (acked, nacked or dropped on the floor): it reached application code.
            model.delivered.add(m["message_id"] if queue == QUEUE else m["headers"].get(ORIGINAL, ""))
        deadline = None if draining else cfg.op_deadline_ms
        if acks:
            result = yield Call(Ack(queue, acks), deadline)
            if result is not None:
                if isinstance(result, Err):
                    self.host.fail("client protocol", f"{self.name}: ack failed with {result}")
                model.ack_acknowledged(queue, acks, result.value["acked"])
                model.stats["acked"] += result.value["acked"]
        if nacks:
            result = yield Call(Nack(queue, nacks), deadline)
            if isinstance(result, Err):
                self.host.fail("client protocol", f"{self.name}: nack failed with {result}")
            if result is not None:
                model.stats["nacked"] += result.value["nacked"]
                model.stats["dead_lettered"] += result.value["dead_lettered"]
        if returns:
            result = yield Call(OnShard(shard, Return(queue, returns)), deadline)
            if isinstance(result, Err):
                self.host.fail("client protocol", f"{self.name}: return failed with {result}")
            if result is not None:
                model.stats["returned"] += result.value["returned"]
        return True
