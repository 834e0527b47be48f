"""What a gateway handler sees: a parsed ``Request`` in, a ``Response`` out, and the ``Router``
that maps a method and a path to the handler (gateway/http_server.py does the bytes).

Routes are templates like aiohttp's: ``/kv/{key:.+}`` (a pattern of its own) or
``/queues/{queue}`` (one path segment). They are grouped by their first path segment, so
resolving a path tries a handful of patterns, not all of them.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH")
_VARIABLE = re.compile(r"\{(\w+)(?::([^}]+))?\}")


class Request:
    """One parsed request. ``query`` is parsed on first use (first value of a repeated name
    wins, as aiohttp's ``query.get``); header names are lower case."""

    __slots__ = (
        "_query",
        "body",
        "endpoint",
        "headers",
        "keep_alive",
        "match_info",
        "method",
        "path",
        "query_string",
        "runtime",
    )

    def __init__(
        self, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes, runtime: Any
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.headers = headers
        self.body = body
        self.runtime = runtime
        self.match_info: dict[str, str] = {}
        self.endpoint = "unmatched"  # the route's template, for metrics
        self.keep_alive = True
        self._query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            found: dict[str, str] = {}
            for name, value in parse_qsl(self.query_string, keep_blank_values=True):
                found.setdefault(name, value)
            self._query = found
        return self._query


class Response:
    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        body: bytes = b"",
        status: int = 200,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers


Handler = Callable[[Request], Awaitable[Response]]


class Route:
    __slots__ = ("canonical", "handler", "method", "pattern", "template")

    def __init__(self, method: str, template: str, handler: Handler) -> None:
        self.method = method
        self.template = template
        self.canonical = _VARIABLE.sub(r"{\1}", template)  # /kv/{key:.+} is /kv/{key}
        self.handler = handler
        parts, at = [], 0
        for m in _VARIABLE.finditer(template):
            parts.append(re.escape(template[at : m.start()]))
            parts.append(f"(?P<{m.group(1)}>{m.group(2) or '[^/]+'})")
            at = m.end()
        parts.append(re.escape(template[at:]))
        self.pattern = re.compile("".join(parts) + r"\Z")


def first_segment(path: str) -> str:
    return path[1:].split("/", 1)[0]


class Router:
    def __init__(self) -> None:
        self._by_segment: dict[str, list[Route]] = {}
        self._routes: list[Route] = []

    def add(self, method: str, template: str, handler: Handler) -> None:
        assert method in METHODS, method
        assert template.startswith("/") and "{" not in first_segment(template), template
        route = Route(method, template, handler)
        self._routes.append(route)
        self._by_segment.setdefault(first_segment(template), []).append(route)

    def add_get(self, template: str, handler: Handler) -> None:
        self.add("GET", template, handler)

    def add_put(self, template: str, handler: Handler) -> None:
        self.add("PUT", template, handler)

    def add_post(self, template: str, handler: Handler) -> None:
        self.add("POST", template, handler)

    def add_delete(self, template: str, handler: Handler) -> None:
        self.add("DELETE", template, handler)

    def add_patch(self, template: str, handler: Handler) -> None:
        self.add("PATCH", template, handler)

    def routes(self) -> list[tuple[str, str]]:
        """Every (method, path) served, each variable as ``{name}``."""
        return [(r.method, r.canonical) for r in self._routes]

    def resolve(self, method: str, path: str) -> tuple[Route | None, dict[str, str], list[str]]:
        """The route for ``method`` and ``path`` and its variables; with no route, the
        methods the path has (empty: 404; some: 405 and ``Allow``). HEAD is GET's."""
        method = "GET" if method == "HEAD" else method
        allowed: list[str] = []
        for route in self._by_segment.get(first_segment(path), ()):
            m = route.pattern.match(path)
            if m is None:
                continue
            if route.method == method:
                return route, m.groupdict(), allowed
            allowed.append(route.method)
        return None, {}, allowed
