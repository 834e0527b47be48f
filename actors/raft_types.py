"""What RaftCore's callers name: its settings, its roles, and the refusals it raises."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Role(Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


class NotLeader(Exception):
    """This replica cannot take the request; ``leader`` is its best guess at who can."""

    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader})")
        self.leader = leader


class Busy(Exception):
    """Too many uncommitted entries, or a leadership transfer is under way: retry shortly."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    heartbeat_ms: int = 100
    # Followers wait a random time in [election_timeout_ms, 2 * election_timeout_ms).
    election_timeout_ms: int = 500
    pre_vote: bool = True
    check_quorum: bool = True
    append_entries_max: int = 1024
    append_bytes_max: int = 1 << 20
    inflight_messages_max: int = 64
    uncommitted_entries_max: int = 50_000
    apply_entries_max: int = 4096
    # Heartbeat rounds a follower may show no progress before its pipeline is restarted.
    stalled_heartbeats_max: int = 2
    snapshot_stalled_heartbeats_max: int = 20
    # A removed replica (or one that asks for votes after its removal) still gets the log and
    # heartbeats, so it learns its removal committed (RaftCore.removed) and its node retires
    # it: this many heartbeats once it holds the removal, at most the max in all (it may be dead).
    removed_heartbeats: int = 10
    removed_heartbeats_max: int = 100
