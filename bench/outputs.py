"""Result files in each provider's shape, for items 9-11, made as blocks of whole lines.

- OpenAI batch output lines (what the accountant reads): chat completions with `usage`,
  one line in 100 a 400 error.
- Bedrock `.out` records (user guide, "View the results of a batch inference job"):
  `{"recordId", "modelInput", "modelOutput"}` with Claude's Messages answer as the output,
  one record in 100 `{"recordId", "modelInput", "error": {"errorCode", "errorMessage"}}`.
- Vertex AI prediction lines (Gemini, "Batch inference from Cloud Storage", Retrieve batch
  output): `{"status": "", "processed_time", "request", "response"}`, the request echoing
  the gateway's line label, one line in 100 failed (`status` holds Google's error body).

Line `i` answers input line `i`, whose custom_id is `req-%07d` (bench/data.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

BLOCK = 1 << 20
_WORDS = "Batch results are read line by line and never held whole. "
LINE_LABEL = "batch_gateway_line"  # providers/vertex/translate.py: the label Vertex echoes


def _text(size: int) -> str:
    return (_WORDS * (size // len(_WORDS) + 1))[: max(0, size)]


def custom_id(i: int) -> str:
    return f"req-{i:07d}"


def _blocks(lines: Iterator[bytes], size: int) -> Iterator[bytes]:
    """Whole lines gathered into blocks of about BLOCK bytes, until `size` bytes."""
    block, total = bytearray(), 0
    for line in lines:
        block += line
        total += len(line)
        if len(block) >= BLOCK or total >= size:
            yield bytes(block)
            block.clear()
        if total >= size:
            return


def openai_line(i: int, model: str = "gpt-4o-mini", cid: str | None = None) -> bytes:
    """OpenAI batch output line `i` (~1 KB), answering `cid` (default: input line `i`'s);
    a 400 error when `i % 100 == 99`."""
    if i % 100 == 99:
        error = {"message": "Invalid 'messages': empty.", "type": "invalid_request_error"}
        body: dict[str, object] = {"error": {**error, "param": None, "code": None}}
        status = 400
    else:
        body = {
            "id": f"chatcmpl-{i:010d}",
            "object": "chat.completion",
            "created": 1_767_225_600,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _text(600)},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": 900 + i % 50,
                "completion_tokens": 120 + i % 7,
                "total_tokens": 1020 + i % 50 + i % 7,
                "prompt_tokens_details": {"cached_tokens": 128 * (i % 3)},
                "completion_tokens_details": {"reasoning_tokens": 0},
            },
        }
        status = 200
    response = {"status_code": status, "request_id": f"req_{i:012x}", "body": body}
    line = {
        "id": f"batch_req_{i:012x}",
        "custom_id": custom_id(i) if cid is None else cid,
        "response": response,
        "error": None,
    }
    return orjson.dumps(line) + b"\n"


def openai_output(size: int, model: str = "gpt-4o-mini") -> Iterator[bytes]:
    """About `size` bytes of OpenAI batch output lines (~1 KB each)."""

    def lines() -> Iterator[bytes]:
        i = 0
        while True:
            yield openai_line(i, model)
            i += 1

    return _blocks(lines(), size)


def write_openai_output(path: Path, size: int) -> tuple[int, int]:
    """(bytes, lines) of an OpenAI batch output file of about `size` bytes."""
    lines = 0
    with open(path, "wb") as fh:
        for block in openai_output(size):
            fh.write(block)
            lines += block.count(b"\n")
    return path.stat().st_size, lines


def bedrock_out(size: int, record_bytes: int, model_id: str) -> Iterator[bytes]:
    """About `size` bytes of a Claude (InvokeModel) job's `.out` records."""
    answer = _text(min(3000, record_bytes // 5))
    question = ""

    def lines() -> Iterator[bytes]:
        nonlocal question
        i = 0
        while True:
            model_input = {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": question}],
            }
            record: dict[str, object] = {"recordId": custom_id(i), "modelInput": model_input}
            if i % 100 == 99:
                message = "Malformed input request: messages: text content blocks must be non-empty"
                record["error"] = {"errorCode": 400, "errorMessage": message}
            else:
                record["modelOutput"] = {
                    "id": f"msg_bdrk_{i:024x}",
                    "type": "message",
                    "role": "assistant",
                    "model": model_id,
                    "content": [{"type": "text", "text": answer}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": len(question) // 4,
                        "output_tokens": len(answer) // 4,
                    },
                }
            line = orjson.dumps(record) + b"\n"
            if not question:  # the first record sizes the question: records of `record_bytes`
                question = _text(max(100, record_bytes - len(line)))
                continue
            yield line
            i += 1

    return _blocks(lines(), size)


def vertex_predictions(size: int, line_bytes: int, model: str) -> Iterator[bytes]:
    """About `size` bytes of a Gemini batch job's prediction lines."""
    answer = _text(min(1500, line_bytes // 4))
    question = ""

    def lines() -> Iterator[bytes]:
        nonlocal question
        i = 0
        while True:
            request = {
                "contents": [{"role": "user", "parts": [{"text": question}]}],
                "generationConfig": {"maxOutputTokens": 1024},
                "labels": {LINE_LABEL: str(i)},
            }
            processed = "2026-12-06T10:00:00.000000Z"
            item: dict[str, object]
            if i % 100 == 99:
                error = {"code": 400, "message": "Invalid request.", "status": "INVALID_ARGUMENT"}
                status = "Bad Request: " + orjson.dumps({"error": error}).decode()
                item = {"status": status, "processed_time": processed, "request": request}
            else:
                response = {
                    "candidates": [
                        {
                            "content": {"role": "model", "parts": [{"text": answer}]},
                            "finishReason": "STOP",
                            "avgLogprobs": -0.12,
                        }
                    ],
                    "modelVersion": f"{model}@default",
                    "usageMetadata": {
                        "promptTokenCount": len(question) // 4,
                        "candidatesTokenCount": len(answer) // 4,
                        "totalTokenCount": (len(question) + len(answer)) // 4,
                    },
                    "createTime": processed,
                    "responseId": f"{i:016x}",
                }
                item = {
                    "status": "",
                    "processed_time": processed,
                    "request": request,
                    "response": response,
                }
            line = orjson.dumps(item) + b"\n"
            if not question:  # the first line sizes the question: lines of `line_bytes`
                question = _text(max(100, line_bytes - len(line)))
                continue
            yield line
            i += 1

    return _blocks(lines(), size)
