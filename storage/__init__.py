"""Durable Raft state: the LogStore protocol (log_store.py) and its LMDB (lmdb_store.py) and
in-memory (memory_store.py) implementations. Import the module you need: importing this
package imports nothing, so the simulator runs where lmdb is not installed."""
