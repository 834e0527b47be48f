"""gateway/http_server.py over real loopback sockets: what a client sees byte for byte.

The server is the thing under test; its router holds small handlers of the test's own (an
echo, one that waits on an event, one that fails) so each property is seen on its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest

from syncfab.fabric.server.http_auth import TokenCheck
from syncfab.gateway.http_server import BODY_BYTES_MAX, HEADER_BYTES_MAX, URL_BYTES_MAX, HttpServer
from syncfab.gateway.router import Request, Response, Router

READ_S_MAX = 10.0


class Stats:
    """What the server records, kept for the assertions."""

    def __init__(self) -> None:
        self.in_progress = 0
        self.recorded: list[tuple[str, str, int]] = []

    def record(self, endpoint: str, method: str, status: int, elapsed_s: float) -> None:
        self.recorded.append((endpoint, method, status))


class Harness:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.stats = Stats()
        router = Router()
        router.add_put("/echo/{name}", self.echo)
        router.add_get("/echo/{name}", self.echo)
        router.add_get("/wait", self.wait)
        router.add_get("/boom", self.boom)
        self.server = HttpServer(router, runtime=None, stats=self.stats)
        self.port = 0

    async def echo(self, request: Request) -> Response:
        body = {"name": request.match_info["name"], "body": request.body.decode(), "query": request.query}
        return Response(json.dumps(body).encode())

    async def echo_health(self, request: Request) -> Response:
        return Response(b'{"status": "ok"}')

    async def wait(self, request: Request) -> Response:
        await self.release.wait()
        return Response(b'{"waited": true}')

    async def boom(self, request: Request) -> Response:
        raise RuntimeError("a handler's bug")

    async def start(self) -> None:
        await self.server.start("127.0.0.1", 0)
        assert self.server._server is not None
        self.port = self.server._server.sockets[0].getsockname()[1]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


def run(scenario: Callable[[Harness], Awaitable[None]]) -> None:
    async def main() -> None:
        harness = Harness()
        await harness.start()
        try:
            await asyncio.wait_for(scenario(harness), READ_S_MAX * 3)
        finally:
            await harness.server.stop(grace_s=0)

    asyncio.run(main())


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names), body by its Content-Length."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_S_MAX)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), READ_S_MAX) if length else b""
    return status, headers, body


async def until(check: Callable[[], bool]) -> None:
    """Poll the server's own state (same loop) until ``check`` holds, within READ_S_MAX."""
    deadline = asyncio.get_running_loop().time() + READ_S_MAX
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.002)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), READ_S_MAX) == b""


def test_pipelined_requests_are_answered_in_the_order_sent() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(
            b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n"
            b"PUT /echo/a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
            b"GET /echo/b?x=1&x=2 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        await writer.drain()
        # The first is held; nothing may overtake it.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.2)
        h.release.set()
        answers = [await read_response(reader) for _ in range(3)]
        assert [s for s, _, _ in answers] == [200, 200, 200]
        assert json.loads(answers[0][2]) == {"waited": True}
        assert json.loads(answers[1][2]) == {"name": "a", "body": "one", "query": {}}
        assert json.loads(answers[2][2]) == {"name": "b", "body": "", "query": {"x": "1"}}
        writer.close()

    run(scenario)


def test_head_has_the_get_headers_and_no_body() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(b"GET /echo/n HTTP/1.1\r\nHost: x\r\n\r\nHEAD /echo/n HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 200 and body
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_S_MAX)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: %d\r\n" % len(body) in head
        writer.write(b"GET /echo/m HTTP/1.1\r\nHost: x\r\n\r\n")  # no body bytes came between
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["name"] == "m"
        writer.close()

    run(scenario)


def test_expect_100_continue_is_answered_before_the_body_is_sent() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(b"PUT /echo/c HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_S_MAX)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hi")
        status, _, body = await read_response(reader)
        assert status == 200 and json.loads(body)["body"] == "hi"
        writer.close()

    run(scenario)


@pytest.mark.parametrize(
    ("request_bytes", "status", "field"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, None),
        (b"GET /" + b"a" * (URL_BYTES_MAX + 1) + b" HTTP/1.1\r\nHost: x\r\n\r\n", 400, "url"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * (HEADER_BYTES_MAX + 1) + b"\r\n\r\n", 431, "headers"),
        (b"PUT /echo/x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (BODY_BYTES_MAX + 1), 413, "body"),
    ],
    ids=["garbage", "long-url", "big-headers", "content-length-over"],
)
def test_refusals_are_json_naming_the_field_and_close(request_bytes: bytes, status: int, field: str) -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(request_bytes)  # a Content-Length over the limit is refused with no body sent
        got, headers, body = await read_response(reader)
        assert got == status and headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        error = json.loads(body)
        assert error["error"] and error["message"]
        if field is not None:
            assert error.get("field") == field, error
        assert await closed(reader)
        writer.close()

    run(scenario)


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(b"PUT /echo/big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * (64 << 10)
        for _ in range(BODY_BYTES_MAX // len(chunk) + 1):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, _, body = await read_response(reader)
        assert status == 413 and json.loads(body)["field"] == "body"
        writer.close()

    run(scenario)


def test_connection_close_and_http_1_0_close_after_the_answer() -> None:
    async def scenario(h: Harness) -> None:
        for request in (
            b"GET /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"GET /echo/a HTTP/1.0\r\n\r\n",
        ):
            reader, writer = await h.connect()
            writer.write(request)
            status, headers, _ = await read_response(reader)
            assert status == 200 and headers["connection"] == "close"
            assert await closed(reader)
            writer.close()

    run(scenario)


def test_an_upgrade_is_answered_as_plain_http_and_the_connection_closes() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(
            b"GET /echo/u HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
            b"\x81\x85 websocket bytes"
        )
        status, headers, body = await read_response(reader)
        assert status == 200 and json.loads(body)["name"] == "u" and headers["connection"] == "close"
        assert await closed(reader)
        writer.close()

    run(scenario)


def test_unknown_routes_methods_and_handler_failures_get_json_and_keep_the_connection() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(
            b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            b"DELETE /echo/a HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /echo/still-here HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        (s1, _, b1), (s2, h2, _), (s3, _, b3), (s4, _, b4) = [await read_response(reader) for _ in range(4)]
        assert (s1, json.loads(b1)["error"]) == (404, "not_found")
        assert s2 == 405 and h2["allow"] == "GET, PUT"
        assert (s3, json.loads(b3)["error"]) == (500, "internal")  # a bug in a handler, not the server
        assert s4 == 200 and json.loads(b4)["name"] == "still-here"
        writer.close()
        assert h.stats.recorded == [
            ("unmatched", "GET", 404),
            ("unmatched", "DELETE", 405),
            ("/boom", "GET", 500),
            ("/echo/{name}", "GET", 200),
        ]

    run(scenario)


def test_a_request_after_garbage_in_the_same_frame_is_not_lost_before_it() -> None:
    """A good request, then bytes that are not HTTP: the good one is answered first, then the
    400, then the connection closes."""

    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n\x00\x01garbage\r\n\r\n")
        await writer.drain()
        await until(lambda: h.stats.in_progress == 1)  # the first is at its handler
        await asyncio.sleep(0.05)  # not synchronisation: a slower server may see the garbage later
        h.release.set()
        first = await read_response(reader)
        second = await read_response(reader)
        assert first[0] == 200 and json.loads(first[2]) == {"waited": True}
        assert second[0] == 400
        assert await closed(reader)
        writer.close()

    run(scenario)


def test_stop_answers_what_is_being_answered_and_the_gauge_returns_to_zero() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        idle_reader, idle_writer = await h.connect()
        writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await until(lambda: h.stats.in_progress == 1)  # the request has reached its handler
        stopping = asyncio.ensure_future(h.server.stop(grace_s=READ_S_MAX))
        assert await closed(idle_reader)  # idle connections go at once
        h.release.set()
        status, _, _ = await read_response(reader)
        assert status == 200
        await asyncio.wait_for(stopping, READ_S_MAX)
        assert h.stats.in_progress == 0 and not h.server.connections
        writer.close()
        idle_writer.close()

    run(scenario)


def test_stop_past_its_grace_cuts_a_request_off_and_the_gauge_still_returns_to_zero() -> None:
    async def scenario(h: Harness) -> None:
        reader, writer = await h.connect()
        writer.write(b"GET /wait HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await until(lambda: h.stats.in_progress == 1)
        await h.server.stop(grace_s=0.05)
        assert await closed(reader)
        h.release.set()  # the handler finishes with nobody to answer
        await until(lambda: h.stats.in_progress == 0)
        writer.close()

    run(scenario)


def test_tokens_are_asked_of_every_route_but_health_on_a_connection_that_lives_on() -> None:
    async def scenario(h: Harness) -> None:
        refused: list[int] = []
        h.server.auth = TokenCheck((b"new", b"old"), (b"scrape",))
        h.server.on_refused = lambda: refused.append(1)
        h.server.router.add_get("/health", h.echo_health)
        h.server.router.add_get("/metrics", h.echo_health)
        reader, writer = await h.connect()
        asks = [
            (b"GET /echo/a HTTP/1.1\r\nHost: x\r\n\r\n", 401),
            (b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n", 401),
            (b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: Basic bmV3\r\n\r\n", 401),
            (b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer scrape\r\n\r\n", 401),
            (b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 401),  # not 404: no token, no routes shown
            (b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: bearer old\r\n\r\n", 200),
            (b"GET /echo/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer new\r\n\r\n", 200),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer scrape\r\n\r\n", 200),
            (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        ]
        for raw, expected in asks:
            writer.write(raw)
            status, headers, body = await read_response(reader)
            assert status == expected, raw
            if status == 401:
                assert headers["www-authenticate"] == 'Bearer realm="syncfab"'
                assert json.loads(body)["error"] == "unauthorized"
        assert len(refused) == 5
        assert h.stats.recorded[0] == ("/echo/{name}", "GET", 401)  # counted under its route
        assert h.stats.recorded[4] == ("unmatched", "GET", 401)
        writer.close()

    run(scenario)
