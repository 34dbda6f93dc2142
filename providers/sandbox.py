"""Built-in offline provider that plays OpenAI's batch lifecycle from stored state.

The gateway, its tests and the demo need an upstream that behaves like a real one
(statuses advancing over time, output + error files, partial results on cancel)
without network or keys. The status is derived from wall clock time and the batch's
state, so a restart (or another replica) carries on and no background task is needed.

Kept in the gateway's stores, nothing on local disk: input copies and result files via
`providers.stored_files` (`file-sbx…`), each batch's state under its id, and under
`batches` the recent tagged batches (the tag lookup after an ambiguous create). Result
files are written the first time a finished batch is read, streaming its input copy.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import json
import re
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from providers.base import (
    CLOCK_SKEW_SECONDS,
    TERMINAL_STATUSES,
    BaseProvider,
    BatchRequest,
    Lookup,
    ProviderError,
    RequestCounts,
    UpstreamBatch,
)
from providers.config import ProviderConfig
from providers.context import ProviderContext, ProviderType
from providers.results import (
    CANCELLED,
    batch_usage,
    error_body,
    error_line,
    response_line,
    stable_hex,
)
from providers.stored_files import (
    ResultSpool,
    StoredFileMethods,
    StoredFiles,
)

__all__ = ["SandboxProvider", "embedding_vector", "line_error", "result_body", "result_line"]

EXPIRY_SECONDS = 86_400
_BATCH_ID = re.compile(r"batch_sbx[0-9a-f]{24}")
# The state key listing recent tagged batches, and how long a batch stays listed.
_INDEX = "batches"
INDEX_SECONDS = 7 * 86_400
LEASE_SECONDS, LEASE_ATTEMPTS = 10.0, 500  # about 10 s of 20 ms waits
_REQUIRED = {  # what each endpoint refuses to run without
    "/v1/chat/completions": ("model", "messages"),
    "/v1/embeddings": ("model", "input"),
    "/v1/completions": ("model", "prompt"),
    "/v1/responses": ("model", "input"),
    "/v1/moderations": ("input",),
}
Refusal = tuple[int, str, str | None, str | None]  # status, message, param, code


def _text(value: Any) -> str:
    """Flatten OpenAI content shapes (str, parts list, message dicts) into plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(t for t in map(_text, value) if t)
    if isinstance(value, dict):
        return _text(value.get("text", value.get("content", "")))
    return ""


def _words(text: str) -> int:
    return len(text.split())


def _last_user_text(items: Any) -> str:
    if not isinstance(items, list) or not items:
        return _text(items)
    users = [m for m in items if isinstance(m, dict) and m.get("role") == "user"]
    return _text((users or items)[-1])


def _inputs(value: Any) -> list[str]:
    """A string or a list of inputs; a token array counts as one input."""
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return [value if isinstance(value, str) else json.dumps(value)]


def _chat_usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def embedding_vector(text: str, dimensions: int = 8) -> list[float]:
    """Floats in [-1, 1) from sha256 of the text: same text, same vector."""
    out: list[float] = []
    while len(out) < dimensions:
        block = len(out) // 8
        digest = hashlib.sha256((f"{block}:{text}" if block else text).encode()).digest()
        out.extend(round(int.from_bytes(digest[i : i + 4]) / 2**31 - 1, 6) for i in range(0, 32, 4))
    return out[:dimensions]


def line_error(endpoint: str, body: Any) -> Refusal | None:
    """Why the real endpoint would refuse this request body; None if it would run."""
    if not isinstance(body, dict):
        return 400, "The request body must be a JSON object.", "body", None
    for param in _REQUIRED.get(endpoint, ()):
        if not body.get(param) or (param == "messages" and not isinstance(body[param], list)):
            message = f"Missing required parameter: '{param}'."
            return 400, message, param, "missing_required_parameter"
    model = body.get("model")
    if isinstance(model, str) and model.startswith("unknown"):
        message = f"The model `{model}` does not exist or you do not have access to it."
        return 404, message, None, "model_not_found"
    return None


def result_body(endpoint: str, body: dict[str, Any], *, seed: str, created: int) -> dict[str, Any]:
    """The 200 body the real endpoint would return for an accepted request."""
    model = body.get("model")
    if endpoint == "/v1/chat/completions":
        reply = f"Sandbox reply to: {_last_user_text(body['messages'])[:200]}"
        message = {"role": "assistant", "content": reply, "refusal": None}
        choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
        usage = _chat_usage(max(1, _words(_text(body["messages"]))), _words(reply))
        head = {"id": f"chatcmpl-{seed}", "object": "chat.completion", "created": created}
        return {**head, "model": model, "choices": [choice], "usage": usage}
    if endpoint == "/v1/embeddings":
        texts = _inputs(body["input"])
        dims = body.get("dimensions")
        dims = dims if type(dims) is int and 0 < dims <= 8192 else 8
        data = [
            {"object": "embedding", "index": i, "embedding": embedding_vector(t, dims)}
            for i, t in enumerate(texts)
        ]
        tokens = sum(max(1, _words(t)) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return {"object": "list", "data": data, "model": model, "usage": usage}
    if endpoint == "/v1/completions":
        prompts = _inputs(body["prompt"])
        texts = [f"Sandbox completion of: {p[:200]}" for p in prompts]
        choices = [
            {"text": t, "index": i, "logprobs": None, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
        usage = _chat_usage(sum(max(1, _words(p)) for p in prompts), sum(map(_words, texts)))
        head = {"id": f"cmpl-{seed}", "object": "text_completion", "created": created}
        return {**head, "model": model, "choices": choices, "usage": usage}
    if endpoint == "/v1/responses":
        text = f"Sandbox reply to: {_last_user_text(body['input'])[:200]}"
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"type": "message", "id": f"msg_{seed}", "status": "completed", "role": "assistant"}
        prompt = _text(body["input"]) + " " + _text(body.get("instructions"))
        usage = batch_usage(max(1, _words(prompt)), _words(text))
        head = {"id": f"resp_{seed}", "object": "response", "created_at": created}
        output = [{**item, "content": [part]}]
        return {**head, "status": "completed", "model": model, "output": output, "usage": usage}
    if endpoint == "/v1/moderations":
        result = {"flagged": False, "categories": {}, "category_scores": {}}
        results = [dict(result) for _ in _inputs(body["input"])]
        return {
            "id": f"modr-{seed}",
            "model": model or "omni-moderation-latest",
            "results": results,
        }
    return {"object": "sandbox.result"}


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _refusal(obj: dict[str, Any] | None, endpoint: str) -> Refusal | None:
    if obj is None:
        return 400, "This line is not a JSON object.", None, None
    return line_error(endpoint, obj.get("body"))


def result_line(
    batch_id: str, index: int, endpoint: str, raw: bytes | str, *, created: int, run: bool = True
) -> tuple[dict[str, Any], bool]:
    """One input line as its output/error line (True: output file); run=False means cancelled."""
    obj = _parse(raw)
    line_id = f"batch_req_{stable_hex(batch_id, index, 'line')}"
    custom_id = obj.get("custom_id") if obj else None
    if not run:
        return error_line(line_id, custom_id, CANCELLED), False
    request_id = f"req_{stable_hex(batch_id, index, 'req')}"
    refusal = _refusal(obj, endpoint)
    if refusal is None:
        assert obj is not None  # _refusal refuses anything but an object
        body = result_body(
            endpoint, obj["body"], seed=stable_hex(batch_id, index, "body"), created=created
        )
        return response_line(line_id, custom_id, 200, request_id, body), True
    status, message, param, code = refusal
    body = error_body(message, "invalid_request_error", param, code)
    return response_line(line_id, custom_id, status, request_id, body), False


def timeline(state: dict[str, Any], t: float) -> tuple[str, dict[str, int | None], int]:
    """(status, timestamps, lines done) of a batch at time t, derived only from its state."""
    n, line_s, cancel = state["line_count"], state["line_seconds"], state["cancelling_at"]
    start = state["created"] + state["validate_seconds"]
    run_end = start + line_s * n
    final_end = run_end + state["finalize_seconds"]
    at = t if cancel is None else min(t, cancel)
    ts: dict[str, int | None] = {"expires_at": state["created_at"] + EXPIRY_SECONDS}
    if at >= start:
        ts["in_progress_at"] = int(start)
    if at >= run_end:
        ts["finalizing_at"] = int(run_end)
    done = 0 if at < start else n if line_s <= 0 else min(n, int((at - start) / line_s))
    if cancel is not None:
        ts["cancelling_at"] = int(cancel)
        if t < cancel + state["cancel_seconds"]:
            return "cancelling", ts, done
        ts["cancelled_at"] = int(cancel + state["cancel_seconds"])
        return "cancelled", ts, done
    if t >= final_end:
        ts["completed_at"] = int(final_end)
        return "completed", ts, n
    return ("validating" if t < start else "in_progress" if t < run_end else "finalizing"), ts, done


async def _scan(
    files: StoredFiles, file_id: str, endpoint: str
) -> tuple[int, str | None, list[int]]:
    """Line count, first line's model and the indices that will fail, fixed at creation."""
    count, model, failed = 0, None, []
    async for _, raw in files.lines(file_id):
        obj = _parse(raw)
        body = obj.get("body") if obj else None
        if count == 0 and isinstance(body, dict) and isinstance(body.get("model"), str):
            model = body["model"]
        if _refusal(obj, endpoint) is not None:
            failed.append(count)
        count += 1
    return count, model, failed


class SandboxProvider(StoredFileMethods, BaseProvider):
    """Simulated OpenAI batches. Timing settings are copied into each batch at creation,
    so restarting with other settings does not rewrite a running batch's history.

    `legacy_dir` is the folder earlier versions kept everything in; what it holds is
    imported into the stores by the first call, then the folder is renamed."""

    lookup: Lookup = "tag"
    legacy_states = _BATCH_ID

    def __init__(
        self,
        context: ProviderContext,
        *,
        legacy_dir: Path | None = None,
        validate_seconds: float = 1.0,
        line_seconds: float = 0.2,
        finalize_seconds: float = 1.0,
        cancel_seconds: float = 1.0,
    ) -> None:
        super().__init__(context.name, context.endpoints)
        self.state = context.state
        self.files = StoredFiles(context, "file-sbx", "the sandbox")
        self.legacy_dir = legacy_dir
        self.timing = {"validate_seconds": validate_seconds, "line_seconds": line_seconds}
        self.timing |= {"finalize_seconds": finalize_seconds, "cancel_seconds": cancel_seconds}
        self._locks: dict[str, asyncio.Lock] = {}
        self._index_lock = asyncio.Lock()

    async def _adopt_legacy(self, state: dict[str, Any]) -> None:
        """A batch state from the legacy folder, stored as `create_batch` stores one."""
        if await self.state.load(state["id"]) is not None:
            return
        state.setdefault("result_files", [self.files.new_id(), self.files.new_id()])
        await self._index_add(state)
        await self.state.save(state["id"], state)

    async def _load(self, batch_id: str) -> dict[str, Any]:
        state = await self.state.load(batch_id) if _BATCH_ID.fullmatch(batch_id) else None
        if state is None:
            raise self.files.not_found("batch")
        return state

    async def _index_add(self, state: dict[str, Any]) -> None:
        """List a tagged batch under `_INDEX` for `tagged_batches` (the state store has no
        listing). The read-modify-write holds the key's lease, so creates on two replicas
        never drop each other's entry; entries older than INDEX_SECONDS are dropped."""
        tag = state.get("gateway_batch_id")
        if not isinstance(tag, str) or state["created_at"] < time.time() - INDEX_SECONDS:
            return
        async with self._index_lock:
            for _ in range(LEASE_ATTEMPTS):
                if await self.state.claim(_INDEX, LEASE_SECONDS):
                    break
                await asyncio.sleep(0.02)
            else:
                raise ProviderError("retryable", "the sandbox's batch index is busy")
            try:
                entries = (await self.state.load(_INDEX) or {}).get("batches", [])
                oldest = time.time() - INDEX_SECONDS
                entries = [e for e in entries if e["created_at"] >= oldest]
                entries.append({"id": state["id"], "created_at": state["created_at"], "tag": tag})
                await self.state.save(_INDEX, {"batches": entries})
            finally:
                await self.state.release(_INDEX)

    async def _generate(self, state: dict[str, Any], done: int) -> dict[str, Any]:
        """Write output/error files: the first `done` lines ran, the rest were cancelled.

        The files' ids were chosen at create and the lines are derived from the state
        alone, so two replicas finishing the same batch write the same files."""
        batch_id, endpoint = state["id"], state["endpoint"]
        created = int(state["created"] + state["validate_seconds"])
        async with ResultSpool(self.files, batch_id, file_ids=state["result_files"]) as spool:
            index = 0
            async for _, raw in self.files.lines(state["input_file_id"]):
                line, _ = result_line(
                    batch_id, index, endpoint, raw, created=created, run=index < done
                )
                await spool.add(line)
                index += 1
            return await spool.publish()

    def _view(
        self, state: dict[str, Any], status: str, ts: dict[str, int | None], done: int
    ) -> UpstreamBatch:
        result = state.get("result") if status in ("completed", "cancelled") else None
        if result is None:  # still running: count the lines done so far, failures known from _scan
            failed = bisect.bisect_left(state["failed_lines"], done)
            result = {"completed": done - failed, "failed": failed}
        return UpstreamBatch(
            id=state["id"],
            status=status,
            output_file_id=result.get("output_file_id"),
            error_file_id=result.get("error_file_id"),
            model=state["model"],
            request_counts=RequestCounts(
                state["line_count"], result["completed"], result["failed"]
            ),
            usage=result.get("usage"),
            timestamps=ts,
        )

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch:
        await self._ready()
        if not self.supports(request.endpoint):
            message = f"The sandbox does not support endpoint '{request.endpoint}'."
            raise ProviderError("bad_request", message)
        await self.get_file(request.input_file_id)
        count, model, failed = await _scan(self.files, request.input_file_id, request.endpoint)
        created = time.time()
        state: dict[str, Any] = {"id": f"batch_sbx{secrets.token_hex(12)}", **asdict(request)}
        state |= {"created": created, "created_at": int(created), "line_count": count}
        state |= {"model": model, "failed_lines": failed, "cancelling_at": None, "result": None}
        state |= {"result_files": [self.files.new_id(), self.files.new_id()]}
        state |= self.timing
        # Listed first: a listed batch without a state does not exist (skipped), while a
        # batch not listed would be missed by a tag lookup after a crash.
        await self._index_add(state)
        await self.state.save(state["id"], state)
        # With zero delays the clock already says "completed"; a new batch still answers validating.
        return self._view(state, "validating", {"expires_at": int(created) + EXPIRY_SECONDS}, 0)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        async with self._locks.setdefault(upstream_id, asyncio.Lock()):
            state = await self._load(upstream_id)
            status, ts, done = timeline(state, time.time())
            if status in ("completed", "cancelled") and state.get("result") is None:
                state["result"] = await self._generate(state, done)
                await self.state.save(upstream_id, state)
            return self._view(state, status, ts, done)

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch:
        await self._ready()
        async with self._locks.setdefault(upstream_id, asyncio.Lock()):
            state = await self._load(upstream_id)
            t = time.time()
            status, ts, done = timeline(state, t)
            if status in TERMINAL_STATUSES:
                raise ProviderError("bad_request", f"Cannot cancel a batch with status '{status}'.")
            if state["cancelling_at"] is None:
                state["cancelling_at"] = t
                await self.state.save(upstream_id, state)
                status, ts, done = timeline(state, t)
            ts.pop("cancelled_at", None)  # even with cancel_seconds=0 the call answers "cancelling"
            return self._view(state, "cancelling", ts, done)

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        await self._ready()
        found = []
        for entry in (await self.state.load(_INDEX) or {}).get("batches", []):
            if entry["created_at"] < since - CLOCK_SKEW_SECONDS:
                continue
            try:
                found.append((entry["tag"], await self.get_batch(entry["id"])))
            except ProviderError as exc:
                if exc.kind != "not_found":  # listed, but its create never finished
                    raise
        return found


class SandboxProviderConfig(ProviderConfig):
    type: Literal["sandbox"]
    # Where earlier versions kept the sandbox's files: imported once, then renamed.
    dir: Path = Path("./data/sandbox")
    validate_seconds: float = Field(1.0, ge=0)
    line_seconds: float = Field(0.2, ge=0)
    finalize_seconds: float = Field(1.0, ge=0)
    cancel_seconds: float = Field(1.0, ge=0)


def build(context: ProviderContext, config: SandboxProviderConfig) -> SandboxProvider:
    return SandboxProvider(
        context,
        legacy_dir=config.dir,
        validate_seconds=config.validate_seconds,
        line_seconds=config.line_seconds,
        finalize_seconds=config.finalize_seconds,
        cancel_seconds=config.cancel_seconds,
    )


TYPE = ProviderType("sandbox", SandboxProviderConfig, build)
