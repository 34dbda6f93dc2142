"""`batch-gateway batches | batch | providers | watch`: the formatters on their own, then the
commands against a real gateway's admin API."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import admin_cli
from gateway.admin_tables import (
    batch_detail,
    batches_table,
    clean,
    columns,
    fit,
    progress_bar,
    providers_table,
    watch_line,
)
from gateway.auth import hash_key
from gateway.cli import main
from tests.conftest import Gateway, StartGateway
from tests.support import chat_line, make_config, submit

REPO = Path(__file__).resolve().parent.parent
HOSTILE = "evil\x1b[31mRED\x1b[0m\nnext line\r\u202eright-to-left\x07"
ADMIN_KEY = "admin-secret-key-for-the-cli"
TENANT_KEY = "tenant-secret-key-for-the-cli"


def batch_obj(i: int = 0, **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": f"batch_{'a' * 23}{i}",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "model": "gpt-4o-mini",
        "errors": None,
        "input_file_id": "file-" + "b" * 24,
        "completion_window": "24h",
        "status": "in_progress",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 1_700_000_000,
        "in_progress_at": 1_700_000_010,
        "expires_at": 1_700_086_400,
        "request_counts": {"total": 1000, "completed": 509, "failed": 3},
        "usage": None,
        "metadata": {"team": "search"},
    }
    obj.update(overrides)
    return obj


def admin_batch(i: int = 0, **overrides: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "batch": batch_obj(i),
        "tenant": "team-a",
        "provider": "sandbox",
        "upstream_id": "up-123",
        "rule": "routes[0]",
    }
    item.update(overrides)
    return item


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's own URL and key never reach these tests."""
    monkeypatch.delenv(admin_cli.URL_ENV, raising=False)
    monkeypatch.delenv(admin_cli.KEY_ENV, raising=False)


def assert_fits(text: str) -> None:
    for line in text.split("\n"):
        assert columns(line) <= 80, line
        assert "\x1b" not in line and "\r" not in line and "\x07" not in line, repr(line)


# The formatters.


def test_clean_escapes_control_and_bidi_characters() -> None:
    assert clean(HOSTILE) == ("evil\\x1b[31mRED\\x1b[0m\\nnext line\\r\\u202eright-to-left\\x07")
    assert clean(None) == "-"
    assert clean("plain ünïcode 漢字") == "plain ünïcode 漢字"


def test_fit_truncates_by_terminal_columns() -> None:
    assert fit("short", 10) == "short"
    assert fit("abcdefghijkl", 10) == "abcdefghi…"
    assert columns(fit("漢" * 50, 10)) <= 10
    assert fit("漢" * 50, 10).endswith("…")
    # The escape is counted, not the raw character: the line still fits.
    assert columns(fit("\x1b" * 40, 20)) == 20


def test_batches_table_fits_80_columns_and_truncates() -> None:
    items = [
        admin_batch(1),
        admin_batch(2, tenant="a-very-long-tenant-name-indeed", provider="provider-" * 5),
        admin_batch(
            3,
            tenant=HOSTILE,
            batch=batch_obj(3, status="completed", request_counts={"total": 123_456_789}),
        ),
    ]
    text = batches_table({"object": "list", "data": items, "has_more": True, "last_id": "b_9"})
    assert_fits(text)
    lines = text.split("\n")
    assert lines[0].split() == ["id", "status", "tenant", "provider", "done/total", "failed"]
    assert len(lines) == 5  # a header, three rows (the newline stayed escaped), the footer
    assert "batch_" + "a" * 23 + "1" in lines[1]
    assert "512/1,000" in lines[1] and lines[1].rstrip().endswith("3")
    assert "a-very-…" in lines[2] and "provide…" in lines[2]
    assert "evil\\x1…" in lines[3] and "0/123M" in lines[3]
    assert lines[4] == "more: --after b_9"


def test_batches_table_empty() -> None:
    assert batches_table({"data": [], "has_more": False}).split("\n")[1] == "no batches"


def test_batch_detail_shows_everything_escaped() -> None:
    obj = admin_batch(
        batch=batch_obj(
            metadata={"note": HOSTILE, "k" * 100: "v" * 100},
            errors={
                "object": "list",
                "data": [{"code": "invalid_json", "line": 7, "message": HOSTILE}],
            },
            status="failed",
            failed_at=1_700_000_100,
        ),
        upstream_id=None,
    )
    obj["history"] = [
        {"status": "validating", "at": 1_700_000_000},
        {"status": "failed", "at": 1_700_000_100},
    ]
    obj["attempts"] = [
        {"provider": "primary", "at": 1_700_000_000, "outcome": "failed", "error": HOSTILE},
        {"provider": "sandbox", "at": 1_700_000_001, "outcome": "created", "error": None},
    ]
    obj["children"] = [admin_batch(5, provider="sandbox"), admin_batch(6, provider="other")]
    text = batch_detail(obj)
    assert_fits(text)
    assert "status      failed" in text
    assert "upstream id -" in text
    assert "requests    512/1,000 done, 3 failed" in text
    assert "created     2023-11-14 22:13:20 UTC" in text
    assert "  note=evil\\x1b[31mRED\\x1b[0m\\nnext line" in text
    assert "  invalid_json line 7: evil\\x1b" in text
    assert "2023-11-14 22:15:00 UTC  failed" in text
    assert "primary failed: evil\\x1b" in text and "sandbox created" in text
    assert "children:" in text and "batch_" + "a" * 23 + "6" in text
    assert any(line.endswith("…") for line in text.split("\n"))


def test_providers_table() -> None:
    obj = {
        "object": "list",
        "data": [
            {
                "name": "sandbox",
                "type": "sandbox",
                "enabled": True,
                "breaker": "closed",
                "calls": 1234,
                "error_rate": 0.025,
                "latency_p50_ms": 12.4,
                "latency_p95_ms": 2345.6,
                "active_batches": 7,
            },
            {
                "name": "a-provider-with-a-long-name" + HOSTILE,
                "type": "openai",
                "enabled": False,
                "breaker": None,
                "calls": 0,
                "error_rate": None,
                "latency_p50_ms": None,
                "latency_p95_ms": None,
                "active_batches": 0,
            },
        ],
        "routes": ["routes[0]  model=gpt-*  ->  " + "x" * 200, "default  *  ->  sandbox"],
    }
    text = providers_table(obj)
    assert_fits(text)
    lines = text.split("\n")
    assert lines[1].split() == ["sandbox", "sandbox", "yes", "closed", "1,234"] + [
        "2.5",
        "12",
        "2,346",
        "7",
    ]
    assert lines[2].split()[:4] == ["a-provider-wi…", "openai", "no", "-"]
    assert lines[2].split()[-4:] == ["-", "-", "-", "0"]
    assert lines[3] == "routes:" and lines[4].endswith("…")
    assert lines[5] == "  default  *  ->  sandbox"


def test_progress_bar() -> None:
    counts = {"total": 1000, "completed": 509, "failed": 3}
    assert progress_bar(counts, 10) == "[#####x....] 512/1,000 done, 3 failed"
    assert progress_bar({"total": 4, "completed": 4, "failed": 0}, 4) == "[####] 4/4 done, 0 failed"
    assert progress_bar({"total": 4, "completed": 0, "failed": 4}, 4) == "[xxxx] 4/4 done, 4 failed"
    assert progress_bar(None, 5) == "[.....] 0/0 done, 0 failed"
    assert progress_bar({"total": 0, "completed": 0, "failed": 0}, 3) == "[...] 0/0 done, 0 failed"
    # Odd counts never overflow the bar.
    assert progress_bar({"total": 3, "completed": 5, "failed": 5}, 6).startswith("[######]")
    line = watch_line(batch_obj(status=HOSTILE * 3))
    assert_fits(line)
    assert line.startswith("[##########x.........] 512/1,000 done, 3 failed  evil\\x1b")


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_redraws_one_line_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    states = iter(
        [
            batch_obj(
                status="validating", request_counts={"total": 4, "completed": 0, "failed": 0}
            ),
            batch_obj(request_counts={"total": 4, "completed": 2, "failed": 1}),
            batch_obj(status="completed", request_counts={"total": 4, "completed": 3, "failed": 1}),
        ]
    )

    async def fake_batch(self: admin_cli.Admin, batch_id: str, refresh: bool) -> dict[str, Any]:
        assert refresh
        return {"batch": next(states)}

    monkeypatch.setattr(admin_cli.Admin, "batch", fake_batch)
    out = FakeTTY()
    code = admin_cli.watch(admin_cli.Admin("http://x/v1", None), "batch_x", interval=0.01, out=out)
    assert code == 0
    text = out.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n") and text.count("\n") == 1
    assert text.split("\r")[-1].startswith("[###############xxxxx] 4/4 done, 1 failed  completed")
    assert text.split("\r")[2] == "[##########xxxxx.....] 3/4 done, 1 failed  in_progress"
    # The shorter last line wipes what the longer one before it left.
    assert text.split("\r")[3].endswith("completed  \n")


def test_unreachable_gateway_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://user:pw-in-url@127.0.0.1:{port}/v1"
    with pytest.raises(SystemExit):
        main(["providers", "--base-url", url, "--api-key", ADMIN_KEY])
    assert capsys.readouterr().err == (
        "batch-gateway: give the admin key or a user and password in the URL, not both\n"
    )
    url = f"http://user:pw-in-url@127.0.0.1:{port}/v1"
    for argv in (["batches"], ["batch", "batch_" + "a" * 24], ["providers"], ["watch", "x"]):
        with pytest.raises(SystemExit) as exited:
            main([*argv, "--base-url", url])
        assert exited.value.code == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert err.count("\n") == 1 and err.startswith("batch-gateway: ")
        assert ADMIN_KEY not in err and "pw-in-url" not in err and "Traceback" not in err
    assert "connection refused" in err or "not a batch id" in err


def test_subprocess_error_has_no_traceback() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), admin_cli.KEY_ENV: ADMIN_KEY}
    env[admin_cli.URL_ENV] = "http://127.0.0.1:1"
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "providers"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        "batch-gateway: cannot reach the gateway at http://127.0.0.1:1/v1: connection refused\n"
    )


# Against a running gateway.


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`batch-gateway ARGV` in a thread (it runs its own event loop): exit code, out, err."""

    def run() -> int:
        try:
            return main(list(argv))
        except SystemExit as exc:
            return int(exc.code or 0)

    capsys.readouterr()
    code = await asyncio.to_thread(run)
    out, err = capsys.readouterr()
    return code, out, err


def admin_api_exists() -> None:
    if not (REPO / "gateway" / "api" / "admin.py").exists():
        pytest.fail("gateway/api/admin.py (the admin API) is not there yet", pytrace=False)


async def test_commands_against_a_gateway(
    start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_api_exists()
    gw: Gateway = await start_gateway(make_config(tmp_path))
    url = gw.base_url
    first = await submit(gw.client, [chat_line(i) for i in range(3)])
    second = await submit(gw.client, [chat_line(i) for i in range(2)])
    for batch in (first, second):
        for _ in range(100):
            if (await gw.client.batches.retrieve(batch.id)).status == "completed":
                break
            await asyncio.sleep(0.05)

    code, out, err = await cli(capsys, "batches", "--base-url", url)
    assert code == 0, err
    assert_fits(out)
    lines = out.splitlines()
    assert lines[0].split()[0] == "id"
    assert [line.split()[0] for line in lines[1:3]] == [second.id, first.id]  # newest first
    assert lines[1].split()[1:5] == ["completed", "default", "sandbox", "2/2"]

    code, out, err = await cli(
        capsys, "batches", "--status", "completed", "--json", "--base-url", url
    )
    assert code == 0, err
    body = json.loads(out)
    assert body["object"] == "list"
    assert {item["batch"]["id"] for item in body["data"]} == {first.id, second.id}
    assert all(item["batch"]["status"] == "completed" for item in body["data"])

    code, out, err = await cli(capsys, "batches", "--status", "failed", "--base-url", url)
    assert code == 0, err
    assert out.splitlines()[1] == "no batches"

    code, out, err = await cli(capsys, "batch", first.id, "--base-url", url)
    assert code == 0, err
    assert_fits(out)
    assert f"batch       {first.id}" in out
    assert "status      completed" in out and "provider    sandbox" in out
    assert "requests    3/3 done, 0 failed" in out
    assert "history:" in out

    code, out, err = await cli(capsys, "batch", first.id, "--json", "--base-url", url)
    assert code == 0, err
    assert json.loads(out)["batch"]["id"] == first.id

    code, out, err = await cli(capsys, "batch", "batch_" + "z" * 24, "--base-url", url)
    assert code == 1 and out == ""
    assert err.startswith("batch-gateway: HTTP 404") and err.count("\n") == 1

    code, out, err = await cli(capsys, "providers", "--base-url", url)
    assert code == 0, err
    assert_fits(out)
    assert out.splitlines()[1].split()[:3] == ["sandbox", "sandbox", "yes"]
    assert "routes:" in out and "default  *  ->  sandbox" in out

    code, out, err = await cli(capsys, "providers", "--json", "--base-url", url)
    assert code == 0, err
    assert [p["name"] for p in json.loads(out)["data"]] == ["sandbox"]


async def test_watch_until_the_batch_ends(
    start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_api_exists()
    sandbox = {
        "type": "sandbox",
        "dir": "./sandbox",
        "validate_seconds": 0,
        "line_seconds": 0.1,
        "finalize_seconds": 0,
        "cancel_seconds": 0,
    }
    gw = await start_gateway(make_config(tmp_path, providers={"sandbox": sandbox}))
    bad = chat_line(9)
    bad["body"]["messages"] = []  # the sandbox fails this line
    batch = await submit(gw.client, [chat_line(i) for i in range(9)] + [bad])
    code, out, err = await cli(
        capsys, "watch", batch.id, "--interval", "0.1", "--timeout", "60", "--base-url", gw.base_url
    )
    assert code == 0, err
    lines = out.splitlines()
    assert "\r" not in out  # not a TTY: one plain line per change
    assert len(lines) >= 3, out  # it saw progress, not just the end
    assert lines[-1] == "[##################xx] 10/10 done, 1 failed  completed"
    done = [int(line.split("] ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done)

    # A cancelled batch ends the watch with exit code 1.
    slow = await submit(gw.client, [chat_line(i) for i in range(50)])
    await gw.client.batches.cancel(slow.id)
    code, out, err = await cli(
        capsys, "watch", slow.id, "--interval", "0.1", "--timeout", "60", "--base-url", gw.base_url
    )
    assert code == 1, err
    assert out.splitlines()[-1].endswith("  cancelled")


async def test_keys(
    start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin_api_exists()
    auth = {
        "keys": [{"name": "team-a", "key_sha256": hash_key(TENANT_KEY)}],
        "admin_key_sha256": hash_key(ADMIN_KEY),
    }
    gw = await start_gateway(make_config(tmp_path, auth=auth), api_key=TENANT_KEY)
    url = gw.base_url
    code, out, err = await cli(capsys, "providers", "--base-url", url, "--api-key", ADMIN_KEY)
    assert code == 0, err

    code, out, err = await cli(capsys, "providers", "--base-url", url, "--api-key", TENANT_KEY)
    assert code == 1 and out == ""
    assert err.startswith("batch-gateway: HTTP 403 admin_only: ") and err.count("\n") == 1
    assert TENANT_KEY not in err

    code, out, err = await cli(capsys, "batches", "--base-url", url, "--api-key", "wrong-key-xyz")
    assert code == 1 and out == ""
    assert err.startswith("batch-gateway: HTTP 401") and "wrong-key-xyz" not in err

    code, out, err = await cli(capsys, "batches", "--base-url", url)  # no key at all
    assert code == 1 and err.startswith("batch-gateway: HTTP 401")
