"""Real-process tests. A package, so that test_locks/test_queues do not clash with tests/actors/."""
