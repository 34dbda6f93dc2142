"""/openapi.json describes exactly the served routes, and schemathesis finds nothing wrong.

The fuzz run starts `batch-gateway serve` the way production does and runs the
schemathesis CLI against it with every phase (examples, coverage, fuzzing,
stateful through the document's links) in positive and negative mode, bounded
by `--max-examples` so it stays well under a minute.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import schemathesis
import yaml
from pydantic import BaseModel

from gateway import idempotency, openapi, wire
from gateway.api.routes import routes
from gateway.app import create_app
from gateway.auth import hash_key
from providers.base import TIMESTAMP_FIELDS
from tests.conftest import Gateway, StartGateway
from tests.support import chat_file, make_config
from tests.test_cli_demo import REPO, free_port, wait_ready
from tests.test_flow_sdk import wait_terminal

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
# The fuzz run's process: these hooks, then the schemathesis CLI (which loads the
# SCHEMATHESIS_HOOKS module as well).
FUZZER = (
    "from tests.test_openapi import keep_idempotency_keys_distinct\n"
    "keep_idempotency_keys_distinct()\n"
    "from schemathesis.cli import schemathesis\n"
    "schemathesis()"
)


def keep_idempotency_keys_distinct() -> None:
    """Give every Idempotency-Key the fuzzer sends a suffix of its own.

    Schemathesis draws few distinct strings, so a key came back for another upload;
    the gateway then rightly answered the first upload again, naming a file the run
    had deleted meanwhile, which the stateful check ST302 takes for a bug. Replays
    are tested in test_idempotency.py; keys the gateway refuses go out as drawn.
    """
    counter = itertools.count(1)

    @schemathesis.hook
    def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
        key = (case.headers or {}).get(idempotency.HEADER)
        if isinstance(key, str) and key.strip() and len(key) <= idempotency.MAX_KEY_LENGTH:
            suffix = f"~{next(counter)}"
            case.headers[idempotency.HEADER] = (
                key[: idempotency.MAX_KEY_LENGTH - len(suffix)] + suffix
            )


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


def test_the_schemas_are_the_wire_models() -> None:
    """A field added to a model is in the document with no second edit."""
    schemas = openapi.document()["components"]["schemas"]
    models = {wire.ErrorResponse} | {
        model
        for route in routes()
        for model in (route.request, route.response)
        if isinstance(model, type) and issubclass(model, BaseModel)
    }
    for model in models - {wire.CreateFileRequest}:
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields), model
    form = schemas["CreateFileRequest"]["properties"]
    assert set(form) == {"file", "purpose", "expires_after[anchor]", "expires_after[seconds]"}
    batch = wire.Batch.model_fields
    assert {name for name in batch if name.endswith("_at")} == {"created_at", *TIMESTAMP_FIELDS}


def test_each_limit_comes_from_one_constant() -> None:
    doc = openapi.document()
    schemas = doc["components"]["schemas"]
    seconds = schemas["ExpiresAfter"]["properties"]["seconds"]
    bounds = (wire.MIN_EXPIRES_SECONDS, wire.MAX_EXPIRES_SECONDS)
    assert (seconds["minimum"], seconds["maximum"]) == bounds == (3600, 2_592_000)
    assert schemas["CreateFileRequest"]["properties"]["expires_after[seconds]"] == seconds
    assert schemas["CreateFileRequest"]["maxProperties"] == wire.MAX_FORM_PARTS
    input_file_id = schemas["CreateBatchBody"]["properties"]["input_file_id"]
    assert input_file_id["maxLength"] == wire.MAX_ID_LENGTH
    metadata = schemas["CreateBatchBody"]["properties"]["metadata"]["anyOf"][0]
    assert metadata["maxProperties"] == wire.MAX_METADATA_PAIRS
    pages = {"listFiles": wire.MAX_FILES_PAGE, "listBatches": wire.MAX_BATCHES_PAGE}
    for path, method, operation in operations(doc):
        names = {p["name"]: p for p in operation.get("parameters", [])}
        if operation["operationId"] in pages:
            assert names["limit"]["schema"]["maximum"] == pages[operation["operationId"]]
        if (method, path) in {("post", "/v1/files"), ("post", "/v1/batches")}:
            key = names[idempotency.HEADER]
            assert key["in"] == "header" and not key["required"]
            assert key["schema"]["maxLength"] == idempotency.MAX_KEY_LENGTH


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    ]


async def answer(
    gw: Gateway, model: type[BaseModel], method: str, path: str, **kwargs: Any
) -> dict[str, Any]:
    """The answer's JSON, checked against `model` (every field present, none extra)."""
    async with gw.http.request(method, gw.url(path), **kwargs) as resp:
        raw = await resp.read()
    model.model_validate_json(raw, strict=True)
    parsed: dict[str, Any] = json.loads(raw)
    return parsed


async def test_real_answers_validate_against_the_models(gateway: Gateway) -> None:
    await answer(gateway, wire.Liveness, "GET", "/health/live")
    await answer(gateway, wire.Readiness, "GET", "/health/ready")
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("expires_after[anchor]", "created_at")
    form.add_field("expires_after[seconds]", "7200")
    form.add_field("file", chat_file(2), filename="in.jsonl")
    uploaded = await answer(gateway, wire.OpenAIFile, "POST", "/v1/files", data=form)
    await answer(gateway, wire.OpenAIFile, "GET", f"/v1/files/{uploaded['id']}")
    await answer(gateway, wire.ListFilesResponse, "GET", "/v1/files")
    body = {
        "input_file_id": uploaded["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"team": "docs"},
    }
    created = await answer(gateway, wire.Batch, "POST", "/v1/batches", json=body)
    await wait_terminal(gateway.client, created["id"])
    ended = await answer(gateway, wire.Batch, "GET", f"/v1/batches/{created['id']}")
    assert ended["usage"] is not None and ended["output_file_id"] is not None
    await answer(gateway, wire.ListBatchesResponse, "GET", "/v1/batches")
    await answer(gateway, wire.ErrorResponse, "POST", f"/v1/batches/{created['id']}/cancel")
    await answer(gateway, wire.OpenAIFile, "GET", f"/v1/files/{ended['output_file_id']}")
    await answer(gateway, wire.DeleteFileResponse, "DELETE", f"/v1/files/{uploaded['id']}")
    await answer(gateway, wire.ErrorResponse, "GET", f"/v1/files/{uploaded['id']}")


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
            [sys.executable, "-c", FUZZER]
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
