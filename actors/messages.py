"""The peer protocol: every message one node sends another.

Raft messages are addressed by the envelope (sender, group), so they carry only what
the algorithm needs. Hot messages are ``array_like`` so MessagePack encodes them as short
arrays rather than maps.
"""

from __future__ import annotations

import msgspec


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One log entry. ``data`` is an encoded command; ``b""`` is a leader's no-op."""

    term: int
    index: int
    data: bytes


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """A state machine image covering the log up to and including ``index``."""

    index: int
    term: int
    data: bytes


class HardState(msgspec.Struct, frozen=True, array_like=True):
    """What Raft must find on disk after a crash: the term, the vote in it, the commit index."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


class AppendEntries(msgspec.Struct, frozen=True, tag="ae", array_like=True):
    term: int
    prev_index: int
    prev_term: int
    entries: list[Entry]
    commit: int


class AppendReply(msgspec.Struct, frozen=True, tag="ar", array_like=True):
    """``index`` is the last index now known to match (success) or the rejected ``prev_index``.

    On a rejection ``hint`` is the last index of ours that could match, and ``hint_term`` its
    term: the leader skips back past every entry of a term we never had, on both logs, instead
    of walking back one entry per round trip (etcd's findConflictByTerm on both sides).
    """

    term: int
    success: bool
    index: int
    hint: int = 0
    hint_term: int = 0


class Heartbeat(msgspec.Struct, frozen=True, tag="hb", array_like=True):
    """Leader liveness and commit propagation; ``read_seq`` names a ReadIndex round."""

    term: int
    commit: int
    read_seq: int


class HeartbeatReply(msgspec.Struct, frozen=True, tag="hr", array_like=True):
    term: int
    read_seq: int


class VoteRequest(msgspec.Struct, frozen=True, tag="vq", array_like=True):
    """A (pre-)vote request. ``transfer`` marks an election a leader asked for (TimeoutNow),
    which voters grant even while they still hear from that leader."""

    term: int
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False


class VoteReply(msgspec.Struct, frozen=True, tag="vr", array_like=True):
    term: int
    granted: bool
    pre_vote: bool = False


class InstallSnapshot(msgspec.Struct, frozen=True, tag="is", array_like=True):
    term: int
    snapshot: Snapshot


class TimeoutNow(msgspec.Struct, frozen=True, tag="tn", array_like=True):
    """Leadership transfer: the leader tells a caught-up follower to campaign at once."""

    term: int


class Beat(msgspec.Struct, frozen=True, tag="bt", array_like=True):
    """Node-to-node liveness for the phi-accrual detector (independent of Raft's timers).

    It also gossips which groups the sender leads, as (group, term), so a node learns the
    leaders of shards it does not replicate and can forward to them in one hop.
    """

    seq: int
    leading: list[tuple[int, int]] = []


class Forward(msgspec.Struct, frozen=True, tag="fw", array_like=True):
    """A client request a non-leader passes to the leader it knows, with the way back.

    ``request`` stays encoded: the leader logs those very bytes, so a forwarded request is
    never decoded and re-encoded on the way.
    """

    route: bytes
    request: msgspec.Raw


class ForwardReply(msgspec.Struct, frozen=True, tag="fr", array_like=True):
    route: bytes
    reply: msgspec.Raw


RaftMessage = (
    AppendEntries
    | AppendReply
    | Heartbeat
    | HeartbeatReply
    | VoteRequest
    | VoteReply
    | InstallSnapshot
    | TimeoutNow
)
