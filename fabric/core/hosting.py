"""Which groups a node hosts, and for which cluster: building a hosted group, hosting one a
leader starts sending, and following the control group's member table (actors/members.py).

A node hosts, from the start, the groups the bootstrap placement gives it (with that
placement's replicas as their first membership) and whatever it has on disk; a node that joined
a running cluster starts with only the control group, empty. Later groups arrive on demand: a
leader adding this node as a learner sends it the log, and the node hosts that group empty
and with no membership of its own until the log makes it one (fabric/core/reconfigure.py).
A replica removed from its group stays hosted, inert (a learner of nothing, it neither votes nor
campaigns), with its log on disk: if the placement gives the group back, it resumes from it.
A replica removed while it was away learns it by asking the group's leader (``ask_lost_groups``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from syncfab.actors.cache_home import CacheHome
from syncfab.actors.cache_store import CacheStore
from syncfab.actors.kv import KvStore
from syncfab.actors.locks import LockTable
from syncfab.actors.machine import GroupMachine
from syncfab.actors.members import MemberTable
from syncfab.actors.messages import AppendEntries, Heartbeat, InstallSnapshot, Removed
from syncfab.actors.queues import QueuePartitions
from syncfab.actors.raft import RaftCore
from syncfab.actors.ring import CONTROL_GROUP, ShardPlacement
from syncfab.fabric.core.hosted_group import HostedGroup
from syncfab.fabric.core.log_clock import LogClock
from syncfab.fabric.core.node_config import NodeConfig

if TYPE_CHECKING:
    from syncfab.fabric.core.codec import PeerMessage
    from syncfab.fabric.core.node import NodeCore
    from syncfab.storage.log_store import StoredGroup


TELL_REMOVED_MS = 1_000  # a removed member is told at most this often
TELL_DIAL_MS = 10_000  # and dialed this long after


def placement_of(nodes: Iterable[str], cfg: NodeConfig) -> ShardPlacement:
    return ShardPlacement.build(sorted(nodes), cfg.shard_count, cfg.replication, cfg.vnodes)


def host_group(
    core: NodeCore, gid: int, voters: Sequence[str], disk: StoredGroup | None, rng: random.Random
) -> HostedGroup:
    cfg = core.config
    raft = RaftCore(
        core.id,
        voters,
        rng=rng,
        now_ms=core._now,
        config=cfg.raft,
        hard_state=disk.hard_state if disk else None,
        snapshot=disk.snapshot if disk else None,
        entries=disk.entries if disk else (),
    )
    machine = _machine_for(core, gid)
    if raft.snapshot is not None:
        machine.restore(raft.snapshot.data)
    clock = LogClock(cfg.clock_skew_max_ms, cfg.clock_correction_max_ms)
    g = core.groups[gid] = HostedGroup(gid, raft, machine, clock)
    return g


def _machine_for(core: NodeCore, group: int) -> GroupMachine:
    if group == CONTROL_GROUP:
        seed = {m: a for m, a in core.members.items() if m in core.bootstrap}
        members = MemberTable(seed, members_min=core.config.replication)
        return GroupMachine({"locks": LockTable(), "members": members})
    home = CacheHome(group, core.id, core.config.cache)
    home.link.port = core.cache
    return GroupMachine({"kv": KvStore(), "queues": QueuePartitions(group), "cache": CacheStore(home)})


def host_on_demand(core: NodeCore, gid: int, msg: PeerMessage) -> HostedGroup | None:
    """A leader sends a group this node does not host: host it if the placement names this
    node for it (it is being added as a learner). It votes only once its log says it may."""
    if not isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
        return None
    if not 1 <= gid <= core.config.shard_count or core.id not in core.placement.replicas(gid):
        return None
    g = host_group(core, gid, (), None, random.Random(core._rng.getrandbits(64)))
    core.counters["groups_added"] += 1
    return g


def follow_members(core: NodeCore) -> None:
    """The control group applied entries (or a snapshot): if its member table changed, that
    is the cluster now — its members, their placement, the peers to dial."""
    table = member_table(core)
    if table.version == core._members_version or not table.members:
        return
    core._members_version = table.version
    core.evicted = core.evicted or core.id in table.removed
    if table.members != core.members:
        core.former.update({m: a for m, a in core.members.items() if m not in table.members})
        core.members = dict(table.members)
        core.placement = placement_of(core.members, core.config)
        for gone in set(core.advertised) - set(core.members) - {core.id}:
            core.detector.forget(gone)
            del core.advertised[gone]
        redial(core)


def member_table(core: NodeCore) -> MemberTable:
    table = core.groups[CONTROL_GROUP].machine.services["members"]
    assert isinstance(table, MemberTable)
    return table


def tell_removed(core: NodeCore, src: str) -> None:
    """A removed member still talks Raft to us (it was away when it was removed, and its groups
    never learnt it): tell it, once a second at most — etcd's "member removed" answer. It stops
    campaigning; its operator learns from its log and /status that it must go."""
    table = member_table(core)
    address = table.removed.get(src)
    if address is None or core._now - core.told.get(src, -TELL_REMOVED_MS) < TELL_REMOVED_MS:
        return
    core.told[src] = core._now
    core.former[src] = address
    redial(core)
    core._send(src, CONTROL_GROUP, Removed(table.version))


def redial(core: NodeCore) -> None:
    """What the runtime should dial: the members, and a removed member while one of our
    groups still sends it the log (RaftCore keeps it in its progress until it has been told)
    or for a while after we told it it was removed."""
    told = {p for g in core.groups.values() for p in g.raft.progress}
    told.update(m for m, at in core.told.items() if core._now - at < TELL_DIAL_MS)
    for again in [m for m in core.former if m in core.members]:
        del core.former[again]  # a member now (one --peers named before the table did)
    dial = dict(core.members) | {m: a for m, a in core.former.items() if m in told}
    if dial != core._dialed:
        core._dialed = dial
        core._dial_changed = True


def ask_lost_groups(core: NodeCore) -> None:
    """A replica with no leader asks the one the beats name, when that leader is no peer of
    its: the replica may have been removed while it was away, and never heard
    (RaftCore.ask_for_log)."""
    for gid, g in core.groups.items():
        raft = g.raft
        if raft.leader is not None or raft.removed or not raft.conf.voters:
            continue
        known = core._remote_leaders.get(gid)
        if known is not None and raft.ask_for_log(known[1]):
            core._active.add(gid)
