"""OpenAI `/v1/chat/completions` body -> Anthropic Messages params (wire reference §5).

Pure functions, no I/O. Anything that cannot be said to Anthropic without changing the
request's meaning raises `TranslationError`, so a batch is rejected at create (with the
line number) instead of coming back as silently different answers. Sampling hints with
no Anthropic equivalent that cannot change what a correct answer is (seed, penalties,
logit_bias, store, service_tier) are dropped. A parameter set to null counts as unset.

What Anthropic accepts depends on the `anthropic-version` the adapter sends, so
`chat_to_params` takes it (`anthropic_version`, a YYYY-MM-DD string):

- From 2026-10-21 (the default of Anthropic's 2.x SDKs) the Messages API, and so Message
  Batches, answer 400 to `temperature`, `top_p` or `top_k` at any value. A line that sets
  one (non-null) is refused here, naming it, rather than dropped: dropping would quietly
  change what the caller asked for, and sending it would fail the line after the batch ran.
  Before that version temperature (clamped to Anthropic's 0-1) and top_p are sent.
- `response_format: {"type": "json_schema", ...}` becomes `output_config.format`
  (`{"type": "json_schema", "schema": ...}`), generally available in every version above
  without a beta header; the deprecated beta form (`output_format` with the
  `structured-outputs-2025-11-13` header) is not used. Anthropic always constrains the
  output to the schema, which satisfies `strict` true or false; `name` is only a label and is
  not sent; a `description` (which would steer the model) has no equivalent and is refused.
  `json_object` is refused: Anthropic has no schema-less JSON mode.
- A function's `strict: true` becomes the tool's `strict: true`; a message `name` has no
  Anthropic equivalent (messages carry only role and content) and is refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from providers.lines import LineError

__all__ = ["TranslationError", "anthropic_custom_ids", "chat_to_params"]

Json = dict[str, Any]

_DROPPED = frozenset(
    {"seed", "presence_penalty", "frequency_penalty", "logit_bias", "store", "metadata"}
    | {"service_tier", "stream_options"}
)
_HANDLED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature"}
    | {"top_p", "tools", "tool_choice", "parallel_tool_calls", "user", "stream", "n"}
    | {"logprobs", "top_logprobs", "response_format"}
)
# The first API version without sampling parameters; versions compare as ISO dates.
_NO_SAMPLING_SINCE = "2026-10-21"
_SAMPLING = ("temperature", "top_p", "top_k")
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
_TOOL_CHOICE = {"auto": "auto", "required": "any", "none": "none"}
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,(.+)", re.DOTALL)
_CUSTOM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class TranslationError(LineError):
    """This request has no faithful Anthropic form; the message says why (no line number)."""


def anthropic_custom_ids(custom_ids: list[str]) -> list[str] | None:
    """Anthropic accepts only `[A-Za-z0-9_-]{1,64}`: pass valid ids through (None), else
    name every request `line-<index>` and let the caller keep the originals."""
    if all(isinstance(c, str) and _CUSTOM_ID.fullmatch(c) for c in custom_ids):
        return None
    return [f"line-{i}" for i in range(len(custom_ids))]


def text_content(content: Any, where: str) -> str:
    """Text-only content (system messages, tool results): a string or text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text":
                raise TranslationError(f"{where}[{i}]: only text parts are supported here")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise TranslationError(f"{where}: content must be a string or a list of parts")


def _image(part: Mapping[str, Any], where: str) -> Json:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str) or not url:
        raise TranslationError(f"{where}: image_url.url is missing")
    if m := _DATA_URL.fullmatch(url):
        return {"type": "image", "source": {"type": "base64", "media_type": m[1], "data": m[2]}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where}: image_url.url must be an http(s) or base64 data URL")


def _blocks(content: Any, where: str) -> list[Json]:
    """User/assistant content as Anthropic blocks; empty text is left out (Anthropic
    rejects empty text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise TranslationError(f"{where}: content must be a string or a list of parts")
    blocks: list[Json] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if text := str(part.get("text", "")):
                blocks.append({"type": "text", "text": text})
        elif kind == "image_url":
            blocks.append(_image(part, f"{where}[{i}]"))
        else:
            raise TranslationError(f"{where}[{i}]: unsupported content part type {kind!r}")
    return blocks


def _tool_uses(calls: Any, where: str) -> list[Json]:
    if not isinstance(calls, list):
        raise TranslationError(f"{where}: tool_calls must be a list")
    blocks = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(call.get("id"), str):
            raise TranslationError(f"{where}[{i}]: needs an id and a function")
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            raise TranslationError(f"{where}[{i}]: function.arguments is not JSON") from None
        if not isinstance(arguments, dict):
            raise TranslationError(f"{where}[{i}]: function.arguments must be a JSON object")
        block = {"type": "tool_use", "id": call["id"], "name": fn.get("name"), "input": arguments}
        blocks.append(block)
    return blocks


def _messages(messages: Any) -> tuple[str, list[Json]]:
    """(system text, alternating turns). Consecutive same-role turns are merged, because
    Anthropic requires user/assistant to alternate and tool results arrive as user turns."""
    if not isinstance(messages, list) or not messages:
        raise TranslationError("messages must be a non-empty list")
    system: list[str] = []
    turns: list[Json] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise TranslationError(f"{where}: must be an object")
        if message.get("name") not in (None, ""):
            raise TranslationError(f"parameter '{where}.name' is not supported by Anthropic")
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            if text := text_content(content, f"{where}.content"):
                system.append(text)
            continue
        if role == "user":
            blocks = _blocks(content, f"{where}.content")
        elif role == "assistant":
            blocks = _blocks(content, f"{where}.content")
            if message.get("tool_calls"):
                blocks += _tool_uses(message["tool_calls"], f"{where}.tool_calls")
        elif role == "tool":
            if not isinstance(message.get("tool_call_id"), str):
                raise TranslationError(f"{where}: tool_call_id is missing")
            text = text_content(content, f"{where}.content")
            result = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
            blocks, role = [result | {"content": text}], "user"
        else:
            raise TranslationError(f"{where}: unsupported role {role!r}")
        if not blocks:
            raise TranslationError(f"{where}: content is empty")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise TranslationError("messages has no user or assistant message")
    for turn in turns:  # a lone text block reads better as a plain string
        if len(turn["content"]) == 1 and turn["content"][0]["type"] == "text":
            turn["content"] = turn["content"][0]["text"]
    return "\n\n".join(system), turns


def _tools(tools: Any) -> list[Json]:
    if not isinstance(tools, list):
        raise TranslationError("tools must be a list")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(fn, Mapping) or tool.get("type") != "function":
            raise TranslationError(f"tools[{i}]: only function tools are supported")
        if not isinstance(fn.get("name"), str):
            raise TranslationError(f"tools[{i}]: function.name is missing")
        schema = fn.get("parameters") or {"type": "object", "properties": {}}
        item: Json = {"name": fn["name"], "input_schema": schema}
        if isinstance(fn.get("description"), str):
            item["description"] = fn["description"]
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise TranslationError(f"tools[{i}]: function.strict must be a boolean")
        if strict:  # false is Anthropic's default: nothing to send
            item["strict"] = True
        out.append(item)
    return out


def _tool_choice(choice: Any, parallel: Any) -> Json | None:
    if choice is None:
        out: Json | None = None
    elif isinstance(choice, str) and choice in _TOOL_CHOICE:
        out = {"type": _TOOL_CHOICE[choice]}
    elif isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        out = {"type": "tool", "name": choice["function"].get("name")}
    else:
        raise TranslationError("tool_choice must be auto, required, none or a function")
    if parallel is False and (out is None or out["type"] != "none"):
        out = (out or {"type": "auto"}) | {"disable_parallel_tool_use": True}
    return out


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TranslationError(f"{name} must be a number")
    return value


def _max_tokens(body: Mapping[str, Any], default: int | None) -> int:
    # max_completion_tokens wins; an explicit null in either falls through to the other.
    names = ("max_completion_tokens", "max_tokens")
    value = next((body[n] for n in names if body.get(n) is not None), default)
    if value is None:
        raise TranslationError(
            "max_tokens is required by Anthropic: set max_completion_tokens or max_tokens, "
            "or configure default_max_tokens for the provider"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TranslationError("max_tokens must be a positive integer")
    return value


def _output_format(fmt: Any) -> Json | None:
    """`response_format` as Anthropic's `output_config.format`; None for plain text."""
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        raise TranslationError(
            "response_format json_object is not supported by Anthropic (no schema-less JSON "
            "mode): use json_schema"
        )
    if kind != "json_schema":
        raise TranslationError("response_format must be text or json_schema")
    spec = fmt.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
        raise TranslationError("response_format.json_schema.schema must be an object")
    if spec.get("description"):
        raise TranslationError(
            "parameter 'response_format.json_schema.description' is not supported by Anthropic"
        )
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise TranslationError("response_format.json_schema.strict must be a boolean")
    return {"type": "json_schema", "schema": dict(spec["schema"])}


def _refuse_unsupported(body: Mapping[str, Any], version: str) -> None:
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise TranslationError(f"anthropic_version {version!r} is not a YYYY-MM-DD API version")
    if version >= _NO_SAMPLING_SINCE:
        for name in _SAMPLING:
            if body.get(name) is not None:
                raise TranslationError(
                    f"parameter {name!r} is not accepted by Anthropic API version {version} "
                    f"(no sampling parameters since {_NO_SAMPLING_SINCE})"
                )
    if unknown := sorted(k for k in set(body) - _HANDLED - _DROPPED if body[k] is not None):
        raise TranslationError(f"parameter {unknown[0]!r} is not supported by Anthropic")
    if body.get("stream"):
        raise TranslationError("stream is not allowed in a batch")
    if body.get("n") not in (None, 1):
        raise TranslationError("n > 1 is not supported by Anthropic")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise TranslationError("logprobs are not supported by Anthropic")


def chat_to_params(
    body: Mapping[str, Any],
    *,
    default_max_tokens: int | None,
    anthropic_version: str = "2023-06-01",
) -> Json:
    """Anthropic `MessageCreateParams` for one chat.completions request body, as the
    `anthropic-version` the adapter sends accepts it."""
    _refuse_unsupported(body, anthropic_version)
    output_format = _output_format(body.get("response_format"))
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise TranslationError("model is missing")
    system, turns = _messages(body.get("messages"))
    params: Json = {"model": body["model"], "max_tokens": _max_tokens(body, default_max_tokens)}
    params["messages"] = turns
    if system:
        params["system"] = system
    stop = body.get("stop")
    if isinstance(stop, str):
        params["stop_sequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            params["stop_sequences"] = stop
    elif stop is not None:
        raise TranslationError("stop must be a string or a list of strings")
    if (temperature := _number(body, "temperature")) is not None:
        params["temperature"] = min(max(temperature, 0.0), 1.0)  # OpenAI's range is 0-2
    if (top_p := _number(body, "top_p")) is not None:
        params["top_p"] = top_p
    if body.get("tools"):
        params["tools"] = _tools(body["tools"])
    if (choice := _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))) and (
        "tools" in params or choice["type"] == "none"
    ):
        params["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        params["metadata"] = {"user_id": body["user"]}
    if output_format is not None:
        params["output_config"] = {"format": output_format}
    return params
