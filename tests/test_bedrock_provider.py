"""The `type: bedrock` adapter against a fake Bedrock control plane and moto's S3, driven by
the openai SDK through the gateway. Credentials come from the environment (the standard
AWS chain), never from the config."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp.test_utils import TestServer

from providers.base import BatchRequest, InputFile, ProviderError
from providers.bedrock import BedrockProvider, BedrockProviderConfig
from tests.conftest import S3_KEYS, Gateway, StartGateway, s3_client
from tests.fakes.bedrock_upstream import ACCOUNT, BEDROCK, FakeBedrockState, make_bedrock_upstream
from tests.leakscan import SCAN
from tests.servers import S3Server
from tests.support import MemoryState, chat_line, jsonl, make_config, read_lines, submit
from tests.test_flow_sdk import assert_complete, wait_terminal
from tests.test_provider_state import local_files
from tests.test_usage import accounted

KEY_ID = "AKIAFAKEBEDROCK0KEY1"
SECRET = "fake-bedrock-secret-0123456789abcdef"
REGION = "us-east-1"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/BedrockBatchRole"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE_ARN = f"arn:aws:bedrock:{REGION}:{ACCOUNT}:application-inference-profile/a1b2c3d4e5f6"
MODELS: dict[str, Any] = {
    "claude-3-5-sonnet": CLAUDE,
    "claude-profile": {"id": PROFILE_ARN, "family": "anthropic"},
    "nova-lite": "us.amazon.nova-lite-v1:0",
    "llama-3-70b": "meta.llama3-70b-instruct-v1:0",
    "titan-embed": "amazon.titan-embed-text-v2:0",
    "cohere-embed": "cohere.embed-english-v3",
    "cohere-v4": "cohere.embed-v4:0",
}
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
_buckets = itertools.count()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The standard chain finds the keys in the environment and nothing else."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_BEARER_TOKEN_BEDROCK", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BEDROCK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@dataclass
class Bedrock:
    gw: Gateway
    fake: FakeBedrockState
    upstream: TestServer
    provider: dict[str, Any]
    s3: dict[str, Any]
    inputs: str  # bucket names
    outputs: str

    async def objects(self, bucket: str) -> dict[str, bytes]:
        found = {}
        async with s3_client(self.s3) as client:
            listed = await client.list_objects_v2(Bucket=bucket)
            for item in listed.get("Contents", []):
                answer = await client.get_object(Bucket=bucket, Key=item["Key"])
                async with answer["Body"] as body:
                    found[item["Key"]] = await body.read()
        return found

    async def staged(self) -> list[dict[str, Any]]:
        (data,) = (await self.objects(self.inputs)).values()
        return [orjson.loads(line) for line in data.splitlines()]

    def job(self) -> dict[str, Any]:
        (job,) = self.fake.jobs.values()
        return job


async def new_buckets(s3: dict[str, Any]) -> tuple[str, str]:
    n = next(_buckets)
    names = (f"bedrock-in-{os.getpid()}-{n}", f"bedrock-out-{os.getpid()}-{n}")
    async with s3_client(s3) as client:
        for name in names:
            await client.create_bucket(Bucket=name)
    return names


def provider_settings(
    upstream: TestServer, s3: dict[str, Any], buckets: tuple[str, str], **overrides: Any
) -> dict[str, Any]:
    return {
        "type": "bedrock",
        "region": REGION,
        "input_s3_uri": f"s3://{buckets[0]}/staging/in/",
        "output_s3_uri": f"s3://{buckets[1]}/results",
        "role_arn": ROLE,
        "models": MODELS,
        "endpoint_url": str(upstream.make_url("")).rstrip("/"),
        "s3_endpoint_url": s3["endpoint_url"],
        "min_records": 2,
        "default_max_tokens": 64,
        "retry_backoff_seconds": 0,
    } | overrides


def register_secrets(buckets: tuple[str, str]) -> None:
    """What the session's leak scan must never find in a body, header or log line."""
    SCAN.register(SECRET, "the AWS secret key")
    SCAN.register(ROLE, "the Bedrock role ARN")
    SCAN.register(PROFILE_ARN, "an inference profile ARN")
    for bucket in buckets:
        SCAN.register(bucket, "a Bedrock staging bucket")


Started = Bedrock
StartBedrock = Callable[..., Awaitable[Bedrock]]


@pytest.fixture
async def start_bedrock(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    s3_server: S3Server,
    aws_env: None,
) -> StartBedrock:
    s3 = {"endpoint_url": s3_server.endpoint_url, "region": REGION, **S3_KEYS}

    async def start(*, provider: dict[str, Any] | None = None, **upstream_options: Any) -> Bedrock:
        buckets = await new_buckets(s3)
        register_secrets(buckets)
        options = {"min_records": 2} | upstream_options
        upstream = await aiohttp_server(make_bedrock_upstream(KEY_ID, SECRET, s3=s3, **options))
        settings = provider_settings(upstream, s3, buckets, **(provider or {}))
        config = make_config(tmp_path, providers={"bedrock": settings}, default="bedrock")
        gw = await start_gateway(config)
        return Bedrock(gw, upstream.app[BEDROCK], upstream, settings, s3, *buckets)

    return start


def assert_nothing_leaked(bed: Bedrock, *extra: Any) -> None:
    """No ARN, account id, bucket, s3:// URI, job id, key or endpoint in what clients got."""
    seen = (b"".join(bed.gw.bodies) + json.dumps(extra).encode()).decode()
    secrets = [SECRET, KEY_ID, ACCOUNT, "arn:aws", "s3://", bed.inputs, bed.outputs]
    secrets += [bed.provider["endpoint_url"], bed.s3["endpoint_url"]]
    secrets += list(bed.fake.jobs)
    for secret in secrets:
        assert secret not in seen, secret


def chat(i: int, model: str = "claude-3-5-sonnet", **body: Any) -> dict[str, Any]:
    line = chat_line(i, model=model)
    line["body"] |= body
    return line


def embed(i: int, model: str, text: Any = None, **body: Any) -> dict[str, Any]:
    body = {"model": model, "input": text if text is not None else f"text {i}"} | body
    return {"custom_id": f"e-{i}", "method": "POST", "url": EMBEDDINGS, "body": body}


# --- the whole flow -------------------------------------------------------------------


async def test_claude_batch_runs_as_a_bedrock_job_and_comes_back_as_chat_completions(
    start_bedrock: StartBedrock,
) -> None:
    bed = await start_bedrock()
    lines = [chat(i) for i in range(4)]
    lines[0]["body"]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    lines[0]["body"] |= {"stop": "END", "max_tokens": 10, "temperature": 0.2}
    lines[3]["body"]["messages"][0]["content"] = "please FAIL"
    batch = await submit(bed.gw.client, lines)
    assert batch.status == "validating" and batch.model == "claude-3-5-sonnet"

    (key,) = await bed.objects(bed.inputs)
    assert key == f"staging/in/{batch.input_file_id}.jsonl"
    staged = await bed.staged()
    assert [r["recordId"] for r in staged] == ["req-0", "req-1", "req-2", "req-3"]
    assert staged[0]["modelInput"] == {
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "question 0"}],
        "system": "Be brief.",
        "stop_sequences": ["END"],
        "temperature": 0.2,
    }
    assert staged[1]["modelInput"]["max_tokens"] == 64  # default_max_tokens
    job = bed.job()
    token = batch.id.replace("_", "-")
    assert job["clientRequestToken"] == token and job["jobName"] == token
    assert job["_tags"] == [{"key": "gateway_batch_id", "value": batch.id}]
    assert job["modelId"] == CLAUDE and job["modelInvocationType"] == "InvokeModel"
    assert job["roleArn"] == ROLE
    assert job["outputDataConfig"] == {
        "s3OutputDataConfig": {"s3Uri": f"s3://{bed.outputs}/results/"}
    }
    assert job["inputDataConfig"]["s3InputDataConfig"] == {
        "s3InputFormat": "JSONL",
        "s3Uri": f"s3://{bed.inputs}/{key}",
    }

    done = await wait_terminal(bed.gw.client, batch.id)
    assert_complete(done)
    assert done.status == "completed" and done.completed_at is not None
    assert done.in_progress_at is not None and done.expires_at is not None
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (4, 3, 1)
    assert bed.job()["status"] == "PartiallyCompleted"
    assert done.usage is not None and done.usage.input_tokens == 40  # from manifest.json.out

    output = await read_lines(bed.gw.client, done.output_file_id)
    assert sorted(output) == ["req-0", "req-1", "req-2"]
    for custom_id, row in output.items():
        assert row["response"]["status_code"] == 200 and row["error"] is None
        body = row["response"]["body"]
        assert body["object"] == "chat.completion" and body["model"] == "claude-3-5-sonnet"
        assert body["choices"][0]["message"]["content"] == f"fake reply to {custom_id}"
        assert body["choices"][0]["finish_reason"] == "stop"
        assert body["usage"]["prompt_tokens"] == 10 and body["usage"]["total_tokens"] == 15
    errors = await read_lines(bed.gw.client, done.error_file_id)
    assert list(errors) == ["req-3"]
    # Accounted from the translated output, matched by recordId: tokens and a priced cost.
    (usage,) = await accounted(bed.gw.service.store, batch.id)
    assert (usage.model, usage.lines_succeeded, usage.lines_failed) == ("claude-3-5-sonnet", 3, 1)
    assert (usage.prompt_tokens, usage.total_tokens) == (30, 45)
    failed = errors["req-3"]["response"]
    assert failed["status_code"] == 400
    assert failed["body"]["error"]["type"] == "invalid_request_error"
    assert "Malformed input request" in failed["body"]["error"]["message"]

    # The same bytes on every read (Bedrock's order, stable ids); every call was signed.
    first = (await bed.gw.client.files.content(done.output_file_id or "")).content
    assert (await bed.gw.client.files.content(done.output_file_id or "")).content == first
    assert bed.fake.signatures_checked == len(bed.fake.calls) > 0
    assert_nothing_leaked(bed, output, errors)


async def test_nova_and_llama_run_as_converse_jobs(start_bedrock: StartBedrock) -> None:
    bed = await start_bedrock()
    lines = [chat(i, "nova-lite", max_completion_tokens=20, top_p=0.9) for i in range(2)]
    lines[1]["body"]["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}},
    }
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, lines)).id)
    assert done.status == "completed"
    assert bed.job()["modelInvocationType"] == "Converse"
    assert bed.job()["modelId"] == "us.amazon.nova-lite-v1:0"
    staged = await bed.staged()
    assert staged[0]["modelInput"] == {
        "messages": [{"role": "user", "content": [{"text": "question 0"}]}],
        "inferenceConfig": {"maxTokens": 20, "topP": 0.9},
    }
    assert staged[1]["modelInput"]["outputConfig"] == {
        "textFormat": {
            "type": "json_schema",
            "structure": {"jsonSchema": {"schema": '{"type": "object"}', "name": "answer"}},
        }
    }
    output = await read_lines(bed.gw.client, done.output_file_id)
    body = output["req-1"]["response"]["body"]
    assert body["model"] == "nova-lite" and body["choices"][0]["finish_reason"] == "stop"
    assert body["choices"][0]["message"]["content"] == "fake reply to req-1"
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "total_tokens": 15,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert done.error_file_id is None

    bed = await start_bedrock()
    llama = [chat(i, "llama-3-70b") for i in range(2)]
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, llama)).id)
    assert done.status == "completed" and bed.job()["modelInvocationType"] == "Converse"


async def test_embeddings_run_on_titan_and_cohere(start_bedrock: StartBedrock) -> None:
    bed = await start_bedrock()
    lines = [embed(i, "titan-embed", dimensions=256) for i in range(2)]
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, lines, EMBEDDINGS)).id)
    assert done.status == "completed"
    assert (await bed.staged())[0] == {
        "recordId": "e-0",
        "modelInput": {"inputText": "text 0", "dimensions": 256, "normalize": True},
    }
    body = (await read_lines(bed.gw.client, done.output_file_id))["e-1"]["response"]["body"]
    assert body["object"] == "list" and body["model"] == "titan-embed"
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25, 0.125]}]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}

    for model, shape in (("cohere-embed", "floats"), ("cohere-v4", "by_type")):
        bed = await start_bedrock()
        lines = [embed(i, model, ["a", "b"], input_type="clustering") for i in range(2)]
        batch = await submit(bed.gw.client, lines, EMBEDDINGS)
        done = await wait_terminal(bed.gw.client, batch.id)
        assert done.status == "completed", shape
        staged = (await bed.staged())[0]["modelInput"]
        assert staged["texts"] == ["a", "b"] and staged["input_type"] == "clustering"
        body = (await read_lines(bed.gw.client, done.output_file_id))["e-0"]["response"]["body"]
        assert [d["index"] for d in body["data"]] == [0, 1] and body["model"] == model


async def test_inputs_bedrock_cannot_run_are_refused_at_create(start_bedrock: StartBedrock) -> None:
    bed = await start_bedrock(provider={"max_records": 5})

    async def refused(lines: list[Any], endpoint: str = CHAT) -> str:
        with pytest.raises(openai.BadRequestError) as info:
            await submit(bed.gw.client, lines, endpoint)
        return info.value.message

    message = await refused([chat(0), chat(1, "nova-lite")])
    assert "one model" in message and "nova-lite" in message
    message = await refused([chat(0, "gpt-4o-mini"), chat(1, "gpt-4o-mini")])
    assert "gpt-4o-mini" in message and "not configured" in message
    message = await refused([chat(0)])
    assert "at least 2" in message and "min_records" in message
    message = await refused([chat(i) for i in range(6)])
    assert "at most 5" in message
    message = await refused([chat(0), chat(1, logit_bias=None, n=2)])
    assert "Line 2:" in message and "n > 1" in message
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    message = await refused([chat(0, "nova-lite"), chat(1, "nova-lite", tools=[tool])])
    assert "Line 2:" in message and "Converse" in message
    message = await refused(
        [embed(0, "claude-3-5-sonnet"), embed(1, "claude-3-5-sonnet")], EMBEDDINGS
    )
    assert "chat model" in message
    message = await refused(
        [embed(0, "titan-embed", dimensions=7), embed(1, "titan-embed")], EMBEDDINGS
    )
    assert "Line 1:" in message and "dimensions" in message
    assert bed.fake.jobs == {} and await bed.objects(bed.inputs) == {}  # nothing staged or made
    assert_nothing_leaked(bed)


async def test_a_raw_bedrock_model_id_and_a_configured_profile_arn_run(
    start_bedrock: StartBedrock,
) -> None:
    bed = await start_bedrock()
    lines = [chat(i, "anthropic.claude-3-haiku-20240307-v1:0") for i in range(2)]
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, lines)).id)
    assert done.status == "completed" and done.model == "anthropic.claude-3-haiku-20240307-v1:0"

    bed = await start_bedrock()
    done = await wait_terminal(
        bed.gw.client,
        (await submit(bed.gw.client, [chat(i, "claude-profile") for i in range(2)])).id,
    )
    assert done.status == "completed" and bed.job()["modelId"] == PROFILE_ARN
    assert_nothing_leaked(bed)


# --- cancel, failure, expiry ----------------------------------------------------------


async def test_cancel_stops_the_job_and_keeps_what_ran(start_bedrock: StartBedrock) -> None:
    bed = await start_bedrock(polls_to_end=1000)
    batch = await submit(bed.gw.client, [chat(i) for i in range(3)])
    await bed.gw.client.batches.retrieve(batch.id)  # Validating: the input was read
    cancelling = await bed.gw.client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    assert any(path.endswith("/stop") for _, path in bed.fake.calls)

    done = await wait_terminal(bed.gw.client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert bed.job()["status"] == "Stopped"
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (3, 1)
    assert len(await read_lines(bed.gw.client, done.output_file_id)) == 1
    assert done.error_file_id is None
    assert_nothing_leaked(bed)


async def test_a_failed_job_reports_its_message_scrubbed(start_bedrock: StartBedrock) -> None:
    bed = await start_bedrock(fail_jobs=True)
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, [chat(0), chat(1)])).id)
    assert done.status == "failed" and done.failed_at is not None
    assert done.output_file_id is None and done.error_file_id is None
    assert done.errors is not None and done.errors.data is not None
    (error,) = done.errors.data
    assert error.code == "job_failed" and error.message is not None
    assert "can't write to bucket" in error.message
    assert_nothing_leaked(bed)


async def test_an_expired_job_ends_expired_with_its_partial_output(
    start_bedrock: StartBedrock,
) -> None:
    bed = await start_bedrock(expire_jobs=True)
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, [chat(0), chat(1)])).id)
    assert done.status == "expired" and done.expired_at is not None
    assert len(await read_lines(bed.gw.client, done.output_file_id)) == 1


async def test_counts_come_from_the_manifest_when_the_job_omits_them(
    start_bedrock: StartBedrock,
) -> None:
    bed = await start_bedrock(omit_counts=True)
    lines = [chat(0), chat(1), chat(2, messages=[{"role": "user", "content": "FAIL"}])]
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, lines)).id)
    assert "totalRecordCount" not in bed.job()
    assert done.request_counts is not None
    counts = done.request_counts
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1)


# --- faults: exactly one job ----------------------------------------------------------


@pytest.mark.parametrize("fault", ["error_after", "reset_after"])
async def test_a_create_whose_answer_is_lost_makes_exactly_one_job(
    start_bedrock: StartBedrock, fault: str
) -> None:
    """The job is made, then the answer is a 500 or a dropped connection: the gateway
    looks the job up by its name and attaches it; never a second job."""
    bed = await start_bedrock()
    bed.fake.fail_on, bed.fake.fail_next = "POST /model-invocation-job", [fault]
    batch = await submit(bed.gw.client, [chat(0), chat(1)])
    await bed.gw.service.settle_pending()
    assert len(bed.fake.jobs) == 1
    assert bed.fake.fault_log == [(fault, "POST /model-invocation-job")]
    # Found by its name in the job list (a create again would get it back by its token).
    assert any(path.startswith("/model-invocation-jobs?") for _, path in bed.fake.calls)
    done = await wait_terminal(bed.gw.client, batch.id)
    assert done.status == "completed" and len(bed.fake.jobs) == 1
    assert_nothing_leaked(bed)


async def test_a_create_made_after_its_error_is_attached_not_repeated(
    start_bedrock: StartBedrock,
) -> None:
    """A 500 at once, the job made a moment later: the client gets its batch, the gateway
    settles it in the background, and a create again would get the same job anyway."""
    bed = await start_bedrock()
    bed.fake.fail_on = "POST /model-invocation-job"
    bed.fake.fail_next, bed.fake.defer_seconds = ["deferred_error"] * 3, 0.2
    batch = await submit(bed.gw.client, [chat(0), chat(1)])
    for _ in range(50):
        await bed.gw.service.settle_pending()
        record = await bed.gw.service.store.get_batch(batch.id)
        if record is not None and record.upstream_id is not None:
            break
        await asyncio.sleep(0.05)
    assert len(bed.fake.jobs) == 1
    assert (await wait_terminal(bed.gw.client, batch.id)).status == "completed"
    assert len(bed.fake.jobs) == 1 and len(bed.fake.tokens) == 1


async def test_throttling_and_refusals_map_to_gateway_errors(start_bedrock: StartBedrock) -> None:
    bed = await start_bedrock()
    bed.fake.fail_on, bed.fake.fail_next = "POST /model-invocation-job", [429] * 3
    with pytest.raises(openai.InternalServerError) as busy:
        await submit(bed.gw.client, [chat(0), chat(1)])
    assert busy.value.status_code == 503 and "Injected failure" in busy.value.message
    assert bed.fake.jobs == {}

    bed.fake.fail_next = [403]
    with pytest.raises(openai.APIStatusError) as denied:
        await submit(bed.gw.client, [chat(0), chat(1)])
    assert denied.value.status_code == 502  # the gateway's credentials, not the client
    assert_nothing_leaked(bed)


async def test_a_wrong_secret_is_the_gateways_fault(
    start_bedrock: StartBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-right-secret-000000")
    bed = await start_bedrock()
    with pytest.raises(openai.APIStatusError) as info:
        await submit(bed.gw.client, [chat(0), chat(1)])
    assert info.value.status_code == 502 and bed.fake.jobs == {}
    assert bed.fake.signatures_checked == 0 and bed.fake.calls == []  # refused at the gate
    assert_nothing_leaked(bed)


# --- restart ------------------------------------------------------------------------


async def test_a_bedrock_batch_carries_on_after_a_restart(
    start_gateway: StartGateway,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    s3_server: S3Server,
    aws_env: None,
) -> None:
    """What the adapter remembers is in the store: a new process on the same store
    finishes the batch, reads its results, and wrote nothing outside the stores."""
    s3 = {"endpoint_url": s3_server.endpoint_url, "region": REGION, **S3_KEYS}
    buckets = await new_buckets(s3)
    register_secrets(buckets)
    upstream = await aiohttp_server(make_bedrock_upstream(KEY_ID, SECRET, s3=s3, min_records=2))
    settings = provider_settings(upstream, s3, buckets)
    config = make_config(tmp_path, providers={"bedrock": settings}, default="bedrock")
    first = await start_gateway(config)
    batch = await submit(first.client, [chat(i) for i in range(3)])
    seen = await first.client.batches.retrieve(batch.id)
    assert seen.status in ("validating", "in_progress")
    await first.server.close()

    second = await start_gateway(config)
    done = await wait_terminal(second.client, batch.id)
    assert done.status == "completed"
    assert done.request_counts is not None and done.request_counts.total == 3
    assert sorted(await read_lines(second.client, done.output_file_id)) == [
        f"req-{i}" for i in range(3)
    ]
    assert len(upstream.app[BEDROCK].jobs) == 1
    assert local_files(tmp_path) == []


# --- the adapter itself -------------------------------------------------------------


async def test_adapter_lookups_idempotent_create_and_deletes(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    tmp_path: Path,
    s3_server: S3Server,
    aws_env: None,
) -> None:
    """What exactly-once creates and retention rely on, on the adapter itself."""
    s3 = {"endpoint_url": s3_server.endpoint_url, "region": REGION, **S3_KEYS}
    buckets = await new_buckets(s3)
    upstream = await aiohttp_server(
        make_bedrock_upstream(KEY_ID, SECRET, s3=s3, min_records=2, preload_batches=5)
    )
    fake = upstream.app[BEDROCK]
    settings = provider_settings(upstream, s3, buckets, kms_key_id="alias/batch-inputs")
    config = BedrockProviderConfig.model_validate(settings)
    provider = BedrockProvider("bedrock", frozenset({CHAT, EMBEDDINGS}), config, MemoryState())
    gateway_file = "file-" + "a" * 24
    source = tmp_path / "in.jsonl"
    lines = [chat(i) for i in range(3)]
    lines[2]["body"]["messages"][0]["content"] = "FAIL here"
    source.write_bytes(jsonl(lines))
    size = source.stat().st_size
    file_id = await provider.upload_file(
        InputFile(source, f"{gateway_file}.jsonl", size, 3, CHAT, ("claude-3-5-sonnet",))
    )
    assert file_id == f"{gateway_file}.jsonl"
    info = await provider.get_file(file_id)
    assert info.filename == file_id and info.bytes is not None and info.bytes > 0
    async with s3_client(s3) as client:
        head = await client.head_object(Bucket=buckets[0], Key=f"staging/in/{file_id}")
    assert head["ServerSideEncryption"] == "aws:kms"  # SSE-KMS on the staged input

    since = int(time.time())
    tag = "batch_" + "b" * 24
    request = BatchRequest(input_file_id=file_id, endpoint=CHAT, gateway_batch_id=tag)
    created = await provider.create_batch(request)
    again = await provider.create_batch(request)  # the same clientRequestToken
    assert again.id == created.id and len([j for j in fake.jobs.values() if "_tags" in j]) == 1
    output_config = fake.jobs[created.id]["outputDataConfig"]["s3OutputDataConfig"]
    assert output_config["s3EncryptionKeyId"] == "alias/batch-inputs"

    found = await provider.find_batch(tag, since)
    assert found is not None and found.id == created.id
    assert await provider.find_batch("batch_" + "c" * 24, since) is None
    # Five jobs of others on the account (two pages each way); only ours is tagged.
    assert [t for t, _ in await provider.tagged_batches(since - 7200)] == [tag]

    done = created
    while not done.terminal:
        done = await provider.get_batch(created.id)
    assert done.status == "completed" and done.error_file_id == f"{created.id}#errors"
    assert done.output_file_id == f"{created.id}#output"
    async with provider.open_file_content(done.output_file_id) as chunks:
        read = b"".join([c async for c in chunks]).splitlines()
    assert sorted(orjson.loads(x)["custom_id"] for x in read) == ["req-0", "req-1"]
    async with provider.open_file_content(done.error_file_id) as chunks:
        read = b"".join([c async for c in chunks]).splitlines()
    assert [orjson.loads(x)["custom_id"] for x in read] == ["req-2"]
    with pytest.raises(ProviderError) as gone:
        async with provider.open_file_content(file_id):
            pass
    assert gone.value.kind == "not_found"  # the staged copy is Bedrock's format

    folder = f"results/{created.id}/"
    await provider.delete_file(done.output_file_id)
    async with s3_client(s3) as client:
        listed = await client.list_objects_v2(Bucket=buckets[1], Prefix=folder)
        assert len(listed["Contents"]) == 2  # the errors view still reads them
        await provider.delete_file(f"{created.id}#errors")
        listed = await client.list_objects_v2(Bucket=buckets[1], Prefix=folder)
        assert "Contents" not in listed
        await provider.delete_file(file_id)
        listed = await client.list_objects_v2(Bucket=buckets[0])
        assert "Contents" not in listed
    with pytest.raises(ProviderError) as missing:
        await provider.get_batch("nosuchjob123")
    assert missing.value.kind == "not_found" and "nosuchjob123" not in missing.value.message
    await provider.close()


async def test_outputs_with_one_view_go_when_that_view_is_deleted(
    start_bedrock: StartBedrock,
) -> None:
    """No line failed, so the gateway never sees an error file: deleting the output file
    is enough for the job's objects to go."""
    bed = await start_bedrock()
    done = await wait_terminal(bed.gw.client, (await submit(bed.gw.client, [chat(0), chat(1)])).id)
    assert done.error_file_id is None
    (job,) = bed.fake.jobs
    assert any(k.startswith(f"results/{job}/") for k in await bed.objects(bed.outputs))
    await bed.gw.service.providers["bedrock"].delete_file(f"{job}#output")
    assert await bed.objects(bed.outputs) == {}


async def test_no_credentials_is_an_auth_error(
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    s3_server: S3Server,
    aws_env: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s3 = {"endpoint_url": s3_server.endpoint_url, "region": REGION, **S3_KEYS}
    upstream = await aiohttp_server(make_bedrock_upstream(KEY_ID, SECRET, s3=s3))
    settings = provider_settings(upstream, s3, ("in-bucket-x", "out-bucket-x"))
    config = BedrockProviderConfig.model_validate(settings)
    provider = BedrockProvider("bedrock", frozenset({CHAT}), config, MemoryState())
    with pytest.raises(ProviderError) as info:
        await provider.get_batch("abcdef123456")
    assert info.value.kind == "auth" and "credentials" in info.value.message
    assert upstream.app[BEDROCK].calls == []
    await provider.close()
