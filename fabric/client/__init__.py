"""The client layer: the native client's drivers over DEALER sockets, as applications import it
(``from syncfab.fabric.client import AsyncClient, Client``)."""

from syncfab.fabric.client.blocking import Client
from syncfab.fabric.client.zmq_client import (
    AsyncClient,
    CachedValue,
    CacheWriteResult,
    Deadlock,
    Grant,
    LockTimeout,
    NotFound,
    SyncfabError,
    VersionMismatch,
)

__all__ = [
    "AsyncClient",
    "CacheWriteResult",
    "CachedValue",
    "Client",
    "Deadlock",
    "Grant",
    "LockTimeout",
    "NotFound",
    "SyncfabError",
    "VersionMismatch",
]
