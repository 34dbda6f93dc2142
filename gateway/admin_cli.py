"""`batch-gateway batches | batch | providers | watch`: the admin API of a running gateway
(`/v1/gateway/admin/`), as tables that fit an 80-column terminal (`gateway.admin_tables`,
where every string is escaped) or as its JSON."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp
from yarl import URL

from gateway.admin_tables import (
    TERMINAL,
    batch_detail,
    batches_table,
    clean,
    columns,
    fit,
    providers_table,
    watch_line,
)
from gateway.ids import looks_valid

URL_ENV = "BATCH_GATEWAY_URL"
KEY_ENV = "BATCH_GATEWAY_ADMIN_KEY"
DEFAULT_URL = "http://127.0.0.1:8080/v1"
ADMIN_PATH = "gateway/admin"


class AdminError(Exception):
    """A failed call, as the one line the CLI prints (never the key, never a URL's password)."""


# Terminal-safe text.


def base_url(value: str | None) -> str:
    """The gateway's `/v1` URL: `--base-url`, else $BATCH_GATEWAY_URL, else loopback."""
    url = (value or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _shown(url: str) -> str:
    """A URL fit to print: without any user or password it may carry."""
    try:
        return str(URL(url).with_user(None))
    except ValueError:
        return "the given URL"


@dataclass
class Admin:
    """Calls to the admin API of the gateway at `url` (its /v1 URL) with `key` (or none)."""

    url: str
    key: str | None
    timeout: float = 30.0

    async def call(self, method: str, path: str, params: Mapping[str, str] | None = None) -> Any:
        """The decoded JSON answer of one call, or AdminError with one printable line."""
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        where = _shown(self.url)
        if self.key and "@" in self.url.partition("://")[2].partition("/")[0]:
            raise AdminError("give the admin key or a user and password in the URL, not both")
        try:
            async with aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as http:
                async with http.request(
                    method, f"{self.url}/{ADMIN_PATH}/{path}", params=params, headers=headers
                ) as resp:
                    status, text = resp.status, await resp.text(errors="replace")
        except (aiohttp.InvalidURL, ValueError):
            raise AdminError(f"not a valid gateway URL: {clean(where)}") from None
        except aiohttp.ClientConnectorError as exc:
            refused = isinstance(exc.os_error, ConnectionRefusedError)
            reason = "connection refused" if refused else exc.os_error.strerror or "no connection"
            raise AdminError(f"cannot reach the gateway at {clean(where)}: {reason}") from None
        except TimeoutError:
            raise AdminError(
                f"the gateway at {clean(where)} did not answer within {self.timeout:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise AdminError(
                f"the call to the gateway at {clean(where)} failed: {type(exc).__name__}"
            ) from None
        try:
            body = json.loads(text)
        except ValueError:
            raise AdminError(
                f"the gateway at {clean(where)} answered HTTP {status} without JSON"
                + (" (is it a batch gateway with the admin API?)" if status == 404 else "")
            ) from None
        if status >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            error = error if isinstance(error, dict) else {}
            code = f" {clean(error['code'])}" if error.get("code") else ""
            hint = f" (set {KEY_ENV} or --api-key to the admin key)" if status in (401, 403) else ""
            raise AdminError(f"HTTP {status}{code}: {clean(error.get('message'))}{hint}")
        return body

    async def batches(self, params: Mapping[str, str]) -> Any:
        return await self.call("GET", "batches", params)

    async def batch(self, batch_id: str, *, refresh: bool = False) -> Any:
        """The batch as stored, or with `refresh` as its provider reports it now."""
        if not looks_valid(batch_id) or not batch_id.startswith("batch_"):
            # Checked here so that an odd argument can never reach another route.
            raise AdminError(f"not a batch id: {fit(batch_id, 40)}")
        if refresh:
            return await self.call("POST", f"batches/{batch_id}/refresh")
        return await self.call("GET", f"batches/{batch_id}")

    async def providers(self) -> Any:
        return await self.call("GET", "providers")


# Commands: each returns the exit code.


def _json(body: Any, out: TextIO) -> None:
    out.write(json.dumps(body, indent=2) + "\n")


def run(coro: Any) -> Any:
    """Run one call; on failure one line on stderr and SystemExit(1), never a traceback."""
    try:
        return asyncio.run(coro)
    except AdminError as exc:
        print(f"batch-gateway: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def _show(body: Any, as_json: bool, table: Callable[[Any], str], out: TextIO) -> int:
    if as_json:
        _json(body, out)
    else:
        out.write(table(body) + "\n")
    return 0


def list_batches(admin: Admin, params: Mapping[str, str], as_json: bool, out: TextIO) -> int:
    return _show(run(admin.batches(params)), as_json, batches_table, out)


def show_batch(admin: Admin, batch_id: str, as_json: bool, out: TextIO) -> int:
    return _show(run(admin.batch(batch_id)), as_json, batch_detail, out)


def show_providers(admin: Admin, as_json: bool, out: TextIO) -> int:
    return _show(run(admin.providers()), as_json, providers_table, out)


async def _watch(
    admin: Admin, batch_id: str, interval: float, out: TextIO, tty: bool, timeout: float | None
) -> str:
    shown = ""
    started = time.monotonic()
    while True:
        # The plain GET answers the stored row, which only the poller moves on (every 30 s
        # by default): a live bar asks the provider on each poll, as a client's retrieve does.
        batch = (await admin.batch(batch_id, refresh=True)).get("batch") or {}
        line = watch_line(batch)
        if tty:
            # Spaces over whatever the longer previous line left, then back to the start.
            out.write("\r" + line + " " * max(0, columns(shown) - columns(line)))
        elif line != shown:
            out.write(line + "\n")
        out.flush()
        shown = line
        status = str(batch.get("status"))
        if status in TERMINAL:
            if tty:
                out.write("\n")
            return status
        if timeout is not None and time.monotonic() - started > timeout:
            if tty:
                out.write("\n")
            raise AdminError(f"gave up after {timeout:g}s; the batch is {clean(status)}")
        await asyncio.sleep(interval)


def watch(
    admin: Admin,
    batch_id: str,
    *,
    interval: float = 2.0,
    timeout: float | None = None,
    out: TextIO | None = None,
) -> int:
    """Redraw the batch's progress until it ends: 0 if it completed, 1 otherwise."""
    out = out or sys.stdout
    tty = out.isatty()
    status = run(_watch(admin, batch_id, interval, out, tty, timeout))
    return 0 if status == "completed" else 1
