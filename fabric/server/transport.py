"""A node's ZeroMQ sockets, used without awaiting: the runtime drains them in bulk each turn.

- ROUTER (bound at the node's address): everything addressed to this node — peer batches
  from the other nodes' DEALERs and requests from native clients; replies to clients leave
  through it, addressed by the identity the request came with.
- one DEALER per peer (connected to the peer's ROUTER): everything we send that peer.
  ``IMMEDIATE`` makes a send to a peer that is down fail at once instead of queueing Raft
  messages that would be stale by the time it is back; Raft resends what matters.
- another DEALER per peer for the disk writer's thread (``PeerLinks``): ZeroMQ sockets
  belong to one thread, and acks that wait for an fsync leave from the thread that ran it.
- PUB (bound at address port + 1) and a SUB connected to every peer's PUB: one-to-all
  broadcasts. Each publisher numbers its stream ``(epoch, seq)``, so a subscriber sees a gap
  (PUB drops when a subscriber is slow) and can resynchronise instead of trusting a silent hole.

With CURVE on (fabric/server/curve.py) the ROUTER and PUB are CURVE servers and every DEALER
and the SUB are CURVE clients of the peer they dial; off (the default) it is plain TCP.

Every limit is a high-water mark: when a peer or a client cannot keep up, sends fail fast and
are counted, never buffered without bound.

Each peer's connections (its DEALERs, our SUB's connection to its PUB) run on an I/O thread of
their own, and the bound sockets on another (``io_context``): libzmq resolves a peer's host
name on the I/O thread that connects to it and blocks that thread until DNS answers. In a
compose network a stopping peer's name can go unanswered for 5 s (the resolver's timeout)
while the runtime removes it; on one shared thread that froze every socket of the node —
Raft between the survivors, replies to clients — and the survivors lost their leaders too.
"""

from __future__ import annotations

import threading

import msgspec
import zmq

from syncfab.fabric.core.codec import PeerMessage, encode
from syncfab.fabric.server.config import pub_address, split_address
from syncfab.fabric.server.curve import CurveKeys, dial_curve, serve_curve


class Publication(msgspec.Struct, frozen=True, tag="pub", array_like=True):
    src: str
    epoch: int
    seq: int
    msg: PeerMessage


decode_publication = msgspec.msgpack.Decoder(Publication).decode

# Plain ints: pyzmq's enum members cost a conversion on every call, and a turn makes many.
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE = int(zmq.SNDMORE)
_RCVMORE = int(zmq.RCVMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class StreamTracker:
    """Per-publisher sequence check for a SUB stream."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int]] = {}
        self.gaps = 0

    def observe(self, src: str, epoch: int, seq: int) -> bool:
        """Record a publication; True if messages from ``src`` were lost before this one (or
        the publisher restarted, which loses whatever it had not yet sent)."""
        last = self._last.get(src)
        self._last[src] = (epoch, seq)
        if last is None:
            return False
        gap = last[0] != epoch or seq != last[1] + 1
        self.gaps += gap
        return gap


# Threads for peers that become members after start (a context's thread count is fixed): they
# share these, round robin, and never the bound sockets' or the first members' threads.
SPARE_IO_THREADS = 2


class IoThreads(dict[str, int]):
    """Peer -> the affinity mask of its connections' I/O thread; a peer first seen later (a
    member added since start) gets one of the spare threads."""

    def __init__(self, masks: dict[str, int], first_spare: int) -> None:
        super().__init__(masks)
        self._first_spare, self._spares_given = first_spare, 0

    def get(self, peer: str, default: int = 0) -> int:  # type: ignore[override]
        mask = super().get(peer)
        if mask is None:
            thread = self._first_spare + self._spares_given % SPARE_IO_THREADS
            self._spares_given += 1
            mask = self[peer] = 1 << thread
        return mask


def io_context(node_id: str, peers: dict[str, str]) -> tuple[zmq.Context, IoThreads]:
    """A ZeroMQ context for one node: I/O thread 0 for the bound sockets (ROUTER, PUB, and the
    connections they accept), thread k for the k-th peer's, then the spare ones. Returns it and
    each peer's affinity mask (see the module's docstring for why)."""
    others = sorted(p for p in peers if p != node_id)
    masks = {p: 1 << (k + 1) for k, p in enumerate(others)}
    ctx = zmq.Context(io_threads=len(others) + 1 + SPARE_IO_THREADS)
    return ctx, IoThreads(masks, len(others) + 1)


BOUND_AFFINITY = 1  # I/O thread 0
# Terminating a context waits for its I/O threads, and one resolving a gone peer's name waits
# for DNS (5 s a try in a compose network, and several tries: the last node of a `compose down`
# took 25 s and was killed). Past this a stopping node leaves the context to the process's exit.
CONTEXT_END_MAX_S = 1.0


def end_context(ctx: zmq.Context, wait_s: float = CONTEXT_END_MAX_S) -> bool:
    """Close ``ctx``'s sockets (linger 0) and terminate it, waiting ``wait_s`` at most, on a
    daemon thread (nothing else may use the context by then). True if it ended in time; if not,
    its I/O threads go with the process."""
    ender = threading.Thread(target=ctx.destroy, kwargs={"linger": 0}, name="zmq-end", daemon=True)
    ender.start()
    ender.join(wait_s)
    return not ender.is_alive()


class Transport:
    def __init__(
        self,
        ctx: zmq.Context,
        node_id: str,
        peers: dict[str, str],
        *,
        epoch: int,
        bind_host: str | None = None,
        hwm_messages: int = 50_000,
        affinity: dict[str, int] | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        """``affinity``: peer -> I/O thread mask for its connections (``io_context``); none
        given, every socket may use any of the context's threads. ``curve``: this node's keys,
        to run every socket over CURVE (its context's ZAP handler started first)."""
        affinity = affinity or {}
        self.node_id = node_id
        self.epoch = epoch
        self._seq = 0
        self._dropped = 0
        # Sockets whose FD will signal the next message to arrive (see readable).
        self._announced: set[zmq.Socket] = set()
        host, port = split_address(peers[node_id])
        host = bind_host or host
        _, pub_port = split_address(pub_address(peers[node_id]))

        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.AFFINITY, BOUND_AFFINITY if affinity else 0)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.RCVHWM, hwm_messages)
        self.router.setsockopt(zmq.SNDHWM, hwm_messages)
        if curve is not None:
            serve_curve(self.router, curve.secret)
        self.router.bind(f"tcp://{host}:{port}")

        self.pub = ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.AFFINITY, BOUND_AFFINITY if affinity else 0)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, hwm_messages)
        if curve is not None:
            serve_curve(self.pub, curve.secret)
        self.pub.bind(f"tcp://{host}:{pub_port}")

        self.links = PeerLinks(ctx, node_id, peers, hwm_messages=hwm_messages, affinity=affinity, curve=curve)
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, hwm_messages)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._affinity, self._curve = affinity, curve
        self._subscribed: dict[str, str] = {}  # peer -> the PUB address our SUB is connected to
        self.set_peers(peers)

    def set_peers(self, peers: dict[str, str]) -> None:
        """Dial the members as they are now (the cluster's membership changed): connect to new
        ones, disconnect from those gone or moved."""
        self.links.set_peers(peers)
        sub, curve = self.sub, self._curve
        wanted = {p: pub_address(a) for p, a in peers.items() if p != self.node_id}
        for peer, address in list(self._subscribed.items()):
            if wanted.get(peer) != address:
                sub.disconnect(f"tcp://{address}")
                del self._subscribed[peer]
        for peer, address in wanted.items():
            if peer not in self._subscribed:
                # The mask in force at connect() picks the thread of that connection.
                sub.setsockopt(zmq.AFFINITY, self._affinity.get(peer, 0))
                if curve is not None:  # like the mask: the server key in force at connect()
                    dial_curve(sub, curve.public, curve.secret, curve.server_key(peer))
                sub.connect(f"tcp://{address}")
                self._subscribed[peer] = address

    def drain(self, sock: zmq.Socket, frames_max: int) -> list[list[bytes]]:
        """Up to ``frames_max`` messages, each as its frames."""
        out: list[list[bytes]] = []
        # The sugar's recv_multipart converts flags and options to enums on every call.
        recv, get = sock.recv, sock.get
        try:
            for _ in range(frames_max):
                frames = [recv(_NOBLOCK)]
                while get(_RCVMORE):
                    frames.append(recv(_NOBLOCK))
                out.append(frames)
        except zmq.Again:
            self._announced.add(sock)
        else:
            self._announced.discard(sock)
        return out

    def readable(self) -> tuple[bool, bool]:
        """(router, sub) may hold messages their FDs will not announce?

        Edge-triggered FDs: any operation on a socket may consume the signal of a message that
        arrived meanwhile, so after one only EVENTS tells the truth — and asking costs a system
        call. A socket whose last operation was a receive that found it empty (or an EVENTS
        that did) needs no asking: the next message to arrive will signal its FD.
        """
        return self._pending(self.router), self._pending(self.sub)

    def _pending(self, sock: zmq.Socket) -> bool:
        if sock in self._announced:
            return False
        if sock.get(_EVENTS) & _POLLIN:
            return True
        self._announced.add(sock)
        return False

    def send_peer(self, peer: str, data: bytes) -> None:
        self.links.send(peer, data)

    @property
    def dropped_sends(self) -> int:
        return self._dropped + self.links.dropped

    def reply(self, route: bytes, frames: list[bytes]) -> None:
        router = self.router
        self._announced.discard(router)  # a send may swallow the signal of an arrival
        try:
            router.send(route, _NOBLOCK | _SNDMORE)
            for frame in frames[:-1]:
                router.send(frame, _NOBLOCK | _SNDMORE)
            router.send(frames[-1], _NOBLOCK)
        except zmq.Again:
            self._dropped += 1

    def publish(self, topic: bytes, msg: PeerMessage) -> None:
        self._seq += 1
        data = encode(Publication(self.node_id, self.epoch, self._seq, msg))
        try:
            self.pub.send(topic, _NOBLOCK | _SNDMORE)
            self.pub.send(data, _NOBLOCK)
        except zmq.Again:
            self._dropped += 1

    def close(self) -> None:
        for sock in (self.router, self.pub, self.sub):
            sock.close(linger=0)
        self.links.close()


class PeerLinks:
    """One DEALER per peer, for one thread's sends. The receiving node knows the sender by
    the batch's ``src``, not by the socket, so a node may have several, and a reconnection
    is a new connection like any other."""

    def __init__(
        self,
        ctx: zmq.Context,
        node_id: str,
        peers: dict[str, str],
        *,
        hwm_messages: int = 50_000,
        affinity: dict[str, int] | None = None,
        curve: CurveKeys | None = None,
    ) -> None:
        self._ctx, self._node_id, self._hwm = ctx, node_id, hwm_messages
        self._affinity, self._curve = affinity or {}, curve
        self.dropped = 0
        self.dealers: dict[str, zmq.Socket] = {}
        self._addresses: dict[str, str] = {}
        # Set by any thread, acted on by the one that sends (a socket belongs to one thread).
        self._wanted = self._applied = dict(peers)
        self._sync()

    def set_peers(self, peers: dict[str, str]) -> None:
        """The members to dial from now on; the sending thread reconnects at its next send."""
        self._wanted = dict(peers)

    def _sync(self) -> None:
        wanted = self._applied = self._wanted
        for peer in [p for p, a in self._addresses.items() if wanted.get(p) != a]:
            self.dealers.pop(peer).close(linger=0)
            del self._addresses[peer]
        for peer, address in wanted.items():
            if peer != self._node_id and peer not in self.dealers:
                self._dial(peer, address)

    def _dial(self, peer: str, address: str) -> None:
        curve, hwm_messages = self._curve, self._hwm
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.AFFINITY, self._affinity.get(peer, 0))
        # No fixed identity: a ROUTER refuses a connection whose identity it already has,
        # and a peer's ROUTER never writes to us, so it keeps a connection that died on our
        # side (a reset it never saw) open for good and would refuse every reconnection.
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, hwm_messages)
        dealer.setsockopt(zmq.IMMEDIATE, 1)
        dealer.setsockopt(zmq.RECONNECT_IVL, 50)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if curve is not None:
            dial_curve(dealer, curve.public, curve.secret, curve.server_key(peer))
        dealer.connect(f"tcp://{address}")
        self.dealers[peer] = dealer
        self._addresses[peer] = address

    def send(self, peer: str, data: bytes) -> None:
        if self._wanted is not self._applied:
            self._sync()
        try:
            self.dealers[peer].send(data, _NOBLOCK)
        except (zmq.Again, KeyError):  # KeyError: no longer a member
            self.dropped += 1

    def close(self) -> None:
        for sock in self.dealers.values():
            sock.close(linger=0)
