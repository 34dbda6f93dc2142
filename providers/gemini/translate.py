"""Pure translations between OpenAI's batch lines and the Gemini API's.

Shapes follow the Gemini API reference (ai.google.dev/api: GenerateContentRequest,
GenerateContentResponse, EmbedContentRequest, google.rpc.Status) and the official SDK
`googleapis/python-genai` (`google/genai/batches.py`, `types.py`). Field names are sent in
the REST reference's lowerCamelCase. JSON schemas go out as `parametersJsonSchema` and
`responseJsonSchema` (plain JSON Schema, which is what OpenAI clients write) rather than
the OpenAPI-subset `parameters` / `responseSchema`.

Input lines become `{"key": <custom_id>, "request": ...}` (the batch-mode guide's JSONL
input); result lines `{"key", "response"}` or `{"key", "error": Status}` come back as
OpenAI batch output lines. Anything the Gemini request cannot say is refused with a
`LineError` naming the parameter, never dropped silently.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from providers.lines import LineError
from providers.results import error_body, response_line, stable_hex

__all__ = [
    "chat_line",
    "chat_request",
    "completion",
    "embed_request",
    "embedding_body",
    "embeddings_line",
    "error_status",
    "result_line",
    "usage",
]

Json = dict[str, Any]
Scrub = Callable[[str], str]

# Parameters with no effect on what the model returns: accepted and not sent.
_IGNORED = frozenset({"model", "messages", "user", "metadata", "store", "service_tier"})
# Parameters that are harmless at these values (OpenAI's defaults).
_DEFAULTS: dict[str, Any] = {
    "stream": False,
    "logprobs": False,
    "parallel_tool_calls": True,
    "n": 1,
}
_MAPPED = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "n",
        "response_format",
        "tools",
        "tool_choice",
        "seed",
        "presence_penalty",
        "frequency_penalty",
    }
)
_NUMBERS = {
    "temperature": "temperature",
    "top_p": "topP",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
}
_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+);base64,(?P<data>[A-Za-z0-9+/=\s]+)")
_TOOL_CHOICE = {"none": "NONE", "auto": "AUTO", "required": "ANY"}

# finishReason -> OpenAI finish_reason (FinishReason enum in types.py).
_FINISH = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# google.rpc.Code -> the HTTP status Google's own REST mapping gives it.
_RPC_HTTP = {
    1: 499,
    2: 500,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    13: 500,
    14: 503,
    15: 500,
    16: 401,
}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    429: "rate_limit_error",
}


# --- chat.completions -> GenerateContentRequest ---------------------------------------


def chat_line(line: Json) -> Json:
    """One OpenAI batch input line as a Gemini batch input line."""
    return {"key": line.get("custom_id"), "request": chat_request(line.get("body") or {})}


def chat_request(body: Json) -> Json:
    """A chat.completions body as a GenerateContentRequest (without `model`: one batch
    runs one model, named in the create URL)."""
    for name, value in body.items():
        if value is None or name in _IGNORED:
            continue
        if name not in _MAPPED and _DEFAULTS.get(name, object()) != value:
            raise LineError(f"'{name}' is not supported by Gemini batches")
    system, contents = _messages(body.get("messages"))
    request: Json = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    if config := _generation_config(body):
        request["generationConfig"] = config
    if body.get("tools") is not None:
        request["tools"] = [{"functionDeclarations": _functions(body["tools"])}]
    if body.get("tool_choice") is not None:
        request["toolConfig"] = {"functionCallingConfig": _tool_choice(body["tool_choice"])}
    return request


def _generation_config(body: Json) -> Json:
    config: Json = {}
    for name, target in _NUMBERS.items():
        if (value := body.get(name)) is not None:
            config[target] = _number(name, value)
    limit = body.get("max_completion_tokens")
    limit = body.get("max_tokens") if limit is None else limit
    if limit is not None:
        config["maxOutputTokens"] = _integer("max_tokens", limit)
    if (n := body.get("n")) is not None:
        config["candidateCount"] = _integer("n", n)
    if (seed := body.get("seed")) is not None:
        config["seed"] = _integer("seed", seed)
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        config["stopSequences"] = stop
    elif stop is not None:
        raise LineError("'stop' must be a string or a list of strings")
    config.update(_response_format(body.get("response_format")))
    return config


def _number(name: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LineError(f"'{name}' must be a number")
    return value


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise LineError(f"'{name}' must be a non-negative integer")
    return value


def _response_format(value: Any) -> Json:
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        schema = (value.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise LineError("'response_format.json_schema.schema' must be an object")
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise LineError(f"response_format type {kind!r} is not supported by Gemini batches")


def _functions(tools: Any) -> list[Json]:
    if not isinstance(tools, list) or not tools:
        raise LineError("'tools' must be a non-empty list")
    declared = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise LineError("only function tools are supported by Gemini batches")
        if not isinstance(function.get("name"), str):
            raise LineError("a function tool needs a name")
        item: Json = {"name": function["name"]}
        if isinstance(function.get("description"), str):
            item["description"] = function["description"]
        if function.get("parameters") is not None:
            item["parametersJsonSchema"] = function["parameters"]
        declared.append(item)
    return declared


def _tool_choice(choice: Any) -> Json:
    if isinstance(choice, str) and choice in _TOOL_CHOICE:
        return {"mode": _TOOL_CHOICE[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    if isinstance(function, dict) and isinstance(function.get("name"), str):
        return {"mode": "ANY", "allowedFunctionNames": [function["name"]]}
    raise LineError("'tool_choice' must be none, auto, required or a named function")


def _messages(messages: Any) -> tuple[list[Json], list[Json]]:
    """(systemInstruction parts, contents). Consecutive tool results make one user turn,
    as Gemini expects every functionResponse of a turn together."""
    if not isinstance(messages, list) or not messages:
        raise LineError("'messages' must be a non-empty list")
    system: list[Json] = []
    contents: list[Json] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            if contents:
                raise LineError(f"messages[{index}]: a {role} message after the conversation")
            system.extend(_text_parts(message.get("content"), f"messages[{index}]"))
        elif role == "user":
            contents.append({"role": "user", "parts": _user_parts(message.get("content"), index)})
        elif role == "assistant":
            contents.append({"role": "model", "parts": _model_parts(message, index, names)})
        elif role == "tool":
            part = _tool_result(message, index, names)
            last = contents[-1] if contents else None
            if last and last["role"] == "user" and "functionResponse" in last["parts"][0]:
                last["parts"].append(part)
            else:
                contents.append({"role": "user", "parts": [part]})
        else:
            raise LineError(f"messages[{index}]: role {role!r} is not supported by Gemini")
    if not contents:
        raise LineError("'messages' needs a user message besides system messages")
    return system, contents


def _text_parts(content: Any, where: str) -> list[Json]:
    if isinstance(content, str):
        return [{"text": content}]
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "refusal"):
                raise LineError(f"{where}: only text content is supported here")
            parts.append({"text": part.get("text") or part.get("refusal") or ""})
        return parts
    raise LineError(f"{where}: 'content' must be a string or a list of parts")


def _user_parts(content: Any, index: int) -> list[Json]:
    if not isinstance(content, list):
        return _text_parts(content, f"messages[{index}]")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"text": part["text"]})
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            parts.append({"inlineData": _inline_data(url, index)})
        else:
            raise LineError(f"messages[{index}]: content part {kind!r} is not supported")
    return parts


def _inline_data(url: Any, index: int) -> Json:
    """A base64 data: URL as inlineData; Gemini batches cannot fetch other URLs."""
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise LineError(f"messages[{index}]: image_url must be a base64 data: URL")
    data = re.sub(r"\s", "", match["data"])
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise LineError(f"messages[{index}]: image_url holds invalid base64") from None
    return {"mimeType": match["mime"], "data": data}


def _model_parts(message: Json, index: int, names: dict[str, str]) -> list[Json]:
    content = message.get("content")
    parts = [] if content is None else _text_parts(content, f"messages[{index}]")
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if call.get("type", "function") != "function" or not isinstance(function, dict):
            raise LineError(f"messages[{index}]: only function tool calls are supported")
        try:
            args = json.loads(function.get("arguments") or "{}")
        except (TypeError, ValueError):
            args = None
        if not isinstance(args, dict) or not isinstance(function.get("name"), str):
            raise LineError(f"messages[{index}]: tool call arguments must be a JSON object")
        if isinstance(call.get("id"), str):
            names[call["id"]] = function["name"]
        parts.append({"functionCall": {"name": function["name"], "args": args}})
    if not parts:
        raise LineError(f"messages[{index}]: an assistant message needs content or tool_calls")
    return parts


def _tool_result(message: Json, index: int, names: dict[str, str]) -> Json:
    """A tool message as a functionResponse: a JSON object result is passed as is, any
    other text under "output" (FunctionResponse.response's documented key)."""
    name = names.get(str(message.get("tool_call_id")))
    if name is None:
        raise LineError(f"messages[{index}]: tool_call_id matches no earlier tool call")
    text = "".join(p["text"] for p in _text_parts(message.get("content"), f"messages[{index}]"))
    try:
        result = json.loads(text)
    except ValueError:
        result = None
    response = result if isinstance(result, dict) else {"output": text}
    return {"functionResponse": {"name": name, "response": response}}


# --- embeddings -> EmbedContentRequest ------------------------------------------------


def embeddings_line(line: Json) -> Json:
    """One OpenAI embeddings line as an asyncBatchEmbedContent input line."""
    return {"key": line.get("custom_id"), "request": embed_request(line.get("body") or {})}


def embed_request(body: Json) -> Json:
    """An embeddings body as an EmbedContentRequest: one input, one embedding (no
    `model`: the batch's, as the SDK's inlined embed requests carry none)."""
    for name, value in body.items():
        if value is None or name in ("model", "input", "user", "dimensions"):
            continue
        if name != "encoding_format" or value != "float":
            raise LineError(f"'{name}' is not supported by Gemini batch embeddings")
    text = body.get("input")
    if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
        text = text[0]
    if not isinstance(text, str):
        raise LineError("'input' must be one string (Gemini embeds one input per request)")
    request: Json = {"content": {"parts": [{"text": text}]}}
    if (dimensions := body.get("dimensions")) is not None:
        request["outputDimensionality"] = _integer("dimensions", dimensions)
    return request


def embedding_body(response: Json, model: str, tokens: int = 0) -> Json:
    """An EmbedContentResponse as an OpenAI embeddings list (the Gemini API reports no
    tokens; Vertex AI's predictions do, as `tokens`)."""
    embedding = response.get("embedding") or {}
    values = embedding.get("values") if isinstance(embedding, dict) else None
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": values or []}],
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


# --- GenerateContentResponse -> chat.completion --------------------------------------


def _count(meta: Json, name: str) -> int:
    value = meta.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage(meta: Any) -> Json:
    """usageMetadata as chat.completion usage: thinking tokens are completion tokens, as
    OpenAI counts reasoning tokens, and are also shown as reasoning_tokens."""
    meta = meta if isinstance(meta, dict) else {}
    prompt = _count(meta, "promptTokenCount") + _count(meta, "toolUsePromptTokenCount")
    thoughts = _count(meta, "thoughtsTokenCount")
    completion_tokens = _count(meta, "candidatesTokenCount") + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": _count(meta, "totalTokenCount") or prompt + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": _count(meta, "cachedContentTokenCount")},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def completion(response: Json, *, model: str, completion_id: str, created: int) -> Json:
    """A GenerateContentResponse as a chat.completion."""
    choices = [
        _choice(candidate, index, completion_id)
        for index, candidate in enumerate(response.get("candidates") or [])
        if isinstance(candidate, dict)
    ]
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        message = {"role": "assistant", "content": None, "refusal": None}
        choices = [{"index": 0, "message": message, "logprobs": None}]
        choices[0]["finish_reason"] = "content_filter"
    version = response.get("modelVersion")
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": version if isinstance(version, str) and version else model,
        "choices": choices,
        "usage": usage(response.get("usageMetadata")),
        "system_fingerprint": None,
    }


def _choice(candidate: Json, position: int, completion_id: str) -> Json:
    parts = (candidate.get("content") or {}).get("parts") or []
    texts = [p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")]
    calls = [p["functionCall"] for p in parts if isinstance(p.get("functionCall"), dict)]
    index = candidate.get("index") if isinstance(candidate.get("index"), int) else position
    message: Json = {
        "role": "assistant",
        "content": "".join(texts) if texts or not calls else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = [
            {
                "id": call.get("id") or f"call_{stable_hex(completion_id, index, n)}",
                "type": "function",
                "function": {
                    "name": call.get("name") or "",
                    "arguments": json.dumps(call.get("args") or {}, ensure_ascii=False),
                },
            }
            for n, call in enumerate(calls)
        ]
    reason = _FINISH.get(candidate.get("finishReason") or "", "stop")
    if calls and reason == "stop":
        reason = "tool_calls"
    return {"index": index, "message": message, "logprobs": None, "finish_reason": reason}


# --- result lines -------------------------------------------------------------------


def error_status(status: Any, scrub: Scrub) -> tuple[int, Json]:
    """A google.rpc.Status (a line's `error`) as (HTTP status, OpenAI error body)."""
    status = status if isinstance(status, dict) else {}
    code = status.get("code")
    http = code if isinstance(code, int) and code >= 400 else _RPC_HTTP.get(code, 500)
    message = status.get("message")
    name = status.get("status")
    text = scrub(message) if isinstance(message, str) and message else f"HTTP {http}"
    kind = _ERROR_TYPES.get(http, "server_error" if http >= 500 else "invalid_request_error")
    return http, error_body(text, kind, code=name if isinstance(name, str) else None)


def result_line(item: Json, *, model: str, created: int, seed: str, scrub: Scrub) -> Json:
    """One results-file line (`{"key", "response"}` or `{"key", "error"}`) as an OpenAI
    batch output line. An embeddings answer is told by its `embedding`, as the SDK does."""
    custom_id = item.get("key")
    line_id = f"batch_req_{stable_hex(seed, custom_id, 'line')}"
    request_id = f"req_{stable_hex(seed, custom_id, 'req')}"
    response = item.get("response")
    if isinstance(response, dict) and "error" not in item:
        if "embedding" in response:
            body = embedding_body(response, model)
        else:
            # Ids of our own: Gemini's responseId is an upstream id.
            completion_id = f"chatcmpl-{stable_hex(seed, custom_id, 'completion')}"
            body = completion(response, model=model, completion_id=completion_id, created=created)
        return response_line(line_id, custom_id, 200, request_id, body)
    status, body = error_status(item.get("error"), scrub)
    return response_line(line_id, custom_id, status, request_id, body)
