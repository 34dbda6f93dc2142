"""Builders shared by the tests: JSONL input files and gateway configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gateway.config import Config, parse_config


def chat_line(i: int, *, model: str = "gpt-4o-mini", **overrides: Any) -> dict[str, Any]:
    line: dict[str, Any] = {
        "custom_id": f"req-{i}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": f"question {i}"}]},
    }
    line.update(overrides)
    return line


def jsonl(lines: list[Any]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def big_file(total: int) -> bytes:
    """Valid JSONL of at least `total` bytes, in lines of about 100 KB."""
    lines, size = [], 0
    while size < total:
        line = chat_line(len(lines))
        line["body"]["messages"][0]["content"] = "x" * 100_000
        lines.append(line)
        size += 100_100
    return jsonl(lines)


def chat_file(n: int, **kwargs: Any) -> bytes:
    return jsonl([chat_line(i, **kwargs) for i in range(n)])


def make_config(base_dir: Path, **overrides: Any) -> Config:
    """A config on `base_dir` with an instant sandbox; overrides replace top-level keys."""
    raw: dict[str, Any] = {
        "store": {"url": "sqlite:///./gateway.db"},
        "blobs": {"dir": "./files"},
        "auth": {"open": True},
        "providers": {
            "sandbox": {
                "type": "sandbox",
                "dir": "./sandbox",
                "validate_seconds": 0,
                "line_seconds": 0,
                "finalize_seconds": 0,
                "cancel_seconds": 0,
            }
        },
        "default": "sandbox",
    }
    raw.update(overrides)
    return parse_config(raw, base_dir)


def sqlite_path(config: Config) -> Path | None:
    """The SQLite file a config's store names (None for PostgreSQL)."""
    url = config.store.url
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def enabled_providers(config: Config) -> list[str]:
    """The providers a config leaves in routing."""
    return [name for name, p in config.providers.items() if p.disabled_reason is None]


class MemoryState:
    """A `providers.context.StateStore` in a dict, for adapters tested without a gateway.

    Claims always succeed unless `held_elsewhere` names the key (another process's run)."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[dict[str, Any], bool]] = {}
        self.held_elsewhere: set[str] = set()

    async def load(self, key: str) -> dict[str, Any] | None:
        found = self.states.get(key)
        return json.loads(json.dumps(found[0])) if found else None

    async def save(self, key: str, state: dict[str, Any], *, active: bool = False) -> None:
        self.states[key] = (json.loads(json.dumps(state)), active)

    async def delete(self, key: str) -> None:
        self.states.pop(key, None)

    async def active(self) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(s)) for s, active in self.states.values() if active]

    async def claim(self, key: str, seconds: float) -> bool:
        return key not in self.held_elsewhere

    async def release(self, key: str) -> None:
        return None


def adapter_for(name: str, config: Config, folder: Path, state: MemoryState | None = None) -> Any:
    """The adapter of provider `name`, keeping its state in memory and its bytes in
    `folder` (a local blob store), as `build_provider` makes it for the gateway."""
    from gateway.blobs import LocalBlobs
    from providers.registry import build_provider

    blobs = LocalBlobs(folder)
    return build_provider(name, config.providers[name], state=state or MemoryState(), blobs=blobs)


async def submit(client: Any, lines: list[Any], endpoint: str = "/v1/chat/completions") -> Any:
    """Upload `lines` and create a 24h batch of them through the openai SDK `client`."""
    import io

    uploaded = await client.files.create(
        file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch"
    )
    return await client.batches.create(
        input_file_id=uploaded.id, endpoint=endpoint, completion_window="24h"
    )


async def read_lines(client: Any, file_id: str | None) -> dict[str, dict[str, Any]]:
    """A result file's lines by custom_id; each custom_id appears once."""
    assert file_id is not None
    rows = [json.loads(x) for x in (await client.files.content(file_id)).text.splitlines()]
    by_id = {row["custom_id"]: row for row in rows}
    assert len(by_id) == len(rows), "a custom_id appears twice"
    return by_id
