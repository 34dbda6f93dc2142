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
