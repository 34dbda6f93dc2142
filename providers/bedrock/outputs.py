"""Bedrock batch output records -> OpenAI batch output/error lines (pure functions).

Each line of `<output prefix>/<job id>/<input name>.out` is `{"recordId", "modelInput",
"modelOutput"}`, or `{"recordId", "modelInput", "error": {"errorCode", "errorMessage"}}`
for a record that failed (user guide, "View the results of a batch inference job";
`errorCode` is the HTTP status, a number in the docs' example). `modelOutput` is the
InvokeModel response body of the model (Claude's Messages answer; Titan's `{embedding,
inputTextTokenCount}`; Cohere's `{embeddings, ...}`) or, for Converse jobs, the Converse
response (`{output.message, stopReason, usage{inputTokens, outputTokens, totalTokens}}`).

Ids are derived from the job id and the recordId (= the line's custom_id), so a file
translated again gives the same bytes; `modelInput` (the request) is never copied out.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from providers.anthropic_results import message_to_completion
from providers.base import ProviderError
from providers.bedrock.jobs import Family
from providers.http import iter_lines
from providers.results import error_body, is_output, response_line, stable_hex

__all__ = [
    "claude_completion",
    "cohere_embeddings",
    "converse_completion",
    "error_status",
    "result_line",
    "titan_embeddings",
    "view_lines",
]

Json = dict[str, Any]
Scrub = Callable[[str], str]
# Translated lines are gathered into chunks of about this size.
CHUNK = 256 * 1024

# Converse `stopReason` (API reference, ConverseResponse) -> OpenAI finish_reason.
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "invalid_request_error",
    424: "server_error",
    429: "rate_limit_error",
}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def claude_completion(
    output: Mapping[str, Any], *, model: str, completion_id: str, created: int
) -> Json:
    """Claude's Messages answer (InvokeModel jobs) as a chat.completion."""
    body = message_to_completion(output, created=created, completion_id=completion_id)
    body["model"] = model
    return body


def _converse_usage(usage: Any) -> Json:
    usage = usage if isinstance(usage, Mapping) else {}
    cached = _int(usage.get("cacheReadInputTokens"))
    # Converse counts cache reads and writes apart from inputTokens; OpenAI's prompt
    # tokens include them (and show the reads as cached_tokens).
    prompt = _int(usage.get("inputTokens")) + cached + _int(usage.get("cacheWriteInputTokens"))
    completion = _int(usage.get("outputTokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _int(usage.get("totalTokens")) or prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def converse_completion(
    output: Mapping[str, Any], *, model: str, completion_id: str, created: int
) -> Json:
    """A Converse response as a chat.completion (reasoning blocks are not part of
    OpenAI's message; their tokens are in the output tokens)."""
    wrapper = output.get("output")
    message = wrapper.get("message") if isinstance(wrapper, Mapping) else None
    content = message.get("content") if isinstance(message, Mapping) else None
    texts: list[str] = []
    calls: list[Json] = []
    for n, block in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(block, Mapping):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(use := block.get("toolUse"), Mapping):
            arguments = json.dumps(use.get("input") or {}, ensure_ascii=False)
            call_id = f"call_{stable_hex(completion_id, n)}"
            function = {"name": use.get("name") or "", "arguments": arguments}
            calls.append({"id": call_id, "type": "function", "function": function})
    reply: Json = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        reply["tool_calls"] = calls
    finish = _FINISH.get(str(output.get("stopReason")), "stop")
    choice = {"index": 0, "message": reply, "finish_reason": finish, "logprobs": None}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _converse_usage(output.get("usage")),
    }


def _embeddings(vectors: list[Any], model: str, tokens: int) -> Json:
    data = [
        {"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(vectors)
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def titan_embeddings(output: Mapping[str, Any], *, model: str, **_: Any) -> Json:
    """Titan's `{embedding, inputTextTokenCount}` as an OpenAI embeddings list."""
    vector = output.get("embedding")
    by_type = output.get("embeddingsByType")
    if not isinstance(vector, list) and isinstance(by_type, Mapping):
        vector = by_type.get("float")
    return _embeddings([vector or []], model, _int(output.get("inputTextTokenCount")))


def cohere_embeddings(output: Mapping[str, Any], *, model: str, **_: Any) -> Json:
    """Cohere's `{embeddings, response_type, ...}` as an OpenAI embeddings list: a list of
    vectors (`embeddings_floats`) or `{"float": [...]}` (`embeddings_by_type`). Bedrock's
    Cohere answer carries no token count unless `meta.billed_units` says one."""
    vectors = output.get("embeddings")
    if isinstance(vectors, Mapping):
        vectors = vectors.get("float")
    meta = output.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, Mapping) else None
    tokens = _int(billed.get("input_tokens")) if isinstance(billed, Mapping) else 0
    return _embeddings(vectors if isinstance(vectors, list) else [], model, tokens)


_BODIES: dict[Family, Callable[..., Json]] = {
    "anthropic": claude_completion,
    "converse": converse_completion,
    "titan-embed": titan_embeddings,
    "cohere-embed": cohere_embeddings,
}


def error_status(error: Any, scrub: Scrub) -> tuple[int, Json]:
    """A record's `error` as (HTTP status, OpenAI error body)."""
    error = error if isinstance(error, Mapping) else {}
    code = error.get("errorCode")
    number = int(code) if isinstance(code, str) and code.isdigit() else code
    valid = isinstance(number, int) and not isinstance(number, bool) and 400 <= number < 600
    status = number if valid else 500
    message = error.get("errorMessage")
    text = scrub(message) if isinstance(message, str) and message else f"HTTP {status}"
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    name = scrub(code) if isinstance(code, str) and not code.isdigit() else None
    return status, error_body(text, kind, code=name)


def result_line(
    item: Mapping[str, Any], *, family: Family, model: str, created: int, seed: str, scrub: Scrub
) -> Json:
    """One output record as an OpenAI batch line (2xx: the output file; else errors).
    `seed` (the job id) makes the line's ids stable across reads."""
    custom_id = item.get("recordId")
    line_id = f"batch_req_{stable_hex(seed, custom_id, 'line')}"
    request_id = f"req_{stable_hex(seed, custom_id, 'req')}"
    output = item.get("modelOutput")
    error = item.get("error")
    if isinstance(output, Mapping) and error is None:
        completion_id = f"chatcmpl-{stable_hex(seed, custom_id, 'completion')}"
        body = _BODIES[family](output, model=model, completion_id=completion_id, created=created)
        return response_line(line_id, custom_id, 200, request_id, body)
    if error is None:
        error = {"errorCode": 500, "errorMessage": "The record has no model output."}
    status, body = error_status(error, scrub)
    return response_line(line_id, custom_id, status, request_id, body)


async def view_lines(
    chunks: AsyncIterator[bytes],
    *,
    output: bool,
    family: Family,
    model: str,
    created: int,
    seed: str,
    scrub: Scrub,
) -> AsyncIterator[bytes]:
    """A `.out` object's records as OpenAI lines, line by line (a 1 GB file is never
    held): only the output lines (`output`) or only the error lines."""
    out = bytearray()
    async for raw in iter_lines(chunks):
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProviderError("retryable", "the results are not JSONL") from None
        if not isinstance(item, dict):
            continue
        line = result_line(
            item, family=family, model=model, created=created, seed=seed, scrub=scrub
        )
        if is_output(line) == output:
            out += orjson.dumps(line) + b"\n"
            if len(out) >= CHUNK:
                yield bytes(out)
                out.clear()
    if out:
        yield bytes(out)
