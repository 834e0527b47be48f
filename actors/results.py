"""What a command returns: a value, or an error with a stable code clients can act on."""

from __future__ import annotations

from typing import Any

import msgspec


class Ok(msgspec.Struct, frozen=True, tag="ok", array_like=True):
    value: Any = None


class Err(msgspec.Struct, frozen=True, tag="err", array_like=True):
    """``code`` is machine-readable and stable; ``message`` is for people; ``detail`` is data
    (a deadlock's cycle, the field a bad request named)."""

    code: str
    message: str = ""
    detail: Any = None


Result = Ok | Err


class Waiting(msgspec.Struct, frozen=True, tag="wait", array_like=True):
    """A command left its request parked (a lock acquire behind a holder); the answer comes
    later, when another command decides it (see actors/machine.py)."""


WAITING = Waiting()


class Answers(msgspec.Struct, frozen=True, tag="ans", array_like=True):
    """The answers to a batch of commands (``LockBatch``), in order. A ``Waiting`` one is
    answered later on its own, under its own request id (see actors/machine.py)."""

    results: list[Ok | Err | Waiting]


# Codes a client may retry, with the same request id, on the same or another node.
RETRYABLE = frozenset({"not_leader", "no_leader", "busy", "leader_changed", "unavailable"})


def bad_request(field: str | None, message: str) -> Err:
    """Bad input, naming the field it was found in (the gateway's 400 names it too)."""
    return Err("bad_request", message, None if field is None else {"field": field})
