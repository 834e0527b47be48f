"""ZeroMQ CURVE on the fabric: key files, the keys a node runs with, and its ZAP handler.

With CURVE on, a node's bound sockets (ROUTER, PUB) are CURVE servers with the node's secret
key, and the sockets it connects (its DEALERs to every peer's ROUTER, its SUB to every peer's
PUB) are CURVE clients, each given the server key of the peer it dials. Every byte between
nodes, and between a node and a native client, is then encrypted and authenticated
(Curve25519, as CurveZMQ specifies). Which client keys a server lets in is the ZAP handler's
call (RFC 27): one per node, on a thread of its own in the node's ZeroMQ context, answering
from the set of accepted public keys. A client that does not speak CURVE at all, or dials
with the wrong server key, fails the handshake before ZAP is asked; the same thread watches
the servers' monitor events for those, and for connections closed before their handshake was
done (a client without CURVE sees the mismatch too, and may reset the connection before the
node has read its greeting). A refused handshake never reaches the node's loop; it is counted
(``syncfab_auth_refused_total{via="fabric"}``) and the client sees no answer.

Key files are Z85 text, as ``syncfab keygen --out DIR/NAME`` writes them: ``NAME.key`` the
secret key (mode 0600), ``NAME.key.pub`` the public one. ``--curve-accept`` names a directory
of ``*.key.pub`` files or one file of ``NAME KEY`` lines; a peer's server key is the one named
after its node id (``n2.key.pub``), and where none is, this node's own (every node then shares
one key pair: the simplest layout, see the README's "Security").
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import zmq
from zmq.utils import z85

log = logging.getLogger("syncfab.curve")

SECRET_SUFFIX = ".key"
PUBLIC_SUFFIX = ".key.pub"
Z85_KEY_CHARS = 40  # a 32-byte Curve25519 key in Z85
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks (RFC 27)
ZAP_POLL_MS = 100  # how often the handler's thread looks whether it should stop
REFUSALS_LOGGED_MAX = 100  # distinct refused keys named in the log; the metric counts them all


class CurveKeyError(ValueError):
    pass


def parse_key(text: str | bytes, where: str) -> bytes:
    """A Z85 Curve25519 key as libzmq takes it (40 ASCII bytes), or CurveKeyError."""
    key = (text.encode("ascii", "replace") if isinstance(text, str) else text).strip()
    if len(key) != Z85_KEY_CHARS:
        raise CurveKeyError(f"{where}: a CURVE key is {Z85_KEY_CHARS} Z85 characters, not {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError) as e:
        raise CurveKeyError(f"{where}: not Z85 text") from e
    return key


def _key_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="ascii") as f:
            return [s for s in (line.strip() for line in f) if s and not s.startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise CurveKeyError(f"cannot read key file {path!r}: {e}") from e


def write_keypair(out: str) -> tuple[str, str]:
    """``out.key`` (secret, 0600) and ``out.key.pub``: a new key pair. Refuses to overwrite."""
    public, secret = zmq.curve_keypair()
    secret_path, public_path = out + SECRET_SUFFIX, out + PUBLIC_SUFFIX
    for path in (secret_path, public_path):
        if os.path.exists(path):
            raise CurveKeyError(f"{path} exists: not overwritten")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    # Created 0600, never readable by others for a moment (the umask may only take bits away).
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secret.decode("ascii") + "\n")
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(public.decode("ascii") + "\n")
    return secret_path, public_path


def read_secret_key(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a secret key file; the public key is derived from the secret."""
    lines = _key_lines(path)
    if len(lines) != 1:
        raise CurveKeyError(f"{path}: a secret key file holds one key")
    secret = parse_key(lines[0], path)
    return zmq.curve_public(secret), secret


def read_public_key(path: str) -> bytes:
    lines = _key_lines(path)
    if len(lines) != 1:
        raise CurveKeyError(f"{path}: a public key file holds one key")
    return parse_key(lines[0], path)


def read_accepted(path: str) -> dict[str, bytes]:
    """name -> public key: every ``NAME.key.pub`` of a directory, a ``NAME.key.pub`` file, or
    a file of ``NAME KEY`` lines."""
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(PUBLIC_SUFFIX))
        found = {n[: -len(PUBLIC_SUFFIX)]: read_public_key(os.path.join(path, n)) for n in names}
    elif path.endswith(PUBLIC_SUFFIX):
        found = {os.path.basename(path)[: -len(PUBLIC_SUFFIX)]: read_public_key(path)}
    else:
        found = {}
        for n, line in enumerate(_key_lines(path), 1):
            name, _, key = line.rpartition(" ")
            found[name.strip() or f"line {n}"] = parse_key(key, f"{path}:{n}")
    if not found:
        raise CurveKeyError(f"no public keys in {path!r}")
    return found


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """What a node runs CURVE with."""

    public: bytes
    secret: bytes
    accepted: frozenset[bytes]  # the client keys its servers let in (its own among them)
    server_keys: Mapping[str, bytes]  # peer id -> the key its ROUTER and PUB serve with

    def server_key(self, peer: str) -> bytes:
        """A peer's server key; one added after this node started serves with the shared pair."""
        return self.server_keys.get(peer, self.public)


def node_curve_keys(secret_path: str, accept_path: str, node_id: str, peers: list[str]) -> CurveKeys:
    public, secret = read_secret_key(secret_path)
    named = read_accepted(accept_path)
    server_keys = {p: named.get(p, public) for p in peers if p != node_id}
    if node_id in named and named[node_id] != public:
        raise CurveKeyError(f"{accept_path}: the key named {node_id!r} is not this node's ({secret_path})")
    return CurveKeys(public, secret, frozenset(named.values()) | {public}, server_keys)


def serve_curve(sock: zmq.Socket, secret: bytes) -> None:
    """Make a socket a CURVE server (before it binds)."""
    sock.setsockopt(zmq.CURVE_SERVER, 1)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


def dial_curve(sock: zmq.Socket, public: bytes, secret: bytes, server_key: bytes) -> None:
    """Make a socket a CURVE client of the server with ``server_key`` (in force for the next
    connect: a SUB dialling several servers sets it before each)."""
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)


# A handshake that failed before ZAP could be asked: another mechanism (a plain client), a
# HELLO that does not decrypt (a client dialling with the wrong server key) — or a connection
# closed before its handshake was done, which is what the node sees of a plain client that
# saw the mismatch first and reset the connection (libzmq reports it as "no detail").
_FAILED_HANDSHAKE = int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL) | int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_EVENT_HEADER = struct.Struct("=HI")  # event, value: the first frame of a monitor event


class ZapHandler:
    """Answers libzmq's ZAP requests for every CURVE server socket of ``ctx``: 200 for an
    accepted client key, 400 (and ``on_refused``) for any other key or mechanism; and counts,
    on the servers it is asked to ``watch``, handshakes that failed before reaching it. Start
    it before the context's servers bind, stop it before the context ends."""

    def __init__(
        self, ctx: zmq.Context, accepted: frozenset[bytes], on_refused: Callable[[], None] | None = None
    ) -> None:
        self.accepted = frozenset(z85.decode(k) for k in accepted)  # ZAP hands over 32 raw bytes
        self.on_refused = on_refused
        self.refused = 0
        self._ctx = ctx
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._error: BaseException | None = None
        self._logged: set[bytes] = set()
        self._watch_queue: list[str] = []  # monitor endpoints for the thread to connect to
        self._watch_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)

    def watch(self, server: zmq.Socket) -> None:
        """Count ``server``'s failed handshakes too (called on the server socket's thread)."""
        endpoint = f"inproc://syncfab-monitor-{id(server):x}"
        server.monitor(endpoint, _FAILED_HANDSHAKE)
        with self._watch_lock:
            self._watch_queue.append(endpoint)

    def start(self) -> None:
        self._thread.start()
        self._bound.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            sock = self._ctx.socket(zmq.REP)  # this thread's own socket
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as e:
            self._error = e
            self._bound.set()
            return
        self._bound.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        monitors: list[zmq.Socket] = []
        try:
            while not self._stop.is_set():
                self._connect_monitors(poller, monitors)
                for ready, _ in poller.poll(ZAP_POLL_MS):
                    if ready is sock:
                        sock.send_multipart(self._answer(sock.recv_multipart()))
                    else:
                        self._on_event(ready.recv_multipart())
        finally:
            sock.close(linger=0)
            for monitor in monitors:
                monitor.close(linger=0)

    def _connect_monitors(self, poller: zmq.Poller, monitors: list[zmq.Socket]) -> None:
        with self._watch_lock:
            endpoints, self._watch_queue = self._watch_queue, []
        for endpoint in endpoints:
            monitor = self._ctx.socket(zmq.PAIR)
            monitor.setsockopt(zmq.LINGER, 0)
            monitor.connect(endpoint)
            poller.register(monitor, zmq.POLLIN)
            monitors.append(monitor)

    def _on_event(self, frames: list[bytes]) -> None:
        event, _ = _EVENT_HEADER.unpack(frames[0][: _EVENT_HEADER.size])
        if event & _FAILED_HANDSHAKE:
            self._refuse(b"", b"a handshake failed (no CURVE, or the wrong server key)", b"")

    def _answer(self, request: list[bytes]) -> list[bytes]:
        """RFC 27: version, request id, domain, address, identity, mechanism, credentials."""
        if len(request) < 6:
            return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = request[:6]
        key = request[6] if len(request) > 6 else b""
        if version == b"1.0" and mechanism == b"CURVE" and key in self.accepted:
            return [b"1.0", request_id, b"200", b"OK", z85.encode(key), b""]
        shown = z85.encode(key) if len(key) == 32 else b"none"
        self._refuse(address, b"refused a " + mechanism + b" connection: key " + shown, key)
        return [b"1.0", request_id, b"400", b"key not accepted", b"", b""]

    def _refuse(self, address: bytes, what: bytes, key: bytes) -> None:
        self.refused += 1
        if self.on_refused is not None:
            self.on_refused()
        # Named once per key (a refused client redials): the counter has every one.
        if key not in self._logged and len(self._logged) < REFUSALS_LOGGED_MAX:
            self._logged.add(key)
            log.warning(
                "%s (from %s)", what.decode(errors="replace"), address.decode(errors="replace") or "?"
            )
