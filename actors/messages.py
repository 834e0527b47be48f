"""The peer protocol: every message one node sends another.

Raft messages are addressed by the envelope (sender, group), so they carry only what
the algorithm needs. Hot messages are ``array_like`` so MessagePack encodes them as short
arrays rather than maps.
"""

from __future__ import annotations

import msgspec

from syncfab.actors.cache_ops import WriteBackItem
from syncfab.actors.results import Err, Ok


class Membership(msgspec.Struct, frozen=True, array_like=True):
    """A Raft group's configuration: who votes, and who only receives the log (learners,
    catching up before they vote). Both sorted (actors/raft_conf.py)."""

    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()


class Entry(msgspec.Struct, frozen=True, array_like=True):
    """One log entry. ``data`` is an encoded command; ``b""`` is a leader's no-op, or, with
    ``conf``, a membership change (in force from the moment it is in a log: raft_conf.py)."""

    term: int
    index: int
    data: bytes
    conf: Membership | None = None


class Snapshot(msgspec.Struct, frozen=True, array_like=True):
    """A state machine image covering the log up to and including ``index``, and the group's
    membership at that index (None: the group's initial one; snapshots before membership changes)."""

    index: int
    term: int
    data: bytes
    conf: Membership | None = None


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


class Removed(msgspec.Struct, frozen=True, tag="rmvd", array_like=True):
    """To a node that is no longer a member but still talks Raft (it was removed while away):
    ``version`` is the member table's, at the member that says so."""

    version: int


class Beat(msgspec.Struct, frozen=True, tag="bt", array_like=True):
    """Node-to-node liveness for the phi-accrual detector (independent of Raft's timers).

    It also gossips which groups the sender leads, as (group, term), so a node learns the
    leaders of shards it does not replicate and can forward to them in one hop; and the
    address native clients should dial for the sender, so every node's cluster view hands
    out addresses a client can use (``--advertise``), not the ones peers use.
    """

    seq: int
    leading: list[tuple[int, int]] = []
    # (shard, epoch, last seq) of every cache stream the sender publishes: a subscriber that
    # has not seen that seq lost part of the stream (the Clone pattern's heartbeat).
    cache_streams: list[tuple[int, int, int]] = []
    advertise: str = ""  # host:port of the sender's ROUTER for clients ("": its --peers entry)
    leaving: bool = False  # the sender is stopping: hand it no leadership


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


# -- the cache (actors/cache_home.py, actors/cache_near.py) ---------------------------------
#
# A home publishes one ordered stream per shard and epoch (its Raft term): every message it has
# for holders, grants included, numbered so a subscriber sees a gap. Holders talk to the home
# point to point; the envelope's group is the shard.


class Inval(msgspec.Struct, frozen=True, tag="ci", array_like=True):
    """Drop your copy of ``key`` (every node, the writer's too) and acknowledge."""

    key: str


class Grant(msgspec.Struct, frozen=True, tag="cg", array_like=True):
    """The answer to ``node``'s op ``op_id``: its line for ``key`` (``state`` ``I``: not cached),
    the value (``version`` 0: no such key, and ``value`` is nil) and, for writes and
    invalidations, the client's result.
    ``lease``: the grant also renewed ``node``'s lease on the shard. ``may_dirty``: an E line
    may turn M without asking (its version is fresh in this epoch)."""

    node: str
    op_id: int
    key: str
    state: str
    value: msgspec.Raw
    version: int
    lease: bool
    may_dirty: bool = False
    result: Ok | Err | None = None


class Recall(msgspec.Struct, frozen=True, tag="cx", array_like=True):
    """``node`` owns ``key`` (E or M): send your value home, then keep it as S (``shared``) or drop it."""

    node: str
    key: str
    shared: bool


class Lease(msgspec.Struct, frozen=True, tag="cl", array_like=True):
    """``node``'s lease on the shard is renewed from when it asked (``renew_id``). ``resync``:
    the home forgot ``node`` (its lease ran out there): drop every line of the shard first."""

    node: str
    renew_id: int
    resync: bool = False


class WrittenBack(msgspec.Struct, frozen=True, tag="cd", array_like=True):
    """``node``'s value of ``key`` at ``version`` is in memory (``ok``) or was refused."""

    node: str
    key: str
    version: int
    ok: bool


StreamItem = Inval | Grant | Recall | Lease | WrittenBack


class CacheStream(msgspec.Struct, frozen=True, tag="cs", array_like=True):
    """Items ``seq0``, ``seq0 + 1``, ... of the shard's stream in ``epoch`` (published on PUB)."""

    shard: int
    epoch: int
    seq0: int
    items: list[StreamItem]


class CacheFetch(msgspec.Struct, frozen=True, tag="cf", array_like=True):
    op_id: int
    key: str


class CacheWriteReq(msgspec.Struct, frozen=True, tag="cw", array_like=True):
    """A client's write or delete, as the client encoded it (the home logs these very bytes)."""

    op_id: int
    request: msgspec.Raw


class CacheDropReq(msgspec.Struct, frozen=True, tag="ck", array_like=True):
    """A client's invalidate: drop every copy of ``key``."""

    op_id: int
    key: str


class CacheWriteBackReq(msgspec.Struct, frozen=True, tag="cb", array_like=True):
    items: list[WriteBackItem]


class CacheAck(msgspec.Struct, frozen=True, tag="ca", array_like=True):
    """Everything of ``epoch``'s stream up to ``seq`` is applied here. ``renew_id`` > 0 asks for
    the lease; ``dropped`` names lines evicted since, each with the seq of its grant."""

    epoch: int
    seq: int
    renew_id: int = 0
    dropped: list[tuple[str, int]] = []


class CacheRecalled(msgspec.Struct, frozen=True, tag="cy", array_like=True):
    """The answer to a Recall: the owner's value if it is newer than memory, else None.
    ``recall_seq`` is the Recall's place in the stream: a resend of the answer to an older
    recall of the key is not taken for the answer to a newer one."""

    epoch: int
    key: str
    item: WriteBackItem | None
    recall_seq: int = 0
