"""The native client's lock session: the lease its locks hang on, kept alive while it holds any.

The lock table knows owners by id and leases by deadline. A native client is one owner (its
client id); while it holds locks a background task renews the lease every third of its ttl, so
a live client keeps its locks and a dead one loses them one ttl after its last renewal. A clean
close releases everything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from syncfab.actors.limits import LOCK_TTL_MS_DEFAULT
from syncfab.actors.lock_ops import Granted
from syncfab.actors.locks import Acquire, Release, ReleaseAll, Renew
from syncfab.actors.results import Err, Ok, Result
from syncfab.fabric.core.client_calls import GAVE_UP

log = logging.getLogger("syncfab.client")


class SyncfabError(Exception):
    def __init__(self, code: str, message: str = "", detail: Any = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code, self.message, self.detail = code, message, detail


class NotFound(SyncfabError):
    pass


class LockTimeout(SyncfabError):
    """The lock stayed held by others for the whole wait (or wait_ms was 0)."""


class Deadlock(SyncfabError):
    """This request closed a cycle of waits and was chosen to break it: ``detail["cycle"]``."""


class VersionMismatch(SyncfabError):
    """A compare-and-set found another version: ``detail["version"]`` is the current one."""


_ERRORS = {"not_found": NotFound, "deadlock": Deadlock, "version_mismatch": VersionMismatch}


def raise_for(err: Err) -> None:
    raise _ERRORS.get(err.code, SyncfabError)(err.code, err.message, err.detail)


@dataclass(frozen=True, slots=True)
class Grant:
    resource: str
    mode: str
    fencing_token: int


# An op started: its handle and the future its result lands in (AsyncClient._begin).
Begin = Callable[[Any], tuple[int, asyncio.Future[Result]]]


class LockSession:
    """``begin`` starts an op; the session awaits its future in its own frame (one coroutine
    less an op than a ``call`` coroutine), and tells ``cancelled`` the handle of one its caller
    gave up on (the client core drops it: a queued acquire is not sent)."""

    def __init__(
        self, begin: Begin, cancelled: Callable[[int], None], owner: str, ttl_ms: int = LOCK_TTL_MS_DEFAULT
    ) -> None:
        self._begin = begin
        self._cancelled = cancelled
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.held: dict[str, Grant] = {}
        self._keepalive: asyncio.Task[None] | None = None
        self._acquired_ever = False

    async def acquire(self, resource: str, mode: str, wait_ms: int, ttl_ms: int | None) -> Grant:
        self._acquired_ever = True
        handle, answer = self._begin(Acquire(resource, mode, self.owner, wait_ms, ttl_ms or self.ttl_ms))
        try:
            result = await answer
        except asyncio.CancelledError:
            self._cancelled(handle)
            raise
        if isinstance(result, Err):
            if result.code == "lock_timeout":  # the lock table's verdict: held for the whole wait
                raise LockTimeout(result.code, result.message, result.detail)
            if result.code in (GAVE_UP, "unavailable", "no_leader", "leader_changed", "busy"):
                # No verdict reached us: the acquire may still have been granted. Give it back
                # rather than leave a lock held by nobody who knows (best effort; the lease is
                # the backstop).
                with contextlib.suppress(Exception):
                    await self._call(Release(resource, self.owner))
                raise SyncfabError(result.code, f"{result.message}; released in case it was granted")
            raise_for(result)
        assert isinstance(result, Ok)
        granted = msgspec.convert(result.value, Granted)
        grant = Grant(granted.resource, granted.mode, granted.fencing_token)
        self.held[resource] = grant
        if self._keepalive is None or self._keepalive.done():  # _keep_alive's test, inline
            self._keep_alive()
        return grant

    async def release(self, resource: str) -> bool:
        handle, answer = self._begin(Release(resource, self.owner))
        try:
            result = await answer
        except asyncio.CancelledError:
            self._cancelled(handle)
            raise
        self.held.pop(resource, None)
        if isinstance(result, Err):
            raise_for(result)
        assert isinstance(result, Ok)
        return bool(result.value.get("released"))

    async def renew(self, ttl_ms: int | None = None) -> int:
        result = await self._call(Renew(self.owner, ttl_ms or self.ttl_ms))
        if isinstance(result, Err):
            if result.code == "lease_expired":
                self.held.clear()  # the table has already released them
            raise_for(result)
        assert isinstance(result, Ok)
        return int(result.value["lease_expires_at_ms"])

    async def close(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        if self.held or self._acquired_ever:
            # Also covers a grant whose answer never arrived.
            self.held.clear()
            await self._call(ReleaseAll(self.owner))

    async def _call(self, op: Any) -> Result:
        """``op``'s result (the session's rarer calls: renew, release-all, a give-back)."""
        handle, answer = self._begin(op)
        try:
            return await answer
        except asyncio.CancelledError:
            self._cancelled(handle)
            raise

    def _keep_alive(self) -> None:
        if self._keepalive is None or self._keepalive.done():
            self._keepalive = asyncio.ensure_future(self._renew_forever())

    async def _renew_forever(self) -> None:
        while self.held:
            await asyncio.sleep(self.ttl_ms / 3000)
            if not self.held:
                return
            try:
                await self.renew()
            except SyncfabError as e:
                log.warning("lock lease of %s not renewed: %s", self.owner, e)


class HeldLock:
    """``async with client.lock(resource) as grant`` — released on the way out."""

    def __init__(
        self, session: LockSession, resource: str, mode: str, wait_ms: int, ttl_ms: int | None
    ) -> None:
        self._session, self._args = session, (resource, mode, wait_ms, ttl_ms)
        self.grant: Grant | None = None

    async def __aenter__(self) -> Grant:
        self.grant = await self._session.acquire(*self._args)
        return self.grant

    async def __aexit__(self, *exc: object) -> None:
        if self.grant is not None and self.grant.resource in self._session.held:
            await self._session.release(self.grant.resource)
