"""Transport.readable skips the EVENTS system call for a socket that a receive found empty;
these check the edge-triggered FD rules that rely on, with real ZeroMQ sockets."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import pytest
import zmq

from syncfab.fabric.server.local import free_ports
from syncfab.fabric.server.transport import PeerLinks, Transport

WAIT_S = 10.0


@pytest.fixture
def link() -> Iterator[tuple[Transport, zmq.Socket]]:
    """A node's transport (its only peer is never started) and a client DEALER to it."""
    ctx = zmq.Context.instance()
    mine, theirs = free_ports(2)
    transport = Transport(ctx, "n1", {"n1": f"127.0.0.1:{mine}", "n2": f"127.0.0.1:{theirs}"}, epoch=1)
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(f"tcp://127.0.0.1:{mine}")
    yield transport, client
    client.close()
    transport.close()


def _fd_fires(sock: zmq.Socket) -> bool:
    """Wait for the socket's FD without touching the socket (which could consume its signal)."""
    readable, _, _ = select.select([sock.getsockopt(zmq.FD)], [], [], WAIT_S)
    return bool(readable)


def _drain_until(transport: Transport, count: int) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    while len(got) < count:
        assert transport.router.poll(int(WAIT_S * 1000)), "nothing arrived"
        got += transport.drain(transport.router, 100)
    return got


def test_a_socket_found_empty_announces_the_next_message(link: tuple[Transport, zmq.Socket]) -> None:
    transport, client = link
    client.send_multipart([b"one", b"two"])
    [frames] = _drain_until(transport, 1)
    assert frames[1:] == [b"one", b"two"]
    assert transport.drain(transport.router, 100) == []
    assert transport.readable() == (False, False)

    client.send(b"three")
    assert _fd_fires(transport.router)
    assert [f[1:] for f in transport.drain(transport.router, 100)] == [[b"three"]]


def test_after_a_reply_readable_reports_what_arrived_meanwhile(link: tuple[Transport, zmq.Socket]) -> None:
    transport, client = link
    client.send(b"hello")
    [frames] = _drain_until(transport, 1)
    assert transport.drain(transport.router, 100) == []
    client.send(b"again")
    assert _fd_fires(transport.router)
    # The send may consume the FD's signal; readable must still report the message.
    transport.reply(frames[0], [b"answer"])
    assert transport.readable()[0]
    assert [f[1:] for f in transport.drain(transport.router, 100)] == [[b"again"]]
    assert client.poll(int(WAIT_S * 1000))
    assert client.recv_multipart() == [b"answer"]


def _send_until_both_arrive(
    receiver: Transport, first: tuple[PeerLinks | Transport, bytes], second: tuple[PeerLinks, bytes]
) -> set[bytes]:
    got: set[bytes] = set()
    deadline = time.monotonic() + WAIT_S
    # IMMEDIATE: a send before the connection is up is dropped, so send until it arrives.
    while len(got) < 2 and time.monotonic() < deadline:
        for sender, payload in (first, second):
            if payload not in got:
                if isinstance(sender, Transport):
                    sender.send_peer("n2", payload)
                else:
                    sender.send("n2", payload)
        if receiver.router.poll(50):
            got |= {f[1] for f in receiver.drain(receiver.router, 100)}
    return got


def test_a_second_set_of_peer_links_reaches_the_same_peer() -> None:
    # The disk writer's thread sends on DEALERs of its own, connected beside the loop's.
    ctx = zmq.Context.instance()
    a, b = free_ports(2)
    peers = {"n1": f"127.0.0.1:{a}", "n2": f"127.0.0.1:{b}"}
    n1 = Transport(ctx, "n1", peers, epoch=1)
    n2 = Transport(ctx, "n2", peers, epoch=2)
    disk = PeerLinks(ctx, "n1", peers)
    try:
        assert _send_until_both_arrive(n2, (n1, b"loop"), (disk, b"disk")) == {b"loop", b"disk"}
    finally:
        disk.close()
        n1.close()
        n2.close()


def test_a_peer_that_reconnects_is_heard_while_its_old_connection_lingers() -> None:
    """A node's new connection must be taken even though the peer still holds the old one:
    after a reset only one side saw (a relay or NAT dropped, a node restarted behind a
    partition that ate its FIN), the peer's end stays open, because a ROUTER never writes to
    a peer's DEALER and so never learns it is dead. Found by the chaos suite's delay nemesis:
    with a fixed identity per node, the ROUTER refused the reconnection as a duplicate and
    the link stayed one-way for good (no leader, 30 s after the fault healed)."""
    ctx = zmq.Context.instance()
    a, b = free_ports(2)
    peers = {"n1": f"127.0.0.1:{a}", "n2": f"127.0.0.1:{b}"}
    n2 = Transport(ctx, "n2", peers, epoch=2)
    lingering = PeerLinks(ctx, "n1", peers)  # the old connection, still open at n2
    reconnected = PeerLinks(ctx, "n1", peers)
    try:
        got = _send_until_both_arrive(n2, (lingering, b"old"), (reconnected, b"new"))
        assert got == {b"old", b"new"}
    finally:
        lingering.close()
        reconnected.close()
        n2.close()
