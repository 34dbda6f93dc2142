"""The `type: vertex` adapter against a fake Vertex AI whose files live in a real Cloud
Storage emulator, with real google-auth service-account tokens, driven by the openai SDK."""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from gateway.blobs import LocalBlobs
from gateway.config import Config
from providers.base import BatchRequest, InputFile, ProviderError
from providers.registry import build_provider
from providers.vertex import VertexProvider
from tests.conftest import Gateway, StartGateway
from tests.fakes.vertex_upstream import (
    VERTEX,
    FakeVertexState,
    StorageEmulator,
    make_vertex_upstream,
    service_account_key,
)
from tests.leakscan import SCAN
from tests.support import MemoryState, chat_line, jsonl, make_config, read_lines, submit
from tests.test_flow_sdk import assert_complete, wait_terminal
from tests.test_usage import accounted

PROJECT = "vertex-test-project"
MODEL = "gemini-flash"
VERTEX_MODEL = "publishers/google/models/gemini-2.5-flash"
CHAT = "/v1/chat/completions"
_buckets = itertools.count()


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[StorageEmulator]:
    """`gcp-storage-emulator` on loopback for the session; a missing install fails."""
    try:
        emulator = StorageEmulator.start()
    except (RuntimeError, OSError) as exc:
        pytest.fail(f"cannot start the Cloud Storage emulator: {exc}", pytrace=False)
    yield emulator
    emulator.stop()


@dataclass
class Vertex:
    """A fake Vertex AI, its state, the bucket it stages in and the provider's config."""

    server: TestServer
    state: FakeVertexState
    bucket: str
    settings: dict[str, Any]
    storage: StorageEmulator

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        return self.storage.objects(self.bucket, prefix)

    def config(self, tmp_path: Path, **overrides: Any) -> Config:
        provider = self.settings | overrides
        return make_config(tmp_path, providers={"vtx": provider}, default="vtx")

    def secrets(self) -> list[bytes]:
        """What no client body may hold: project, bucket, gs:// URIs, hosts, job names,
        tokens, the service account."""
        found = [PROJECT, self.bucket, "gs://", "batchPredictionJobs", "iam.gserviceaccount"]
        found += [str(self.server.make_url("")).rstrip("/"), self.storage.url]
        found += list(self.state.tokens) + ["ya29."]
        return [s.encode() for s in found]


@pytest.fixture
async def vertex(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    gcs_emulator: StorageEmulator,
    tmp_path: Path,
) -> Callable[..., Awaitable[Vertex]]:
    async def start(**upstream_options: Any) -> Vertex:
        bucket = f"vtx-{os.getpid()}-{next(_buckets)}"
        gcs_emulator.create_bucket(bucket)
        key = service_account_key(PROJECT)
        app = make_vertex_upstream(gcs_emulator.url, key, project=PROJECT, **upstream_options)
        server = await aiohttp_server(app)
        key_file = key.write(tmp_path, str(server.make_url("/token")))
        settings = {
            "type": "vertex",
            "project": PROJECT,
            "location": "us-central1",
            "base_url": str(server.make_url("")).rstrip("/"),
            "storage_url": gcs_emulator.url,
            "credentials_file": str(key_file),
            "gcs_input_prefix": f"gs://{bucket}/batch/in",
            "gcs_output_prefix": f"gs://{bucket}/batch/out/",
            "models": {MODEL: VERTEX_MODEL},
            "retry_backoff_seconds": 0,
            "upload_chunk_bytes": 256 * 1024,
        }
        for secret in (PROJECT, bucket, settings["base_url"], str(key_file)):
            SCAN.register(secret, "a Vertex provider's name or host")
        return Vertex(server, server.app[VERTEX], bucket, settings, gcs_emulator)

    return start


Started = tuple[Gateway, Vertex]


@pytest.fixture
async def start_vertex(
    start_gateway: StartGateway, vertex: Callable[..., Awaitable[Vertex]], tmp_path: Path
) -> Callable[..., Awaitable[Started]]:
    async def start(**upstream_options: Any) -> Started:
        fake = await vertex(**upstream_options)
        return await start_gateway(fake.config(tmp_path)), fake

    return start


def staged_lines(fake: Vertex) -> list[dict[str, Any]]:
    (data,) = fake.objects("batch/in/").values()
    return [orjson.loads(raw) for raw in data.splitlines()]


def assert_nothing_leaked(gw: Gateway, fake: Vertex, *extra: Any) -> None:
    seen = b"".join(gw.bodies) + json.dumps(extra).encode()
    for secret in fake.secrets():
        assert secret not in seen, secret
    for token in fake.state.tokens:
        SCAN.register(token, "a Google access token")


async def test_chat_batch_comes_back_matched_to_its_custom_ids(
    start_vertex: Callable[..., Awaitable[Started]],
) -> None:
    gw, fake = await start_vertex()
    lines = [chat_line(i, model=MODEL) for i in range(5)]
    lines[0]["body"]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    lines[0]["body"] |= {"stop": "END", "max_tokens": 10, "temperature": 0.2}
    lines[3]["body"]["messages"][0]["content"] = "please FAIL"
    lines[4]["custom_id"] = "Mixed Case/ID with spaces & ünïcode"
    batch = await submit(gw.client, lines)
    assert batch.status == "validating" and batch.model == MODEL

    sent = staged_lines(fake)
    assert [set(line) for line in sent] == [{"request"}] * 5  # JSONL, no custom_id
    assert sent[0]["request"] == {
        "contents": [{"role": "user", "parts": [{"text": "question 0"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 0.2, "maxOutputTokens": 10, "stopSequences": ["END"]},
        "labels": {"batch_gateway_line": "0"},
    }
    (job,) = fake.state.jobs.values()
    assert job["displayName"] == batch.id  # the tag a lost create is found by
    assert job["model"] == VERTEX_MODEL and set(job["labels"]) == {"batch_gateway"}
    assert job["inputConfig"]["gcsSource"]["uris"] == [
        f"gs://{fake.bucket}/batch/in/{batch.input_file_id}.jsonl"
    ]
    assert job["outputConfig"]["gcsDestination"]["outputUriPrefix"] == (
        f"gs://{fake.bucket}/batch/out/{batch.id}"
    )

    done = await wait_terminal(gw.client, batch.id)
    assert_complete(done)
    assert done.status == "completed" and done.completed_at is not None
    assert done.in_progress_at is not None and done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (5, 4, 1)

    output = await read_lines(gw.client, done.output_file_id)
    expected = {"req-0": 0, "req-1": 1, "req-2": 2, lines[4]["custom_id"]: 4}
    assert set(output) == set(expected)
    for custom_id, index in expected.items():
        row = output[custom_id]
        assert row["response"]["status_code"] == 200 and row["error"] is None
        body = row["response"]["body"]
        assert body["object"] == "chat.completion"
        # Vertex answered out of order: the line label put each answer back in place.
        assert body["choices"][0]["message"]["content"] == f"fake reply to {index}"
        assert body["usage"]["prompt_tokens"] == 10 and body["usage"]["total_tokens"] == 15
    errors = await read_lines(gw.client, done.error_file_id)
    assert list(errors) == ["req-3"]
    failed = errors["req-3"]["response"]
    assert failed["status_code"] == 400
    assert failed["body"]["error"]["code"] == "INVALID_ARGUMENT"
    assert "is invalid (FAIL)" in failed["body"]["error"]["message"]

    first = (await gw.client.files.content(done.output_file_id or "")).content
    assert (await gw.client.files.content(done.output_file_id or "")).content == first
    # Accounted from the translated output: tokens and a cost, never a silent 0.
    # (Vertex names the version it ran; its price is the model's, from genai-prices.)
    (usage,) = await accounted(gw.service.store, batch.id)
    assert (usage.lines_succeeded, usage.lines_failed) == (4, 1)
    assert usage.model == "gemini-2.5-flash@default"
    assert (usage.prompt_tokens, usage.total_tokens) == (40, 60)
    assert usage.cost_usd is not None and usage.cost_usd > 0
    # One token, from the signed assertion, on every job call.
    assert fake.state.token_requests == 1
    assert all(bearer in fake.state.tokens for _, _, bearer in fake.state.calls)
    assert_nothing_leaked(gw, fake, output, errors)


async def test_tool_calls_and_json_schema_are_translated_both_ways(
    start_vertex: Callable[..., Awaitable[Started]],
) -> None:
    gw, fake = await start_vertex()
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    line = chat_line(0, model=MODEL)
    line["body"] |= {"tools": [tool], "tool_choice": "auto"}
    second = chat_line(1, model=MODEL)
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    second["body"]["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "s", "schema": schema},
    }
    done = await wait_terminal(gw.client, (await submit(gw.client, [line, second])).id)
    sent = staged_lines(fake)
    declared = sent[0]["request"]["tools"][0]["functionDeclarations"][0]
    assert declared["parametersJsonSchema"] == tool["function"]["parameters"]  # type: ignore[index]
    assert sent[1]["request"]["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    row = (await read_lines(gw.client, done.output_file_id))["req-0"]
    choice = row["response"]["body"]["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Paris"}'


async def test_embeddings_run_as_a_text_embedding_job_matched_by_instance(
    start_vertex: Callable[..., Awaitable[Started]],
) -> None:
    gw, fake = await start_vertex()
    texts = ["alpha beta", "gamma", "alpha beta", "please FAIL"]  # two lines alike
    lines = [
        {
            "custom_id": f"e-{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "text-embedding-005", "input": text},
        }
        for i, text in enumerate(texts)
    ]
    batch = await submit(gw.client, lines, "/v1/embeddings")
    assert staged_lines(fake) == [{"content": text} for text in texts]
    (job,) = fake.state.jobs.values()
    assert job["model"] == "publishers/google/models/text-embedding-005"

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    output = await read_lines(gw.client, done.output_file_id)
    assert sorted(output) == ["e-0", "e-1", "e-2"]
    for custom_id, text in (("e-0", "alpha beta"), ("e-1", "gamma"), ("e-2", "alpha beta")):
        body = output[custom_id]["response"]["body"]
        assert body["object"] == "list" and body["model"] == "text-embedding-005"
        assert body["data"][0]["embedding"] == [len(text) / 100, -0.25, 0.125]
        words = len(text.split())
        assert body["usage"] == {"prompt_tokens": words, "total_tokens": words}
    errors = await read_lines(gw.client, done.error_file_id)
    assert list(errors) == ["e-3"] and errors["e-3"]["response"]["status_code"] == 400

    with pytest.raises(openai.BadRequestError) as wrong:
        await submit(gw.client, [chat_line(0, model="text-embedding-005")])
    assert "embeddings model" in wrong.value.message
    assert_nothing_leaked(gw, fake, output, errors)


async def test_untranslatable_lines_and_mixed_models_are_refused_before_a_job(
    start_vertex: Callable[..., Awaitable[Started]],
) -> None:
    gw, fake = await start_vertex()
    lines = [chat_line(i, model=MODEL) for i in range(3)]
    lines[2]["body"]["logit_bias"] = {"50256": -100}
    with pytest.raises(openai.BadRequestError) as info:
        await submit(gw.client, lines)
    assert "Line 3:" in info.value.message and "logit_bias" in info.value.message
    assert fake.state.jobs == {} and fake.objects() == {}  # the upload was cancelled

    with pytest.raises(openai.BadRequestError) as several:
        await submit(gw.client, [chat_line(0, model=MODEL), chat_line(1, model="gemini-2.5-pro")])
    assert "one model" in several.value.message and "gemini-2.5-pro" in several.value.message

    with pytest.raises(openai.BadRequestError) as unknown:
        await submit(gw.client, [chat_line(0, model="Claude 3")])
    assert "neither configured" in unknown.value.message
    assert fake.state.jobs == {} and fake.objects() == {}
    assert_nothing_leaked(gw, fake)


async def test_cancel_ends_cancelled_with_the_lines_that_never_ran(
    start_vertex: Callable[..., Awaitable[Started]],
) -> None:
    gw, fake = await start_vertex(polls_to_end=1000)
    batch = await submit(gw.client, [chat_line(i, model=MODEL) for i in range(3)])
    assert (await gw.client.batches.retrieve(batch.id)).status == "in_progress"
    cancelling = await gw.client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert any(path.endswith(":cancel") for _, path, _ in fake.state.calls)

    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None and done.request_counts.completed == 1
    assert list(await read_lines(gw.client, done.output_file_id)) == ["req-0"]
    errors = await read_lines(gw.client, done.error_file_id)
    assert sorted(errors) == ["req-1", "req-2"]
    assert errors["req-1"]["response"] is None
    assert errors["req-1"]["error"]["code"] == "batch_cancelled"
    assert_nothing_leaked(gw, fake)


async def test_a_failed_job_reports_its_error_scrubbed(
    start_vertex: Callable[..., Awaitable[Started]],
) -> None:
    gw, fake = await start_vertex(fail_jobs=True)
    done = await wait_terminal(gw.client, (await submit(gw.client, [chat_line(0, model=MODEL)])).id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.data is not None
    (error,) = done.errors.data
    assert error.message is not None and "Failed to import data" in error.message
    assert "storage.objects.get" in error.message
    assert_nothing_leaked(gw, fake, error.message)


@pytest.mark.parametrize("fault", ["error_after", "reset_after"])
async def test_a_create_whose_answer_was_lost_makes_exactly_one_job(
    start_vertex: Callable[..., Awaitable[Started]], fault: str
) -> None:
    gw, fake = await start_vertex()
    fake.state.fail_on = f"POST /v1/projects/{PROJECT}/locations/us-central1/batchPredictionJobs"
    fake.state.fail_next = [fault]
    batch = await submit(gw.client, [chat_line(i, model=MODEL) for i in range(2)])
    await gw.service.settle_pending()
    assert len(fake.state.jobs) == 1
    assert fake.state.fault_log == [(fault, fake.state.fail_on)]
    # The lookup read every page of the list (two jobs a page) with a create_time filter.
    assert any("filter=create_time" in path for method, path, _ in fake.state.calls)
    done = await wait_terminal(gw.client, batch.id)
    assert done.status == "completed"
    assert sorted(await read_lines(gw.client, done.output_file_id)) == ["req-0", "req-1"]
    assert len(fake.state.jobs) == 1
    assert_nothing_leaked(gw, fake)


async def test_batch_carries_on_after_a_restart(
    start_gateway: StartGateway, vertex: Callable[..., Awaitable[Vertex]], tmp_path: Path
) -> None:
    """The job id, its custom_id map and model are in the store and the blob store: a new
    process finishes the batch, and nothing was written outside them."""
    fake = await vertex(polls_to_end=3)
    config = fake.config(tmp_path)
    first = await start_gateway(config)
    batch = await submit(first.client, [chat_line(i, model=MODEL) for i in range(3)])
    assert (await first.client.batches.retrieve(batch.id)).status == "in_progress"
    await first.server.close()

    second = await start_gateway(config)
    done = await wait_terminal(second.client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    output = await read_lines(second.client, done.output_file_id)
    assert sorted(output) == ["req-0", "req-1", "req-2"]
    assert output["req-2"]["response"]["body"]["choices"][0]["message"]["content"] == (
        "fake reply to 2"
    )
    assert len(fake.state.jobs) == 1
    leftovers = [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and p.parts[len(tmp_path.parts)] != "files"
        if not p.name.startswith("gateway.db") and p.name != "service-account.json"
    ]
    assert leftovers == []


def adapter(fake: Vertex, tmp_path: Path, state: MemoryState) -> VertexProvider:
    config = fake.config(tmp_path)
    built = build_provider(
        "vtx", config.providers["vtx"], state=state, blobs=LocalBlobs(tmp_path / "blobs")
    )
    assert isinstance(built, VertexProvider)
    return built


def input_file(tmp_path: Path, lines: list[dict[str, Any]], gateway_file: str) -> InputFile:
    source = tmp_path / f"{gateway_file}.src"
    source.write_bytes(jsonl(lines))
    size = source.stat().st_size
    return InputFile(source, f"{gateway_file}.jsonl", size, len(lines), CHAT, (MODEL,))


async def finish(provider: VertexProvider, job_id: str) -> Any:
    for _ in range(20):
        view = await provider.get_batch(job_id)
        if view.terminal:
            return view
    raise AssertionError("the job did not end")


async def test_adapter_lookups_retention_and_a_refused_token(
    vertex: Callable[..., Awaitable[Vertex]], tmp_path: Path
) -> None:
    """What exactly-once creates, cleanup and token refresh rely on, on the adapter."""
    fake = await vertex()
    state = MemoryState()
    provider = adapter(fake, tmp_path, state)
    gateway_file = "file-" + "a" * 24
    since = int(time.time())
    file_id = await provider.upload_file(
        input_file(tmp_path, [chat_line(i, model=MODEL) for i in range(3)], gateway_file)
    )
    assert file_id == f"{gateway_file}.jsonl"
    assert await provider.tagged_files(since) == [(gateway_file, file_id)]
    info = await provider.get_file(file_id)
    staged = fake.objects("batch/in/")[f"batch/in/{file_id}"]
    assert info.bytes == len(staged) and info.filename == file_id

    # Five jobs, listed two a page: the lookup reads them all.
    tags = [f"batch_{c * 24}" for c in "bcdef"]
    made = {}
    for tag in tags:
        request = BatchRequest(input_file_id=file_id, endpoint=CHAT, gateway_batch_id=tag)
        made[tag] = (await provider.create_batch(request)).id
    assert sorted(t for t, _ in await provider.tagged_batches(since)) == tags
    found = await provider.find_batch(tags[0], since)
    assert found is not None and found.id == made[tags[0]]
    assert await provider.find_batch("batch_" + "z" * 24, since) is None

    # A refused token is forgotten: the call fails once, the next gets a new token.
    fake.state.revoke_tokens()
    with pytest.raises(ProviderError) as refused:
        await provider.get_batch(made[tags[0]])
    assert refused.value.kind == "auth" and "ya29" not in refused.value.message
    done = await finish(provider, made[tags[0]])
    assert fake.state.token_requests == 2

    assert done.status == "completed" and done.error_file_id is None
    assert done.output_file_id == f"{done.id}#output"
    async with provider.open_file_content(done.output_file_id) as chunks:
        body = b"".join([c async for c in chunks])
    assert sorted(orjson.loads(x)["custom_id"] for x in body.splitlines()) == [
        "req-0",
        "req-1",
        "req-2",
    ]
    with pytest.raises(ProviderError) as unreadable:
        async with provider.open_file_content(file_id):
            pass
    assert unreadable.value.kind == "not_found"  # the staged copy is Vertex's format

    # Retention: the input goes at once; a job's outputs once both views are deleted.
    out_prefix = f"batch/out/{tags[0]}/"
    assert any(name.endswith("predictions.jsonl") for name in fake.objects(out_prefix))
    if done.error_file_id is not None:
        await provider.delete_file(done.output_file_id)
        assert fake.objects(out_prefix)  # the errors view still reads it
        await provider.delete_file(done.error_file_id)
    else:  # only the output view was shown: the last the gateway will delete
        await provider.delete_file(done.output_file_id)
    assert fake.objects(out_prefix) == {}
    await provider.delete_file(file_id)
    assert fake.objects("batch/in/") == {}
    blobs = sorted(p.name for p in (tmp_path / "blobs").iterdir() if p.is_file())
    assert len(blobs) == len(tags) - 1  # the other jobs' maps; the input's went with it
    await provider.close()
