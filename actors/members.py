"""MemberTable: which nodes make up the cluster, and the address peers dial each at.

Replicated in the control group, so every node learns a change in log order. The table is
the *target*: every group's leader then moves its group's Raft membership toward the
placement of these members one voter at a time (fabric/core/reconfigure.py). The table starts
as the cluster was started: the first leader of the control group logs its starting members
(``MemberSeed``, housekeeping), and changes are refused until that has been applied.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import msgspec

from syncfab.actors.limits import NAME_BYTES_MAX
from syncfab.actors.results import Err, Ok, Result, bad_request

if TYPE_CHECKING:
    from syncfab.actors.machine import ApplyContext

MEMBERS_MAX = 64  # each member costs every node a connection and an I/O thread
REMOVED_KEPT_MAX = 64  # removed members remembered (oldest forgotten first): see ``removed``
_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class MemberAdd(msgspec.Struct, frozen=True, tag="madd", array_like=True):
    node: str
    address: str  # host:port, what peers dial


class MemberRemove(msgspec.Struct, frozen=True, tag="mrm", array_like=True):
    node: str


class MemberSeed(msgspec.Struct, frozen=True, tag="mseed", array_like=True):
    """Housekeeping: the members the cluster was started with, logged once."""

    members: dict[str, str]


def member_refused(node: str, address: str | None = None) -> Err | None:
    """Why ``node`` (and ``address``) cannot name a member (None: they can)."""
    if not (0 < len(node.encode()) <= NAME_BYTES_MAX and _NODE_ID.fullmatch(node)):
        return bad_request("id", f"a node id is 1..{NAME_BYTES_MAX} of A-Z a-z 0-9 _ . - (not first: _ . -)")
    if address is not None:
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65535:
            return bad_request("address", f"bad address {address!r}: expected host:port")
    return None


class MemberTable:
    commands = (MemberAdd, MemberRemove, MemberSeed)
    queries = ()
    locals = ()
    batches = ()

    def __init__(self, seed: dict[str, str] | None = None, members_min: int = 3) -> None:
        self.seed = dict(sorted((seed or {}).items()))  # a joining node has none to give
        # Fewer members than replicas per shard would leave shards short of their replicas.
        self.members_min = members_min
        self.members: dict[str, str] = {}
        self.version = 0  # the log index of the last change (0: none yet)
        # Removed members and their addresses: a removed node that comes back is told so
        # (fabric/core/hosting.py), and its id is never taken again — a replica under an old
        # name with a wiped disk could answer a message from before as if it remembered.
        self.removed: dict[str, str] = {}

    def apply(self, ctx: ApplyContext, op: MemberAdd | MemberRemove | MemberSeed) -> Result:
        if isinstance(op, MemberSeed):
            if not self.members:  # only the first one counts
                self.members, self.version = dict(sorted(op.members.items())), ctx.index
            return Ok(self.view())
        if not self.members:
            return Err("unavailable", "the member table is not written yet: retry shortly")
        match op:
            case MemberAdd(node=node, address=address):
                refused = member_refused(node, address)
                if refused is not None:
                    return refused
                known = self.members.get(node)
                if known == address:
                    return Ok(self.view())  # a retry, or asked twice: already a member
                if known is not None:
                    return Err("member_exists", f"{node} is a member at {known}", {"id": node})
                if node in self.removed:
                    why = f"{node} was removed; add the machine under a new id"
                    return Err("member_removed", why, {"id": node})
                if len(self.members) >= MEMBERS_MAX:
                    return Err("too_many_members", f"at most {MEMBERS_MAX} members")
                self.members = dict(sorted({**self.members, node: address}.items()))
            case MemberRemove(node=node):
                if node not in self.members:
                    return Err("not_found", f"{node} is not a member", {"id": node})
                if len(self.members) - 1 < self.members_min:
                    why = f"{len(self.members) - 1} members could not hold {self.members_min} replicas"
                    return Err("too_few_members", f"{why}: add a node first", {"id": node})
                self.removed[node] = self.members[node]
                while len(self.removed) > REMOVED_KEPT_MAX:
                    del self.removed[next(iter(self.removed))]
                self.members = {m: a for m, a in self.members.items() if m != node}
            case _:
                raise TypeError(f"not a member command: {op!r}")
        self.version = ctx.index
        return Ok(self.view())

    def view(self) -> dict[str, object]:
        return {
            "members": [{"id": m, "address": a} for m, a in self.members.items()],
            "version": self.version,
        }

    def query(self, op: object) -> Result:
        raise TypeError("the member table has no queries: a node's view is GET /cluster/members")

    def local(self, now_ms: int, op: object) -> Result:
        raise TypeError("the member table has no leader-only operations")

    def due(self, now_ms: int) -> list[object]:
        return [MemberSeed(self.seed)] if not self.members and self.seed else []

    def hand_over(self) -> list[object]:
        return []

    def reset_local(self, leading: bool) -> None:
        pass

    def snapshot(self) -> bytes:
        return _encode(_Image(self.members, self.version, self.removed))

    def restore(self, data: bytes) -> None:
        image = _decode(data)
        self.members, self.version, self.removed = dict(image.members), image.version, dict(image.removed)


class _Image(msgspec.Struct, array_like=True):
    members: dict[str, str]
    version: int
    removed: dict[str, str] = {}


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Image).decode
