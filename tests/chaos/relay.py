"""A user-space TCP relay that delays every byte: the delay nemesis (this kernel has no netem).

Run as its own process by the nemesis (``python relay.py --seed S --delay-ms D --jitter-ms J
--listen HOST --target ip:port ...``): for each target it listens on ``HOST`` at a free port,
prints one JSON line ``{"ip:port": listen_port, ...}`` once it listens, and forwards each
accepted connection to its target, each chunk in each direction held for ``delay + U(0,
jitter)`` ms but never overtaking the chunk before it (TCP keeps order, so must a delay). It
runs until killed; being killed closes every relayed connection, which is how the nemesis
heals: the nodes reconnect straight to each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys

CHUNK_BYTES = 65536


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, jitter_s: float, rng
) -> None:
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await held.get()
            if not data:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(deliver())
    last_due = 0.0
    try:
        while True:
            data = await reader.read(CHUNK_BYTES)
            last_due = max(last_due, loop.time() + delay_s + rng.uniform(0, jitter_s))
            held.put_nowait((last_due, data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
        writer.close()


async def _serve(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    delay_s, jitter_s = args.delay_ms / 1000, args.jitter_ms / 1000
    ports: dict[str, int] = {}
    servers = []
    for target in args.target:
        host, port = target.rsplit(":", 1)

        async def accept(r, w, host=host, port=int(port)) -> None:
            try:
                ur, uw = await asyncio.open_connection(host, port)
            except OSError:
                w.close()
                return
            await asyncio.gather(_pump(r, uw, delay_s, jitter_s, rng), _pump(ur, w, delay_s, jitter_s, rng))

        server = await asyncio.start_server(accept, args.listen, 0)
        servers.append(server)
        ports[target] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--target", action="append", required=True)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
