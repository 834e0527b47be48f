"""What a chaos round's history must satisfy. Each checker returns the violations it found,
each one sentence naming the operations; an empty list is a pass.

- KV and the cache: per-key linearizability (tests/sim/linearizability.py, reused as it is,
  with its compare-and-set), and for the cache one value per version, and at most one E/M
  holder in every directory snapshot.
- Locks: a fencing token is never handed to two owners and grows with real time; no holder
  used its resource (within the lease it was sure of) after a newer token had been used.
- Queues: every acknowledged produce is delivered at least once; nothing delivered that was
  never produced; no message whose ack was acknowledged is delivered by a consume that began
  after that ack returned.
"""

from __future__ import annotations

from typing import Any

from sim.linearizability import Operation, check_kv_history

from .workloads import WRITE_BACK_SUFFIX, Event, FencedResource, History


def _clients(events: list[Event]) -> dict[str, int]:
    return {p: i for i, p in enumerate(sorted({e.process for e in events}))}


def _linearizable(what: str, ops: list[Operation]) -> list[str]:
    result = check_kv_history(ops)
    if result.ok:
        return []
    kind = "inconclusive (state budget ran out)" if result.inconclusive else "not linearizable"
    return [f"{what} {kind} on key {result.key!r}: {result.explanation}"]


def check_kv(h: History) -> list[str]:
    events = h.of("get", "put", "delete")
    ids = _clients(events)
    ops = [
        Operation(ids[e.process], e.call_us, e.ret_us, e.kind, e.key, value=e.value, output=e.output)
        for e in events
    ]
    return _linearizable("KV", ops)


def cache_versions(h: History) -> tuple[dict[tuple[str, int], Any], list[str]]:
    """Every (key, version) -> value the cache answered, and any version seen with two values."""
    values: dict[tuple[str, int], Any] = {}
    violations = []
    for e in h.of("read", "write", "cas"):
        if e.ret_us is None:
            continue
        out = e.output or {}
        if e.kind == "read" and out.get("found"):
            pair = (out["version"], out["value"])
        elif e.kind in ("write", "cas") and "version" in out:
            pair = (out["version"], e.value)
        else:
            continue
        seen = values.setdefault((e.key, pair[0]), pair[1])
        if seen != pair[1]:
            violations.append(
                f"cache key {e.key!r} version {pair[0]} has two values: {seen!r} and {pair[1]!r} "
                f"({e.process} {e.kind} at {e.call_us})"
            )
    return values, violations


def check_cache(h: History, *, write_back_lossy: bool = False) -> list[str]:
    """``write_back_lossy``: a node died without a clean stop, so write_back keys may have
    lost their owner's latest writes (the README's documented loss) and are left out of the
    linearizability check (not out of the others)."""
    values, violations = cache_versions(h)
    events = h.of("read", "write", "cas", "delete")
    if write_back_lossy:
        events = [e for e in events if not e.key.endswith(WRITE_BACK_SUFFIX)]
    ids = _clients(events)
    ops = []
    for e in events:
        c, out = ids[e.process], e.output or {}
        if e.kind == "read":
            value = out.get("value") if out.get("found") else None
            ops.append(Operation(c, e.call_us, e.ret_us, "get", e.key, output=value))
        elif e.kind == "write":
            ops.append(Operation(c, e.call_us, e.ret_us, "put", e.key, value=e.value))
        elif e.kind == "delete":
            ops.append(Operation(c, e.call_us, e.ret_us, "delete", e.key))
        elif e.ret_us is None or "version" in out:
            expected = out.get("expected_value") if out.get("expected_version") else None
            ops.append(Operation(c, e.call_us, e.ret_us, "cas", e.key, value=e.value, expected=expected))
        else:
            # A lost compare-and-set read the version it found: a get of that version's
            # value when some answer named it (version 0: the key did not exist).
            current = out.get("current_version")
            if current == 0:
                ops.append(Operation(c, e.call_us, e.ret_us, "get", e.key, output=None))
            elif (e.key, current) in values:
                ops.append(Operation(c, e.call_us, e.ret_us, "get", e.key, output=values[e.key, current]))
    violations += _linearizable("cache", ops)
    for e in h.of("line"):
        if e.ret_us is None:
            continue
        owners = [x["node"] for x in (e.output or {}).get("holders", []) if x.get("state") in ("E", "M")]
        if len(owners) > 1:
            violations.append(
                f"cache key {e.key!r}: directory at {e.output.get('home')} (asked of {e.node} at "
                f"{e.call_us}) names {len(owners)} E/M holders: {owners}"
            )
    return violations


def check_locks(h: History, resources: dict[str, FencedResource]) -> list[str]:
    violations = []
    grants = [e for e in h.of("acquire") if e.ret_us is not None and e.output is not None]
    owner_of: dict[int, tuple[str, str]] = {}
    for g in grants:
        who = owner_of.setdefault(g.output, (g.value, g.key))
        if who != (g.value, g.key):
            violations.append(f"fencing token {g.output} granted to {who} and to {(g.value, g.key)}")
    # Tokens grow with real time: a grant that returned before another was asked for has the
    # smaller token (a re-entrant grant of the same lock to the same owner repeats its own).
    # A repeated token is a re-entrant grant (a release whose outcome was unknown left the lock
    # held): only each token's first grant is ordered.
    firsts: dict[int, Event] = {}
    for g in sorted(grants, key=lambda g: g.call_us):
        firsts.setdefault(g.output, g)
    grants = sorted(firsts.values(), key=lambda g: g.call_us)
    by_ret = sorted(grants, key=lambda g: g.ret_us or 0)
    i, top, top_grant = 0, 0, None
    for g in sorted(grants, key=lambda g: g.call_us):
        while i < len(by_ret) and (by_ret[i].ret_us or 0) < g.call_us:
            if by_ret[i].output > top:
                top, top_grant = by_ret[i].output, by_ret[i]
            i += 1
        if top_grant is not None and (
            g.output < top or (g.output == top and (g.value, g.key) != (top_grant.value, top_grant.key))
        ):
            violations.append(
                f"token went back: {g.process} got {g.output} for {g.key!r} (asked at {g.call_us}) after "
                f"{top_grant.process} had got {top} for {top_grant.key!r} (returned at {top_grant.ret_us})"
            )
    for name, resource in sorted(resources.items()):
        for a in resource.accesses:
            if not a["accepted"]:
                violations.append(
                    f"two holders of {name!r}: {a['process']} used token {a['token']} at {a['t_us']}, "
                    f"within the lease it was sure of, after token {a['max']} had been used"
                )
    return violations


def check_queue(h: History) -> list[str]:
    violations = []
    attempted = {e.value for e in h.of("produce")}
    acknowledged = {e.value: e for e in h.of("produce") if e.ret_us is not None}
    delivered: dict[str, list[Event]] = {}
    for e in h.of("consume"):
        for _, data_id in e.output or []:
            delivered.setdefault(data_id, []).append(e)
    lost = sorted(set(acknowledged) - set(delivered))
    if lost:
        first = acknowledged[lost[0]]
        violations.append(
            f"{len(lost)} acknowledged produces never delivered, e.g. {lost[0]!r} "
            f"(message {first.output}, produced by {first.process} at {first.call_us}): {lost[:10]}"
        )
    phantoms = sorted(set(delivered) - attempted)
    if phantoms:
        violations.append(f"{len(phantoms)} delivered ids nobody produced: {phantoms[:10]}")
    acked_at: dict[str, int] = {}
    for e in h.of("ack"):
        if e.ret_us is not None:
            for mid in set(e.value) - set(e.output or []):
                acked_at[mid] = min(acked_at.get(mid, e.ret_us), e.ret_us)
    for e in h.of("consume"):
        for mid, data_id in e.output or []:
            if mid in acked_at and e.call_us > acked_at[mid]:
                violations.append(
                    f"message {mid} ({data_id!r}) acknowledged as acked at {acked_at[mid]} came back to "
                    f"{e.process} in a consume called at {e.call_us}"
                )
    return violations
