"""Linearizability checker for key/value client histories.

Algorithm: Wing & Gong's backtracking search over a doubly linked list of call/return
events, with Lowe's memoisation of (set of linearized ops, register state) pairs -- the
same scheme Porcupine uses.  A KV store is P-compositional (Horn & Kroening), so the
history is split by key and each key is checked as an independent register with
put / get / delete and an initial value of "absent".

Conventions (deliberately lenient, so a failure is always a real bug):

* Real-time order: op A precedes op B only if ``A.ret < B.call``.  ``A.ret == B.call``
  counts as concurrent, because simulated clocks are coarse and two events in the same
  tick have no meaningful order.  Events are sorted with calls before returns at equal
  times to implement this.
* ``ret is None`` (outcome unknown): the op may take effect at any point after its call,
  or never.  Unknown gets are dropped (they constrain nothing); unknown puts/deletes get
  a call event but no return event, so the search may linearize them or leave them out.
* A get's ``output=None`` means "key absent"; a put of ``None`` is therefore
  indistinguishable from a delete.
* ``max_states`` caps the number of distinct memoised configurations *per key*.  When a
  key exceeds it the result is ``ok=False, inconclusive=True`` -- callers must not treat
  that as a proven violation (nor as a pass).  A definite violation on any key takes
  precedence over an inconclusive key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import pairwise

_PUT, _DELETE, _GET = 0, 1, 2
_KINDS = {"put": _PUT, "delete": _DELETE, "get": _GET}
_ABSENT = 0  # interned id of "key absent"


@dataclass(frozen=True, slots=True)
class Operation:
    client: int
    call: int
    ret: int | None
    kind: str
    key: str
    value: object = None
    output: object = None


@dataclass
class CheckResult:
    ok: bool
    key: str | None
    explanation: str
    inconclusive: bool = False


class _BudgetExhausted(Exception):
    pass


class _Interner:
    """Maps values to small ints so register states are cheap to hash and compare.

    Equal values must share an id (two puts of the same value lead to the same state),
    which also lets the memo cache merge them.  Unhashable values fall back to a linear
    scan using ``==``; they are rare in practice.
    """

    def __init__(self) -> None:
        self._ids: dict[Hashable, int] = {}
        self._unhashable: list[tuple[object, int]] = []
        self._next = _ABSENT + 1

    def lookup(self, value: object, *, create: bool) -> int | None:
        if value is None:
            return _ABSENT
        try:
            found = self._ids.get(value)  # type: ignore[arg-type]
        except TypeError:
            for other, ident in self._unhashable:
                if other == value:
                    return ident
            if not create:
                return None
            self._unhashable.append((value, self._next))
        else:
            if found is not None or not create:
                return found
            self._ids[value] = self._next  # type: ignore[index]
        self._next += 1
        return self._next - 1

    @property
    def size(self) -> int:
        return self._next


def _describe(op: Operation) -> str:
    ret = "?" if op.ret is None else str(op.ret)
    if op.kind == "put":
        body = f"put({op.key!r}, {op.value!r})"
    elif op.kind == "get":
        body = f"get({op.key!r}) -> {op.output!r}"
    else:
        body = f"delete({op.key!r})"
    return f"client {op.client} {body} [{op.call}, {ret}]"


def check_kv_history(ops: Sequence[Operation], *, max_states: int = 2_000_000) -> CheckResult:
    """Check that ``ops`` is a linearizable history of a KV map (see module docstring)."""
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        if op.kind not in _KINDS:
            raise ValueError(f"unknown operation kind {op.kind!r}: {op}")
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation returns before it is called: {op}")
        by_key.setdefault(op.key, []).append(op)

    first_inconclusive: CheckResult | None = None
    for key, key_ops in by_key.items():  # insertion order == order of first appearance
        result = _check_key(key, key_ops, max_states)
        if result.ok:
            continue
        if not result.inconclusive:
            return result
        first_inconclusive = first_inconclusive or result
    if first_inconclusive is not None:
        return first_inconclusive
    return CheckResult(True, None, f"linearizable: {len(ops)} ops over {len(by_key)} keys")


def _check_key(key: str, raw_ops: list[Operation], max_states: int) -> CheckResult:
    interner = _Interner()
    for op in raw_ops:
        if op.kind == "put":
            interner.lookup(op.value, create=True)

    readers: Counter[int] = Counter()  # value id -> completed gets that return it
    for op in raw_ops:
        if op.kind == "get" and op.ret is not None:
            ident = interner.lookup(op.output, create=False)
            if ident is None:
                # Fast path with a precise message; the search would also reject it.
                return CheckResult(False, key, f"{_describe(op)} reads a value never written to the key")
            readers[ident] += 1

    ops: list[Operation] = []
    kinds: list[int] = []
    args: list[int] = []
    for op in raw_ops:
        kind = _KINDS[op.kind]
        if kind == _GET:
            if op.ret is None:
                continue
            arg = interner.lookup(op.output, create=False)
        elif kind == _PUT:
            arg = interner.lookup(op.value, create=True)
        else:
            arg = _ABSENT
        assert arg is not None
        # An unknown-outcome write of a value nobody reads can always be moved to just
        # before the next write (or the end), i.e. it is equivalent to "never happened".
        # Dropping it keeps it from doubling the search space.
        if op.ret is None and readers[arg] == 0:
            continue
        ops.append(op)
        kinds.append(kind)
        args.append(arg)

    need = [readers[v] for v in range(interner.size)]
    return _search(key, ops, kinds, args, need, max_states)


def _search(
    key: str, ops: list[Operation], kinds: list[int], args: list[int], need: list[int], max_states: int
) -> CheckResult:
    # Event nodes: (time, 0=call/1=return, op index).  Calls sort before returns at equal
    # times, which makes ret == call concurrent (see module docstring).
    events: list[tuple[int, int, int]] = []
    for i, op in enumerate(ops):
        events.append((op.call, 0, i))
        if op.ret is not None:
            events.append((op.ret, 1, i))
    events.sort()

    m = len(events)
    head, tail = m, m + 1  # sentinels, so unlinking never needs end-of-list checks
    nxt = [0] * (m + 2)
    prv = [0] * (m + 2)
    order = [head, *range(m), tail]
    for a, b in pairwise(order):
        nxt[a], prv[b] = b, a
    node_op = [e[2] for e in events]
    is_call = [e[1] == 0 for e in events]
    match = [-1] * m  # call node -> its return node (-1 for unknown-outcome ops)
    call_node = [0] * len(ops)
    for n, (_, is_ret, i) in enumerate(events):
        if is_ret:
            match[call_node[i]] = n
        else:
            call_node[i] = n
    bits = [1 << i for i in range(len(ops))]
    # The same argument as in _check_key applies during the search: once every get that
    # reads v is linearized, unknown-outcome writes of v are useless.  `dead` holds those
    # writes; they are never tried, and they are OR-ed into the memo key so that "placed
    # earlier" and "never placed" collapse into one configuration.  Without this each
    # lingering unknown-outcome write doubles the state space for the rest of the history.
    pending_writes = [0] * len(need)  # value id -> bitset of unknown-outcome writes of it
    for i, op in enumerate(ops):
        if op.ret is None:
            pending_writes[args[i]] |= bits[i]
    dead = 0

    remaining = sum(1 for op in ops if op.ret is not None)  # return events still listed
    state = _ABSENT
    linearized = 0
    stack: list[tuple[int, int, int]] = []  # (call node, state before it, dead before it)
    cache: set[tuple[int, int]] = set()
    best_depth, best_last, best_blocked = -1, -1, -1
    entry = nxt[head]

    # Invariant: while a return event remains listed, scanning forward from any listed
    # call reaches a return before the tail, so `entry` never becomes the tail.
    while remaining:
        if is_call[entry]:
            i = node_op[entry]
            kind, arg = kinds[i], args[i]
            new_dead = dead
            if kind == _GET:
                legal, new_state = state == arg, state
                if need[arg] == 1:
                    new_dead |= pending_writes[arg]
            else:
                legal, new_state = not dead & bits[i], (arg if kind == _PUT else _ABSENT)
            if legal:
                memo = (linearized | bits[i] | new_dead, new_state)
                if memo not in cache:
                    if len(cache) >= max_states:
                        return CheckResult(False, key, "inconclusive: state budget exhausted", True)
                    cache.add(memo)
                    stack.append((entry, state, dead))
                    if kind == _GET:
                        need[arg] -= 1
                    state, dead, linearized = new_state, new_dead, linearized | bits[i]
                    # Lift the op: unlink its call (and return) so later scans skip it.
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    r = match[entry]
                    if r >= 0:
                        nxt[prv[r]] = nxt[r]
                        prv[nxt[r]] = prv[r]
                        remaining -= 1
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
        else:
            # A return with its op not yet linearized: this prefix is a dead end.
            if len(stack) > best_depth:
                best_depth, best_blocked = len(stack), node_op[entry]
                best_last = node_op[stack[-1][0]] if stack else -1
            if not stack:
                break
            entry, state, dead = stack.pop()
            i = node_op[entry]
            linearized &= ~bits[i]
            if kinds[i] == _GET:
                need[args[i]] += 1
            # Unlift in reverse order of lifting so the saved neighbour links are valid.
            r = match[entry]
            if r >= 0:
                nxt[prv[r]] = r
                prv[nxt[r]] = r
                remaining += 1
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            entry = nxt[entry]

    if not remaining:
        return CheckResult(True, None, f"linearizable: {len(ops)} ops on key {key!r}")
    last = f"ending with {_describe(ops[best_last])}" if best_last >= 0 else "(empty)"
    return CheckResult(
        False,
        key,
        f"not linearizable: longest linearizable prefix has {best_depth} ops {last}; "
        f"then {_describe(ops[best_blocked])} could not be placed",
    )
