"""What the integration tests share: JSON over HTTP, polling with a deadline, a certificate."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncfab.fabric.server.local import LocalCluster

_NO_BODY: Any = object()


def http(
    c: LocalCluster,
    node: str,
    method: str,
    path: str,
    body: Any = _NO_BODY,
    *,
    raw: bytes | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, Any]:
    """One request to ``node``'s gateway: ``body`` is sent as JSON, ``raw`` as is. Returns
    (status, decoded JSON body) whatever the status."""
    data = raw if raw is not None else None if body is _NO_BODY else json.dumps(body).encode()
    req = urllib.request.Request(
        c.url(node) + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            payload, status = r.read(), r.status
    except urllib.error.HTTPError as e:
        payload, status = e.read(), e.code
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode()


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as e:
            last = e
        else:
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def control_leader(c: LocalCluster, node: str) -> str | None:
    return c.get_json(node, "/cluster")["leader"]


def wait_caught_up(c: LocalCluster, node: str, reference: str, timeout_s: float = 30.0) -> None:
    """Until ``node`` has applied, in every group, what ``reference`` had committed when asked."""
    commits = {g["group"]: g["commit_index"] for g in c.get_json(reference, "/status")["groups"]}

    def caught_up() -> bool:
        applied = {g["group"]: g["applied_index"] for g in c.get_json(node, "/status")["groups"]}
        return set(applied) == set(commits) and all(applied[g] >= i for g, i in commits.items())

    wait_for(f"{node} to catch up with {reference}", caught_up, timeout_s)


def self_signed(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary to make a certificate with")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key
