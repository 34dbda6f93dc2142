"""/openapi.json describes exactly the served routes, and schemathesis finds nothing wrong.

The fuzz run starts `batch-gateway serve` the way production does and runs the
schemathesis CLI against it with every phase (examples, coverage, fuzzing,
stateful through the document's links) in positive and negative mode, bounded
by `--max-examples` so it stays well under a minute.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from gateway import openapi
from gateway.app import create_app
from gateway.auth import hash_key
from tests.conftest import Gateway, StartGateway
from tests.support import make_config
from tests.test_cli_demo import REPO, free_port, wait_ready

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
)
FUZZ_KEY = "fuzz-key-for-schemathesis"


def test_the_document_lists_exactly_the_routes(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert served == documented


async def test_the_document_is_served_without_a_key(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    config = make_config(tmp_path, auth={"keys": [{"name": "a", "key_sha256": "0" * 64}]})
    gw: Gateway = await start_gateway(config)
    async with gw.http.get(gw.url("/openapi.json")) as resp:
        assert resp.status == 200
        assert await resp.json() == openapi.document()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    sandbox = {"type": "sandbox", "dir": "./sandbox"}
    sandbox |= dict.fromkeys(("validate_seconds", "line_seconds", "finalize_seconds"), 0)
    config = {
        "store": {"url": "sqlite:///./gw.db"},
        "blobs": {"dir": "./files"},
        "auth": {"keys": [{"name": "fuzz", "key_sha256": hash_key(FUZZ_KEY)}]},
        "providers": {"sandbox": {**sandbox, "cancel_seconds": 0}},
        "default": "sandbox",
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SCHEMATHESIS_HOOKS": "tests.schemathesis_hooks"}
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", "config.yaml", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", server)
        run = subprocess.run(
            [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()"]
            + ["run", f"http://127.0.0.1:{port}/openapi.json"]
            + ["--phases", "examples,coverage,fuzzing,stateful", "--mode", "all"]
            + ["--max-examples", "30", "--seed", "20261125", "--workers", "1"]
            + ["--checks", ",".join(CHECKS), "--request-timeout", "20"]
            + ["--header", f"Authorization: Bearer {FUZZ_KEY}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "Stateful" in run.stdout and "passed" in run.stdout
    server_log = (tmp_path / "server.log").read_text(errors="replace")
    assert "unhandled error" not in server_log, server_log[-3000:]
