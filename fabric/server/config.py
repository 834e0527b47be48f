"""A node's settings: from command-line flags, falling back to SYNCFAB_* environment variables.

Ports: a node binds its own ``--peers`` entry (host:P) as its ROUTER (peers and native
clients), P+1 as its PUB socket (``--bind`` changes the host it binds); its HTTP gateway
listens on ``--http``. Native clients are told to dial ``--advertise`` (default: that same
``--peers`` entry), PUB at its port + 1 (fabric/core/addresses.py).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from syncfab.actors.cache_ops import CacheConfig
from syncfab.actors.raft import RaftConfig
from syncfab.fabric.core.addresses import pub_address
from syncfab.fabric.core.node_config import NodeConfig
from syncfab.fabric.server.curve import CurveKeyError, CurveKeys, node_curve_keys
from syncfab.fabric.server.http_auth import TokenFileError, read_tokens

__all__ = [
    "ConfigError",
    "NodeSettings",
    "add_node_arguments",
    "add_token_arguments",
    "pub_address",
    "settings_from_args",
    "split_address",
    "token_settings",
]


class ConfigError(ValueError):
    pass


def parse_peers(text: str) -> dict[str, str]:
    """``n1=127.0.0.1:7101,n2=...`` → {"n1": "127.0.0.1:7101", ...}."""
    peers: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        node, sep, address = item.partition("=")
        if not sep or not node or not address:
            raise ConfigError(f"bad peer {item!r}: expected id=host:port")
        split_address(address)
        if node in peers:
            raise ConfigError(f"peer {node!r} listed twice")
        peers[node] = address
    if not peers:
        raise ConfigError("no peers given")
    return peers


def split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65535:
        raise ConfigError(f"bad address {address!r}: expected host:port")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class NodeSettings:
    node_id: str
    peers: dict[str, str]
    http: str | None
    data_dir: str
    fsync: bool = True
    core: NodeConfig = field(default_factory=NodeConfig)
    tick_ms: int = 10
    log_level: str = "info"
    advertise: str | None = None  # what native clients dial; None: this node's --peers entry
    auth_tokens: tuple[bytes, ...] = ()  # the gateway's bearer tokens; none: no token asked
    metrics_tokens: tuple[bytes, ...] = ()  # also accepted for /metrics, and only there
    tls_cert: str | None = None  # the gateway serves HTTPS with this chain and key
    tls_key: str | None = None
    curve: CurveKeys | None = None  # CURVE on the fabric (fabric/server/curve.py); None: plain TCP
    join: bool = False  # a new node for a running cluster: hosts nothing until a leader adds it

    @property
    def address(self) -> str:
        """This node's --peers entry: what its peers dial, and what it binds."""
        return self.peers[self.node_id]

    @property
    def advertised(self) -> str:
        """The ROUTER address native clients are told to dial (PUB at its port + 1)."""
        return self.advertise or self.address


_ENV = {
    "id": "SYNCFAB_ID",
    "peers": "SYNCFAB_PEERS",
    "http": "SYNCFAB_HTTP",
    "advertise": "SYNCFAB_ADVERTISE",
    "join": "SYNCFAB_JOIN",
    "data_dir": "SYNCFAB_DATA_DIR",
    "fsync": "SYNCFAB_FSYNC",
    "shards": "SYNCFAB_SHARDS",
    "election_timeout_ms": "SYNCFAB_ELECTION_TIMEOUT_MS",
    "heartbeat_ms": "SYNCFAB_HEARTBEAT_MS",
    "snapshot_entries": "SYNCFAB_SNAPSHOT_ENTRIES",
    "log_level": "SYNCFAB_LOG_LEVEL",
    "cache_lines": "SYNCFAB_CACHE_LINES",
    "cache_bytes": "SYNCFAB_CACHE_BYTES",
    "cache_lease_ms": "SYNCFAB_CACHE_LEASE_MS",
    "cache_flush_ms": "SYNCFAB_CACHE_FLUSH_MS",
    "auth_token_file": "SYNCFAB_AUTH_TOKEN_FILE",
    "metrics_token_file": "SYNCFAB_METRICS_TOKEN_FILE",
    "tls_cert": "SYNCFAB_TLS_CERT",
    "tls_key": "SYNCFAB_TLS_KEY",
    "curve_secret_key": "SYNCFAB_CURVE_SECRET_KEY",
    "curve_accept": "SYNCFAB_CURVE_ACCEPT",
}
_CACHE = CacheConfig()


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    """The gateway's tokens: ``syncfab node``'s and ``syncfab cluster``'s (for each of its nodes)."""
    env = os.environ.get
    parser.add_argument(
        "--auth-token-file",
        default=env(_ENV["auth_token_file"]),
        help="every HTTP route but /health needs 'Authorization: Bearer <token>', a token from "
        "this file, one a line (env SYNCFAB_AUTH_TOKEN_FILE)",
    )
    parser.add_argument(
        "--metrics-token-file",
        default=env(_ENV["metrics_token_file"]),
        help="read-only tokens accepted for /metrics only, one a line (env SYNCFAB_METRICS_TOKEN_FILE)",
    )


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """HTTPS for the gateway: ``syncfab node``'s and ``syncfab cluster``'s (for each of its nodes)."""
    env = os.environ.get
    parser.add_argument(
        "--tls-cert",
        default=env(_ENV["tls_cert"]),
        help="serve the gateway over HTTPS with this PEM certificate chain (env SYNCFAB_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key", default=env(_ENV["tls_key"]), help="its PEM private key (env SYNCFAB_TLS_KEY)"
    )


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    add_token_arguments(parser)
    add_tls_arguments(parser)
    parser.add_argument(
        "--curve-secret-key",
        default=env(_ENV["curve_secret_key"]),
        help="run the fabric over CURVE with this secret key file (syncfab keygen; env "
        "SYNCFAB_CURVE_SECRET_KEY); needs --curve-accept",
    )
    parser.add_argument(
        "--curve-accept",
        default=env(_ENV["curve_accept"]),
        help="the public keys CURVE lets in: a directory of NAME.key.pub files or a file of "
        "'NAME KEY' lines; a peer's own key is the one named after its id (env SYNCFAB_CURVE_ACCEPT)",
    )
    parser.add_argument("--id", default=env(_ENV["id"]), help="this node's id (env SYNCFAB_ID)")
    parser.add_argument(
        "--peers",
        default=env(_ENV["peers"]),
        help="every member as id=host:port, this node included (env SYNCFAB_PEERS)",
    )
    parser.add_argument(
        "--advertise",
        default=env(_ENV["advertise"]),
        help="host:port native clients should dial for this node's ROUTER (its PUB at port + 1), "
        "when that is not its --peers entry: a published container port, say (env SYNCFAB_ADVERTISE)",
    )
    parser.add_argument(
        "--join",
        action="store_true",
        default=env(_ENV["join"], "") not in ("", "0", "false", "no"),
        help="a node for a running cluster (then `syncfab member add` it): it starts no group of "
        "its own and hosts what the leaders send it; --peers needs only some members, and itself "
        "(env SYNCFAB_JOIN=1). Only a fresh data dir takes it",
    )
    parser.add_argument(
        "--http",
        default=env(_ENV["http"]),
        help="host:port of the HTTP gateway; omit for none (env SYNCFAB_HTTP)",
    )
    parser.add_argument(
        "--data-dir",
        default=env(_ENV["data_dir"]),
        help="where the write-ahead log and the LMDB store live (env SYNCFAB_DATA_DIR)",
    )
    parser.add_argument(
        "--fsync",
        choices=["on", "off"],
        default=env(_ENV["fsync"], "on"),
        help="off risks losing acknowledged writes on power loss (env SYNCFAB_FSYNC)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=int(env(_ENV["shards"], "8")),
        help="shard groups; fixed when the cluster is created (env SYNCFAB_SHARDS)",
    )
    parser.add_argument(
        "--election-timeout-ms", type=int, default=int(env(_ENV["election_timeout_ms"], "500"))
    )
    parser.add_argument("--heartbeat-ms", type=int, default=int(env(_ENV["heartbeat_ms"], "100")))
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=int(env(_ENV["snapshot_entries"], "20000")),
        help="entries applied between snapshots (env SYNCFAB_SNAPSHOT_ENTRIES)",
    )
    parser.add_argument("--log-level", default=env(_ENV["log_level"], "info"))
    parser.add_argument(
        "--cache-lines",
        type=int,
        default=int(env(_ENV["cache_lines"], str(_CACHE.lines_max))),
        help="lines this node's cache holds at most (env SYNCFAB_CACHE_LINES)",
    )
    parser.add_argument(
        "--cache-bytes",
        type=int,
        default=int(env(_ENV["cache_bytes"], str(_CACHE.bytes_max))),
        help="bytes of keys and values this node's cache holds at most (env SYNCFAB_CACHE_BYTES)",
    )
    parser.add_argument(
        "--cache-lease-ms",
        type=int,
        default=int(env(_ENV["cache_lease_ms"], str(_CACHE.lease_ms))),
        help="how long a node serves cached lines without word from their home; a new "
        "home waits this long before it serves (env SYNCFAB_CACHE_LEASE_MS)",
    )
    parser.add_argument(
        "--cache-flush-ms",
        type=int,
        default=int(env(_ENV["cache_flush_ms"], str(_CACHE.flush_ms))),
        help="a write_back line goes home at most this long after it was written "
        "(env SYNCFAB_CACHE_FLUSH_MS)",
    )


def settings_from_args(args: argparse.Namespace) -> NodeSettings:
    if not args.id:
        raise ConfigError("--id (or SYNCFAB_ID) is required")
    if not args.peers:
        raise ConfigError("--peers (or SYNCFAB_PEERS) is required")
    peers = parse_peers(args.peers)
    if args.id not in peers:
        raise ConfigError(f"--id {args.id!r} is not one of --peers {sorted(peers)}")
    if args.http:
        split_address(args.http)
    if args.advertise:
        split_address(args.advertise)
    if args.shards < 1:
        raise ConfigError("--shards must be at least 1")
    if args.heartbeat_ms < 1 or args.election_timeout_ms <= 2 * args.heartbeat_ms:
        raise ConfigError("--election-timeout-ms must exceed twice --heartbeat-ms")
    raft = RaftConfig(heartbeat_ms=args.heartbeat_ms, election_timeout_ms=args.election_timeout_ms)
    keep = min(2_000, max(args.snapshot_entries // 10, 1))
    for flag in ("cache_lines", "cache_bytes", "cache_lease_ms", "cache_flush_ms"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be at least 1")
    cache = CacheConfig(
        lines_max=args.cache_lines,
        bytes_max=args.cache_bytes,
        lease_ms=args.cache_lease_ms,
        flush_ms=args.cache_flush_ms,
    )
    auth_tokens, metrics_tokens = token_settings(args)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    curve = None
    if bool(args.curve_secret_key) != bool(args.curve_accept):
        raise ConfigError("--curve-secret-key and --curve-accept go together")
    if args.curve_secret_key:
        try:
            curve = node_curve_keys(args.curve_secret_key, args.curve_accept, args.id, list(peers))
        except CurveKeyError as e:
            raise ConfigError(str(e)) from e
    core = NodeConfig(
        shard_count=args.shards,
        raft=raft,
        snapshot_entries=max(args.snapshot_entries, 1),
        snapshot_keep_entries=keep,
        cache=cache,
    )
    return NodeSettings(
        node_id=args.id,
        peers=peers,
        http=args.http or None,
        data_dir=args.data_dir or os.path.join("syncfab-data", args.id),
        fsync=args.fsync == "on",
        core=core,
        log_level=args.log_level,
        advertise=args.advertise or None,
        auth_tokens=auth_tokens,
        metrics_tokens=metrics_tokens,
        tls_cert=args.tls_cert or None,
        tls_key=args.tls_key or None,
        curve=curve,
        join=args.join,
    )


def token_settings(args: argparse.Namespace) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(the gateway's tokens, its read-only metrics tokens), read from their files."""
    try:
        tokens = read_tokens(args.auth_token_file) if args.auth_token_file else ()
        metrics = read_tokens(args.metrics_token_file) if args.metrics_token_file else ()
    except TokenFileError as e:
        raise ConfigError(str(e)) from e
    if metrics and not tokens:
        # A scraper's token on an open gateway would protect nothing.
        raise ConfigError("--metrics-token-file needs --auth-token-file")
    return tokens, metrics
