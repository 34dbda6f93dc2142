"""A fast OpenAI-compatible Files + Batches upstream for benchmarks (loopback only).

Every answer is precomputed JSON bytes with the id spliced in: no per-request
pydantic, no dict building. Batches never advance on their own; what a batch
reports is decided by its id, so any number of batches costs no memory:

- ids starting `batch_done` report `completed`, with an output file
  `file-out-<suffix>` whose content is `--output-bytes` of JSONL result lines;
- every other id reports `in_progress`.

A create whose `metadata.sim` is `"completed"` gets a `batch_done…` id.
`POST /_config {"latency_ms": N}` sets a delay on every API answer, `GET /_stats`
returns counters (and the highest number of API requests in flight at once),
`POST /_reset` zeroes them.

    python -m bench.simulator --port 9000 [--latency-ms 0] [--output-bytes 200000000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections import Counter

import orjson
from aiohttp import BodyPartReader, web

NOW = int(time.time())
JSON = "application/json"
READ_CHUNK = 1 << 20
WRITE_CHUNK = 1 << 20
DONE_PREFIX = "batch_done"
OUT_PREFIX = "file-out-"


def _split(obj: dict[str, object], marker: str = "@@ID@@") -> tuple[bytes, bytes]:
    """JSON bytes of `obj` cut around its id, so an answer is `head + id + tail`."""
    head, tail = orjson.dumps(obj).split(marker.encode())
    return head, tail


def _batch(status: str, **extra: object) -> dict[str, object]:
    obj: dict[str, object] = {
        "id": "@@ID@@",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "errors": None,
        "input_file_id": "file-simin",
        "completion_window": "24h",
        "status": status,
        "output_file_id": None,
        "error_file_id": None,
        "created_at": NOW,
        "in_progress_at": None,
        "expires_at": NOW + 86_400,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 1000, "completed": 0, "failed": 0},
        "usage": None,
        "metadata": None,
    }
    obj.update(extra)
    return obj


VALIDATING = _split(_batch("validating"))
IN_PROGRESS = _split(
    _batch(
        "in_progress",
        in_progress_at=NOW,
        request_counts={"total": 1000, "completed": 400, "failed": 3},
    )
)
CANCELLING = _split(_batch("cancelling", in_progress_at=NOW, cancelling_at=NOW))
# The output file id is the batch id's suffix: `batch_done42` -> `file-out-42`.
COMPLETED_HEAD, COMPLETED_MID = _split(
    _batch(
        "completed",
        in_progress_at=NOW,
        finalizing_at=NOW,
        completed_at=NOW,
        output_file_id="@@OUT@@",
        request_counts={"total": 1000, "completed": 1000, "failed": 0},
        usage={
            "input_tokens": 10_000,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5_000,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15_000,
        },
    )
)
_mid, COMPLETED_TAIL = COMPLETED_MID.split(b"@@OUT@@")
COMPLETED_MID = _mid + OUT_PREFIX.encode()


def _file(purpose: str) -> tuple[bytes, bytes, bytes]:
    """File object JSON cut around its id and its byte count."""
    obj = {
        "id": "@@ID@@",
        "object": "file",
        "bytes": 123456789,
        "created_at": NOW,
        "filename": "bench.jsonl",
        "purpose": purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }
    head, rest = orjson.dumps(obj).split(b"@@ID@@")
    mid, tail = rest.split(b"123456789")
    return head, mid, tail


FILE_INPUT = _file("batch")
FILE_OUTPUT = _file("batch_output")


def _result_block(size: int) -> bytes:
    """About `size` bytes of OpenAI batch output lines (whole lines)."""
    lines = []
    total = 0
    for i in itertools.count():
        body = {
            "id": f"chatcmpl-{i:08d}",
            "object": "chat.completion",
            "created": NOW,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "The answer is 4. " * 8},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 40, "total_tokens": 50},
        }
        line = orjson.dumps(
            {
                "id": f"batch_req_{i:08d}",
                "custom_id": f"req-{i}",
                "response": {"status_code": 200, "request_id": f"req_{i:08d}", "body": body},
                "error": None,
            }
        )
        lines.append(line + b"\n")
        total += len(line) + 1
        if total >= size:
            return b"".join(lines)
    raise AssertionError("unreachable")


class Simulator:
    def __init__(self, latency_ms: float, output_bytes: int) -> None:
        self.latency = latency_ms / 1000
        self.output_bytes = output_bytes
        self.block = _result_block(WRITE_CHUNK)
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self._ids = itertools.count(1)

    async def _wait(self) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)

    @web.middleware
    async def track(self, request: web.Request, handler: web.RequestHandler) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await handler(request)
        self.in_flight += 1
        if self.in_flight > self.max_in_flight:
            self.max_in_flight = self.in_flight
        try:
            return await handler(request)
        finally:
            self.in_flight -= 1

    # batches

    async def create_batch(self, request: web.Request) -> web.Response:
        self.counts["batch_create"] += 1
        body = orjson.loads(await request.read())
        if not isinstance(body, dict) or not isinstance(body.get("input_file_id"), str):
            return web.Response(status=400, body=b'{"error":{"message":"bad body"}}')
        n = next(self._ids)
        metadata = body.get("metadata") or {}
        done = isinstance(metadata, dict) and metadata.get("sim") == "completed"
        batch_id = f"{DONE_PREFIX}{n}" if done else f"batch_sim{n}"
        await self._wait()
        head, tail = VALIDATING
        return web.Response(body=head + batch_id.encode() + tail, content_type=JSON)

    async def get_batch(self, request: web.Request) -> web.Response:
        self.counts["batch_get"] += 1
        batch_id = request.match_info["batch_id"]
        await self._wait()
        raw = batch_id.encode()
        if batch_id.startswith(DONE_PREFIX):
            suffix = raw[len(DONE_PREFIX) :]
            body = COMPLETED_HEAD + raw + COMPLETED_MID + suffix + COMPLETED_TAIL
        else:
            head, tail = IN_PROGRESS
            body = head + raw + tail
        return web.Response(body=body, content_type=JSON)

    async def cancel_batch(self, request: web.Request) -> web.Response:
        self.counts["batch_cancel"] += 1
        await self._wait()
        head, tail = CANCELLING
        return web.Response(
            body=head + request.match_info["batch_id"].encode() + tail, content_type=JSON
        )

    # files

    async def upload_file(self, request: web.Request) -> web.Response:
        self.counts["file_upload"] += 1
        reader = await request.multipart()
        size = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            while chunk := await part.read_chunk(READ_CHUNK):
                if part.name == "file":
                    size += len(chunk)
        self.counts["upload_bytes"] += size
        await self._wait()
        head, mid, tail = FILE_INPUT
        file_id = f"file-sim{next(self._ids)}".encode()
        return web.Response(
            body=head + file_id + mid + str(size).encode() + tail, content_type=JSON
        )

    async def get_file(self, request: web.Request) -> web.Response:
        self.counts["file_get"] += 1
        file_id = request.match_info["file_id"]
        await self._wait()
        output = file_id.startswith(OUT_PREFIX)
        head, mid, tail = FILE_OUTPUT if output else FILE_INPUT
        size = self.output_bytes if output else 0
        return web.Response(
            body=head + file_id.encode() + mid + str(size).encode() + tail, content_type=JSON
        )

    async def file_content(self, request: web.Request) -> web.StreamResponse:
        self.counts["file_content"] += 1
        if not request.match_info["file_id"].startswith(OUT_PREFIX):
            return web.Response(status=404, body=b'{"error":{"message":"no such file"}}')
        await self._wait()
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = self.output_bytes
        await response.prepare(request)
        left = self.output_bytes
        block = memoryview(self.block)
        while left > 0:
            n = min(left, len(block))
            await response.write(block[:n])
            left -= n
        await response.write_eof()
        return response

    # control

    async def stats(self, request: web.Request) -> web.Response:
        data = {**self.counts, "max_in_flight": self.max_in_flight}
        return web.Response(body=orjson.dumps(data), content_type=JSON)

    async def reset(self, request: web.Request) -> web.Response:
        self.counts.clear()
        self.max_in_flight = self.in_flight
        return web.Response(body=b"{}", content_type=JSON)

    async def configure(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read() or b"{}")
        if "latency_ms" in body:
            self.latency = float(body["latency_ms"]) / 1000
        if "output_bytes" in body:
            self.output_bytes = int(body["output_bytes"])
        return web.Response(body=b"{}", content_type=JSON)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)


def make_app(latency_ms: float = 0.0, output_bytes: int = 1 << 20) -> web.Application:
    sim = Simulator(latency_ms, output_bytes)
    app = web.Application(middlewares=[sim.track], client_max_size=1 << 20)
    app.add_routes(
        [
            web.post("/v1/batches", sim.create_batch),
            web.get("/v1/batches/{batch_id}", sim.get_batch),
            web.post("/v1/batches/{batch_id}/cancel", sim.cancel_batch),
            web.post("/v1/files", sim.upload_file),
            web.get("/v1/files/{file_id}", sim.get_file),
            web.get("/v1/files/{file_id}/content", sim.file_content),
            web.get("/_health", sim.health),
            web.get("/_stats", sim.stats),
            web.post("/_reset", sim.reset),
            web.post("/_config", sim.configure),
        ]
    )
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--output-bytes", type=int, default=1 << 20)
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("the simulator listens on loopback only")
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    web.run_app(
        make_app(args.latency_ms, args.output_bytes),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
        loop=loop_factory() if loop_factory else None,
    )


if __name__ == "__main__":
    main()
