"""The Bedrock adapter's pure pieces, on the request and response examples of Bedrock's
docs (batch inference data and results pages, the Converse API reference, the Claude,
Titan and Cohere model parameter pages): translation per model family, job reading,
error mapping, scrubbing and the config."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from pydantic import ValidationError

from providers.bedrock import aws
from providers.bedrock.aws import AwsClients, Scrubber, provider_error
from providers.bedrock.config import BedrockProviderConfig
from providers.bedrock.jobs import (
    gateway_tag,
    job_id,
    job_name,
    manifest_counts,
    model_family,
    parse_job,
)
from providers.bedrock.outputs import error_status, result_line
from providers.bedrock.translate import (
    claude_input,
    cohere_input,
    converse_input,
    record_transform,
    titan_input,
)
from providers.lines import LineError

ACCOUNT = "111122223333"
JOB = "ab12cd34ef56"
JOB_ARN = f"arn:aws:bedrock:us-east-1:{ACCOUNT}:model-invocation-job/{JOB}"


def no_scrub(text: str) -> str:
    return text


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- requests -----------------------------------------------------------------------


def test_claude_record_matches_the_batch_data_example() -> None:
    """The user guide's Claude 3 Haiku record (CALL0000001), from a chat.completions line."""
    text = "Summarize the following call transcript: ..."
    line = {
        "custom_id": "CALL0000001",
        "body": {"model": "claude-3-haiku", "max_tokens": 1024, "messages": [user(text)]},
    }
    record = record_transform("anthropic", "anthropic.claude-3-haiku-20240307-v1:0")(line)
    assert record == {
        "recordId": "CALL0000001",
        "modelInput": {
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": text}],
        },
    }


def test_claude_input_drops_what_bedrock_has_not_and_refuses_links() -> None:
    body = {"model": "m", "messages": [user("hi")], "user": "u-1", "max_tokens": 5}
    assert "metadata" not in claude_input(body) and "model" not in claude_input(body)
    with pytest.raises(LineError, match="max_tokens is required"):
        claude_input({"model": "m", "messages": [user("hi")]})
    assert (
        claude_input({"model": "m", "messages": [user("hi")]}, default_max_tokens=9)["max_tokens"]
        == 9
    )
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    linked = {"role": "user", "content": [{"type": "text", "text": "what?"}, image]}
    with pytest.raises(LineError, match="base64"):
        claude_input({"model": "m", "messages": [linked], "max_tokens": 5})
    image["image_url"] = {"url": "data:image/png;base64,iVBORw0KGgo="}
    block = claude_input({"model": "m", "messages": [linked], "max_tokens": 5})["messages"][0]
    assert block["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgo=",
    }


def test_converse_request_matches_the_api_reference_shape() -> None:
    body = {
        "model": "nova-pro",
        "messages": [
            {"role": "system", "content": "You are an app that creates playlists."},
            user("Create a list of 3 pop songs."),
            {"role": "assistant", "content": "Here are three."},
            user("Make it 5."),
        ],
        "max_tokens": 512,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n\nHuman:"],
        "seed": 7,  # no Converse equivalent, can't change a correct answer: dropped
    }
    assert converse_input(body) == {
        "messages": [
            {"role": "user", "content": [{"text": "Create a list of 3 pop songs."}]},
            {"role": "assistant", "content": [{"text": "Here are three."}]},
            {"role": "user", "content": [{"text": "Make it 5."}]},
        ],
        "system": [{"text": "You are an app that creates playlists."}],
        "inferenceConfig": {
            "maxTokens": 512,
            "temperature": 0.5,
            "topP": 0.9,
            "stopSequences": ["\n\nHuman:"],
        },
    }


def test_converse_images_merging_and_structured_output() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/4AAQ"}}
    body = {
        "model": "nova-lite",
        "messages": [user("a"), {"role": "user", "content": [image]}],
        "temperature": 1.7,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "s", "description": "d", "schema": {"type": "object"}},
        },
    }
    request = converse_input(body)
    assert request["messages"] == [
        {
            "role": "user",
            "content": [
                {"text": "a"},
                {"image": {"format": "jpeg", "source": {"bytes": "/9j/4AAQ"}}},
            ],
        }
    ]
    assert request["inferenceConfig"] == {"temperature": 1.0}  # OpenAI's 0-2 clamped to 0-1
    schema = request["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert schema == {"schema": '{"type": "object"}', "name": "s", "description": "d"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tools"),
        ({"messages": [user("a"), {"role": "tool", "tool_call_id": "x", "content": "1"}]}, "tool"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "start with a user"),
        ({"response_format": {"type": "json_object"}}, "json_object"),
        ({"n": 3}, "n > 1"),
        ({"logprobs": True}, "logprobs"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"messages": [{"role": "user", "content": "a", "name": "bob"}]}, "name"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": "https://x/y.png"}],
                    }
                ]
            },
            "base64",
        ),
    ],
)
def test_converse_refuses_what_a_converse_batch_cannot_run(
    change: dict[str, Any], reason: str
) -> None:
    body = {"model": "nova-lite", "messages": [user("a")]} | change
    with pytest.raises(LineError, match=reason):
        converse_input(body)


def test_titan_embedding_requests() -> None:
    body = {"model": "titan", "input": "Hello world", "dimensions": 512, "encoding_format": "float"}
    assert titan_input(body, "amazon.titan-embed-text-v2:0") == {
        "inputText": "Hello world",
        "dimensions": 512,
        "normalize": True,
    }
    assert titan_input({"input": ["one"]}, "amazon.titan-embed-text-v1") == {"inputText": "one"}
    image_model = "amazon.titan-embed-image-v1"
    assert titan_input({"input": "x", "dimensions": 384}, image_model) == {
        "inputText": "x",
        "embeddingConfig": {"outputEmbeddingLength": 384},
    }
    for bad, reason in (
        ({"input": ["a", "b"]}, "at most 1"),
        ({"input": [1, 2, 3]}, "must be text"),
        ({"input": "a", "dimensions": 300}, "dimensions"),
        ({"input": "a", "encoding_format": "base64"}, "encoding_format"),
    ):
        with pytest.raises(LineError, match=reason):
            titan_input(bad, "amazon.titan-embed-text-v2:0")
    with pytest.raises(LineError, match="dimensions"):
        titan_input({"input": "a", "dimensions": 256}, "amazon.titan-embed-text-v1")


def test_cohere_embedding_requests() -> None:
    v3 = "cohere.embed-english-v3"
    assert cohere_input({"input": ["a", "b"]}, v3) == {
        "texts": ["a", "b"],
        "input_type": "search_document",
    }
    assert cohere_input(
        {"input": "q", "input_type": "search_query", "dimensions": 1024}, "cohere.embed-v4:0"
    ) == {
        "texts": ["q"],
        "input_type": "search_query",
        "embedding_types": ["float"],
        "output_dimension": 1024,
    }
    with pytest.raises(LineError, match="at most 96"):
        cohere_input({"input": ["x"] * 97}, v3)
    with pytest.raises(LineError, match="dimensions"):
        cohere_input({"input": "x", "dimensions": 256}, v3)
    with pytest.raises(LineError, match="input_type"):
        cohere_input({"input": "x", "input_type": "image"}, v3)


# --- responses ----------------------------------------------------------------------


def line(item: dict[str, Any], family: Any, model: str = "m") -> dict[str, Any]:
    return result_line(
        item, family=family, model=model, created=1700000000, seed=JOB, scrub=no_scrub
    )


def test_claude_output_record_becomes_a_chat_completion() -> None:
    message = {
        "id": "msg_bdrk_01ABC",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-haiku-20240307",
        "content": [{"type": "text", "text": "The call was about billing."}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 24, "output_tokens": 10},
    }
    item = {"recordId": "CALL0000001", "modelInput": {}, "modelOutput": message}
    out = line(item, "anthropic", "claude-3-haiku")
    assert out["custom_id"] == "CALL0000001" and out["error"] is None
    body = out["response"]["body"]
    assert out["response"]["status_code"] == 200
    assert body["model"] == "claude-3-haiku" and body["id"].startswith("chatcmpl-")
    assert "msg_bdrk" not in str(out)  # Bedrock's message id stays there
    assert body["choices"][0]["message"]["content"] == "The call was about billing."
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["prompt_tokens"] == 24 and body["usage"]["total_tokens"] == 34
    assert line(item, "anthropic", "claude-3-haiku") == out  # stable ids


def test_converse_output_record_becomes_a_chat_completion() -> None:
    """The Converse API reference's response shape, with prompt caching counts."""
    output = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [{"text": "Here is a playlist: ..."}, {"reasoningContent": {}}],
            }
        },
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": 30,
            "outputTokens": 628,
            "totalTokens": 758,
            "cacheReadInputTokens": 100,
        },
        "metrics": {"latencyMs": 1275},
    }
    body = line({"recordId": "r1", "modelOutput": output}, "converse", "nova-pro")["response"][
        "body"
    ]
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Here is a playlist: ...",
        "refusal": None,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 628,
        "total_tokens": 758,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    filtered = output | {"stopReason": "guardrail_intervened"}
    choice = line({"recordId": "r", "modelOutput": filtered}, "converse")["response"]["body"]
    assert choice["choices"][0]["finish_reason"] == "content_filter"


def test_titan_and_cohere_outputs_become_embedding_lists() -> None:
    titan = {"embedding": [0.1, 0.2], "inputTextTokenCount": 8, "embeddingsByType": {}}
    body = line({"recordId": "t", "modelOutput": titan}, "titan-embed", "titan")["response"]["body"]
    assert body == {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
        "model": "titan",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    floats = {
        "embeddings": [[0.1], [0.2]],
        "id": "0b8d2f2e",
        "response_type": "embeddings_floats",
        "texts": ["a", "b"],
    }
    by_type = floats | {
        "embeddings": {"float": [[0.1], [0.2]]},
        "response_type": "embeddings_by_type",
    }
    for output in (floats, by_type):
        body = line({"recordId": "c", "modelOutput": output}, "cohere-embed")["response"]["body"]
        assert [d["embedding"] for d in body["data"]] == [[0.1], [0.2]]
        assert [d["index"] for d in body["data"]] == [0, 1]


def test_error_records_become_error_lines() -> None:
    """The results page's example error record."""
    item = {
        "recordId": "1223213ABCD",
        "modelInput": {"inputText": "Hello world"},
        "error": {"errorCode": 400, "errorMessage": "bad request"},
    }
    out = line(item, "titan-embed")
    assert out["custom_id"] == "1223213ABCD"
    assert out["response"]["status_code"] == 400
    assert out["response"]["body"] == {
        "error": {
            "message": "bad request",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert "Hello world" not in str(out)  # modelInput is never copied out
    throttled = line(
        {"recordId": "x", "error": {"errorCode": "429", "errorMessage": "slow"}}, "converse"
    )
    assert throttled["response"]["status_code"] == 429
    odd = line({"recordId": "y", "error": {"errorCode": "ModelError"}}, "converse")
    assert odd["response"]["status_code"] == 500
    assert odd["response"]["body"]["error"]["code"] == "ModelError"
    empty = line({"recordId": "z", "modelInput": {}}, "converse")
    assert empty["response"]["status_code"] == 500
    status, body = error_status({"errorCode": 400, "errorMessage": f"see {JOB_ARN}"}, Scrubber([]))
    assert status == 400 and ACCOUNT not in str(body) and "[arn]" in str(body)


# --- jobs ---------------------------------------------------------------------------


def test_job_names_tokens_and_ids() -> None:
    gateway_id = "batch_" + "Ab1" * 8
    assert job_name(gateway_id) == "batch-" + "Ab1" * 8
    assert gateway_tag(job_name(gateway_id)) == gateway_id
    assert gateway_tag("nightly-eval-1") is None
    assert job_id(JOB_ARN) == JOB and job_id(JOB) == JOB and job_id("arn:aws:iam::1:role/x") is None


def test_get_model_invocation_job_answer_is_read() -> None:
    """As botocore returns it (timestamps as datetimes)."""
    submitted = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    answer = {
        "jobArn": JOB_ARN,
        "jobName": "batch-x",
        "modelId": "anthropic.claude-3-haiku-20240307-v1:0",
        "status": "PartiallyCompleted",
        "message": None,
        "submitTime": submitted,
        "lastModifiedTime": submitted,
        "endTime": submitted,
        "jobExpirationTime": submitted,
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/in/file-x.jsonl"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/out/"}},
        "totalRecordCount": 100,
        "processedRecordCount": 100,
        "successRecordCount": 98,
        "errorRecordCount": 2,
    }
    job = parse_job(answer)
    assert job is not None and job.id == JOB and job.status == "completed" and job.partial
    assert job.counts == (100, 100, 98, 2) and job.submitted == int(submitted.timestamp())
    assert job.input_uri == "s3://b/in/file-x.jsonl" and job.output_uri == "s3://b/out/"
    expected = {
        "Submitted": "validating",
        "Validating": "validating",
        "Scheduled": "in_progress",
        "InProgress": "in_progress",
        "Completed": "completed",
        "Failed": "failed",
        "Stopping": "cancelling",
        "Stopped": "cancelled",
        "Expired": "expired",
    }
    for raw, status in expected.items():
        parsed = parse_job(answer | {"status": raw, "submitTime": "2025-01-02T03:04:05.123Z"})
        assert parsed is not None and parsed.status == status
    assert parse_job(answer | {"status": "Paused"}) is None
    assert parse_job(answer | {"jobArn": "nope"}) is None


def test_manifest_is_read() -> None:
    manifest = {
        "totalRecordCount": 10,
        "processedRecordCount": 10,
        "successRecordCount": 9,
        "errorRecordCount": 1,
        "inputTokenCount": 1000,
        "outputTokenCount": 500,
    }
    assert manifest_counts(manifest) == ((10, 10, 9, 1), (1000, 500))
    assert manifest_counts(None) == ((None, None, None, None), None)


@pytest.mark.parametrize(
    ("model_id", "family"),
    [
        ("anthropic.claude-3-haiku-20240307-v1:0", "anthropic"),
        ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic"),
        ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0", "converse"),
        (
            f"arn:aws:bedrock:eu-west-1:{ACCOUNT}:inference-profile/eu.meta.llama3-2-1b-instruct-v1:0",
            "converse",
        ),
        ("mistral.mistral-large-2402-v1:0", "converse"),
        ("amazon.titan-embed-text-v2:0", "titan-embed"),
        ("cohere.embed-multilingual-v3", "cohere-embed"),
        ("amazon.nova-2-multimodal-embeddings-v1:0", None),
        (f"arn:aws:bedrock:us-east-1:{ACCOUNT}:application-inference-profile/a1b2c3", None),
        ("ai21.jamba-1-5-large-v1:0", None),
    ],
)
def test_model_families(model_id: str, family: str | None) -> None:
    assert model_family(model_id) == family


# --- errors and scrubbing -------------------------------------------------------------


def client_error(code: str, status: int, message: str = "boom") -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": {"retry-after": "3"}},
    }
    return ClientError(response, "CreateModelInvocationJob")


@pytest.mark.parametrize(
    ("error", "kind", "ambiguous"),
    [
        (client_error("ThrottlingException", 429), "retryable", False),
        (client_error("ServiceQuotaExceededException", 400), "retryable", False),
        (client_error("InternalServerException", 500), "retryable", True),
        (client_error("ServiceUnavailableException", 503), "retryable", True),
        (client_error("AccessDeniedException", 403), "auth", False),
        (client_error("UnrecognizedClientException", 403), "auth", False),
        (client_error("ResourceNotFoundException", 404), "not_found", False),
        (client_error("ValidationException", 400), "bad_request", False),
        (client_error("ConflictException", 409), "bad_request", False),
        (ReadTimeoutError(endpoint_url="https://bedrock.x"), "retryable", True),
        (ConnectTimeoutError(endpoint_url="https://bedrock.x"), "retryable", False),
        (ConnectionClosedError(endpoint_url="https://bedrock.x"), "retryable", True),
        (NoCredentialsError(), "auth", False),
    ],
)
def test_botocore_errors_map_to_provider_error_kinds(
    error: Exception, kind: str, ambiguous: bool
) -> None:
    mapped = provider_error(error, Scrubber([]))
    assert (mapped.kind, mapped.ambiguous) == (kind, ambiguous)
    assert "bedrock.x" not in mapped.message
    if isinstance(error, ClientError):
        assert mapped.retry_after == 3.0 and mapped.code


def test_a_lost_connection_is_ambiguous_but_a_refused_one_is_not() -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None),
        OSError(111, "refused"),
    )
    never_sent = EndpointConnectionError(endpoint_url="https://x", error=refused)
    assert provider_error(never_sent, Scrubber([])).ambiguous is False
    reset = EndpointConnectionError(endpoint_url="https://x", error=aiohttp.ClientOSError())
    assert provider_error(reset, Scrubber([])).ambiguous is True


def test_scrubbing_takes_out_every_aws_name() -> None:
    scrub = Scrubber(["my-batch-bucket", "alias/batch-key"])
    text = (
        f"Job {JOB_ARN} ({JOB}) could not read s3://my-batch-bucket/in/file-x.jsonl: role "
        f"arn:aws:iam::{ACCOUNT}:role/R in account {ACCOUNT} lacks kms:Decrypt on "
        "alias/batch-key; bucket my-batch-bucket; key AKIAABCDEFGHIJKLMNOP; request "
        "8f14e45f-ceea-467f-a0e6-1234567890ab. The request completed successfully elsewhere."
    )
    clean = scrub(text)
    for secret in (ACCOUNT, JOB, "arn:aws", "s3://", "my-batch-bucket", "alias/batch-key"):
        assert secret not in clean, secret
    assert "AKIA" not in clean and "8f14e45f" not in clean
    assert "successfully" in clean  # twelve letters, but a word, not an id
    assert scrub("job zzzzzzzzzzzz failed", "zzzzzzzzzzzz") == "job [redacted] failed"


# --- config -------------------------------------------------------------------------

BASE = {
    "type": "bedrock",
    "region": "eu-central-1",
    "input_s3_uri": "s3://in-bucket/batch/in",
    "output_s3_uri": "s3://out-bucket/batch/out/",
    "role_arn": f"arn:aws:iam::{ACCOUNT}:role/BatchRole",
}


def test_config_defaults_and_model_resolution() -> None:
    config = BedrockProviderConfig.model_validate(
        BASE
        | {
            "models": {
                "claude": "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
                "mine": {
                    "id": "arn:aws:bedrock:eu-central-1:1:application-inference-profile/x",
                    "family": "converse",
                },
            }
        }
    )
    assert (config.min_records, config.max_records, config.timeout_hours) == (100, 50_000, None)
    assert config.endpoints == ("/v1/chat/completions", "/v1/embeddings")
    assert config.base_url == "https://bedrock.eu-central-1.amazonaws.com"
    assert config.resolve("claude") == ("us.anthropic.claude-3-5-sonnet-20241022-v2:0", "anthropic")
    assert config.resolve("mine") is not None and config.resolve("mine")[1] == "converse"  # type: ignore[index]
    assert config.resolve("amazon.titan-embed-text-v2:0") == (
        "amazon.titan-embed-text-v2:0",
        "titan-embed",
    )
    assert config.resolve("gpt-4o") is None
    assert (
        config.resolve("arn:aws:bedrock:eu-central-1::foundation-model/amazon.nova-pro-v1:0")
        is None
    )
    assert "in-bucket" in config.secrets() and "out-bucket" in config.secrets()


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"input_s3_uri": "https://in-bucket/x"}, "s3://"),
        ({"role_arn": "BatchRole"}, "IAM role ARN"),
        ({"region": "Frankfurt"}, "region"),
        ({"min_records": 10, "max_records": 5}, "min_records"),
        ({"timeout_hours": 12}, "timeout_hours"),
        (
            {"models": {"x": "arn:aws:bedrock:eu-central-1:1:application-inference-profile/y"}},
            "family",
        ),
        ({"api_key": "k"}, "api_key"),
        ({"part_bytes": 1024}, "part_bytes"),
    ],
)
def test_config_refuses_what_cannot_work(change: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as info:
        BedrockProviderConfig.model_validate(BASE | change)
    assert where in str(info.value)


async def test_shared_settings_reach_the_aws_clients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timeouts, proxy and TLS settings go to botocore; its own retries are off."""
    made: list[dict[str, Any]] = []

    class Session:
        def __init__(self, profile: str | None = None) -> None:
            self.profile = profile

        def create_client(self, service: str, **kwargs: Any) -> Any:
            made.append({"service": service, "profile": self.profile, **kwargs})

            class Client:
                async def __aenter__(self) -> Client:
                    return self

                async def __aexit__(self, *exc: object) -> None:
                    return None

            return Client()

    monkeypatch.setattr(aws, "AioSession", Session)
    ca = tmp_path / "ca.pem"
    config = BedrockProviderConfig.model_validate(
        BASE
        | {
            "profile": "batch",
            "connect_timeout_seconds": 3,
            "read_timeout_seconds": 40,
            "proxy": "http://proxy.internal:3128",
            "ca_file": str(ca),
            "endpoint_url": "https://vpce-1.bedrock.eu-central-1.vpce.amazonaws.com",
            "s3_endpoint_url": "https://bucket.vpce-2.s3.eu-central-1.vpce.amazonaws.com",
        }
    )
    clients = AwsClients("bedrock", config)
    await clients.client("bedrock")
    await clients.client("s3")
    await clients.client("bedrock")  # made once
    assert [m["service"] for m in made] == ["bedrock", "s3"]
    bedrock, s3 = made
    assert bedrock["profile"] == "batch" and bedrock["region_name"] == "eu-central-1"
    assert (
        bedrock["endpoint_url"] == config.endpoint_url
        and s3["endpoint_url"] == config.s3_endpoint_url
    )
    assert bedrock["verify"] == str(ca)
    settings = bedrock["config"]
    assert (settings.connect_timeout, settings.read_timeout) == (3, 40)
    assert settings.retries == {"mode": "standard", "total_max_attempts": 1}
    assert settings.proxies == {
        "http": "http://proxy.internal:3128",
        "https": "http://proxy.internal:3128",
    }
    assert s3["config"].request_checksum_calculation == "when_required"
    await clients.close()

    unverified = BedrockProviderConfig.model_validate(BASE | {"tls_verify": False})
    made.clear()
    await AwsClients("b", unverified).client("bedrock")
    assert made[0]["verify"] is False
