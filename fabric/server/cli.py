"""syncfab: run a node or a local cluster, see its status, and use every service from the shell
(kv, lock, queue, cache: see ``syncfab <service> --help``).
"""

# This module is where the runtime meets the gateway (the one that imports both).

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import syncfab.fabric.client.commands as commands
from syncfab.fabric.server.config import (
    ConfigError,
    NodeSettings,
    add_node_arguments,
    add_tls_arguments,
    add_token_arguments,
    settings_from_args,
    token_settings,
)

STOP_HTTP_S = 1.0  # see _serve


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("syncfab")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="syncfab", description=__doc__)
    parser.add_argument("--version", action="version", version=f"syncfab {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    node = sub.add_parser("node", help="run one node")
    add_node_arguments(node)
    node.add_argument(
        "--bind",
        default=os.environ.get("SYNCFAB_BIND"),
        help="interface to bind instead of the --peers host, e.g. 0.0.0.0 (env SYNCFAB_BIND)",
    )

    cluster = sub.add_parser("cluster", help="run a local cluster of child processes")
    cluster.add_argument("--nodes", type=int, default=3)
    cluster.add_argument("--data-dir", default="syncfab-data")
    cluster.add_argument("--host", default="127.0.0.1")
    cluster.add_argument(
        "--base-port",
        type=int,
        default=7101,
        help="node i's ROUTER is base + 100*(i-1); its PUB the port after",
    )
    cluster.add_argument(
        "--http-base-port", type=int, default=8101, help="node i's gateway listens on this + 100*(i-1)"
    )
    cluster.add_argument("--fsync", choices=["on", "off"], default="on")
    cluster.add_argument("--shards", type=int, default=8)
    add_token_arguments(cluster)
    add_tls_arguments(cluster)
    cluster.add_argument(
        "--curve-dir",
        help="run the fabric over CURVE with the key pairs in this directory, made there if missing: "
        "cluster.key (every node's), client.key (a native client's; accept/ holds the public keys "
        "let in). Default: plain TCP",
    )
    cluster.add_argument(
        "--restart",
        action="store_true",
        help="start a node again when it exits (default: say so, stop the others, exit 1)",
    )

    status = sub.add_parser("status", help="the cluster as one node sees it")
    status.add_argument("--http", default=os.environ.get("SYNCFAB_HTTP", "http://127.0.0.1:8101"))
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    commands.add_credential_arguments(status)

    keygen_cmd = sub.add_parser("keygen", help="write a CURVE key pair for a node or a native client")
    keygen_cmd.add_argument(
        "--out", required=True, help="DIR/NAME: writes NAME.key (secret, mode 0600) and NAME.key.pub"
    )

    commands.add_commands(sub)

    args = parser.parse_args(argv)
    if hasattr(args, "run"):
        return commands.run(args)
    try:
        if args.command == "node":
            return run_node(settings_from_args(args), args.bind)
        if args.command == "cluster":
            return run_cluster(args)
        if args.command == "keygen":
            return keygen(args.out)
        return show_status(args.http, args.json, commands.Credentials.of(args))
    except (ConfigError, commands.Usage) as e:
        print(f"syncfab: {e}", file=sys.stderr)
        return 2


# -- keys ----------------------------------------------------------------------------------


def keygen(out: str) -> int:
    from syncfab.fabric.server.curve import CurveKeyError, write_keypair

    try:
        secret_path, public_path = write_keypair(out)
    except (CurveKeyError, OSError) as e:
        raise ConfigError(str(e)) from e
    print(f"secret key: {secret_path} (keep it on this machine only)")
    print(f"public key: {public_path} (give it to whoever must accept this one)")
    return 0


# -- node ----------------------------------------------------------------------------------


def run_node(settings: NodeSettings, bind_host: str | None) -> int:
    warning = open_door_warning(settings, bind_host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {settings.node_id} %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        healthy = uvloop.run(_serve(settings, bind_host))
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform we run
        healthy = asyncio.run(_serve(settings, bind_host))
    return 0 if healthy else 1


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name: whatever it resolves to, it is not known to be loopback
        return False


def open_door_warning(settings: NodeSettings, bind_host: str | None) -> str | None:
    """One line for a node that listens beyond this machine with neither a gateway token nor
    CURVE: anyone who reaches its ports may take every lock and read every queue."""
    from syncfab.fabric.server.config import split_address

    hosts = [bind_host or split_address(settings.address)[0]]
    if settings.http:
        hosts.append(bind_host or split_address(settings.http)[0])
    exposed = sorted({h for h in hosts if not _loopback(h)})
    if not exposed or settings.auth_tokens or settings.curve is not None:
        return None
    return (
        f"WARNING: node {settings.node_id} listens on {', '.join(exposed)} with no --auth-token-file "
        "and no CURVE: anyone who reaches its ports can use and change everything (README: Security)"
    )


async def _serve(settings: NodeSettings, bind_host: str | None) -> bool:
    """Run until SIGINT/SIGTERM (True) or until the disk fails under us (False)."""
    from syncfab.fabric.server.config import split_address
    from syncfab.fabric.server.http_auth import server_tls_context
    from syncfab.fabric.server.runtime import NodeRuntime
    from syncfab.gateway.app import serve
    from syncfab.gateway.http_server import HttpServer

    # A certificate that will not load stops the node before it binds anything.
    tls = None
    if settings.tls_cert and settings.tls_key:
        try:
            tls = server_tls_context(settings.tls_cert, settings.tls_key)
        except OSError as e:  # ssl.SSLError is one
            raise ConfigError(f"--tls-cert/--tls-key: {e}") from e
    runtime = NodeRuntime(settings, bind_host=bind_host)
    stop = asyncio.Event()
    runtime.on_fatal = stop.set
    runtime.start()
    gateway: HttpServer | None = None
    if settings.http:
        host, port = split_address(settings.http)
        gateway = serve(runtime)
        await gateway.start(bind_host or host, port, tls)
    _settle_gc()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    http = f" {'https' if tls else 'http'}://{settings.http}" if settings.http else ""
    clients = f" (clients: tcp://{settings.advertised})" if settings.advertise else ""
    print(f"syncfab node {settings.node_id} ready: tcp://{settings.address}{clients}{http}", flush=True)
    await stop.wait()
    if runtime.writer.failed is None:
        await runtime.hand_over()
    runtime.end_calls()
    if gateway is not None:
        # Requests still being answered get this long to finish (long-polls are answered at
        # once: runtime.end_calls).
        await gateway.stop(STOP_HTTP_S)
    if runtime.writer.failed is None:
        await runtime.write_back_cache()
    runtime.close()
    return runtime.writer.failed is None


# A node allocates briskly (messages, replies, ready lists) and almost nothing it keeps forms
# a cycle: collecting young objects every 700 allocations spent ~5 ms/s under load, these
# thresholds ~2.5 ms/s (loadtest produce, 192 clients), in fewer, still sub-millisecond passes.
GC_THRESHOLDS = (50_000, 20, 10)


def _settle_gc() -> None:
    """Once the node is up: everything loaded so far (modules, the stored state) lives as long
    as the process, so freeze it out of every future collection — a full pass over it took
    ~40 ms of one core, a pause every client of the node waited through."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# -- cluster -------------------------------------------------------------------------------


def run_cluster(args: argparse.Namespace) -> int:
    from syncfab.fabric.server.local import LocalCluster

    n = args.nodes
    if not 1 <= n <= 9:
        raise ConfigError("--nodes must be 1..9 with this port layout")
    ids = [f"n{i}" for i in range(1, n + 1)]
    peer_ports = {m: args.base_port + 100 * i for i, m in enumerate(ids)}
    http_ports = {m: args.http_base_port + 100 * i for i, m in enumerate(ids)}
    token_settings(args)  # a token file that will not do stops the cluster before any node starts
    tokens = [
        arg
        for flag, path in (
            ("--auth-token-file", args.auth_token_file),
            ("--metrics-token-file", args.metrics_token_file),
        )
        if path
        for arg in (flag, os.path.abspath(path))
    ]
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together")
    tls_ca = os.path.abspath(args.tls_cert) if args.tls_cert else None
    tls = ["--tls-cert", tls_ca, "--tls-key", os.path.abspath(args.tls_key)] if tls_ca else []
    curve = cluster_curve_arguments(args.curve_dir) if args.curve_dir else []
    used = [p for m in ids for p in (peer_ports[m], peer_ports[m] + 1, http_ports[m])]
    if len(set(used)) != len(used):
        raise ConfigError("--base-port and --http-base-port give overlapping ports")
    cluster = LocalCluster(
        size=n,
        data_dir=args.data_dir,
        host=args.host,
        peer_ports=peer_ports,
        http_ports=http_ports,
        extra_args=["--fsync", args.fsync, "--shards", str(args.shards), *tokens, *tls, *curve],
        log_to_files=False,
        log_level="info",
        tls_ca=tls_ca,
    )
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    taken = cluster.taken_ports()
    if taken:
        print(f"syncfab cluster: taken, so not started: {', '.join(taken)}", file=sys.stderr)
        print("  stop what holds them, or pick --base-port / --http-base-port", file=sys.stderr)
        return 1
    cluster.start()
    deadline = time.monotonic() + 30
    pending = set(ids)
    while pending and not stopping and time.monotonic() < deadline:
        dead = _dead(cluster)
        if dead:
            print(f"syncfab cluster: {dead} during start-up (its output is above)", file=sys.stderr)
            cluster.stop()
            return 1
        health = commands.Credentials(tls_ca=cluster.tls_ca)
        pending = {m for m in pending if _get_json(cluster.url(m) + "/health", 0.5, health) is None}
        time.sleep(0.1)
    if not stopping:
        curl = "curl"
        if args.auth_token_file:
            curl += f' -H "Authorization: Bearer $(head -1 {os.path.abspath(args.auth_token_file)})"'
        if args.tls_cert:
            curl += f" --cacert {cluster.tls_ca}"
        for m in ids:
            print(f"{m}: {cluster.url(m)}  (data {os.path.join(args.data_dir, m)})", flush=True)
        if args.curve_dir:
            keys = os.path.abspath(args.curve_dir)
            print(
                f"fabric over CURVE: native clients take curve_server_key=read_public_key("
                f"'{keys}/cluster.key.pub'), curve_secret_key=read_secret_key('{keys}/client.key')[1]",
                flush=True,
            )
        print(
            f"syncfab cluster of {n} up. Try: {curl} -X PUT {cluster.url(ids[0])}/kv/hello -d '\"world\"'",
            flush=True,
        )
        if pending:
            print(f"warning: not answering yet: {', '.join(sorted(pending))}", flush=True)
    status = 0
    while not stopping:
        for m, proc in list(cluster.procs.items()):
            if proc.poll() is None or stopping:
                continue
            if args.restart:
                print(f"{m} exited with status {proc.returncode}: restarting it", flush=True)
                cluster.start(m)
            else:
                print(f"syncfab cluster: {m} exited with status {proc.returncode}; stopping", file=sys.stderr)
                stopping, status = True, 1
        time.sleep(0.2)
    cluster.stop()
    print("syncfab cluster stopped", flush=True)
    return status


CLUSTER_KEY = "cluster"  # the pair every node of a `syncfab cluster --curve-dir` shares
CLIENT_KEY = "client"  # the one native client pair it makes and lets in


def cluster_curve_arguments(curve_dir: str) -> list[str]:
    """The nodes' CURVE flags for ``--curve-dir``: one shared node pair (a node accepts its
    own key, so its peers get in) and a client pair whose public key is in ``accept/``. Pairs
    already there are kept, so clients keep working across restarts."""
    from syncfab.fabric.server.curve import PUBLIC_SUFFIX, SECRET_SUFFIX, CurveKeyError, write_keypair

    keys = os.path.abspath(curve_dir)
    accept = os.path.join(keys, "accept")
    try:
        os.makedirs(accept, exist_ok=True)
        for name in (CLUSTER_KEY, CLIENT_KEY):
            if not os.path.exists(os.path.join(keys, name + SECRET_SUFFIX)):
                write_keypair(os.path.join(keys, name))
        with open(os.path.join(keys, CLIENT_KEY + PUBLIC_SUFFIX)) as src:
            public = src.read()
        with open(os.path.join(accept, CLIENT_KEY + PUBLIC_SUFFIX), "w") as dst:
            dst.write(public)
    except (CurveKeyError, OSError) as e:
        raise ConfigError(f"--curve-dir {curve_dir}: {e}") from e
    return ["--curve-secret-key", os.path.join(keys, CLUSTER_KEY + SECRET_SUFFIX), "--curve-accept", accept]


def _dead(cluster: Any) -> str:
    """Which of the nodes the cluster started have exited, and how ('' if none)."""
    return ", ".join(
        f"{m} exited with status {p.returncode}" for m, p in cluster.procs.items() if p.poll() is not None
    )


# -- status --------------------------------------------------------------------------------


def _get_json(url: str, timeout_s: float, credentials: commands.Credentials | None = None) -> Any:
    headers, tls = (credentials.headers(), credentials.tls()) if credentials else ({}, None)
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s, context=tls) as response:
            return json.loads(response.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


def show_status(http: str, raw: bool, credentials: commands.Credentials) -> int:
    base = http if http.startswith("http") else f"http://{http}"
    view = _get_json(base.rstrip("/") + "/cluster", timeout_s=3, credentials=credentials)
    if view is None:
        print(f"syncfab: no answer from {base}", file=sys.stderr)
        return 1
    if raw:
        print(json.dumps(view, indent=2))
        return 0
    print(f"node {view['node']}: control group leader {view['leader']} (term {view['term']})")
    for m in view["members"]:
        print(f"  member {m['id']:<6} {m['address']:<22} {'alive' if m['alive'] else 'SUSPECTED'}")
    for s in view["shards"]:
        print(f"  shard {s['id']:<3} leader {s['leader'] or '-':<6} replicas {','.join(s['replicas'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
