"""Pure translations between OpenAI's batch lines and Vertex AI's Gemini batch lines.

Input ("Batch inference from Cloud Storage", Prepare your inputs): one JSON object per
line, `{"request": GenerateContentRequest}`; the request is the Gemini API's, so the body
translation is `providers.gemini.translate.chat_request`, shared. Vertex lines have no
key and the output order is not guaranteed, so each request carries its line number in
its `labels` (GenerateContentRequest.labels: values of lowercase letters, digits, `_` and
`-`), which Vertex echoes: every output line holds the request it answers.

Output (Retrieve batch output): `{"status": "", "processed_time", "request", "response":
GenerateContentResponse}` for a line that ran; a line that failed has no `response` and a
non-empty `status`, a phrase and Google's error body, e.g. `Bad Request: {"error": {"code":
400, "message": "...", "status": "INVALID_ARGUMENT"}}`. Both become OpenAI batch output
lines (`providers.results`) with `chat.completion` bodies and `usage` (shared with gemini).

Embeddings ("Get batch text embeddings predictions"): input lines are instances
`{"content": text}` and output lines `{"instance", "predictions": [{"embeddings":
{"statistics": {"token_count", "truncated"}, "values"}}], "status"}`. An instance has no
room for a key (the model reads it), so an output line is matched back by a hash of the
instance it echoes; lines with the same content get the same embedding, so which of their
custom_ids gets which answer makes no difference.
"""

from __future__ import annotations

import hashlib
import http
from collections.abc import Callable
from typing import Any

import orjson

from providers.gemini.translate import chat_request, completion, embedding_body, error_status
from providers.lines import LineError
from providers.results import error_line, response_line, stable_hex

__all__ = [
    "LINE_LABEL",
    "embedding_instance",
    "embedding_result_line",
    "instance_key",
    "line_index",
    "never_ran_line",
    "request_line",
    "result_line",
    "status_error",
]

Json = dict[str, Any]
Scrub = Callable[[str], str]

LINE_LABEL = "batch_gateway_line"
_PHRASES = {status.phrase.lower(): status.value for status in http.HTTPStatus}


def request_line(line: Json, index: int) -> Json:
    """One OpenAI batch input line as a Vertex batch line, keyed by its 0-based index."""
    body = line.get("body")
    if not isinstance(body, dict):
        raise LineError("'body' must be an object")
    request = chat_request(body)
    request["labels"] = {LINE_LABEL: str(index)}
    return {"request": request}


def line_index(item: Json) -> int | None:
    """The index an output line's echoed request carries, if any."""
    request = item.get("request")
    labels = request.get("labels") if isinstance(request, dict) else None
    value = labels.get(LINE_LABEL) if isinstance(labels, dict) else None
    if isinstance(value, str) and value.isdigit() and len(value) < 12:
        return int(value)
    return None


def status_error(status: str) -> Json:
    """A line's `status` text as a google.rpc.Status-like object: the JSON error body it
    holds, else its HTTP phrase ("Bad Request: ...") and the text as the message."""
    start = status.find("{")
    if start >= 0:
        try:
            body = orjson.loads(status[start:])
        except orjson.JSONDecodeError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return error
    phrase = status.partition(":")[0].strip().lower()
    return {"code": _PHRASES.get(phrase, 500), "message": status}


def result_line(
    item: Json, custom_id: str | None, *, model: str, created: int, seed: str, scrub: Scrub
) -> Json:
    """One Vertex output line as an OpenAI batch output line; ids are derived from `seed`
    (the job) and the custom_id, so every read gives the same bytes."""
    line_id = f"batch_req_{stable_hex(seed, custom_id, 'line')}"
    request_id = f"req_{stable_hex(seed, custom_id, 'req')}"
    response, status = item.get("response"), item.get("status")
    if isinstance(response, dict) and not status:
        # Ids of our own: Vertex's responseId is an upstream id.
        completion_id = f"chatcmpl-{stable_hex(seed, custom_id, 'completion')}"
        body = completion(response, model=model, completion_id=completion_id, created=created)
        return response_line(line_id, custom_id, 200, request_id, body)
    error = status_error(status) if isinstance(status, str) and status else {}
    code, body = error_status(error or {"code": 500, "message": "no response"}, scrub)
    return response_line(line_id, custom_id, code, request_id, body)


def never_ran_line(custom_id: str, seed: str, error: tuple[str, str]) -> Json:
    """A request the job ended without running (cancelled or expired)."""
    return error_line(f"batch_req_{stable_hex(seed, custom_id, 'line')}", custom_id, error)


# --- embeddings ---------------------------------------------------------------------


def embedding_instance(line: Json) -> Json:
    """One OpenAI embeddings line as a Vertex text-embedding instance: one input, one
    embedding (`dimensions` is a job parameter at Vertex, not a line's, so it is refused)."""
    body = line.get("body")
    if not isinstance(body, dict):
        raise LineError("'body' must be an object")
    for name, value in body.items():
        if value is None or name in ("model", "input", "user"):
            continue
        if name != "encoding_format" or value != "float":
            raise LineError(f"'{name}' is not supported by Vertex AI batch embeddings")
    text = body.get("input")
    if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
        text = text[0]
    if not isinstance(text, str) or not text:
        raise LineError("'input' must be one string (Vertex embeds one input per instance)")
    return {"content": text}


def instance_key(instance: Any) -> str:
    """The same key for an instance and its echo, whatever the echo's key order."""
    canonical = orjson.dumps(instance, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()[:32]


def embedding_result_line(
    item: Json, custom_id: str | None, *, model: str, seed: str, scrub: Scrub
) -> Json:
    """One Vertex embeddings output line as an OpenAI batch output line."""
    line_id = f"batch_req_{stable_hex(seed, custom_id, 'line')}"
    request_id = f"req_{stable_hex(seed, custom_id, 'req')}"
    predictions, status = item.get("predictions"), item.get("status")
    first = predictions[0] if isinstance(predictions, list) and predictions else None
    embeddings = first.get("embeddings") if isinstance(first, dict) else None
    if isinstance(embeddings, dict) and not status:
        statistics = embeddings.get("statistics")
        count = statistics.get("token_count") if isinstance(statistics, dict) else None
        tokens = int(count) if isinstance(count, int | float) and count >= 0 else 0
        body = embedding_body({"embedding": embeddings}, model, tokens)
        return response_line(line_id, custom_id, 200, request_id, body)
    error = status_error(status) if isinstance(status, str) and status else {}
    code, body = error_status(error or {"code": 500, "message": "no prediction"}, scrub)
    return response_line(line_id, custom_id, code, request_id, body)
