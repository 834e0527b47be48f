"""What every handler reaches through the application: the node's runtime."""

from __future__ import annotations

from aiohttp import web

from syncfab.fabric.server.runtime import NodeRuntime

RUNTIME = web.AppKey("runtime", NodeRuntime)
