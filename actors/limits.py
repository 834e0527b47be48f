"""Limits every service shares, defined once.

- ``NAME_BYTES_MAX``: every name a client gives — a KV or cache key, a lock's resource and
  owner, a queue (before its ``.dlq`` suffixes), a consumer, a dedup id — is 1 to 1,024
  bytes of UTF-8 (etcd's keys are bounded by its request size, ZooKeeper's paths by its
  1 MiB znode limit; 1 KiB keeps every name cheap to log, hash and index).
- ``LOCK_TTL_MS_DEFAULT``: a lock owner's lease when the acquire names none, over HTTP and
  the native client alike (the native client renews it every third of it while it holds
  locks; an HTTP client renews with ``/lock/renew``). A crashed owner's locks free 10 s on.
"""

NAME_BYTES_MAX = 1024
LOCK_TTL_MS_DEFAULT = 10_000
