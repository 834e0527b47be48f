"""Membership changes during a run: the joining nodes are added, then the first node removed.

Each change is a MemberAdd / MemberRemove through an ``RpcClient`` (the shipped ClientCore,
retrying as a native client does), asked again after a refusal (the member table not written
yet, a leader change) until it is answered; the next waits for that answer. The simulation's
placement follows the changes as they are answered, and ``members_gap`` tells ``finish`` what
is still to converge: every node that stays must know the final members, and every group's
Raft membership must become its placement's replicas (``Simulation.convergence_gap``).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from sim_rpc import RpcClient

from syncfab.actors.members import MemberAdd, MemberRemove
from syncfab.actors.results import Err, Ok, Result
from syncfab.actors.ring import ShardPlacement

if TYPE_CHECKING:
    from simulator import Simulation

RETRY_MS = 200


class MembershipChanges:
    def __init__(self, sim: Simulation) -> None:
        self._sim = sim
        self._rpc = RpcClient("members", sim, random.Random(f"members-{sim.seed}"))
        joining = [n for n in sim.node_ids if n not in sim.bootstrap]
        self.steps: list[Any] = [MemberAdd(n, sim.members[n]) for n in joining]
        self.steps.append(MemberRemove(sim.bootstrap[0]))
        self.target = list(sim.bootstrap)
        self.answers: list[tuple[int, Any, Result]] = []  # (at ms, op, answer)

    @property
    def done(self) -> bool:
        return not self.steps

    def start(self) -> None:
        self._sim.after(self._sim.config.member_change_at_ms, self._next)

    def start_now(self) -> None:
        self._next()

    def _next(self) -> None:
        if self.steps:
            self._rpc.call(self.steps[0], self._answered, None)

    def _answered(self, result: Result | None) -> None:
        sim, op = self._sim, self.steps[0]
        self.answers.append((sim.now, op, result))
        if isinstance(result, Ok) or (isinstance(result, Err) and _already(op, result)):
            self.steps.pop(0)
            if isinstance(op, MemberAdd):
                self.target.append(op.node)
            else:
                self.target.remove(op.node)
            cfg = sim.config
            sim.placement = ShardPlacement.build(self.target, cfg.shard_count, cfg.replication, cfg.vnodes)
            sim.after(RETRY_MS, self._next)
        else:
            sim.after(RETRY_MS, self._next)  # refused (table not written yet, no leader): again

    def members_gap(self) -> str | None:
        if self.steps:
            return f"membership changes left: {self.steps}"
        want = {n: self._sim.members[n] for n in sorted(self.target)}
        for n in self.target:
            core = self._sim.nodes[n].core
            if core is not None and core.members != want:
                return f"{n} knows members {sorted(core.members)}, not {sorted(want)}"
        return None

    def still_counted(self) -> dict[str, list[int]]:
        """Removed nodes, and the groups each still counts itself in (it has not learnt its
        removal there: RaftCore.removed). Faults can leave one that was away unaware for good."""
        out = {}
        for n in self._sim.node_ids:
            core = self._sim.nodes[n].core
            if n not in self.target and core is not None:
                out[n] = sorted(gid for gid, g in core.groups.items() if not g.raft.removed)
        return out


def _already(op: Any, err: Err) -> bool:
    """A retry under a new request id of a change that was applied the first time."""
    return isinstance(op, MemberRemove) and err.code == "not_found"
