"""One shard's home and a few holders, wired in memory, for scenario tests of the cache protocol.

The rig is what NodeCache does, by hand: holders' messages go to the home through the same
``home_receives``; the home's stream goes to every holder; proposals are applied through a real
``GroupMachine`` (session table included) when the test says ``run``; confirmations succeed. A
test can hold a holder's traffic either way, drop stream batches to it, or let time pass.
``trace`` records every stream item and every hold and drop, printed when a test fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from syncfab.actors.cache_home import CacheHome
from syncfab.actors.cache_near import NearCache
from syncfab.actors.cache_ops import (
    WRITE_THROUGH,
    CacheConfig,
    CacheDelete,
    CacheInvalidate,
    CacheRead,
    CacheWrite,
)
from syncfab.actors.cache_store import CacheStore
from syncfab.actors.machine import ApplyContext, GroupMachine
from syncfab.actors.messages import CacheStream
from syncfab.actors.results import Ok, Result
from syncfab.fabric.core.codec import Request, decode_request, encode
from syncfab.fabric.core.node_cache import home_receives

SHARD = 1
ROUTE = b"client"


class Rig:
    def __init__(
        self, nodes: tuple[str, ...] = ("n1", "n2", "n3"), home: str = "n1", config: CacheConfig | None = None
    ) -> None:
        self.config = cfg = config or CacheConfig(lease_ms=1_000, flush_ms=100, op_retry_ms=200)
        self.now = 0
        self.index = 0
        self.home_node = home
        self.home = CacheHome(SHARD, home, cfg)
        self.home.link.port = self
        self.store = CacheStore(self.home)
        self.machine = GroupMachine({"cache": self.store})
        self.nears = {n: NearCache(n, 1, cfg, op_base=1_000_000 * (i + 1)) for i, n in enumerate(nodes)}
        self.answers: dict[int, Result] = {}
        self.trace: list[str] = []
        self.held_down: dict[str, list[CacheStream]] = {}  # stream batches held before a holder
        self.held_up: dict[str, list[Any]] = {}  # a holder's messages held before the home
        self.drop_down: set[str] = set()  # the next batch to these holders is lost
        self._proposals: list[tuple[bytes | object, Callable[[Result], Any]]] = []
        self._confirms: list[Callable[[Result], Any]] = []
        self._next_id = 0
        self.home.start(epoch=1, now_ms=0, epoch_start_index=0)
        self.home.ready = True  # the takeover wait is tested on its own

    # -- the HomePort ---------------------------------------------------------------------

    def propose(self, shard: int, payload: bytes | object, done: Callable[[Result], Any]) -> None:
        self._proposals.append((payload, done))

    def confirm(self, shard: int, done: Callable[[Result], Any]) -> None:
        self._confirms.append(done)

    # -- driving --------------------------------------------------------------------------

    def ask(self, node: str, op: Any, client: str = "client", again: int | None = None) -> int:
        """Send ``op`` to ``node``'s cache; ``again``: as a retry of that request id."""
        if again is None:
            self._next_id += 1
        rid = self._next_id if again is None else again
        raw = encode(Request(client, rid, rid, op))
        self.nears[node].on_client(ROUTE, client, rid, rid, op, raw, self.now)
        return rid

    def read(self, node: str, key: str) -> Result:
        return self.settled(self.ask(node, CacheRead(key)))

    def write(self, node: str, key: str, value: Any, policy: str = WRITE_THROUGH, **kw: Any) -> Result:
        op = CacheWrite(key, msgspec.Raw(msgspec.msgpack.encode(value)), policy, **kw)
        return self.settled(self.ask(node, op))

    def delete(self, node: str, key: str) -> Result:
        return self.settled(self.ask(node, CacheDelete(key)))

    def invalidate(self, node: str, key: str) -> Result:
        return self.settled(self.ask(node, CacheInvalidate(key)))

    def settled(self, rid: int) -> Result:
        self.run()
        assert rid in self.answers, f"request {rid} unanswered\n" + "\n".join(self.trace)
        return self.answers[rid]

    def run(self, steps_max: int = 100) -> None:
        """Carry messages until nothing moves (held traffic stays held)."""
        for _ in range(steps_max):
            if not self._step():
                return
        raise AssertionError("the rig did not settle\n" + "\n".join(self.trace[-40:]))

    def _step(self) -> bool:
        moved = False
        for node, near in self.nears.items():
            near.flush_acks()
            sends, near.sends = near.sends, []
            for _, msg in sends:
                moved = True
                if node in self.held_up:
                    self.held_up[node].append(msg)
                else:
                    assert home_receives(self.home, node, msg), msg
            for _, rid, result in near.answers:
                self.answers[rid] = result
            moved |= bool(near.answers)
            near.answers = []
        proposals, self._proposals = self._proposals, []
        for payload, done in proposals:
            moved = True
            done(self._apply(payload))
        confirms, self._confirms = self._confirms, []
        for done in confirms:
            moved = True
            done(Ok(None))
        stream = self.home.take_stream()
        if stream is not None:
            moved = True
            for i, item in enumerate(stream.items):
                self.trace.append(f"@{self.now} e{stream.epoch} #{stream.seq0 + i} {item!r}"[:160])
            for node, near in self.nears.items():
                if node in self.drop_down:
                    self.drop_down.discard(node)
                    self.trace.append(f"   lost before {node}")
                elif node in self.held_down:
                    self.held_down[node].append(stream)
                else:
                    near.on_stream(stream, self.now)
        return moved

    def _apply(self, payload: bytes | object) -> Result:
        self.index += 1
        request = decode_request(payload) if isinstance(payload, bytes) else Request("", 0, 0, payload)
        ctx = ApplyContext(self.index, self.now, request.client, request.id)
        return self.machine.apply(ctx, request.acked, request.op)  # type: ignore[return-value]

    def hold(self, node: str, *, down: bool = True, up: bool = False) -> None:
        if down:
            self.held_down.setdefault(node, [])
        if up:
            self.held_up.setdefault(node, [])
        self.trace.append(f"   hold {node} down={down} up={up}")

    def release(self, node: str, *, down: bool = True, up: bool = True) -> None:
        self.trace.append(f"   release {node} down={down} up={up}")
        for stream in self.held_down.pop(node, []) if down else ():
            self.nears[node].on_stream(stream, self.now)
        for msg in self.held_up.pop(node, []) if up else ():
            assert home_receives(self.home, node, msg), msg
        self.run()

    def tick(self, ms: int) -> None:
        """Let ``ms`` pass in 10 ms steps, every clock alike, carrying messages as it goes."""
        for _ in range(ms // 10):
            self.now += 10
            self.home.tick(self.now, self.now)
            for near in self.nears.values():
                near.tick(self.now)
            self.run()

    def line(self, node: str, key: str) -> str:
        line = self.nears[node].lines.get(key)
        return "I" if line is None else line.state

    def holders(self, key: str) -> dict[str, str]:
        return {h["node"]: h["state"] for h in self.home.line_info(key)["holders"]}

    def memory(self, key: str) -> tuple[Any, int]:
        stored = self.store.peek(key)
        return (None, 0) if stored is None else (msgspec.msgpack.decode(stored.value), stored.version)
