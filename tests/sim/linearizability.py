"""Linearizability checker for key/value client histories.

Algorithm: Wing & Gong's backtracking search over a doubly linked list of call/return
events, with Lowe's memoisation of (set of linearized ops, register state) pairs -- the
same scheme Porcupine uses.  A KV store is P-compositional (Horn & Kroening), so the
history is split by key and each key is checked as an independent register with
put / get / delete and an initial value of "absent".

Conventions (deliberately lenient, so a failure is always a real bug):

* Real-time order: op A precedes op B only if ``A.ret < B.call``; ``A.ret == B.call`` is
  concurrent, as simulated clocks are coarse and events in one tick have no real order
  (events sort calls before returns at equal times).
* ``ret is None`` (outcome unknown): the op may take effect at any point after its call,
  or never.  Unknown gets are dropped (they constrain nothing); see ``_search`` for how
  unknown puts/deletes are placed without blowing up the search.
* A get's ``output=None`` means "key absent"; a put of ``None`` is therefore
  indistinguishable from a delete.
* ``cas`` (compare-and-set, the chaos suite's cache): writes ``value`` only if the register
  holds ``expected`` (``None``: absent). Record only the ones that succeeded (a failed one is
  a get of what it found, when that is known). One whose outcome is unknown is checked as an
  unknown put: that admits more histories than it should, never fewer, so a failure is still
  a real bug.
* ``max_states`` caps memoised configurations *per key* (~100 bytes each).  Exceeding it
  gives ``ok=False, inconclusive=True``: neither a pass nor a proven violation.  A
  definite violation on any key takes precedence over an inconclusive key.

Each key first gets an O(n log n) stale-read pass (``_stale_read``): it catches the usual
Raft bug, a stale read, with a precise message and without the search having to exhaust
every interleaving to prove it.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from itertools import accumulate, pairwise

_PUT, _DELETE, _GET, _CAS = 0, 1, 2, 3
_KINDS = {"put": _PUT, "delete": _DELETE, "get": _GET, "cas": _CAS}
_ABSENT = 0  # interned id of "key absent"


@dataclass(frozen=True, slots=True)
class Operation:
    client: int
    call: int  # time the call was issued (simulated ms or step)
    ret: int | None  # time the reply arrived; None = outcome unknown
    kind: str  # "put" | "get" | "delete" | "cas"
    key: str
    value: object = None  # put, cas: the value written
    output: object = None  # get: the value read (None = key absent)
    expected: object = None  # cas: the value it required (None = key absent)


@dataclass
class CheckResult:
    ok: bool
    key: str | None  # first key whose sub-history is not linearizable (or inconclusive)
    explanation: str
    inconclusive: bool = False  # ok=False only because max_states ran out


class _Interner:
    """Maps values to small dense ints: states become cheap to hash, and equal values
    written by different puts share a state, so the memo merges them.  Unhashable
    values (lists, dicts) fall back to a linear ``==`` scan."""

    def __init__(self) -> None:
        self.size = _ABSENT + 1
        self._ids: dict[Hashable, int] = {}
        self._unhashable: list[tuple[object, int]] = []

    def lookup(self, value: object, *, create: bool) -> int | None:
        if value is None:
            return _ABSENT
        try:
            found = self._ids.get(value)  # type: ignore[arg-type]
            if found is None and create:
                self._ids[value] = self.size  # type: ignore[index]
        except TypeError:
            found = next((ident for other, ident in self._unhashable if other == value), None)
            if found is None and create:
                self._unhashable.append((value, self.size))
        if found is None and create:
            found, self.size = self.size, self.size + 1
        return found


def _describe(op: Operation) -> str:
    if op.kind == "put":
        call = f"put({op.key!r}, {op.value!r})"
    elif op.kind == "cas":
        call = f"cas({op.key!r}, {op.expected!r} -> {op.value!r})"
    else:
        call = f"{op.kind}({op.key!r})"
    out = f" -> {op.output!r}" if op.kind == "get" else ""
    return f"client {op.client} {call}{out} [{op.call}, {'?' if op.ret is None else op.ret}]"


def check_kv_history(ops: Sequence[Operation], *, max_states: int = 2_000_000) -> CheckResult:
    """Check that ``ops`` is a linearizable history of a KV map (see module docstring)."""
    return _check(ops, max_states, precheck=True)


def _check(ops: Sequence[Operation], max_states: int, *, precheck: bool) -> CheckResult:
    # `precheck=False` exists so tests can drive the search itself into every failure.
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        if op.kind not in _KINDS:
            raise ValueError(f"unknown operation kind {op.kind!r}: {op}")
        if op.ret is not None and op.ret < op.call:
            raise ValueError(f"operation returns before it is called: {op}")
        by_key.setdefault(op.key, []).append(op)

    inconclusive: CheckResult | None = None
    for key, key_ops in by_key.items():  # insertion order == order of first appearance
        result = _check_key(key, key_ops, max_states, precheck)
        if not result.ok and not result.inconclusive:
            return result
        inconclusive = inconclusive or (None if result.ok else result)
    return inconclusive or CheckResult(True, None, f"linearizable: {len(ops)} ops over {len(by_key)} keys")


def _check_key(key: str, raw_ops: list[Operation], max_states: int, precheck: bool) -> CheckResult:
    interner = _Interner()
    for op in raw_ops:
        if op.kind in ("put", "cas"):
            interner.lookup(op.value, create=True)
    ops: list[Operation] = []
    kinds: list[int] = []
    args: list[int] = []  # put, cas: value id written; get: value id read; delete: _ABSENT
    conds: list[int] = []  # cas: value id required (-1: none, as for an unknown cas)
    for op in raw_ops:
        kind = _KINDS[op.kind]
        if kind == _GET:
            if op.ret is None:
                continue
            arg = interner.lookup(op.output, create=False)
            if arg is None:
                return CheckResult(False, key, f"{_describe(op)} reads a value never written to the key")
        else:
            arg = interner.lookup(op.value, create=True) if kind in (_PUT, _CAS) else _ABSENT
        cond = -1
        if kind == _CAS and op.ret is not None:
            cond = interner.lookup(op.expected, create=True)  # type: ignore[assignment]
        assert arg is not None
        ops.append(op)
        kinds.append(kind)
        args.append(arg)
        conds.append(cond)
    if precheck and (stale := _stale_read(ops, kinds, args, interner.size)) is not None:
        why = "every write of that value started after it returned or was overwritten before it was called"
        return CheckResult(False, key, f"stale read: {_describe(stale)} cannot be placed: {why}")
    return _search(key, ops, kinds, args, conds, interner.size, max_states)


def _stale_read(ops: list[Operation], kinds: list[int], args: list[int], n_values: int) -> Operation | None:
    """Return a completed get that no linearization can satisfy on its own, if any.

    Write w can be the one get g reads only if w.call <= g.ret and no completed write x has
    w.ret < x.call and x.ret < g.call (x would sit between them in every linearization).
    x's value is irrelevant: if x rewrites the same value, x itself is then the candidate.
    """
    # An unknown-outcome write that is the only write of its value (the initial state
    # counts as a write of "absent") and is read must have taken effect before its first
    # reader returned, so here it counts as a write returning then.  (The search does not
    # need this, and treating it as completed there would only widen concurrency windows.)
    writes = [i for i in range(len(ops)) if kinds[i] != _GET]
    writers = Counter(args[i] for i in writes) + Counter([_ABSENT])
    first_read: dict[int, int] = {}
    for op, kind, arg in zip(ops, kinds, args, strict=True):
        if kind == _GET:
            first_read[arg] = min(first_read.get(arg, op.ret), op.ret)  # type: ignore[type-var]
    rets = [op.ret for op in ops]
    for i, op in enumerate(ops):
        if op.ret is None and writers[args[i]] == 1 and first_read.get(args[i], -1) >= op.call:
            rets[i] = first_read[args[i]]
    inf = float("inf")
    done = sorted((ops[i].call, rets[i]) for i in writes if rets[i] is not None)
    done_calls = [c for c, _ in done]
    # first_ret_after[j]: earliest return among completed writes done[j:].
    first_ret_after = [*accumulate(reversed([r for _, r in done]), min, initial=inf)][::-1]
    # Per value: (call, time until which the write may still be the latest), the initial
    # "absent" acting as a completed write at -inf.
    lives: list[list[tuple[float, float]]] = [[] for _ in range(n_values)]
    lives[_ABSENT].append((-inf, first_ret_after[0]))
    for i in writes:
        ret = rets[i]
        until = inf if ret is None else first_ret_after[bisect_right(done_calls, ret)]
        lives[args[i]].append((ops[i].call, until))
    calls = [[c for c, _ in sorted(w)] for w in lives]
    best = [[*accumulate((u for _, u in sorted(w)), max)] for w in lives]  # prefix max
    for i, op in enumerate(ops):
        if kinds[i] == _GET:
            j = bisect_right(calls[args[i]], op.ret)
            if j == 0 or best[args[i]][j - 1] < op.call:
                return op
    return None


def _search(
    key: str,
    ops: list[Operation],
    kinds: list[int],
    args: list[int],
    conds: list[int],
    n_values: int,
    max_states: int,
) -> CheckResult:
    """Wing & Gong / Lowe search for one key; ``args`` are interned value ids.

    Unknown-outcome writes are kept out of the event list.  In any linearization such a
    write is either useless (the next op is a write, or the state already held its value)
    and can be deleted, or it is immediately followed by a get reading its value.  So it
    is only ever placed as a macro step "unknown write of v, then a get of v" (or a cas
    requiring v) when the state is not already v.  Every step therefore linearizes one completed op, and which
    unknown writes were consumed is tracked apart from the completed set.
    """
    done = sorted((i for i in range(len(ops)) if ops[i].ret is not None), key=lambda i: ops[i].call)
    unknown = sorted((i for i in range(len(ops)) if ops[i].ret is None), key=lambda i: ops[i].call)
    # Bits in call order keep the completed set a run of ones plus a narrow window, so
    # the memo can store it compactly as (length of the run, window).
    bit = {op_i: 1 << b for b, op_i in enumerate(done)}
    bit.update({op_i: 1 << b for b, op_i in enumerate(unknown)})
    pending: list[list[int]] = [[] for _ in range(n_values)]  # value -> unknown writes, by call
    for i in unknown:
        pending[args[i]].append(i)
    events: list[tuple[int, int, int]] = []  # (time, 0=call/1=return, op index)
    for i in done:
        events += [(ops[i].call, 0, i), (ops[i].ret, 1, i)]  # type: ignore[list-item]
    # Calls sort before returns at equal times, which makes ret == call concurrent.
    events.sort()

    m = len(events)
    head, tail = m, m + 1  # sentinels, so unlinking never needs end-of-list checks
    nxt, prv = [0] * (m + 2), [0] * (m + 2)
    for a, b in pairwise([head, *range(m), tail]):
        nxt[a], prv[b] = b, a
    node_op = [e[2] for e in events]
    node_time = [e[0] for e in events]
    is_call = [e[1] == 0 for e in events]
    node_of = {(is_ret, i): n for n, (_, is_ret, i) in enumerate(events)}
    match = [node_of[1, i] if not is_ret else -1 for _, is_ret, i in events]  # call -> return

    remaining = len(done)
    state = _ABSENT
    linearized = 0  # bitset over `done`
    used = 0  # bitset over `unknown`: writes consumed by macro steps
    stack: list[tuple[int, int, int]] = []  # (call node, state before, unknown write or -1)
    # Lowe's memo, extended with dominance: for the same completed set and state, having
    # consumed fewer unknown writes is never worse, so a config is pruned when a failed
    # one consumed a subset of its unknown writes.  Every step adds a completed op, so no
    # config on the current path shares a key with the one being tested.
    memo: dict[tuple[int, int, int], tuple[int, ...]] = {}
    no_unknown = (0,)  # shared: most configs consume nothing, so they cost no allocation
    n_configs = 0
    best_depth, best_last, best_blocked = -1, -1, -1
    entry = nxt[head]

    # Invariant: while a return event remains listed, scanning forward from any listed
    # call reaches a return before the tail, so `entry` never becomes the tail.
    while remaining:
        if is_call[entry]:
            i = node_op[entry]
            kind, arg = kinds[i], args[i]
            new_state, extra = arg, -1
            need = arg if kind == _GET else conds[i]  # the state this op requires (-1: any)
            if need >= 0 and state != need:
                r = entry
                while is_call[r]:
                    r = nxt[r]
                # An unknown write is placeable iff its call is no later than the
                # earliest outstanding return (the usual list-prefix rule).
                for w in pending[need]:
                    if ops[w].call > node_time[r]:
                        break
                    if not used & bit[w]:
                        extra = w  # equal-value unknown writes are interchangeable
                        break
                if extra < 0:
                    entry = nxt[entry]
                    continue
            lin = linearized | bit[i]
            run = (~lin & (lin + 1)).bit_length() - 1
            memo_key = (run, lin >> run, new_state)
            mask = used | bit[extra] if extra >= 0 else used
            failed = memo.get(memo_key)
            if failed is None or all(old & ~mask for old in failed):
                if n_configs >= max_states:
                    return CheckResult(False, key, "inconclusive: state budget exhausted", True)
                n_configs += 1
                entry_masks = no_unknown if mask == 0 else (mask,)
                memo[memo_key] = entry_masks if failed is None else (*failed, mask)
                stack.append((entry, state, extra))
                used, state, linearized = mask, new_state, lin
                # Lift the op: unlink its call and return so later scans skip it.
                r = match[entry]
                nxt[prv[entry]] = nxt[entry]
                prv[nxt[entry]] = prv[entry]
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
            entry, state, extra = stack.pop()
            linearized &= ~bit[node_op[entry]]
            if extra >= 0:
                used &= ~bit[extra]
            # Unlift in reverse order of lifting so the saved neighbour links are valid.
            r = match[entry]
            nxt[prv[r]] = r
            prv[nxt[r]] = r
            nxt[prv[entry]] = entry
            prv[nxt[entry]] = entry
            remaining += 1
            entry = nxt[entry]

    if not remaining:
        return CheckResult(True, None, f"linearizable: {len(ops)} ops on key {key!r}")
    last = f"ending with {_describe(ops[best_last])}" if best_last >= 0 else "(empty)"
    why = f"longest linearizable prefix has {best_depth} completed ops {last}"
    stuck = f"{_describe(ops[best_blocked])} could not be placed"
    return CheckResult(False, key, f"not linearizable: {why}; then {stuck}")
