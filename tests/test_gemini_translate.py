"""The gemini adapter's pure translations, on the examples of Google's docs.

Request examples: the batch-mode guide's JSONL input line and the function-calling guide's
conversation; response examples: the text-generation and function-calling guides'
GenerateContentResponse bodies (ai.google.dev/gemini-api/docs) and the Operation the
batch-mode guide polls.
"""

from __future__ import annotations

from typing import Any

import pytest

from providers.base import ProviderError
from providers.gemini import GeminiProvider, parse_batch, rfc3339
from providers.gemini.translate import (
    chat_line,
    chat_request,
    completion,
    embed_request,
    embedding_body,
    error_status,
    result_line,
    usage,
)
from providers.lines import LineError
from providers.transport import HTTPSettings

# The batch-mode guide's input line: {"key": ..., "request": GenerateContentRequest}.
DOCS_INPUT_LINE = {
    "key": "request-1",
    "request": {
        "contents": [
            {"role": "user", "parts": [{"text": "Describe the process of photosynthesis."}]}
        ]
    },
}
# The text-generation guide's REST answer.
DOCS_RESPONSE: dict[str, Any] = {
    "candidates": [
        {
            "content": {
                "parts": [{"text": "AI learns patterns from data to make predictions."}],
                "role": "model",
            },
            "finishReason": "STOP",
            "avgLogprobs": -0.0855,
        }
    ],
    "usageMetadata": {
        "promptTokenCount": 8,
        "candidatesTokenCount": 9,
        "totalTokenCount": 40,
        "thoughtsTokenCount": 23,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 8}],
    },
    "modelVersion": "gemini-2.5-flash",
    "responseId": "pL2jaLvCD9ab1MkP2M3L-Q0",
}
# The function-calling guide's answer.
DOCS_FUNCTION_CALL = {
    "candidates": [
        {
            "content": {
                "role": "model",
                "parts": [
                    {
                        "functionCall": {
                            "name": "set_light_values",
                            "args": {"brightness": 25, "color_temp": "warm"},
                        }
                    }
                ],
            },
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": {"promptTokenCount": 76, "candidatesTokenCount": 12, "totalTokenCount": 88},
}
# What the batch-mode guide polls: an Operation whose metadata is the batch.
OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
DOCS_OPERATION = {
    "name": "batches/123456",
    "metadata": {
        "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
        "model": "models/gemini-2.5-flash",
        "displayName": "batch_0123456789abcdef01234567",
        "inputConfig": {"fileName": "files/abc"},
        "output": {"responsesFile": "files/batch-123456"},
        "createTime": "2025-07-01T10:00:00.123456789Z",
        "endTime": "2025-07-01T10:05:00Z",
        "updateTime": "2025-07-01T10:05:00Z",
        "batchStats": {
            "requestCount": "3",
            "successfulRequestCount": "2",
            "failedRequestCount": "1",
        },
        "state": "BATCH_STATE_SUCCEEDED",
        "name": "batches/123456",
    },
    "done": True,
    "response": {
        "@type": OUTPUT_TYPE,
        "responsesFile": "files/batch-123456",
    },
}


def chat(*messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": "gemini-2.5-flash", "messages": list(messages), **params}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# --- requests -----------------------------------------------------------------------


def test_a_plain_line_is_the_docs_input_line() -> None:
    line = {
        "custom_id": "request-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat(user("Describe the process of photosynthesis.")),
    }
    assert chat_line(line) == DOCS_INPUT_LINE


def test_roles_system_prompt_and_generation_config() -> None:
    body = chat(
        {"role": "system", "content": "You are a cat."},
        {"role": "developer", "content": [{"type": "text", "text": "Your name is Neko."}]},
        user("Hello"),
        {"role": "assistant", "content": "Meow?"},
        user("Who are you?"),
        temperature=0.5,
        top_p=0.9,
        max_tokens=100,
        max_completion_tokens=None,  # explicit null falls back to max_tokens
        stop=["\n\n", "END"],
        n=2,
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        response_format={"type": "json_object"},
        stream=False,
        user="someone",
    )
    assert chat_request(body) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hello"}]},
            {"role": "model", "parts": [{"text": "Meow?"}]},
            {"role": "user", "parts": [{"text": "Who are you?"}]},
        ],
        "systemInstruction": {
            "parts": [{"text": "You are a cat."}, {"text": "Your name is Neko."}]
        },
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "presencePenalty": 0.1,
            "frequencyPenalty": 0.2,
            "maxOutputTokens": 100,
            "candidateCount": 2,
            "seed": 7,
            "stopSequences": ["\n\n", "END"],
            "responseMimeType": "application/json",
        },
    }
    config = chat_request(chat(user("x"), max_tokens=5, max_completion_tokens=9, stop="."))
    assert config["generationConfig"] == {"maxOutputTokens": 9, "stopSequences": ["."]}


def test_images_as_inline_data() -> None:
    content = [
        {"type": "text", "text": "Caption this image."},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]
    request = chat_request(chat({"role": "user", "content": content}))
    assert request["contents"][0]["parts"] == [
        {"text": "Caption this image."},
        {"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}},
    ]
    remote = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(LineError, match="data: URL"):
        chat_request(chat({"role": "user", "content": remote}))


def test_function_calling_conversation() -> None:
    """The function-calling guide's turn: declaration, call, and the function's result."""
    tool = {
        "type": "function",
        "function": {
            "name": "set_light_values",
            "description": "Sets the brightness and color temperature of a light.",
            "parameters": {
                "type": "object",
                "properties": {
                    "brightness": {"type": "integer"},
                    "color_temp": {"type": "string", "enum": ["daylight", "cool", "warm"]},
                },
                "required": ["brightness", "color_temp"],
            },
        },
    }
    call = {
        "id": "call_1",
        "type": "function",
        "function": {
            "name": "set_light_values",
            "arguments": '{"brightness": 25, "color_temp": "warm"}',
        },
    }
    body = chat(
        user("Turn the lights down to a romantic level"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"brightness": 25}'},
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "set_light_values"}},
    )
    request = chat_request(body)
    assert request["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "set_light_values",
                    "description": "Sets the brightness and color temperature of a light.",
                    "parametersJsonSchema": tool["function"]["parameters"],  # type: ignore[index]
                }
            ]
        }
    ]
    assert request["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["set_light_values"]}
    }
    assert request["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {
                        "name": "set_light_values",
                        "args": {"brightness": 25, "color_temp": "warm"},
                    }
                }
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "set_light_values", "response": {"brightness": 25}}}
            ],
        },
    ]
    assert chat_request(chat(user("x"), tool_choice="none"))["toolConfig"] == {
        "functionCallingConfig": {"mode": "NONE"}
    }


def test_parallel_tool_results_make_one_turn() -> None:
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": f"f{i}", "arguments": "{}"}}
        for i in range(2)
    ]
    request = chat_request(
        chat(
            user("go"),
            {"role": "assistant", "tool_calls": calls},
            {"role": "tool", "tool_call_id": "c0", "content": "sunny"},
            {"role": "tool", "tool_call_id": "c1", "content": "[1, 2]"},
        )
    )
    assert request["contents"][2] == {
        "role": "user",
        "parts": [
            {"functionResponse": {"name": "f0", "response": {"output": "sunny"}}},
            {"functionResponse": {"name": "f1", "response": {"output": "[1, 2]"}}},
        ],
    }


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"logprobs": True}, "logprobs"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"stream": True}, "stream"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"parallel_tool_calls": False}, "parallel_tool_calls"),
        ({"response_format": {"type": "grammar"}}, "grammar"),
        ({"tools": [{"type": "web_search"}]}, "function tools"),
        ({"stop": 3}, "stop"),
    ],
)
def test_what_gemini_cannot_say_is_refused_by_name(params: dict[str, Any], named: str) -> None:
    with pytest.raises(LineError, match=named):
        chat_request(chat(user("x"), **params))


@pytest.mark.parametrize(
    ("messages", "why"),
    [
        ([user("x"), {"role": "system", "content": "late"}], "after the conversation"),
        ([{"role": "function", "name": "f", "content": "x"}], "role 'function'"),
        ([{"role": "system", "content": "only"}], "needs a user message"),
        ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], "no earlier tool call"),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "input_audio"),
        ([], "non-empty"),
    ],
)
def test_conversations_gemini_cannot_run_are_refused(messages: list[Any], why: str) -> None:
    with pytest.raises(LineError, match=why):
        chat_request(chat(*messages))


# --- responses ----------------------------------------------------------------------


def test_the_docs_text_answer_as_a_chat_completion() -> None:
    body = completion(DOCS_RESPONSE, model="fallback", completion_id="chatcmpl-x", created=5)
    assert body == {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "created": 5,
        "model": "gemini-2.5-flash",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "AI learns patterns from data to make predictions.",
                    "refusal": None,
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 8,
            "completion_tokens": 32,  # thinking counts as completion, as OpenAI's reasoning
            "total_tokens": 40,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 23},
        },
        "system_fingerprint": None,
    }


def test_the_docs_function_call_as_tool_calls() -> None:
    body = completion(DOCS_FUNCTION_CALL, model="gemini-x", completion_id="c", created=0)
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"] == {
        "name": "set_light_values",
        "arguments": '{"brightness": 25, "color_temp": "warm"}',
    }
    assert body["model"] == "gemini-x" and body["usage"]["total_tokens"] == 88


def test_finish_reasons_thoughts_and_blocked_prompts() -> None:
    def finish(reason: str) -> str:
        answer = {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": reason}]}
        return str(
            completion(answer, model="m", completion_id="c", created=0)["choices"][0][
                "finish_reason"
            ]
        )

    assert [finish(r) for r in ("STOP", "MAX_TOKENS", "SAFETY", "RECITATION", "OTHER")] == [
        "stop",
        "length",
        "content_filter",
        "content_filter",
        "stop",
    ]
    thought = {"text": "let me think", "thought": True}
    answer = {"candidates": [{"content": {"parts": [thought, {"text": "42"}]}}]}
    assert (
        completion(answer, model="m", completion_id="c", created=0)["choices"][0]["message"][
            "content"
        ]
        == "42"
    )
    blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {}}
    (choice,) = completion(blocked, model="m", completion_id="c", created=0)["choices"]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None


def test_usage_with_cached_tokens() -> None:
    meta = {"promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 5}
    assert usage(meta) == {
        "prompt_tokens": 100,
        "completion_tokens": 5,
        "total_tokens": 105,
        "prompt_tokens_details": {"cached_tokens": 60},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


@pytest.mark.parametrize(
    ("status", "http", "kind"),
    [
        ({"code": 3, "message": "bad", "status": "INVALID_ARGUMENT"}, 400, "invalid_request_error"),
        ({"code": 8, "message": "quota"}, 429, "rate_limit_error"),
        ({"code": 13, "message": "boom"}, 500, "server_error"),
        ({"code": 404, "message": "gone", "status": "NOT_FOUND"}, 404, "not_found_error"),
        ({}, 500, "server_error"),
    ],
)
def test_status_objects_as_openai_errors(status: dict[str, Any], http: int, kind: str) -> None:
    code, body = error_status(status, str.upper)
    assert code == http and body["error"]["type"] == kind
    if status.get("message"):
        assert body["error"]["message"] == status["message"].upper()  # passed through scrub


def test_result_lines_in_openai_shape() -> None:
    def line(item: dict[str, Any]) -> dict[str, Any]:
        return result_line(item, model="gemini-2.5-flash", created=9, seed="f", scrub=str)

    ok = line({"key": "request-1", "response": DOCS_RESPONSE})
    assert ok["custom_id"] == "request-1" and ok["error"] is None
    assert ok["id"].startswith("batch_req_") and ok["response"]["status_code"] == 200
    assert ok["response"]["body"]["object"] == "chat.completion"
    assert DOCS_RESPONSE["responseId"] not in str(ok)  # ids of our own, stable per line
    assert line({"key": "request-1", "response": DOCS_RESPONSE}) == ok
    failed = line({"key": "request-2", "error": {"code": 3, "message": "Invalid JSON"}})
    assert failed["response"]["status_code"] == 400 and failed["error"] is None
    assert failed["response"]["body"]["error"]["message"] == "Invalid JSON"
    embedded = line({"key": "e", "response": {"embedding": {"values": [0.1, 0.2]}}})
    assert embedded["response"]["body"]["data"][0]["embedding"] == [0.1, 0.2]


# --- embeddings ---------------------------------------------------------------------


def test_embeddings_requests_and_answers() -> None:
    assert embed_request({"model": "gemini-embedding-001", "input": ["What is life?"]}) == {
        "content": {"parts": [{"text": "What is life?"}]}
    }
    assert embed_request({"input": "x", "dimensions": 768})["outputDimensionality"] == 768
    with pytest.raises(LineError, match="one string"):
        embed_request({"input": ["a", "b"]})
    with pytest.raises(LineError, match="encoding_format"):
        embed_request({"input": "a", "encoding_format": "base64"})
    body = embedding_body({"embedding": {"values": [1.0]}}, "gemini-embedding-001")
    assert body["data"] == [{"object": "embedding", "index": 0, "embedding": [1.0]}]
    assert body["model"] == "gemini-embedding-001"


# --- batches ------------------------------------------------------------------------


def test_the_docs_operation_as_a_batch() -> None:
    batch = parse_batch(DOCS_OPERATION)
    assert batch.name == "batches/123456" and batch.status == "completed"
    assert batch.model == "gemini-2.5-flash"
    assert batch.display_name == "batch_0123456789abcdef01234567"
    assert batch.responses_file == "files/batch-123456"
    assert batch.counts == (3, 2, 1)
    assert batch.created == rfc3339("2025-07-01T10:00:00Z") and batch.ended == 1751364300


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("BATCH_STATE_PENDING", "validating"),
        ("BATCH_STATE_RUNNING", "in_progress"),
        ("BATCH_STATE_FAILED", "failed"),
        ("BATCH_STATE_CANCELLED", "cancelled"),
        ("BATCH_STATE_EXPIRED", "expired"),
        ("JOB_STATE_SUCCEEDED", "completed"),
        ("JOB_STATE_CANCELLING", "cancelling"),
    ],
)
def test_states(state: str, status: str) -> None:
    bare = {"name": "batches/b1", "state": state}  # a batch resource, not an Operation
    assert parse_batch(bare).status == status


def test_unreadable_batches_are_refused() -> None:
    with pytest.raises(ProviderError):
        parse_batch({"name": "batches/b1", "metadata": {"state": "BATCH_STATE_WHATEVER"}})
    with pytest.raises(ProviderError):
        parse_batch({"name": "../etc", "metadata": {"state": "BATCH_STATE_RUNNING"}})


def test_timestamps() -> None:
    assert rfc3339("2014-10-02T15:01:23Z") == 1412262083
    assert rfc3339("2014-10-02T15:01:23.045123456Z") == 1412262083
    assert rfc3339("2014-10-02T15:01:23+05:30") == 1412262083 - 5 * 3600 - 1800
    assert rfc3339("yesterday") is None and rfc3339(None) is None


def test_gemini_names_and_keys_are_scrubbed() -> None:
    provider = GeminiProvider(
        "gem",
        frozenset({"/v1/chat/completions"}),
        HTTPSettings("https://generativelanguage.googleapis.com"),
        api_key="AIzaSyOurOwnKey000000000000000000000000",
        api_version="v1beta",
        state=None,  # type: ignore[arg-type]
    )
    text = (
        "batches/abc123 read files/xyz-9 with AIzaSyOtherKey1111111111111111111111111 "
        "and AIzaSyOurOwnKey000000000000000000000000 at https://generativelanguage.googleapis.com/v1beta"
    )
    scrubbed = provider.scrub(text)
    for leaked in ("batches/", "files/", "AIza", "googleapis"):
        assert leaked not in scrubbed, scrubbed
