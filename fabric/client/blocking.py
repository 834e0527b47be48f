"""``Client``: the native client for blocking code — an AsyncClient (fabric/client/zmq_client.py)
on a private event loop thread, every coroutine method of it a plain method.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
from collections.abc import Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from syncfab.fabric.client.locks import Grant
from syncfab.fabric.client.zmq_client import AsyncClient

T = TypeVar("T")


class _Blocking:
    """An object's coroutine methods as plain methods, run on the client's loop thread."""

    def __init__(self, target: Any, run: Any) -> None:
        self._target, self._run_on_loop = target, run

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._target, name)
        if not inspect.iscoroutinefunction(method):
            return method
        return lambda *args, **kwargs: self._run_on_loop(method(*args, **kwargs))


class Client:
    """Blocking facade: the same client on a private event loop thread."""

    def __init__(self, nodes: Sequence[str], **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="syncfab-client", daemon=True)
        self._thread.start()
        self._async = AsyncClient(nodes, **kwargs)
        try:
            self._run(self._async.connect())
        except BaseException:
            # No cluster answered (a refused CURVE key, say): no thread or socket left behind.
            self._run(self._async.close())
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __getattr__(self, name: str) -> Any:
        """Every coroutine method of AsyncClient (put, get, acquire, produce, consume, ack, ...)
        as a plain method with the same arguments."""
        method = getattr(self._async, name)
        if not inspect.iscoroutinefunction(method):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    @property
    def cache(self) -> _Blocking:
        """``client.cache.read(key)``, ``.write(...)`` and the rest of AsyncClient.cache, blocking."""
        return _Blocking(self._async.cache, self._run)

    @contextlib.contextmanager
    def lock(
        self, resource: str, mode: str = "exclusive", *, wait_ms: int = 0, ttl_ms: int | None = None
    ) -> Iterator[Grant]:
        grant = self._run(self._async.acquire(resource, mode, wait_ms=wait_ms, ttl_ms=ttl_ms))
        try:
            yield grant
        finally:
            self._run(self._async.release(resource))

    def close(self) -> None:
        self._run(self._async.close())
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
