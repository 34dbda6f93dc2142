"""The Anthropic translations as pure functions: request params, messages, result lines,
batch status and times (wire reference §5)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from providers.anthropic_params import TranslationError, anthropic_custom_ids, chat_to_params
from providers.anthropic_results import (
    message_to_completion,
    parse_message_batch,
    result_to_line,
    rfc3339_seconds,
)


def params(**body: Any) -> dict[str, Any]:
    body.setdefault("model", "claude-x")
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    return chat_to_params(body, default_max_tokens=256)


def test_system_messages_become_system_and_same_role_turns_merge() -> None:
    out = params(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "ok"},
        ]
    )
    assert out["system"] == "Be brief.\n\nUse French."
    assert out["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {"role": "assistant", "content": "ok"},
    ]
    assert out["max_tokens"] == 256  # the configured default


def test_sampling_parameters_map_and_clamp() -> None:
    out = params(max_completion_tokens=50, max_tokens=9, stop="END", temperature=1.7, top_p=0.9)
    assert (out["max_tokens"], out["stop_sequences"]) == (50, ["END"])
    assert (out["temperature"], out["top_p"]) == (1.0, 0.9)
    out = params(stop=["a", "b"], user="u-1", seed=7, presence_penalty=0.5)
    assert out["stop_sequences"] == ["a", "b"]
    assert out["metadata"] == {"user_id": "u-1"}
    assert "seed" not in out and "presence_penalty" not in out


def test_tools_tool_calls_and_tool_results() -> None:
    tool = {
        "type": "function",
        "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}},
    }
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"c": "Oslo"}'},
    }
    out = params(
        tools=[tool],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        parallel_tool_calls=False,
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        ],
    )
    assert out["tools"] == [
        {"name": "weather", "input_schema": {"type": "object"}, "description": "Weather"}
    ]
    assert out["tool_choice"] == {
        "type": "tool",
        "name": "weather",
        "disable_parallel_tool_use": True,
    }
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"c": "Oslo"}}
        ],
    }
    assert out["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"}
    ]
    assert params(tools=[tool], tool_choice="required")["tool_choice"] == {"type": "any"}


def test_images_become_url_or_base64_blocks() -> None:
    parts = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png"}},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]
    blocks = params(messages=[{"role": "user", "content": parts}])["messages"][0]["content"]
    assert blocks[1] == {
        "type": "image",
        "source": {"type": "url", "url": "https://x.test/cat.png"},
    }
    assert blocks[2]["source"] == {"type": "base64", "media_type": "image/png", "data": "AAAA"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"n": 2}, "n > 1"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"reasoning_effort": "high"}, "'reasoning_effort'"),
        ({"messages": [{"role": "system", "content": "only system"}]}, "no user or assistant"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input_audio"),
        ({"tools": [{"type": "web_search"}]}, "only function tools"),
        ({"max_tokens": 0}, "positive integer"),
    ],
)
def test_untranslatable_requests_are_refused(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(TranslationError) as info:
        params(**body)
    assert reason in str(info.value)


def test_max_tokens_is_required_without_a_default() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(TranslationError, match="default_max_tokens"):
        chat_to_params(body, default_max_tokens=None)


NEW_VERSION = "2026-10-21"  # Anthropic's first API version without sampling parameters


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_completion_tokens": None, "max_tokens": 100}, 100),
        ({"max_tokens": 100, "max_completion_tokens": None}, 100),
        ({"max_completion_tokens": 100, "max_tokens": None}, 100),
        ({"max_tokens": None, "max_completion_tokens": 100}, 100),
        ({"max_completion_tokens": None, "max_tokens": None}, 256),
        ({"max_completion_tokens": 50, "max_tokens": 9}, 50),
    ],
)
def test_an_explicit_null_max_tokens_falls_back_to_the_other_field(
    fields: dict[str, Any], expected: int
) -> None:
    assert params(**fields)["max_tokens"] == expected


@pytest.mark.parametrize(
    ("name", "value"), [("temperature", 0.2), ("temperature", 1.0), ("top_p", 0.9), ("top_k", 40)]
)
@pytest.mark.parametrize("version", [NEW_VERSION, "2027-03-01"])
def test_sampling_parameters_are_refused_from_api_version_2026_10_21(
    name: str, value: float, version: str
) -> None:
    body = {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(TranslationError) as info:
        chat_to_params(body | {name: value}, default_max_tokens=None, anthropic_version=version)
    assert f"'{name}'" in str(info.value) and version in str(info.value)


def test_null_sampling_parameters_pass_on_api_version_2026_10_21() -> None:
    body = {
        "model": "claude-x",
        "max_completion_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    out = chat_to_params(body, default_max_tokens=None, anthropic_version=NEW_VERSION)
    assert not {"temperature", "top_p", "top_k"} & set(out)
    assert out == chat_to_params(body, default_max_tokens=None, anthropic_version="2023-06-01")


def test_sampling_parameters_still_map_on_api_version_2023_06_01() -> None:
    body = {"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    out = chat_to_params(
        body | {"temperature": 0.2, "top_p": 0.9},
        default_max_tokens=None,
        anthropic_version="2023-06-01",
    )
    assert (out["temperature"], out["top_p"]) == (0.2, 0.9)
    with pytest.raises(TranslationError, match="'top_k' is not supported"):
        params(top_k=40)  # not an OpenAI parameter, in any version


def test_a_malformed_api_version_is_refused() -> None:
    with pytest.raises(TranslationError, match="anthropic_version 'latest'"):
        chat_to_params(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            default_max_tokens=8,
            anthropic_version="latest",
        )


# OpenAI's structured-outputs example (chain-of-thought math tutor).
MATH_SCHEMA = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
                "required": ["explanation", "output"],
                "additionalProperties": False,
            },
        },
        "final_answer": {"type": "string"},
    },
    "required": ["steps", "final_answer"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("version", ["2023-06-01", NEW_VERSION])
@pytest.mark.parametrize("strict", [True, False, None])
def test_json_schema_response_format_becomes_output_config_format(
    version: str, strict: bool | None
) -> None:
    body = {
        "model": "claude-x",
        "max_completion_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a helpful math tutor."},
            {"role": "user", "content": "how can I solve 8x + 7 = -23"},
        ],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "math_response", "schema": MATH_SCHEMA, "strict": strict},
        },
    }
    out = chat_to_params(body, default_max_tokens=None, anthropic_version=version)
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": MATH_SCHEMA}}
    assert "output_format" not in out  # the deprecated beta spelling
    assert "math_response" not in json.dumps(out)


def test_text_response_format_sends_no_output_config() -> None:
    assert "output_config" not in params(response_format={"type": "text"})


@pytest.mark.parametrize(
    ("response_format", "reason"),
    [
        ({"type": "json_object"}, "json_object"),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, "json_schema.schema"),
        (
            {
                "type": "json_schema",
                "json_schema": {"name": "x", "description": "A reply", "schema": MATH_SCHEMA},
            },
            "'response_format.json_schema.description'",
        ),
        ({"type": "regex"}, "text or json_schema"),
    ],
)
def test_untranslatable_response_formats_are_refused(
    response_format: dict[str, Any], reason: str
) -> None:
    with pytest.raises(TranslationError) as info:
        params(response_format=response_format)
    assert reason in str(info.value)


def test_a_message_name_is_refused_naming_the_parameter() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "name": "alice", "content": "Hello!"},
    ]
    with pytest.raises(TranslationError, match=r"'messages\[1\]\.name'"):
        params(messages=messages)
    assert params(messages=[{"role": "user", "name": None, "content": "Hello!"}])


# Anthropic's strict tool use example, as an OpenAI function tool.
WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["location"],
        "additionalProperties": False,
    },
}


def test_function_strict_maps_to_tool_strict() -> None:
    strict = params(tools=[{"type": "function", "function": WEATHER | {"strict": True}}])
    assert strict["tools"][0] == {
        "name": "get_weather",
        "input_schema": WEATHER["parameters"],
        "description": WEATHER["description"],
        "strict": True,
    }
    for value in (False, None):
        loose = params(tools=[{"type": "function", "function": WEATHER | {"strict": value}}])
        assert "strict" not in loose["tools"][0]
    with pytest.raises(TranslationError, match=r"tools\[0\]: function.strict"):
        params(tools=[{"type": "function", "function": WEATHER | {"strict": "yes"}}])


def test_unknown_parameters_set_to_null_count_as_unset() -> None:
    assert params(reasoning_effort=None, prediction=None)["model"] == "claude-x"


def test_custom_ids_pass_through_or_are_renamed_together() -> None:
    assert anthropic_custom_ids(["req-1", "a_B"]) is None
    assert anthropic_custom_ids(["ok", "has space", "x" * 65]) == ["line-0", "line-1", "line-2"]


def test_message_becomes_chat_completion() -> None:
    message = {
        "id": "msg_1",
        "model": "claude-x",
        "content": [
            {"type": "text", "text": "Let me look. "},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"c": "Oslo"}},
        ],
        "stop_reason": "tool_use",
        "usage": {
            "input_tokens": 10,
            "output_tokens": 4,
            "cache_creation_input_tokens": 3,
            "cache_read_input_tokens": 2,
        },
    }
    body = message_to_completion(message, created=1_700_000_000, completion_id="chatcmpl-g1")
    assert (body["id"], body["object"], body["model"]) == (
        "chatcmpl-g1",
        "chat.completion",
        "claude-x",
    )
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look. "
    call = choice["message"]["tool_calls"][0]
    assert (call["id"], call["function"]["name"]) == ("toolu_1", "weather")
    assert json.loads(call["function"]["arguments"]) == {"c": "Oslo"}
    assert body["usage"] == {
        "prompt_tokens": 15,
        "completion_tokens": 4,
        "total_tokens": 19,
        "prompt_tokens_details": {"cached_tokens": 2},
    }
    stop = message | {"stop_reason": "max_tokens", "content": []}
    assert message_to_completion(stop, created=0)["choices"][0]["finish_reason"] == "length"


def test_result_lines_by_type() -> None:
    message = {"id": "msg_1", "model": "m", "content": [], "stop_reason": "end_turn"}
    ok, to_output = result_to_line(
        {"custom_id": "a", "result": {"type": "succeeded", "message": message}},
        custom_id="a",
        seed="b",
        created=1,
    )
    assert to_output and ok["response"]["status_code"] == 200 and ok["error"] is None
    assert ok["id"].startswith("batch_req_") and ok["custom_id"] == "a"
    assert "msg_1" not in json.dumps(ok)  # Anthropic's message id stays with Anthropic

    error = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    bad, to_output = result_to_line(
        {"custom_id": "a", "result": {"type": "errored", "error": error | {"request_id": "req_9"}}},
        custom_id="orig",
        seed="b",
        created=1,
    )
    assert not to_output and bad["custom_id"] == "orig"
    # Anthropic's own request id stays with Anthropic: the line carries the gateway's.
    assert bad["response"]["status_code"] == 529 and bad["response"]["request_id"] != "req_9"
    assert bad["response"]["request_id"].startswith("req_")
    assert bad["response"]["body"]["error"] == {
        "message": "busy",
        "type": "overloaded_error",
        "param": None,
        "code": None,
    }
    for kind, code in (("canceled", "batch_cancelled"), ("expired", "batch_expired")):
        line, to_output = result_to_line(
            {"custom_id": "a", "result": {"type": kind}}, custom_id="a", seed="b", created=1
        )
        assert not to_output and line["response"] is None and line["error"]["code"] == code


def batch(**fields: Any) -> dict[str, Any]:
    base = {
        "id": "msgbatch_1",
        "processing_status": "ended",
        "request_counts": {
            "processing": 0,
            "succeeded": 2,
            "errored": 1,
            "canceled": 0,
            "expired": 0,
        },
        "created_at": "2025-01-01T00:00:00Z",
        "expires_at": "2025-01-02T00:00:00Z",
        "ended_at": "2025-01-01T01:00:00.123456789Z",
        "cancel_initiated_at": None,
    }
    return base | fields


def test_batch_status_and_counts() -> None:
    ended = parse_message_batch(batch())
    assert ended.status() == "completed"
    counts = ended.request_counts()
    assert (counts.total, counts.completed, counts.failed) == (3, 2, 1)
    assert ended.ended_at == 1_735_693_200  # nanoseconds trimmed
    assert parse_message_batch(batch(processing_status="in_progress")).status() == "in_progress"
    assert parse_message_batch(batch(processing_status="canceling")).status() == "cancelling"
    cancelled = batch(cancel_initiated_at="2025-01-01T00:30:00Z")
    assert parse_message_batch(cancelled).status() == "cancelled"
    expired_counts = {"processing": 0, "succeeded": 1, "errored": 0, "canceled": 0, "expired": 2}
    expired = batch(request_counts=expired_counts, ended_at="2025-01-02T00:00:00Z")
    assert parse_message_batch(expired).status() == "expired"
    early = batch(request_counts=expired_counts)  # expired lines, but ended before the window
    assert parse_message_batch(early).status() == "completed"
    with pytest.raises(ValueError):
        parse_message_batch({"id": "x", "processing_status": "weird"})


def test_rfc3339_seconds() -> None:
    assert rfc3339_seconds("1970-01-01T00:01:00Z") == 60
    assert rfc3339_seconds("1970-01-01T01:00:00+01:00") == 0
    assert rfc3339_seconds(None) is None and rfc3339_seconds("yesterday") is None
