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
