"""Vertex AI translation and parsing, on the shapes of Vertex's docs ("Batch inference from
Cloud Storage" input and output examples, the BatchPredictionJob REST resource) and on a
failed line's `status` as Vertex writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.blobs import LocalBlobs
from gateway.config import ConfigError, parse_config
from providers.base import InputFile, ProviderError
from providers.lines import LineError
from providers.results import CANCELLED
from providers.vertex.config import VertexProviderConfig, publisher_model
from providers.vertex.ids import IdsWriter, load_ids
from providers.vertex.jobs import GATEWAY_LABEL, decode_tag, encode_tag, parse_job, since_filter
from providers.vertex.translate import (
    LINE_LABEL,
    embedding_instance,
    embedding_result_line,
    instance_key,
    line_index,
    never_ran_line,
    request_line,
    result_line,
    status_error,
)


def scrub(text: str) -> str:
    return text.replace("my-project", "[redacted]")


def test_a_chat_line_becomes_the_documented_request_line_with_its_index() -> None:
    line = {
        "custom_id": "Question #1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gemini-2.0-flash-001",
            "messages": [
                {"role": "system", "content": "You are a zoologist."},
                {"role": "user", "content": "What is the relation between these samples?"},
            ],
            "temperature": 0.9,
            "top_p": 1,
            "max_tokens": 256,
        },
    }
    assert request_line(line, 41) == {
        "request": {
            "contents": [
                {
                    "role": "user",
                    "parts": [{"text": "What is the relation between these samples?"}],
                }
            ],
            "systemInstruction": {"parts": [{"text": "You are a zoologist."}]},
            "generationConfig": {"temperature": 0.9, "topP": 1, "maxOutputTokens": 256},
            # Label values: lowercase letters, digits, _ and - only; never the custom_id.
            "labels": {LINE_LABEL: "41"},
        }
    }


def test_an_untranslatable_line_is_refused() -> None:
    with pytest.raises(LineError, match="logit_bias"):
        request_line(
            {"body": {"messages": [{"role": "user", "content": "x"}], "logit_bias": {}}}, 0
        )
    with pytest.raises(LineError, match="body"):
        request_line({"custom_id": "a"}, 0)


# The output example of "Batch inference from Cloud Storage" (Retrieve batch output), with
# the line label the gateway adds to each request.
DOCS_OUTPUT = {
    "status": "",
    "processed_time": "2024-11-01T18:13:16.826+00:00",
    "request": {
        "contents": [
            {
                "parts": [
                    {"fileData": None, "text": "What is the relation between the following?"},
                    {
                        "fileData": {
                            "fileUri": "gs://cloud-samples-data/generative-ai/video/animals.mp4",
                            "mimeType": "video/mp4",
                        },
                        "text": None,
                    },
                ],
                "role": "user",
            }
        ],
        "labels": {LINE_LABEL: "7"},
    },
    "response": {
        "candidates": [
            {
                "avgLogprobs": -0.5782725546095107,
                "content": {
                    "parts": [{"text": "This video shows a Google Photos marketing campaign."}],
                    "role": "model",
                },
                "finishReason": "STOP",
            }
        ],
        "modelVersion": "gemini-2.0-flash-001@default",
        "usageMetadata": {
            "candidatesTokenCount": 36,
            "promptTokenCount": 29180,
            "totalTokenCount": 29216,
        },
    },
}


def test_a_documented_output_line_becomes_a_chat_completion_with_usage() -> None:
    assert line_index(DOCS_OUTPUT) == 7
    line = result_line(
        DOCS_OUTPUT,
        "Question #1",
        model="gemini-flash",
        created=1730484796,
        seed="123",
        scrub=scrub,
    )
    assert line["custom_id"] == "Question #1" and line["error"] is None
    assert line["id"].startswith("batch_req_") and line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["object"] == "chat.completion" and body["created"] == 1730484796
    assert body["model"] == "gemini-2.0-flash-001@default"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "This video shows a Google Photos marketing campaign.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"]["prompt_tokens"] == 29180
    assert body["usage"]["completion_tokens"] == 36 and body["usage"]["total_tokens"] == 29216
    again = result_line(
        DOCS_OUTPUT,
        "Question #1",
        model="gemini-flash",
        created=1730484796,
        seed="123",
        scrub=scrub,
    )
    assert again == line  # the same ids on every read


# A failed line as Vertex writes it (reported in GoogleCloudPlatform/generative-ai#1308).
FAILED_STATUS = (
    'Bad Request: {"error": {"code": 400, "message": "Service agents are being provisioned '
    "(https://cloud.google.com/vertex-ai/docs/general/access-control#service-agents) for "
    'my-project. Please try again in a few minutes.", "status": "FAILED_PRECONDITION"}}'
)


def test_a_failed_line_status_becomes_an_openai_error_line() -> None:
    assert status_error(FAILED_STATUS)["status"] == "FAILED_PRECONDITION"
    item = {"status": FAILED_STATUS, "processed_time": "x", "request": {"labels": {}}}
    assert line_index(item) is None
    line = result_line(item, "a", model="m", created=1, seed="123", scrub=scrub)
    response = line["response"]
    assert response["status_code"] == 400
    error = response["body"]["error"]
    assert error["code"] == "FAILED_PRECONDITION" and error["type"] == "invalid_request_error"
    assert "my-project" not in error["message"] and "Service agents" in error["message"]

    # A status without a JSON body still says what kind of failure it was.
    plain = result_line(
        {"status": "Too Many Requests: quota exceeded"},
        "b",
        model="m",
        created=1,
        seed="1",
        scrub=scrub,
    )
    assert plain["response"]["status_code"] == 429
    assert plain["response"]["body"]["error"]["type"] == "rate_limit_error"


def test_embeddings_lines_and_the_documented_output_line() -> None:
    line = {"custom_id": "a", "body": {"model": "text-embedding-005", "input": ["Give a short"]}}
    instance = embedding_instance(line)
    assert instance == {"content": "Give a short"}
    with pytest.raises(LineError, match="dimensions"):
        embedding_instance({"body": {"input": "x", "dimensions": 256}})
    # The docs' JSONL output example: the instance, its prediction and an empty status.
    item = {
        "instance": {"content": "Give a short"},
        "predictions": [
            {"embeddings": {"statistics": {"token_count": 8, "truncated": False}, "values": [0.2]}}
        ],
        "status": "",
    }
    assert instance_key(item["instance"]) == instance_key(instance)
    assert instance_key({"b": 1, "a": 2}) == instance_key({"a": 2, "b": 1})
    result = embedding_result_line(item, "a", model="text-embedding-005", seed="1", scrub=scrub)
    body = result["response"]["body"]
    assert result["response"]["status_code"] == 200
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [0.2]}]
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}
    failed = embedding_result_line(
        {"instance": instance, "status": FAILED_STATUS}, "a", model="m", seed="1", scrub=scrub
    )
    assert failed["response"]["status_code"] == 400


async def test_custom_id_maps_match_labels_and_echoed_instances(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path)
    chat = IdsWriter(blobs.writer("chat.ids"))
    assert [chat.add(c) for c in ("x", "Y z", "ü")] == [0, 1, 2]
    await chat.commit()
    ids = await load_ids(blobs, "chat.ids", embeddings=False)
    assert ids.match({"request": {"labels": {LINE_LABEL: "1"}}}) == "Y z"
    assert ids.match({"request": {"labels": {LINE_LABEL: "9"}}}) is None
    assert list(ids.unmatched()) == ["x", "ü"]

    embed = IdsWriter(blobs.writer("embed.ids"))
    for custom_id, text in (("a", "same"), ("b", "other"), ("c", "same")):
        embed.add(custom_id, instance_key({"content": text}))
    await embed.commit()
    found = await load_ids(blobs, "embed.ids", embeddings=True)
    same = {"instance": {"content": "same"}}
    assert [found.match(same), found.match(same), found.match(same)] == ["a", "c", None]
    assert list(found.unmatched()) == ["b"]


def test_a_line_that_never_ran() -> None:
    line = never_ran_line("req-2", "123", CANCELLED)
    assert line["response"] is None and line["error"]["code"] == "batch_cancelled"


# The BatchPredictionJob resource of the REST reference, as `get` answers it.
DOCS_JOB = {
    "name": "projects/123456789012/locations/us-central1/batchPredictionJobs/1234567890123456789",
    "displayName": "batch_AbCdEfGhIjKlMnOpQrStUvWx",
    "model": "publishers/google/models/gemini-2.0-flash-001",
    "inputConfig": {
        "instancesFormat": "jsonl",
        "gcsSource": {"uris": ["gs://my-bucket/in/file-x.jsonl"]},
    },
    "outputConfig": {
        "predictionsFormat": "jsonl",
        "gcsDestination": {"outputUriPrefix": "gs://my-bucket/out"},
    },
    "outputInfo": {"gcsOutputDirectory": "gs://my-bucket/out/prediction-model-2024-10-16T19:33:59"},
    "state": "JOB_STATE_PARTIALLY_SUCCEEDED",
    "completionStats": {"successfulCount": "8", "failedCount": "1", "incompleteCount": "1"},
    "createTime": "2024-10-16T19:33:59.153782Z",
    "startTime": "2024-10-16T19:35:59.153782Z",
    "endTime": "2024-10-16T20:05:00.000000001Z",
    "updateTime": "2024-10-16T20:05:00Z",
    "labels": {GATEWAY_LABEL: encode_tag("batch_AbCdEfGhIjKlMnOpQrStUvWx")},
    "modelVersionId": "1",
}


def test_a_documented_job_is_read_with_its_id_counts_and_times() -> None:
    job = parse_job(DOCS_JOB)
    assert job.id == "1234567890123456789"  # no project in it
    assert job.status == "completed" and job.counts == (8, 1, 1)
    assert job.tagged == "batch_AbCdEfGhIjKlMnOpQrStUvWx"
    assert job.output_dir == DOCS_JOB["outputInfo"]["gcsOutputDirectory"]  # type: ignore[index]
    assert (job.created, job.started, job.ended) == (1729107239, 1729107359, 1729109100)

    states = {
        "JOB_STATE_QUEUED": "validating",
        "JOB_STATE_PENDING": "validating",
        "JOB_STATE_RUNNING": "in_progress",
        "JOB_STATE_PAUSED": "in_progress",
        "JOB_STATE_UPDATING": "in_progress",
        "JOB_STATE_SUCCEEDED": "completed",
        "JOB_STATE_FAILED": "failed",
        "JOB_STATE_CANCELLING": "cancelling",
        "JOB_STATE_CANCELLED": "cancelled",
        "JOB_STATE_EXPIRED": "expired",
    }
    for state, status in states.items():
        assert parse_job(DOCS_JOB | {"state": state}).status == status
    with pytest.raises(ProviderError):
        parse_job(DOCS_JOB | {"state": "JOB_STATE_NEW"})
    # A job whose label and display name disagree is not the gateway's.
    assert parse_job(DOCS_JOB | {"displayName": "someone else"}).tagged is None
    assert parse_job({k: v for k, v in DOCS_JOB.items() if k != "labels"}).tagged is None


def test_tags_and_filters() -> None:
    tag = encode_tag("batch_AbCdEfGhIjKlMnOpQrStUvWx")
    assert len(tag) <= 63 and tag == tag.lower()
    assert decode_tag(tag) == "batch_AbCdEfGhIjKlMnOpQrStUvWx"
    assert decode_tag("not base32!") is None
    assert since_filter(1729107239) == 'create_time>="2024-10-16T19:33:59Z"'


def raw_config(**overrides: object) -> dict[str, object]:
    return {
        "type": "vertex",
        "project": "my-project",
        "gcs_input_prefix": "gs://my-bucket/in",
        "gcs_output_prefix": "gs://my-bucket/out",
    } | overrides


def test_config_defaults_hosts_and_models(tmp_path: Path) -> None:
    config = VertexProviderConfig.model_validate(raw_config())
    assert config.base_url == "https://us-central1-aiplatform.googleapis.com"
    assert config.storage_url == "https://storage.googleapis.com"
    assert config.endpoints == ("/v1/chat/completions", "/v1/embeddings")
    world = VertexProviderConfig.model_validate(raw_config(location="global"))
    assert world.base_url == "https://aiplatform.googleapis.com"
    mapped = VertexProviderConfig.model_validate(
        raw_config(models={"flash": "gemini-2.5-flash", "pro": "publishers/google/models/x-pro"})
    )
    assert mapped.resolve("flash") == "publishers/google/models/gemini-2.5-flash"
    assert mapped.resolve("gemini-2.0-flash-001") == "publishers/google/models/gemini-2.0-flash-001"
    assert mapped.resolve("Claude 3") is None and mapped.resolve("gpt-4o") is None
    assert mapped.resolve("text-embedding-005") == "publishers/google/models/text-embedding-005"
    assert mapped.client_name("publishers/google/models/gemini-2.5-flash") == "flash"
    assert publisher_model("publishers/anthropic/models/claude") is None

    file = InputFile(tmp_path, "f.jsonl", 1, 1, "/v1/chat/completions", ("a", "b"))
    with pytest.raises(ProviderError, match="one model"):
        mapped.file_model(file, frozenset({"/v1/chat/completions"}))

    for bad in (
        {"gcs_input_prefix": "s3://bucket/in"},
        {"project": "My_Project"},
        {"models": {"x": "publishers/meta/models/llama"}},
        {"upload_chunk_bytes": 300_000},
        {"endpoints": ["/v1/responses"]},
    ):
        raw = {"providers": {"v": raw_config(**bad)}, "default": "v"}
        with pytest.raises(ConfigError) as info:
            parse_config(raw, tmp_path)
        assert "providers.v" in str(info.value), json.dumps(bad)
