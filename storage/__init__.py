"""Durable Raft state: the LogStore protocol and its LMDB and in-memory implementations."""

from syncfab.storage.lmdb_store import LmdbLogStore
from syncfab.storage.log_store import LogStore, StoredGroup
from syncfab.storage.memory_store import MemoryLogStore

__all__ = ["LmdbLogStore", "LogStore", "MemoryLogStore", "StoredGroup"]
