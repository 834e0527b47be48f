"""Where a node is found: one ``host:port`` names its ROUTER, and its PUB is the port after.

The same rule holds for what a node binds, for what its peers dial (its ``--peers`` entry) and
for what it advertises to native clients (``--advertise``): so one address says both, and a
container that publishes its ROUTER port P as host port Q publishes P + 1 as Q + 1.
"""

from __future__ import annotations

PUB_PORT_OFFSET = 1


def pub_address(address: str) -> str:
    """``host:P`` → ``host:P+1`` (the address must already be a valid host:port)."""
    host, _, port = address.rpartition(":")
    return f"{host}:{int(port) + PUB_PORT_OFFSET}"
