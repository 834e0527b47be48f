"""HTTP/1.1 for the gateway on httptools' C parser (llhttp, as uvicorn's): bytes in, routed
requests out, each response written as one buffer.

Measured before choosing (a PUT answered after one loop iteration, wrk, 64 connections, this
machine kind): aiohttp's web application 63-83 µs of server CPU a request, aiohttp's
low-level server 51-70 µs, this protocol on httptools 17-21 µs.

A connection parses what arrives, queues complete requests in order and answers them one at a
time in that order (pipelining); past ``PIPELINED_REQUESTS_MAX`` unanswered requests it stops
reading until it catches up. Limits are checked as the bytes arrive: a ``Content-Length``
over ``BODY_BYTES_MAX`` is refused with 413 before any of the body is read, a URL over
``URL_BYTES_MAX`` with 400, headers over ``HEADER_BYTES_MAX`` with 431, bytes that are not
HTTP with 400; each of those closes the connection, after the answers to the requests that
came whole before it. An ``Upgrade`` is answered as plain HTTP and then the connection closes.
Idle keep-alive connections close after ``KEEPALIVE_IDLE_S``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import Any, Protocol
from urllib.parse import unquote

import httptools

from syncfab.fabric.server.http_auth import WWW_AUTHENTICATE, TokenCheck
from syncfab.gateway.responses import error_response
from syncfab.gateway.router import Request, Response, Router

log = logging.getLogger("syncfab.gateway")

BODY_BYTES_MAX = 1 << 20
URL_BYTES_MAX = 8 << 10
HEADER_BYTES_MAX = 16 << 10  # all of one request's header names and values
PIPELINED_REQUESTS_MAX = 16
KEEPALIVE_IDLE_S = 75.0
CONNECTIONS_MAX = 4096
# After a refusal the client may still be sending (a body over the limit, say): its bytes are
# read and dropped for up to this long or this much, so it gets to read the answer (nginx's
# "lingering close"); closing at once would reset the connection under it.
LINGER_S = 2.0
LINGER_BYTES_MAX = 4 << 20
CLOCK_S = 1.0  # how often the Date header is renewed and idle connections are swept

REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_STATUS_LINES = {status: f"HTTP/1.1 {status} {reason}\r\n".encode() for status, reason in REASONS.items()}


class RequestStats(Protocol):
    """Where the server counts its requests (fabric/server/http_metrics.py in a node)."""

    in_progress: int

    def record(self, endpoint: str, method: str, status: int, elapsed_s: float) -> None: ...


class HttpServer:
    """The gateway's listener: routes every request of every connection to its handler."""

    def __init__(
        self,
        router: Router,
        runtime: Any,
        stats: RequestStats | None = None,
        *,
        auth: TokenCheck | None = None,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        """``auth``: the tokens a request must bear (none: every request is served);
        ``on_refused`` is called for each request refused for want of one."""
        self.router = router
        self.runtime = runtime
        self.stats = stats
        self.auth = auth
        self.on_refused = on_refused
        self.connections: set[HttpConnection] = set()
        self.date = b""
        self._server: asyncio.Server | None = None
        self._clock: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        """Listen on ``host:port``; over TLS (HTTPS only) when given a context."""
        self._loop = asyncio.get_running_loop()
        self._tick()
        self._server = await self._loop.create_server(
            lambda: HttpConnection(self), host, port, backlog=1024, reuse_address=True, ssl=tls
        )

    def _tick(self) -> None:
        self.date = formatdate(usegmt=True).encode()
        idle_before = self._loop.time() - KEEPALIVE_IDLE_S
        for conn in [c for c in self.connections if c.idle and c.last_active < idle_before]:
            conn.close()
        self._clock = self._loop.call_later(CLOCK_S, self._tick)

    async def stop(self, grace_s: float) -> None:
        """Take no new connections, close the idle ones, give requests being answered up to
        ``grace_s`` to finish, then close whatever is left."""
        if self._server is not None:
            self._server.close()
        if self._clock is not None:
            self._clock.cancel()
        deadline = self._loop.time() + grace_s
        while True:
            for conn in [c for c in self.connections if c.idle]:
                conn.close()
            if not self.connections or self._loop.time() >= deadline:
                break
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()

    async def handle(self, request: Request) -> Response:
        """The handler's response, or the error that stands in for it; never raises."""
        started = time.perf_counter()
        stats = self.stats
        if stats is None:
            return await self._route(request)
        stats.in_progress += 1
        try:
            response = await self._route(request)
        finally:
            stats.in_progress -= 1  # also when the answering task is cancelled at stop
        stats.record(request.endpoint, request.method, response.status, time.perf_counter() - started)
        return response

    async def _route(self, request: Request) -> Response:
        route, match_info, allowed = self.router.resolve(request.method, request.path)
        auth = self.auth
        if auth is not None and not auth.allows(request.path, request.headers.get("authorization")):
            # Refused before anything else is said, a 404 or 405 included: no token, no map
            # of the routes.
            if route is not None:
                request.endpoint = route.canonical
            if self.on_refused is not None:
                self.on_refused()
            response = error_response(401, "unauthorized", "a valid 'Authorization: Bearer' token is needed")
            response.headers = {"WWW-Authenticate": WWW_AUTHENTICATE}
            return response
        if route is None:
            if allowed:
                response = error_response(405, "method_not_allowed", "Method Not Allowed")
                response.headers = {"Allow": ", ".join(sorted(set(allowed)))}
            else:
                response = error_response(404, "not_found", "Not Found")
            return response
        request.match_info = match_info
        request.endpoint = route.canonical
        try:
            return await route.handler(request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return error_response(500, "internal", "internal error")


class HttpConnection(asyncio.Protocol):
    """One client connection: httptools calls the ``on_*`` methods as it parses."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[Request] = deque()
        self.answering = False
        self.paused = False
        self.last_active = 0.0
        self._in_message = False
        self._url: list[bytes] = []
        self._url_bytes = 0
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._refusal: Response | None = None  # set mid-parse: answer it and close
        self._answering_task: asyncio.Future[None] | None = None
        self._lingered_bytes = 0
        self._stop_reading = False  # after an Upgrade: answer what came, read nothing more

    @property
    def idle(self) -> bool:
        return not (self.answering or self.pending or self._in_message)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.last_active = self.server._loop.time()
        if len(self.server.connections) >= CONNECTIONS_MAX:
            transport.close()
            return
        self.server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._refusal is not None or self._stop_reading:  # answered: what still comes is dropped
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_BYTES_MAX:
                self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol is upgraded to: the request is answered as plain HTTP (a server may
            # ignore Upgrade, RFC 9110 §7.8) and, since what follows its headers is in the
            # protocol asked for, the connection closes after the answer.
            self._stop_reading = True
            if self.pending:
                self.pending[-1].keep_alive = False
        except httptools.HttpParserError as e:
            self._stop(error_response(400, "bad_request", f"malformed HTTP: {e}"))
        if self._refusal is not None:
            self._refuse(self._refusal)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._in_message:
            self._left_mid_request()
        self.server.connections.discard(self)
        self.transport = None
        self.pending.clear()

    def _left_mid_request(self) -> None:
        """The client went away mid-request (mid-body, say): nothing to answer, nobody to tell;
        one line in the log, and the request counted as a 400 of its route."""
        server = self.server
        method = self.parser.get_method().decode() if self._url else "?"
        path = httptools.parse_url(b"".join(self._url)).path.decode("latin-1") if self._url else ""
        log.info("client left during %s %s", method, path[:200])
        route = server.router.resolve(method, path)[0] if path else None
        if server.stats is not None:
            server.stats.record(route.canonical if route else "unmatched", method, 400, 0.0)

    # -- httptools callbacks --------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url, self._url_bytes = [], 0
        self._headers, self._header_bytes = {}, 0
        self._body, self._body_bytes = [], 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._url_bytes += len(url)
        if self._url_bytes > URL_BYTES_MAX:
            self._stop(
                error_response(400, "bad_request", f"a URL is at most {URL_BYTES_MAX} bytes", field="url")
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > HEADER_BYTES_MAX:
            self._stop(
                error_response(
                    431, "headers_too_large", f"headers are at most {HEADER_BYTES_MAX} bytes", field="headers"
                )
            )
            return
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > BODY_BYTES_MAX:
            # Refused on its headers, before a byte of the body is waited for.
            self._stop(_too_large())
        elif self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > BODY_BYTES_MAX:  # chunked: no length to refuse it by
            self._stop(_too_large())
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None:
            return
        self._in_message = False
        parsed = httptools.parse_url(b"".join(self._url))
        path = (
            unquote(parsed.path.decode("latin-1")) if b"%" in parsed.path else parsed.path.decode("latin-1")
        )
        request = Request(
            self.parser.get_method().decode(),
            path,
            parsed.query.decode("latin-1") if parsed.query else "",
            self._headers,
            b"".join(self._body) if len(self._body) != 1 else self._body[0],
            self.server.runtime,
        )
        request.keep_alive = self.parser.should_keep_alive()
        self.pending.append(request)
        if len(self.pending) > PIPELINED_REQUESTS_MAX and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if not self.answering:
            self.answering = True
            self._answering_task = asyncio.ensure_future(self._answer())

    # -- answering ------------------------------------------------------------------------

    async def _answer(self) -> None:
        """Answer queued requests one at a time, in the order they came."""
        server = self.server
        try:
            while self.pending:
                request = self.pending.popleft()
                response = await server.handle(request)
                transport = self.transport
                if transport is None or transport.is_closing():
                    return  # the client left (or was refused); what it asked has been done
                keep_alive = request.keep_alive
                transport.write(self._encode(response, keep_alive, request.method == "HEAD"))
                self.last_active = server._loop.time()
                if not keep_alive:
                    transport.close()
                    return
                if self.paused and len(self.pending) <= PIPELINED_REQUESTS_MAX // 2:
                    self.paused = False
                    transport.resume_reading()
        finally:
            self.answering = False
        if self._refusal is not None:
            self._refuse(self._refusal)

    def _encode(self, response: Response, keep_alive: bool, head: bool) -> bytes:
        """The status line, headers and body as one buffer: one write, one send."""
        status = response.status
        head_lines = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()
        extra = b""
        if response.headers:
            extra = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items()).encode("latin-1")
        if not keep_alive:
            extra += b"Connection: close\r\n"
        return b"%sContent-Type: %s\r\nContent-Length: %d\r\n%sDate: %s\r\nServer: syncfab\r\n\r\n%s" % (
            head_lines,
            response.content_type.encode("latin-1"),
            len(response.body),
            extra,
            self.server.date,
            b"" if head else response.body,
        )

    # -- refusals -------------------------------------------------------------------------

    def _stop(self, response: Response) -> None:
        """Mid-parse: stop taking this request's bytes; ``data_received`` answers and closes."""
        if self._refusal is None:
            self._refusal = response

    def _refuse(self, response: Response) -> None:
        """Answer, stop writing, and close once the client has had time to read the answer.
        Requests that came whole before the refused one are answered first: a pipelining client
        takes answers in order, so a refusal sent ahead would read as the answer to one of them."""
        self._in_message = False
        if self.answering:
            return  # _answer sends it after the last of them
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(self._encode(response, False, False))
            if transport.can_write_eof():
                transport.write_eof()
            self.server._loop.call_later(LINGER_S, self.close)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.server.connections.discard(self)


def _too_large() -> Response:
    return error_response(413, "payload_too_large", f"a body is at most {BODY_BYTES_MAX} bytes", field="body")
