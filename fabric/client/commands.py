"""``syncfab kv|lock|queue|cache|member ...``: every service from the shell, over the HTTP API.

The shape mirrors the HTTP API, so a user who knows one knows the other: the key, resource or
queue is the first argument, a value or message the next one as JSON, and every other field a
flag named after its JSON field (``--client-id``, ``--wait-ms``...). ``--endpoints`` lists
gateways (``host:port``, comma-separated, as etcdctl's); each call tries them in turn until one
answers. The output is the API's JSON reply (``kv get`` and ``cache read`` print just the
value); exit status 0 when done, 1 when the cluster refused (a held lock, a missing key, a
version that moved on; the reply says why), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from syncfab.actors.queue_ops import SETTINGS_LOW

ENDPOINTS_DEFAULT = "127.0.0.1:8101,127.0.0.1:8201,127.0.0.1:8301"  # syncfab cluster's gateways
REQUEST_TIMEOUT_S = 70.0  # longer than the longest long-poll a call may ask for (60 s)
DONE, REFUSED, USAGE = 0, 1, 2


class Usage(Exception):
    """Bad usage found after parsing (a value that is not JSON, say): exit 2."""


def add_credential_arguments(p: argparse.ArgumentParser) -> None:
    """What a gateway that asks for a token (or serves HTTPS with a private CA) needs."""
    env = os.environ.get
    p.add_argument(
        "--token-file",
        default=env("SYNCFAB_AUTH_TOKEN_FILE"),
        help="send the first token of this file as 'Authorization: Bearer' (env SYNCFAB_AUTH_TOKEN_FILE, "
        "the node's own)",
    )
    p.add_argument(
        "--token",
        default=env("SYNCFAB_TOKEN"),
        help="the token itself, instead of a file (env SYNCFAB_TOKEN; a flag's value shows in ps)",
    )
    p.add_argument(
        "--tls-ca",
        default=env("SYNCFAB_TLS_CA"),
        help="trust this CA (or self-signed certificate) for https:// endpoints (env SYNCFAB_TLS_CA)",
    )


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    tls_ca: str | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> Credentials:
        token = args.token
        if not token and args.token_file:
            from syncfab.fabric.client.token_file import TokenFileError, first_token

            try:
                token = first_token(args.token_file)
            except TokenFileError as e:
                raise Usage(str(e)) from e
        return cls(token or None, args.tls_ca or None)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def tls(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.tls_ca) if self.tls_ca else None


def add_commands(sub: Any) -> None:
    """The service commands, each a subparser of ``syncfab``."""

    def command(group: Any, name: str, help: str, run: Request, *positional: str) -> Any:
        p = group.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        for arg in positional:
            p.add_argument(arg)
        p.add_argument(
            "--endpoints",
            default=os.environ.get("SYNCFAB_ENDPOINTS", ENDPOINTS_DEFAULT),
            help=f"gateways to ask, host:port, comma-separated, tried in turn (env SYNCFAB_ENDPOINTS; "
            f"default {ENDPOINTS_DEFAULT})",
        )
        p.add_argument("--json", action="store_true", help="print the API's JSON reply as it came")
        add_credential_arguments(p)
        return p

    def service(name: str, help: str) -> Any:
        p = sub.add_parser(name, help=help, description=help)
        return p.add_subparsers(dest="action", required=True)

    kv = service("kv", "the replicated key/value store")
    command(kv, "get", "print a key's value", _get("/kv/", "key"), "key")
    p = command(kv, "put", "store a JSON value under a key", _kv_put, "key")
    p.add_argument("value", help="a JSON value, e.g. '{\"on\": true}' or '\"text\"'")
    command(kv, "delete", "delete a key", _kv_delete, "key")

    lock = service("lock", "shared and exclusive locks, held by a client's lease")
    p = command(
        lock, "acquire", "take a lock (exit 1 if it stayed held for the whole wait)", _acquire, "resource"
    )
    _owner(p)
    p.add_argument("--mode", choices=["exclusive", "shared"], default="exclusive", help="default: exclusive")
    p.add_argument("--wait-ms", type=int, default=0, help="how long to wait for it (default 0: try once)")
    p.add_argument("--ttl-ms", type=int, help="the owner's lease (default 10000)")
    _owner(command(lock, "release", "give a lock back", _release, "resource"))
    p = command(lock, "renew", "extend an owner's lease", _renew)
    _owner(p)
    p.add_argument("--ttl-ms", type=int, help="the new lease (default 10000)")
    command(lock, "show", "a lock's holders and waiters", _get("/lock/", "resource"), "resource")

    queue = service("queue", "durable queues: produce, consume, ack")
    p = command(queue, "produce", "add a message (printed: its id)", _produce, "queue")
    p.add_argument("data", help="the message, as JSON")
    p.add_argument("--key", help="messages with one key keep their order (default: none, spread)")
    p.add_argument("--dedup-id", help="a second produce with this id within the dedup window is dropped")
    p = command(queue, "consume", "take messages (ack each one you are done with)", _consume, "queue")
    p.add_argument("--consumer", required=True, help="who takes them (required)")
    p.add_argument("--max", type=int, default=1, help="at most this many (default 1)")
    p.add_argument("--wait-ms", type=int, default=0, help="long-poll this long if none is ready (default 0)")
    p.add_argument("--visibility-ms", type=int, help="redelivered if not acked within (default: the queue's)")
    for verb in ("ack", "nack"):
        p = command(queue, verb, f"{verb} messages by id", _settle(verb), "queue")
        p.add_argument("message_ids", nargs="+", metavar="message_id")
    command(queue, "stats", "a queue's counters and settings", _get("/queues/", "queue"), "queue")
    p = command(queue, "set", "change the settings named; the others keep their values", _set, "queue")
    for field in SETTINGS:
        p.add_argument(f"--{field.replace('_', '-')}", type=int, help=f"the queue's {field}")

    cache = service("cache", "the coherent cache, served by the gateway's node's own lines")
    command(cache, "read", "print a key's value", _cache_get("read"), "key")
    p = command(cache, "write", "write a JSON value (exit 1 if --expected-version lost)", _cache_write, "key")
    p.add_argument("value", help="a JSON value")
    p.add_argument("--policy", choices=POLICIES, default=POLICIES[0], help=f"default: {POLICIES[0]}")
    p.add_argument("--ttl-ms", type=int, help="gone after this long (default: never)")
    p.add_argument("--expected-version", type=int, help="compare-and-set: 0 means the key must not exist")
    command(cache, "delete", "delete a key everywhere", _cache_key("delete"), "key")
    command(cache, "invalidate", "drop every cached copy, keep the value", _cache_key("invalidate"), "key")
    command(cache, "line", "the home's directory entry: who holds the key", _cache_get("line"), "key")
    command(cache, "stats", "this node's cache counters", lambda a: ("GET", "/cache/stats", None))

    member = service("member", "the cluster's nodes: list, add (a node started with --join), remove")
    command(
        member,
        "list",
        "the members, and each group's replicas here",
        lambda a: ("GET", "/cluster/members", None),
    )
    p = command(member, "add", "add a node; its replicas follow, one voter at a time", _member_add, "id")
    p.add_argument("address", help="host:port its peers dial (its --peers entry)")
    command(member, "remove", "remove a node; its replicas move to the others first", _member_remove, "id")


SETTINGS = tuple(SETTINGS_LOW)  # a queue's settings, as the queue names them
POLICIES = ["write_through", "write_back"]
Request = Callable[[argparse.Namespace], tuple[str, str, Any]]  # args -> (method, path, body)


def _get(prefix: str, name: str) -> Request:
    return lambda a: ("GET", prefix + (_path(getattr(a, name)) if name else ""), None)


def _kv_put(a: argparse.Namespace) -> tuple[str, str, Any]:
    return "PUT", f"/kv/{_path(a.key)}", _json(a.value)


def _kv_delete(a: argparse.Namespace) -> tuple[str, str, Any]:
    return "DELETE", f"/kv/{_path(a.key)}", None


def _release(a: argparse.Namespace) -> tuple[str, str, Any]:
    return "POST", "/lock/release", {"resource": a.resource, "client_id": a.client_id}


def _cache_get(verb: str) -> Request:
    return lambda a: ("GET", f"/cache/{verb}?" + _query(key=a.key), None)


def _owner(p: Any) -> None:
    p.add_argument("--client-id", required=True, help="the lock owner (required)")


def _acquire(a: argparse.Namespace) -> tuple[str, str, Any]:
    body = {"resource": a.resource, "client_id": a.client_id, "mode": a.mode, "wait_ms": a.wait_ms}
    return "POST", "/lock/acquire", body | ({"ttl_ms": a.ttl_ms} if a.ttl_ms is not None else {})


def _renew(a: argparse.Namespace) -> tuple[str, str, Any]:
    ttl = {"ttl_ms": a.ttl_ms} if a.ttl_ms is not None else {}
    return "POST", "/lock/renew", {"client_id": a.client_id} | ttl


def _produce(a: argparse.Namespace) -> tuple[str, str, Any]:
    body = {"queue": a.queue, "data": _json(a.data), "key": a.key, "dedup_id": a.dedup_id}
    return "POST", "/queue/produce", {k: v for k, v in body.items() if v is not None}


def _consume(a: argparse.Namespace) -> tuple[str, str, Any]:
    query = {"queue": a.queue, "consumer": a.consumer, "max": a.max, "wait_ms": a.wait_ms}
    if a.visibility_ms is not None:
        query["visibility_ms"] = a.visibility_ms
    return "GET", "/queue/consume?" + _query(**query), None


def _settle(verb: str) -> Request:
    return lambda a: ("POST", f"/queue/{verb}", {"queue": a.queue, "message_ids": a.message_ids})


def _set(a: argparse.Namespace) -> tuple[str, str, Any]:
    body = {f: getattr(a, f) for f in SETTINGS if getattr(a, f) is not None}
    if not body:
        raise Usage("name at least one setting, e.g. --max-deliveries 5")
    return "PATCH", f"/queues/{_path(a.queue)}", body


def _cache_write(a: argparse.Namespace) -> tuple[str, str, Any]:
    body = {"key": a.key, "value": _json(a.value), "policy": a.policy, "ttl_ms": a.ttl_ms,
            "expected_version": a.expected_version}  # fmt: skip
    return "POST", "/cache/write", {k: v for k, v in body.items() if v is not None}


def _cache_key(verb: str) -> Request:
    return lambda a: ("POST", f"/cache/{verb}", {"key": a.key})


def _member_add(a: argparse.Namespace) -> tuple[str, str, Any]:
    return "POST", "/cluster/members", {"id": a.id, "address": a.address}


def _member_remove(a: argparse.Namespace) -> tuple[str, str, Any]:
    return "DELETE", f"/cluster/members/{_path(a.id)}", None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise Usage(f"not JSON: {text!r} ({e}); a string is quoted: '\"text\"'") from e


def _path(name: str) -> str:
    return urllib.parse.quote(name, safe="/")


def _query(**params: Any) -> str:
    return urllib.parse.urlencode(params)


def run(args: argparse.Namespace) -> int:
    """One service command: its request to the first gateway that answers, its reply printed."""
    try:
        method, path, body = args.run(args)
        credentials = Credentials.of(args)
    except Usage as e:
        print(f"syncfab: {e}", file=sys.stderr)
        return USAGE
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    status, reply, tried = _ask(endpoints, method, path, body, credentials)
    if status is None:
        print(f"syncfab: no gateway answered ({'; '.join(tried)})", file=sys.stderr)
        return REFUSED
    if args.json:
        print(json.dumps(reply))
    elif status == 200 and args.action in ("get", "read") and isinstance(reply, dict) and "value" in reply:
        print(json.dumps(reply["value"]))
    else:
        print(json.dumps(reply, indent=2), file=sys.stdout if status == 200 else sys.stderr)
    return DONE if status == 200 else REFUSED


def _ask(
    endpoints: list[str], method: str, path: str, body: Any, credentials: Credentials
) -> tuple[int | None, Any, list[str]]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **credentials.headers()}
    tls = credentials.tls()
    tried: list[str] = []
    last: tuple[int, Any] | None = None
    for endpoint in endpoints:
        base = endpoint if endpoint.startswith(("http://", "https://")) else f"http://{endpoint}"
        req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S, context=tls) as r:
                return r.status, json.loads(r.read() or b"null"), tried
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = {"error": "http", "status": e.code, "body": raw.decode(errors="replace")}
            if e.code != 503:
                return e.code, reply, tried
            last = (e.code, reply)  # no leader reachable there, or stopping: the next gateway
            tried.append(f"{endpoint}: 503 {reply.get('error') if isinstance(reply, dict) else ''}")
        except OSError as e:  # refused, unreachable, timed out: the next gateway
            tried.append(f"{endpoint}: {getattr(e, 'reason', e)}")
    return (*last, tried) if last is not None else (None, None, tried)
