"""JSON logs with request ids and no secrets; `serve --workers N` with aggregated metrics."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from threading import Thread
from typing import TextIO

import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs
from tests.support import chat_file
from tests.test_cli_demo import free_port, wait_ready

SECRET = "sk-provider-secret-do-not-log-42"


def write_config(tmp_path: Path, dead_port: int) -> Path:
    path = tmp_path / "config.yaml"
    config = {
        "store": {"url": "sqlite:///./gw.db"},
        "blobs": {"dir": "./files"},
        "providers": {
            "sandbox": {"type": "sandbox", "dir": "./sbx", "validate_seconds": 0},
            # Nothing listens there: every call fails, and gets logged.
            "dead": {
                "type": "openai",
                "base_url": f"http://127.0.0.1:{dead_port}/v1",
                "api_key": SECRET,
                "max_retries": 0,
            },
        },
        "routes": [
            {"match": {"metadata": {"lane": "dead"}}, "to": "dead", "fallback": ["sandbox"]}
        ],
        "default": "sandbox",
        "poller": {"interval_seconds": 0.2},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_json_logs_carry_request_ids_and_no_secrets(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, free_port())
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready", server)
        status, headers, _ = get(f"{base}/v1/files/file-nope", {"X-Request-ID": "trace-abc-123"})
        assert status == 404 and headers["X-Request-ID"] == "trace-abc-123"
        status, headers, _ = get(f"{base}/v1/batches", {"Authorization": f"Bearer {SECRET}"})
        assert status == 200 and headers["X-Request-ID"].startswith("req_")
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=SECRET, max_retries=0)
        f = client.files.create(file=("in.jsonl", io.BytesIO(chat_file(2))), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"lane": "dead"},  # dead fails to connect: falls back to sandbox
        )
        client.batches.retrieve(batch.id)
        client.close()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert lines, "no log lines"
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert {"trace-abc-123"} <= {line["request_id"] for line in access}
    assert all(line["request_id"] and line["route"] for line in access)
    assert any(line["route"] == "/v1/files/{file_id}" and line["status"] == 404 for line in access)
    fallback = [line for line in lines if "trying sandbox" in line["msg"]]
    assert fallback and fallback[0]["request_id"].startswith("req_")
    text = err.decode()
    assert SECRET not in text and "Bearer" not in text
    assert str(tmp_path) not in text  # no local paths either


def test_workers_share_a_port_and_aggregate_metrics(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, free_port())
    log_file = (tmp_path / "stderr.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(path),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_file,  # a file: a full pipe would block the workers
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready", server)
        pids: set[int] = set()
        deadline = time.monotonic() + 15
        while len(pids) < 2:  # until the second worker is listening too
            if time.monotonic() > deadline:
                log_file.flush()
                raise AssertionError((tmp_path / "stderr.log").read_text()[-3000:])
            pids.add(json.loads(get(f"{base}/health/ready")[2])["pid"])
        before = live_count(base)
        pids.clear()
        for _ in range(40):
            status, _, body = get(f"{base}/health/live")
            assert status == 200
            pids.add(json.loads(body)["pid"])
        assert len(pids) == 2  # the kernel spread the connections over both workers
        assert live_count(base) - before == 40  # and /metrics counts both
    finally:
        server.terminate()
        server.wait(timeout=30)
        log_file.close()
    assert server.returncode == 0, (tmp_path / "stderr.log").read_text()[-2000:]


def live_count(base: str) -> float:
    _, _, body = get(f"{base}/metrics")
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "gateway_http_requests":
            return sum(
                s.value
                for s in family.samples
                if s.name == "gateway_http_requests_total" and s.labels["route"] == "/health/live"
            )
    return 0.0


# A text line: local time, level, then the request id when there is one.
TEXT_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) +")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure() replaces the root handlers (pytest's capture among them): put them back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def tty() -> Iterator[io.TextIOWrapper]:
    """A text stream on a pseudo-terminal: isatty() is True, as for a person's shell."""
    main_fd, tty_fd = pty.openpty()
    stream = open(tty_fd, "w", encoding="utf-8", closefd=True)
    yield stream
    stream.close()
    os.close(main_fd)


def log_through(fmt: logs.LogFormat | None, stream: TextIO) -> logging.Formatter | None:
    """configure() with this format and stream, log one line in a request; the formatter used."""
    logs.configure("INFO", fmt, stream)
    token = logs.request_id.set("req_text123")
    try:
        logging.getLogger("gateway.test").info("hello %s", "there")
    finally:
        logs.request_id.reset(token)
    return logging.getLogger().handlers[0].formatter


@pytest.mark.usefixtures("root_logging")
def test_auto_format_is_json_off_a_terminal() -> None:
    stream = io.StringIO()
    assert isinstance(log_through(None, stream), logs.JSONFormatter)
    line = json.loads(stream.getvalue())
    assert line["msg"] == "hello there" and line["request_id"] == "req_text123"


@pytest.mark.usefixtures("root_logging")
def test_auto_format_is_text_on_a_terminal(tty: io.TextIOWrapper) -> None:
    assert tty.isatty()
    assert isinstance(log_through(None, tty), logs.TextFormatter)


@pytest.mark.usefixtures("root_logging")
def test_forced_formats_win(tty: io.TextIOWrapper) -> None:
    assert isinstance(log_through("json", tty), logs.JSONFormatter)
    stream = io.StringIO()
    assert isinstance(log_through("text", stream), logs.TextFormatter)
    line = stream.getvalue().rstrip("\n")
    assert TEXT_LINE.match(line) and line.endswith(" [req_text123] hello there"), line


def test_text_lines_show_an_exception_by_its_type_only() -> None:
    record = logging.LogRecord("gateway", logging.ERROR, __file__, 1, "upstream failed", (), None)
    try:
        raise ConnectionError(f"https://api.example.test/v1?key={SECRET}")
    except ConnectionError:
        record.exc_info = sys.exc_info()
    record.request_id = None
    line = logs.TextFormatter().format(record)
    assert TEXT_LINE.match(line) and line.endswith(" upstream failed (ConnectionError)"), line
    assert SECRET not in line and "Traceback" not in line and "\n" not in line


def test_serve_on_a_terminal_prints_text_lines(tmp_path: Path) -> None:
    """With no `logging.format`, `serve` writing to a terminal prints lines for a person."""
    port = free_port()
    path = write_config(tmp_path, free_port())
    main_fd, tty_fd = pty.openpty()
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=tty_fd,
    )
    os.close(tty_fd)
    chunks: list[bytes] = []

    def drain() -> None:  # a full terminal buffer would block the server
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # EIO: the server closed its end
                return
            if not chunk:
                return
            chunks.append(chunk)

    reader = Thread(target=drain, daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{base}/health/ready", server)
        status, _, _ = get(f"{base}/v1/files/file-nope", {"X-Request-ID": "trace-tty-1"})
        assert status == 404
        status, _, _ = get(f"{base}/v1/batches", {"Authorization": f"Bearer {SECRET}"})
        assert status == 200
        time.sleep(0.2)  # the access line is written just after the response
    finally:
        server.terminate()
        server.wait(timeout=20)
        reader.join(timeout=5)
        os.close(main_fd)
    text = b"".join(chunks).decode()
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and not any(line.lstrip().startswith("{") for line in lines), text
    assert any(TEXT_LINE.match(line) and "listening on http://" in line for line in lines), text
    access = [line for line in lines if "[trace-tty-1]" in line]
    assert access and "GET /v1/files/{file_id} 404" in access[0], text
    assert SECRET not in text and "Bearer" not in text
