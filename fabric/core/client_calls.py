"""What a ClientCore (fabric/core/client_core.py) is configured with and keeps per call: its
``ClientConfig``, the ``InFlight`` record of a request under its own id, and the error a call
given up on ends with. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from syncfab.actors.lock_ops import Acquire, Release
from syncfab.actors.results import Err


@dataclass(frozen=True, slots=True)
class ClientConfig:
    timeout_ms: int | None = 10_000  # per call, on top of its op's own wait; None: never give up
    attempt_timeout_ms: int = 1_000
    attempts_max: int | None = 12  # attempts nobody answered (a node that answers is retried
    # until the deadline: an election or a leader catching up ends); None: only the deadline
    backoff_ms_min: int = 10
    backoff_ms_max: int = 250
    # How often a call goes to the leader last heard of rather than any node; the simulator
    # lowers it so deposed leaders and forwarding are met as often as real clients meet them.
    leader_hint_probability: float = 1.0


GAVE_UP = "timeout"  # the one error that means "no answer came in time: outcome unknown"


def timeout_error(waited_ms: int | None) -> Err:
    """A call given up: nobody knows whether it took effect."""
    return Err(GAVE_UP, "no answer in time" if waited_ms is None else f"no answer within {waited_ms} ms")


# A msgspec Struct rather than a dataclass: one is made for every call, and a Struct is built
# in C (a dataclass's __init__ is a Python call). gc=False: nothing it holds refers back to it.
class InFlight(msgspec.Struct, gc=False):
    """One request in flight (or waiting for its own reply) under its own id. Built as its
    first attempt leaves (``node``, ``attempt`` and ``token`` already that attempt's): the
    fields are in the order the core passes them, positionally."""

    handle: int | None  # None: the client's own batch, answered to its members
    rid: int
    op: Any
    raw: bytes
    group: int | None
    pinned: str | None
    deadline_ms: int | None
    attempt_timeout_ms: int
    node: str  # where the latest attempt went
    attempt: int  # sends so far
    token: int  # which of this call's timers is live (a send or an answer moves it on)
    locks: list[tuple[int, Acquire | Release, int | None]] | None = None  # a LockBatch's callers
    produces: list[int] | None = None  # a ProduceBatch's callers' handles, in order
    stays: bool = False  # every attempt goes to the pinned node
    retries: int = 0  # retryable answers so far: the backoff's growth
    silent: int = 0  # attempts that timed out
    last: Err | None = None  # the latest retryable answer: what a call out of tries returns
