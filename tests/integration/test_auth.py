"""Who may come in, with real node processes: the gateway's bearer tokens (and the read-only
metrics token), HTTPS, CURVE on the fabric with a native client, ``syncfab keygen``'s files,
and the warning of a node left open beyond loopback."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from prometheus_client.parser import text_string_to_metric_families

from syncfab.fabric.client import Client, SyncfabError
from syncfab.fabric.server.curve import read_public_key, read_secret_key
from syncfab.fabric.server.local import LocalCluster, free_ports

from .helpers import self_signed, wait_for

TOKEN, OLD_TOKEN, METRICS_TOKEN = "t0ken-new-8f1e", "t0ken-old-77aa", "scrape-only-3c"
SYNCFAB = [sys.executable, "-m", "syncfab.fabric.server.cli"]


def ask(
    url: str,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    tls: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, body as JSON or text) of one request, whatever its status."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=tls) as r:
            status, got, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, got, raw = e.code, dict(e.headers), e.read()
    try:
        return status, got, json.loads(raw)
    except ValueError:
        return status, got, raw.decode()


def refused_count(text: str, via: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "syncfab_auth_refused":
            for sample in family.samples:
                if sample.name == "syncfab_auth_refused_total" and sample.labels == {"via": via}:
                    return sample.value
    raise AssertionError(f"no syncfab_auth_refused_total{{via={via!r}}} in /metrics")


# -- the gateway's tokens ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    secrets = tmp_path_factory.mktemp("tokens")
    (secrets / "tokens").write_text(f"# the new one first\n{TOKEN}\n\n{OLD_TOKEN}\n")
    (secrets / "metrics").write_text(f"{METRICS_TOKEN}\n")
    extra = ["--auth-token-file", str(secrets / "tokens"), "--metrics-token-file", str(secrets / "metrics")]
    with LocalCluster(size=1, extra_args=extra, http_token=TOKEN) as c:
        yield c


def test_every_route_but_health_needs_a_token(token_cluster: LocalCluster) -> None:
    url = token_cluster.url("n1")
    refusals = [
        ask(f"{url}/kv/door"),
        ask(f"{url}/kv/door", "PUT", body="in"),
        ask(f"{url}/kv/door", token="not-a-token"),
        ask(f"{url}/no/such/route"),  # 401, not 404: no token, no map of the routes
        ask(f"{url}/cluster", token=METRICS_TOKEN),  # the scraper's token opens /metrics only
        ask(f"{url}/kv/door", "PUT", token=METRICS_TOKEN, body="in"),
        ask(f"{url}/metrics"),
    ]
    for status, headers, body in refusals:
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Bearer")
        assert body["error"] == "unauthorized" and body["message"]
    status, _, body = ask(f"{url}/health")
    assert status == 200 and body["status"] == "ok"

    status, _, body = ask(f"{url}/kv/door", "PUT", token=TOKEN, body="in")
    assert status == 200, body
    # Rotation: every line of the file is a token.
    status, _, body = ask(f"{url}/kv/door", token=OLD_TOKEN)
    assert (status, body["value"]) == (200, "in")
    assert ask(f"{url}/kv/door", "GET", token=f"{TOKEN}x")[0] == 401

    status, _, text = ask(f"{url}/metrics", token=METRICS_TOKEN)
    assert status == 200
    assert refused_count(text, "http") == len(refusals) + 1
    assert refused_count(text, "fabric") == 0


def test_the_cli_sends_the_token(token_cluster: LocalCluster, tmp_path: Path) -> None:
    token_file = tmp_path / "client-token"
    token_file.write_text(f"{OLD_TOKEN}\n")
    endpoint = ["--endpoints", f"127.0.0.1:{token_cluster.http_ports['n1']}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCFAB_")}
    put = subprocess.run(
        [*SYNCFAB, "kv", "put", "cli-door", '"open"', *endpoint],
        env={**env, "SYNCFAB_AUTH_TOKEN_FILE": str(token_file)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert put.returncode == 0, put.stderr
    got = subprocess.run(
        [*SYNCFAB, "kv", "get", "cli-door", *endpoint, "--token", TOKEN],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (got.returncode, got.stdout.strip()) == (0, '"open"'), got.stderr
    refused = subprocess.run(
        [*SYNCFAB, "kv", "get", "cli-door", *endpoint], env=env, capture_output=True, text=True, timeout=30
    )
    assert refused.returncode == 1
    assert json.loads(refused.stderr)["error"] == "unauthorized"


# -- HTTPS ------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_https_serves_with_the_certificate_and_refuses_plain_http(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    extra = ["--tls-cert", str(cert), "--tls-key", str(key)]
    with LocalCluster(size=1, extra_args=extra, tls_ca=str(cert)) as c:
        tls = ssl.create_default_context(cafile=str(cert))
        url = c.url("n1")
        assert url.startswith("https://")
        status, _, body = ask(f"{url}/kv/secure", "PUT", body="yes", tls=tls)
        assert status == 200, body
        assert ask(f"{url}/kv/secure", tls=tls)[2]["value"] == "yes"
        # An older TLS than 1.2 is not spoken.
        old = ssl.create_default_context(cafile=str(cert))
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, urllib.error.URLError)):
            urllib.request.urlopen(f"{url}/health", timeout=10, context=old)
        # Plain HTTP on the HTTPS port gets no HTTP answer.
        plain = http.client.HTTPConnection("127.0.0.1", c.http_ports["n1"], timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/health")
            plain.getresponse()
        plain.close()


# -- CURVE ------------------------------------------------------------------------------------


def keygen(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SYNCFAB, "keygen", "--out", str(out)], capture_output=True, text=True, timeout=30)


def test_keygen_writes_a_private_secret_and_its_public_half(tmp_path: Path) -> None:
    out = tmp_path / "keys" / "n1"
    made = keygen(out)
    assert made.returncode == 0, made.stderr
    secret, public = Path(f"{out}.key"), Path(f"{out}.key.pub")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644 & ~umask  # anyone may read a public key
    derived, secret_key = read_secret_key(str(secret))
    assert read_public_key(str(public)) == derived == zmq.curve_public(secret_key)
    before = secret.read_bytes()
    again = keygen(out)  # never overwrites a key
    assert again.returncode == 2 and "exists" in again.stderr
    assert secret.read_bytes() == before


@pytest.fixture(scope="module")
def curve_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, Path]]:
    """Three nodes, each with a key pair of its own, accepting the nodes' and one client's keys."""
    keys = tmp_path_factory.mktemp("curve")
    accept = keys / "accept"
    for name in ("n1", "n2", "n3", "client", "stranger"):
        assert keygen(keys / name).returncode == 0
    accept.mkdir()
    for name in ("n1", "n2", "n3", "client"):
        shutil.copy(keys / f"{name}.key.pub", accept)
    node_args = {
        n: ["--curve-secret-key", str(keys / f"{n}.key"), "--curve-accept", str(accept)]
        for n in ("n1", "n2", "n3")
    }
    with LocalCluster(size=3, node_args=node_args) as c:
        yield c, keys


def curve_client(c: LocalCluster, keys: Path, name: str, **kwargs: Any) -> Client:
    servers = {c.address(n): read_public_key(str(keys / f"{n}.key.pub")) for n in c.ids}
    return Client(
        c.addresses, curve_server_key=servers, curve_secret_key=read_secret_key(str(keys / f"{name}.key"))[1],
        **kwargs,
    )  # fmt: skip


def test_a_curve_cluster_serves_an_accepted_client(curve_cluster: tuple[LocalCluster, Path]) -> None:
    c, keys = curve_cluster
    # Every member heard every other's beats: PUB/SUB runs over CURVE too.
    for n in c.ids:
        assert all(m["alive"] for m in c.get_json(n, "/cluster")["members"]), n
    with curve_client(c, keys, "client") as client:
        client.put("curve/k", {"v": 1})
        assert client.get("curve/k") == {"v": 1}
        grant = client.acquire("curve/lock", wait_ms=1000)
        assert grant.fencing_token > 0
        assert client.release("curve/lock")
    # The cache's coherence traffic runs between nodes: n2 caches a line, a write through n1
    # takes it away, and n2 reads the new value.
    with (
        curve_client(c, keys, "client", cache_node=c.address("n1")) as at_n1,
        curve_client(c, keys, "client", cache_node=c.address("n2")) as at_n2,
    ):
        at_n1.cache.write("curve/c", 1)
        assert at_n2.cache.read("curve/c").value == 1
        at_n1.cache.write("curve/c", 2)
        assert at_n2.cache.read("curve/c").value == 2
    for n in c.ids:
        text = urllib.request.urlopen(c.url(n) + "/metrics", timeout=10).read().decode()
        assert refused_count(text, "fabric") == 0, n


def test_an_unknown_key_is_refused_and_counted(curve_cluster: tuple[LocalCluster, Path]) -> None:
    c, keys = curve_cluster
    with pytest.raises(SyncfabError) as refused:
        curve_client(c, keys, "stranger", timeout_s=2.0)
    assert refused.value.code == "timeout"

    def fabric_refusals() -> float:
        return sum(
            refused_count(urllib.request.urlopen(c.url(n) + "/metrics", timeout=10).read().decode(), "fabric")
            for n in c.ids
        )

    wait_for("the stranger's handshakes counted", lambda: fabric_refusals() >= 1)
    # Without CURVE at all a client gets no answer either, and is counted: as a mechanism
    # mismatch, or (when it saw the mismatch first and reset) as a handshake never finished.
    before = fabric_refusals()
    with pytest.raises(SyncfabError) as plain:
        Client(c.addresses, timeout_s=2.0)
    assert plain.value.code == "timeout"
    wait_for("the plain client's handshakes counted", lambda: fabric_refusals() > before)
    # An accepted client key dialling with the wrong server key is refused as well.
    before = fabric_refusals()
    wrong = {a: read_public_key(str(keys / "stranger.key.pub")) for a in c.addresses}
    with pytest.raises(SyncfabError) as mistaken:
        Client(
            c.addresses, curve_server_key=wrong, timeout_s=2.0,
            curve_secret_key=read_secret_key(str(keys / "client.key"))[1],
        )  # fmt: skip
    assert mistaken.value.code == "timeout"
    wait_for("the mistaken client's handshakes counted", lambda: fabric_refusals() > before)


# -- the warning ------------------------------------------------------------------------------


def start_output(tmp_path: Path, *flags: str) -> list[str]:
    """The stderr lines of a node bound on 0.0.0.0 with these flags, up to its ready line."""
    peer, http_port = free_ports(2)
    proc = subprocess.Popen(
        [*SYNCFAB, "node", "--id", "n1", "--peers", f"n1=127.0.0.1:{peer}",
         "--http", f"127.0.0.1:{http_port}", "--data-dir", str(tmp_path / "n1"), "--bind", "0.0.0.0",
         "--log-level", "warning", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("SYNCFAB_")},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()  # the node prints it once it serves
        assert "ready" in ready, ready
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    return err.splitlines()


def test_an_open_node_beyond_loopback_warns_once(tmp_path: Path) -> None:
    warnings = [line for line in start_output(tmp_path / "open") if line.startswith("WARNING:")]
    assert len(warnings) == 1
    assert "0.0.0.0" in warnings[0] and "auth-token-file" in warnings[0]
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    guarded = start_output(tmp_path / "guarded", "--auth-token-file", str(tokens))
    assert not [line for line in guarded if line.startswith("WARNING")]
