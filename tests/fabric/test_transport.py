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


def test_a_second_set_of_peer_links_reaches_the_same_peer() -> None:
    # The disk writer's thread sends on DEALERs of its own; a ROUTER refuses a second
    # connection with an identity it already has, so theirs must differ.
    ctx = zmq.Context.instance()
    a, b = free_ports(2)
    peers = {"n1": f"127.0.0.1:{a}", "n2": f"127.0.0.1:{b}"}
    n1 = Transport(ctx, "n1", peers, epoch=1)
    n2 = Transport(ctx, "n2", peers, epoch=2)
    disk = PeerLinks(ctx, "n1", peers, name="/disk")
    try:
        got: set[tuple[bytes, bytes]] = set()
        deadline = time.monotonic() + WAIT_S
        # IMMEDIATE: a send before the connection is up is dropped, so send until it arrives.
        while len(got) < 2 and time.monotonic() < deadline:
            if (b"n1", b"loop") not in got:
                n1.send_peer("n2", b"loop")
            if (b"n1/disk", b"disk") not in got:
                disk.send("n2", b"disk")
            if n2.router.poll(50):
                got |= {(f[0], f[1]) for f in n2.drain(n2.router, 100)}
        assert got == {(b"n1", b"loop"), (b"n1/disk", b"disk")}
    finally:
        disk.close()
        n1.close()
        n2.close()
