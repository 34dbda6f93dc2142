"""`batch-gateway demo`: the whole flow through a running gateway with the openai SDK."""

from __future__ import annotations

import io
import json
import time
from collections import Counter

QUESTIONS = (
    "What is the capital of France?",
    "Name three prime numbers.",
    "Translate 'good morning' to Spanish.",
    "What is 12 times 12?",
    "Give a synonym for 'fast'.",
    "Which planet is known as the red planet?",
)


def demo_file(lines: int) -> bytes:
    """Chat requests, with the last one deliberately invalid to show the error file."""
    rows = []
    for i in range(lines):
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        if i == lines - 1 and lines > 1:
            messages = []
        rows.append(
            {
                "custom_id": f"demo-{i + 1}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": messages},
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def run_demo(base_url: str, api_key: str, *, lines: int = 12, timeout: float = 120.0) -> int:
    from openai import OpenAI
    from tqdm import tqdm

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
    started = time.monotonic()
    upload = client.files.create(file=("demo.jsonl", io.BytesIO(demo_file(lines))), purpose="batch")
    print(f"uploaded {upload.id} ({upload.bytes} bytes, {lines} requests)")
    batch = client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"source": "batch-gateway demo"},
    )
    print(f"created  {batch.id} ({batch.status})")
    with tqdm(total=lines, unit="req", desc=batch.status, ncols=80) as bar:
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            if time.monotonic() - started > timeout:
                print(f"gave up after {timeout:.0f}s; the batch is {batch.status}")
                return 1
            time.sleep(0.5)
            batch = client.batches.retrieve(batch.id)
            counts = batch.request_counts
            done = counts.completed + counts.failed if counts else 0
            bar.set_description(batch.status)
            bar.update(done - bar.n)
    elapsed = time.monotonic() - started
    counts = batch.request_counts
    print(f"\n{batch.id}: {batch.status} in {elapsed:.1f}s")
    if counts:
        print(
            f"requests: {counts.total} total, {counts.completed} completed, {counts.failed} failed"
        )
    if batch.usage:
        print(f"tokens:   {batch.usage.input_tokens} in, {batch.usage.output_tokens} out")
    if batch.output_file_id:
        results = [
            json.loads(x) for x in client.files.content(batch.output_file_id).text.splitlines()
        ]
        print(f"output file {batch.output_file_id}: {len(results)} lines, e.g.")
        for row in sorted(results, key=lambda r: r["custom_id"])[:3]:
            reply = row["response"]["body"]["choices"][0]["message"]["content"]
            print(f"  {row['custom_id']}: {reply[:70]}")
    if batch.error_file_id:
        errors = [
            json.loads(x) for x in client.files.content(batch.error_file_id).text.splitlines()
        ]
        reasons = Counter(
            (e.get("response") or {}).get("body", {}).get("error", {}).get("message")
            or (e.get("error") or {}).get("code")
            for e in errors
        )
        print(f"error file {batch.error_file_id}: {len(errors)} lines")
        for reason, n in reasons.items():
            print(f"  {n} x {reason}")
    return 0 if batch.status == "completed" else 1
