"""The README's path: `batch-gateway serve` in a process, then `batch-gateway demo` against it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the gateway exited early"
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the gateway did not become ready")


def test_serve_then_demo(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text((REPO / "config.yaml").read_text())  # the shipped config, copied
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("ANYAPI_API_KEY", "FAST_API_KEY")}
    env["PYTHONPATH"] = str(REPO)  # this checkout's code, whichever one is pip-installed
    server = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/health/ready", server)
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "demo",
                "--base-url",
                f"http://127.0.0.1:{port}/v1",
                "--lines",
                "6",
                "--timeout",
                "60",
            ],
            capture_output=True,
            text=True,
            timeout=90,
            env=env,
        )
    finally:
        server.terminate()
        log = server.communicate(timeout=20)[0].decode()
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "completed" in demo.stdout
    assert "6 total, 5 completed, 1 failed" in demo.stdout
    assert "demo-1:" in demo.stdout
    assert "error file" in demo.stdout
    # The copied config kept its state in its own folder.
    assert (tmp_path / "data" / "gateway.db").exists()
    assert not any(tmp_path.joinpath("data", "files", "tmp").iterdir())
    # Providers without keys were reported, not fatal.
    assert "anyapi is left out of routing" in log and "FAST_API_KEY" in log
