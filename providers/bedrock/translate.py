"""OpenAI batch lines -> Bedrock batch records, one translation per model family.

Pure functions, no I/O. Each record is `{"recordId": <custom_id>, "modelInput": ...}`
(user guide, "Format and upload your batch inference data"); `modelInput` is the body the
job's invocation type takes:

- Claude (`anthropic.claude-*`, InvokeModel jobs): the Anthropic Messages body of
  `providers.anthropic_params.chat_to_params`, with `anthropic_version:
  "bedrock-2023-05-31"` and no `model` (the job names it) or `metadata` (not in Bedrock's
  Claude Messages parameters). Images must be base64: Bedrock's Messages body has no URL
  image source.
- Nova, Llama and the other Converse models (`modelInvocationType: "Converse"`): the
  Converse request body (API reference, `Converse`): `messages`, `system`,
  `inferenceConfig`, `outputConfig`. The batch docs say Converse jobs don't support tool
  calling (records with `toolConfig` fail with 400), so a line with tools is refused here.
- Titan embeddings (`amazon.titan-embed-*`): `{inputText, dimensions, normalize}` (V2;
  V1 takes only `inputText`, the image model `embeddingConfig.outputEmbeddingLength`).
- Cohere Embed (`cohere.embed-*`): `{texts, input_type, ...}`. OpenAI has no
  `input_type`; a line may set Cohere's own (`body.input_type`), else `search_document`.

A line that has no faithful form raises `LineError` (the create fails with a 400 naming
the line) instead of coming back as a different answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from providers.anthropic_params import TranslationError, chat_to_params, text_content
from providers.bedrock.jobs import Family
from providers.lines import LineError

__all__ = [
    "BEDROCK_ANTHROPIC_VERSION",
    "claude_input",
    "cohere_input",
    "converse_input",
    "record_transform",
    "titan_input",
]

Json = dict[str, Any]
BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"

# Hints that cannot change what a correct answer is, with no Converse equivalent.
_DROPPED = frozenset(
    {"seed", "presence_penalty", "frequency_penalty", "logit_bias", "store", "metadata"}
    | {"service_tier", "stream_options", "user", "parallel_tool_calls"}
)
_HANDLED = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature"}
    | {"top_p", "response_format", "stream", "n", "logprobs", "top_logprobs", "tools"}
    | {"tool_choice"}
)
_DATA_URL = re.compile(r"data:image/(png|jpeg|jpg|gif|webp);base64,([A-Za-z0-9+/=\s]+)")
_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
_COHERE_MAX_TEXTS = 96


def record_transform(
    family: Family, model_id: str, *, default_max_tokens: int | None = None
) -> Callable[[Json], Json]:
    """The function `providers.lines.rewritten` applies to each input line."""
    build: Callable[[Json], Json]
    if family == "anthropic":

        def build(body: Json) -> Json:
            return claude_input(body, default_max_tokens=default_max_tokens)

    elif family == "converse":
        build = converse_input
    elif family == "titan-embed":

        def build(body: Json) -> Json:
            return titan_input(body, model_id)

    else:

        def build(body: Json) -> Json:
            return cohere_input(body, model_id)

    def transform(line: Json) -> Json:
        body = line.get("body")
        if not isinstance(body, dict):
            raise LineError("body must be an object")
        return {"recordId": line.get("custom_id"), "modelInput": build(body)}

    return transform


# --- Claude (InvokeModel, Anthropic Messages) ---------------------------------------


def claude_input(body: Mapping[str, Any], *, default_max_tokens: int | None = None) -> Json:
    """A chat.completions body as the Messages body Bedrock's Claude models take."""
    try:
        params = chat_to_params(body, default_max_tokens=default_max_tokens)
    except TranslationError as exc:
        raise LineError(str(exc)) from None
    params.pop("model", None)
    params.pop("metadata", None)
    for i, turn in enumerate(params["messages"]):
        for block in turn["content"] if isinstance(turn["content"], list) else ():
            if block.get("type") == "image" and block["source"].get("type") != "base64":
                raise LineError(
                    f"messages[{i}]: Bedrock takes images as base64 data URLs, not links"
                )
    return {"anthropic_version": BEDROCK_ANTHROPIC_VERSION, **params}


# --- Converse (Nova, Llama, ...) ----------------------------------------------------


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if unknown := sorted(k for k in set(body) - _HANDLED - _DROPPED if body[k] is not None):
        raise LineError(f"parameter {unknown[0]!r} is not supported by Bedrock Converse")
    if body.get("stream"):
        raise LineError("stream is not allowed in a batch")
    if body.get("n") not in (None, 1):
        raise LineError("n > 1 is not supported by Bedrock Converse")
    if body.get("logprobs") or body.get("top_logprobs") is not None:
        raise LineError("logprobs are not supported by Bedrock Converse")
    if body.get("tools") or body.get("tool_choice") not in (None, "none"):
        raise LineError(
            "tools are not supported by Bedrock batch jobs of the Converse type "
            "(records with toolConfig fail); Claude models take them"
        )


def _image(part: Mapping[str, Any], where: str) -> Json:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, Mapping) else image
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise LineError(
            f"{where}: Bedrock Converse takes images as base64 data URLs "
            "(png, jpeg, gif or webp), not links"
        )
    kind = "jpeg" if match[1] == "jpg" else match[1]
    return {"image": {"format": kind, "source": {"bytes": re.sub(r"\s", "", match[2])}}}


def _blocks(content: Any, where: str, *, images: bool) -> list[Json]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise LineError(f"{where}: content must be a string or a list of parts")
    blocks: list[Json] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            if text := str(part.get("text", "")):
                blocks.append({"text": text})
        elif kind == "image_url" and images:
            blocks.append(_image(part, f"{where}[{i}]"))
        else:
            raise LineError(f"{where}[{i}]: unsupported content part type {kind!r}")
    return blocks


def _messages(messages: Any) -> tuple[list[Json], list[Json]]:
    """(system blocks, turns): consecutive same-role turns merged, as Converse wants
    user and assistant to alternate, starting with the user."""
    if not isinstance(messages, list) or not messages:
        raise LineError("messages must be a non-empty list")
    system: list[Json] = []
    turns: list[Json] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, Mapping):
            raise LineError(f"{where}: must be an object")
        if message.get("name") not in (None, ""):
            raise LineError(f"parameter '{where}.name' is not supported by Bedrock Converse")
        role = message.get("role")
        if role in ("system", "developer"):
            if text := text_content(message.get("content"), f"{where}.content"):
                system.append({"text": text})
            continue
        if role == "tool" or message.get("tool_calls"):
            raise LineError(f"{where}: tool calls are not supported by Bedrock Converse batches")
        if role not in ("user", "assistant"):
            raise LineError(f"{where}: unsupported role {role!r}")
        blocks = _blocks(message.get("content"), f"{where}.content", images=role == "user")
        if not blocks:
            raise LineError(f"{where}: content is empty")
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    if not turns or turns[0]["role"] != "user":
        raise LineError("messages must start with a user message (after any system message)")
    return system, turns


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LineError(f"{name} must be a number")
    return value


def _inference_config(body: Mapping[str, Any]) -> Json:
    config: Json = {}
    names = ("max_completion_tokens", "max_tokens")
    tokens = next((body[n] for n in names if body.get(n) is not None), None)
    if tokens is not None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise LineError("max_tokens must be a positive integer")
        config["maxTokens"] = tokens
    if (temperature := _number(body, "temperature")) is not None:
        config["temperature"] = min(max(temperature, 0.0), 1.0)  # OpenAI's range is 0-2
    if (top_p := _number(body, "top_p")) is not None:
        config["topP"] = top_p
    stop = body.get("stop")
    if isinstance(stop, str):
        config["stopSequences"] = [stop]
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        if stop:
            config["stopSequences"] = stop
    elif stop is not None:
        raise LineError("stop must be a string or a list of strings")
    return config


def _output_config(fmt: Any) -> Json | None:
    """`response_format` as Converse's `outputConfig.textFormat` (structured outputs; the
    schema goes as a JSON string, as the API's JsonSchemaDefinition wants)."""
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if fmt is None or kind == "text":
        return None
    if kind == "json_object":
        raise LineError("response_format json_object has no Bedrock Converse form: use json_schema")
    spec = fmt.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
        raise LineError("response_format must be text or json_schema with a schema object")
    definition: Json = {"schema": json.dumps(spec["schema"], ensure_ascii=False)}
    for name in ("name", "description"):
        if isinstance(spec.get(name), str) and spec[name]:
            definition[name] = spec[name]
    structure = {"jsonSchema": definition}
    return {"textFormat": {"type": "json_schema", "structure": structure}}


def converse_input(body: Mapping[str, Any]) -> Json:
    """A chat.completions body as a Converse request body (no modelId: the job's)."""
    _refuse_unsupported(body)
    output = _output_config(body.get("response_format"))
    system, turns = _messages(body.get("messages"))
    request: Json = {"messages": turns}
    if system:
        request["system"] = system
    if config := _inference_config(body):
        request["inferenceConfig"] = config
    if output is not None:
        request["outputConfig"] = output
    return request


# --- embeddings ----------------------------------------------------------------------


def _embedding_params(body: Mapping[str, Any], allowed: frozenset[str], who: str) -> None:
    for name, value in body.items():
        if value is None or name in allowed or name in ("model", "input", "user"):
            continue
        if name == "encoding_format" and value == "float":
            continue
        raise LineError(f"parameter {name!r} is not supported by {who} batch embeddings")


def _texts(value: Any, most: int, who: str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts) or not texts:
        raise LineError(f"'input' must be text (a string or a list of strings) for {who}")
    if len(texts) > most:
        raise LineError(f"{who} embeds at most {most} input(s) per request, not {len(texts)}")
    return texts


def _dimensions(body: Mapping[str, Any], allowed: tuple[int, ...], who: str) -> int | None:
    value = body.get("dimensions")
    if value is None:
        return None
    if value not in allowed or isinstance(value, bool):
        choices = ", ".join(map(str, allowed)) if allowed else "none"
        raise LineError(f"dimensions {value!r} is not one {who} takes ({choices})")
    return int(value)


def titan_input(body: Mapping[str, Any], model_id: str) -> Json:
    """An embeddings body as a Titan Embeddings body (one text per record)."""
    who = "Titan"
    _embedding_params(body, frozenset({"dimensions"}), who)
    (text,) = _texts(body.get("input"), 1, who)
    request: Json = {"inputText": text}
    if "titan-embed-text-v2" in model_id:
        if (dims := _dimensions(body, (256, 512, 1024), who)) is not None:
            request["dimensions"] = dims
        request["normalize"] = True  # OpenAI's embeddings are unit length
    elif "titan-embed-image" in model_id:
        if (dims := _dimensions(body, (256, 384, 1024), who)) is not None:
            request["embeddingConfig"] = {"outputEmbeddingLength": dims}
    else:
        _dimensions(body, (), "Titan Text Embeddings G1")
    return request


def cohere_input(body: Mapping[str, Any], model_id: str) -> Json:
    """An embeddings body as a Cohere Embed body (up to 96 texts per record)."""
    who = "Cohere Embed"
    _embedding_params(body, frozenset({"dimensions", "input_type"}), who)
    texts = _texts(body.get("input"), _COHERE_MAX_TEXTS, who)
    input_type = body.get("input_type") or "search_document"
    if input_type not in _INPUT_TYPES:
        raise LineError(f"input_type must be one of {', '.join(sorted(_INPUT_TYPES))}")
    request: Json = {"texts": texts, "input_type": input_type}
    if "embed-v4" in model_id:
        request["embedding_types"] = ["float"]
        if (dims := _dimensions(body, (256, 512, 1024, 1536), who)) is not None:
            request["output_dimension"] = dims
    else:
        _dimensions(body, (), "Cohere Embed v3")
    return request
