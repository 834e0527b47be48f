"""schemathesis against the served OpenAPI document on a real cluster: every response to
generated (valid and invalid) requests is a status the document names, and none is a 5xx
server error. The seed is fixed, so a failure replays; SYNCFAB_FUZZ_EXAMPLES runs more."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

from syncfab.fabric.server.local import LocalCluster

SEED = 20261203
EXAMPLES = int(os.environ.get("SYNCFAB_FUZZ_EXAMPLES", "8"))


def test_every_generated_request_gets_a_documented_status_and_no_500() -> None:
    with LocalCluster(size=3) as c, tempfile.TemporaryDirectory(prefix="syncfab-fuzz-") as tmp:
        c.wait_ready()
        url = c.url("n1")
        out = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.yaml", "--url", url,
                "--checks", "not_a_server_error,status_code_conformance", "--max-examples", str(EXAMPLES),
                "--seed", str(SEED), "--workers", "1",
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp,
        )  # fmt: skip
    # The failures section, where schemathesis names the request and the answer (a generated
    # value can run to pages; its repeats are cut).
    failures = out.stdout[out.stdout.find("FAILURES") :] if "FAILURES" in out.stdout else out.stdout
    failures = re.sub(r"((?:%[0-9A-F]{2}){4})\1{3,}", r"\1...", failures)
    assert out.returncode == 0, f"seed {SEED}:\n{failures[:8000]}\n{out.stderr[-2000:]}"
