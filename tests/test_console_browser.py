"""The operator console (/console): its headers and files, the isolation of the API calls
it makes, and end-to-end runs in headless Chromium driven by Selenium.

The browser runs in a thread (`asyncio.to_thread`): the gateway under test serves from
this test's event loop, which must stay free while Selenium waits on the page.
The admin run saves docs/console.png, the README's screenshot.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from gateway.api import console
from gateway.auth import PUBLIC_PATHS, hash_key
from tests.conftest import Gateway, StartGateway
from tests.support import chat_line, jsonl, make_config
from tests.test_flow_sdk import wait_terminal

KEYS = {"team-a": "console-key-team-a-3141", "team-b": "console-key-team-b-2718"}
ADMIN_KEY = "console-admin-key-1618"
XSS = "<img src=x onerror=alert(1)>"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "console.png"
CHROMEDRIVER = "/usr/bin/chromedriver"  # Debian's chromium-driver
WAIT_SECONDS = 30.0


def console_config(tmp_path: Path, *, line_seconds: float = 0.0) -> Any:
    """Two tenant keys and the admin key on a sandbox that runs `line_seconds` a line."""
    auth = {
        "keys": [{"name": n, "key_sha256": hash_key(k)} for n, k in KEYS.items()],
        "admin_key_sha256": hash_key(ADMIN_KEY),
    }
    sandbox = {
        "type": "sandbox",
        "dir": "./sandbox",
        "validate_seconds": 0.3 if line_seconds else 0,
        "line_seconds": line_seconds,
        "finalize_seconds": 0.3 if line_seconds else 0,
        "cancel_seconds": 0,
    }
    return make_config(
        tmp_path,
        auth=auth,
        providers={"sandbox": sandbox},
        poller={"interval_seconds": 0.5},
    )


async def create_batch(
    gw: Gateway, key: str, lines: int, metadata: dict[str, str], *, refused: int = 0
) -> str:
    """A batch of `lines` chat lines, the last `refused` of which the sandbox refuses."""
    client = gw.client.with_options(api_key=key)
    body = jsonl(
        [chat_line(i) for i in range(lines - refused)]
        + [chat_line(i, model="unknown-model") for i in range(lines - refused, lines)]
    )
    f = await client.files.create(file=("in.jsonl", io.BytesIO(body)), purpose="batch")
    batch = await client.batches.create(
        input_file_id=f.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata=metadata,
    )
    return batch.id


async def call(
    gw: Gateway, key: str | None, method: str, path: str, **headers: str
) -> tuple[int, str]:
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    async with gw.http.request(method, gw.url(path), headers=headers) as resp:
        return resp.status, await resp.text()


# Without a browser: the files, their headers, and what the console's calls may see.


async def test_console_files_are_public_closed_and_the_same_for_everyone(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    assert console.PATHS <= PUBLIC_PATHS  # served without a key
    gw = await start_gateway(console_config(tmp_path))
    bodies: dict[str, bytes] = {}
    for path, (name, media_type) in console.ASSETS.items():
        for key in (None, KEYS["team-a"], ADMIN_KEY):
            for method in ("GET", "HEAD"):
                headers = {} if key is None else {"Authorization": f"Bearer {key}"}
                async with gw.http.request(method, gw.url(path), headers=headers) as resp:
                    assert resp.status == 200, (path, method)
                    assert resp.content_type == media_type
                    assert resp.headers["Content-Security-Policy"] == (
                        "default-src 'none'; script-src 'self'; style-src 'self'; "
                        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                        "form-action 'none'; frame-ancestors 'none'"
                    )
                    assert resp.headers["X-Frame-Options"] == "DENY"
                    assert resp.headers["X-Content-Type-Options"] == "nosniff"
                    assert resp.headers["Referrer-Policy"] == "no-referrer"
                    assert resp.headers["Cache-Control"] == "no-store"
                    assert "Set-Cookie" not in resp.headers
                    body = await resp.read()
                    if method == "GET":
                        # No data in the page: the same bytes whoever asks.
                        assert bodies.setdefault(path, body) == body
                        assert body == (console.FOLDER / name).read_bytes()
    # Nothing else under /console is served, with or without a key.
    for path in ("/console/", "/console/index.html", "/console/..%2fauth.py", "/console/x.js"):
        assert (await call(gw, None, "GET", path))[0] == 401, path
        assert (await call(gw, KEYS["team-a"], "GET", path))[0] == 404, path


def test_the_page_has_no_inline_script_style_or_foreign_asset() -> None:
    html = (console.FOLDER / "index.html").read_text()
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/console/' in attrs and not body for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no event handler attributes
    assert not re.search(r"<style\b|\sstyle\s*=", html, re.I)
    for url in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert url.startswith("/console/") or url.startswith("data:"), url
    script = (console.FOLDER / "console.js").read_text()
    # Data goes into the page as text: no HTML parsing of strings, no code from strings.
    for banned in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert banned not in script, banned
    assert not re.search(r"new\s+Function|setTimeout\(\s*['\"`]", script)
    assert "localStorage" not in script and "document.cookie" not in script
    css = (console.FOLDER / "console.css").read_text()
    assert "url(" not in css and "@import" not in css


async def test_the_consoles_calls_keep_tenants_apart(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    gw = await start_gateway(console_config(tmp_path))
    a = await create_batch(gw, KEYS["team-a"], 2, {"who": "a"})
    b = await create_batch(gw, KEYS["team-b"], 2, {"who": "b"})
    done_b = await wait_terminal(gw.client.with_options(api_key=KEYS["team-b"]), b)
    await wait_terminal(gw.client.with_options(api_key=KEYS["team-a"]), a)
    key_a = KEYS["team-a"]

    # The role probe: the admin key reads providers, a tenant key is refused, a wrong key 401.
    assert (await call(gw, ADMIN_KEY, "GET", "/v1/gateway/admin/providers"))[0] == 200
    status, text = await call(gw, key_a, "GET", "/v1/gateway/admin/providers")
    assert status == 403 and "admin_only" in text
    assert (await call(gw, "not-a-key", "GET", "/v1/gateway/admin/providers"))[0] == 401
    # Every admin route the console calls is closed to a tenant key, even on its own batch.
    for method, path in (
        ("GET", "/v1/gateway/admin/batches"),
        ("GET", "/v1/gateway/admin/batches?tenant=team-b&metadata_key=who&metadata_value=b"),
        ("GET", f"/v1/gateway/admin/batches/{a}"),
        ("GET", f"/v1/gateway/admin/batches/{b}"),
        ("POST", f"/v1/gateway/admin/batches/{a}/refresh"),
    ):
        status, text = await call(gw, key_a, method, path)
        assert status == 403 and b not in text, (method, path)
    # A tenant's own calls: its batches only, another's ids are unknown ids.
    status, text = await call(gw, key_a, "GET", "/v1/batches?limit=100")
    assert status == 200 and a in text and b not in text
    assert (await call(gw, key_a, "GET", f"/v1/batches/{b}"))[0] == 404
    assert done_b.output_file_id is not None
    assert (await call(gw, key_a, "GET", f"/v1/files/{done_b.output_file_id}/content"))[0] == 404
    status, text = await call(gw, key_a, "GET", "/v1/gateway/usage?group_by=tenant")
    assert status == 200 and "team-b" not in text
    # The admin key sees both tenants' batches, but not their files' contents: the
    # console shows it no download buttons.
    status, text = await call(gw, ADMIN_KEY, "GET", "/v1/gateway/admin/batches")
    assert status == 200 and a in text and b in text
    status, text = await call(
        gw,
        ADMIN_KEY,
        "GET",
        f"/v1/files/{done_b.output_file_id}/content",
        **{"X-Gateway-Tenant": "team-b"},
    )
    assert status == 403 and "admin_read_only" in text


# In a browser.


@dataclass
class Browser:
    driver: webdriver.Chrome
    downloads: Path


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Headless Chromium; a missing browser fails the test, never skips it."""
    binary = chromium_binary()
    if binary is None or not Path(CHROMEDRIVER).exists():
        pytest.fail(
            "the console's browser tests need Debian's chromium and chromium-driver "
            f"(found chromium: {binary}, {CHROMEDRIVER}: {Path(CHROMEDRIVER).exists()}); "
            "scripts/test installs them",
            pytrace=False,
        )
    downloads = tmp_path_factory.mktemp("downloads")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=en-US"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    options.add_experimental_option(
        "prefs",
        {"download.default_directory": str(downloads), "download.prompt_for_download": False},
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        # The page's viewport, whatever room the headless window keeps for itself.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.execute_cdp_cmd(
            "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
        )
        yield Browser(driver, downloads)
    finally:
        driver.quit()


def wait_for(driver: WebDriver, what: Callable[[WebDriver], Any], message: str) -> Any:
    # The table is rebuilt every 2 s: an element read during a rebuild is just read again.
    return WebDriverWait(
        driver,
        WAIT_SECONDS,
        poll_frequency=0.1,
        ignored_exceptions=[StaleElementReferenceException],
    ).until(what, message)


def visible(element_id: str) -> Callable[[WebDriver], Any]:
    def check(driver: WebDriver) -> Any:
        found = driver.find_elements(By.ID, element_id)
        return found[0] if found and found[0].is_displayed() else False

    return check


def log_in(driver: WebDriver, base: str, key: str) -> None:
    driver.get(base + "/console")
    driver.execute_script("window.sessionStorage.clear()")
    driver.get(base + "/console")
    field = wait_for(driver, visible("key"), "no login form")
    field.send_keys(key)
    driver.find_element(By.ID, "login").click()
    wait_for(driver, visible("batches-view"), "the batches view did not open")


def row_of(driver: WebDriver, batch_id: str) -> Any:
    found = driver.find_elements(By.CSS_SELECTOR, f'tr[data-batch-id="{batch_id}"]')
    return found[0] if found else None


# Read in one script, so a rebuild of the table cannot land between two reads.
ROWS_SCRIPT = """
return Array.from(document.querySelectorAll("#batches-body tr")).map((row) => {
  const bar = row.querySelector(".progress");
  return {
    id: row.dataset.batchId,
    status: row.dataset.status,
    completed: Number(bar.dataset.completed),
    total: Number(bar.dataset.total),
    cells: Array.from(row.cells).map((cell) => cell.textContent),
  };
});
"""


def rows(driver: WebDriver) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in driver.execute_script(ROWS_SCRIPT)}


def listed_ids(driver: WebDriver) -> set[str]:
    return set(rows(driver))


def assert_no_dialog_and_no_image(driver: WebDriver) -> None:
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert  # noqa: B018 (the property raises when no dialog is open)
    assert driver.find_elements(By.TAG_NAME, "img") == []
    assert driver.execute_script("return document.images.length") == 0


def assert_key_stays_in_the_page(driver: WebDriver, key: str) -> None:
    assert key not in driver.current_url
    assert driver.execute_script("return document.cookie") == ""
    assert driver.get_cookies() == []
    assert key not in driver.page_source  # not in the DOM: the input was cleared


def assert_clean_browser_log(driver: webdriver.Chrome, key: str) -> None:
    """The page ran under its CSP without a violation or an error, and logged no key."""
    messages = [entry["message"] for entry in driver.get_log("browser")]
    bad = [m for m in messages if "Content Security Policy" in m or "Uncaught" in m]
    assert not bad, bad
    assert not [m for m in messages if key in m]


def watch_until_completed(driver: WebDriver, batch_id: str) -> list[tuple[str, int, int]]:
    """The (status, completed, total) the row showed, sampled until it says completed."""
    seen: list[tuple[str, int, int]] = []
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        row = rows(driver).get(batch_id)
        if row is not None:
            sample = (row["status"], row["completed"], row["total"])
            if not seen or seen[-1] != sample:
                seen.append(sample)
            if sample[0] == "completed":
                return seen
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not complete in the page: saw {seen}")


def downloaded(folder: Path, name: str) -> Path:
    deadline = time.monotonic() + WAIT_SECONDS
    path = folder / name
    while time.monotonic() < deadline:
        if path.exists() and not (folder / (name + ".crdownload")).exists():
            return path
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded: {sorted(p.name for p in folder.iterdir())}")


async def test_a_tenant_watches_its_batch_complete_and_downloads_the_output(
    start_gateway: StartGateway, tmp_path: Path, browser: Browser
) -> None:
    gw = await start_gateway(console_config(tmp_path, line_seconds=0.25))
    lines = 20
    theirs = await create_batch(gw, KEYS["team-b"], 2, {"owner": "team-b"})
    mine = await create_batch(gw, KEYS["team-a"], lines, {"note": XSS, "owner": "team-a"})
    base = gw.url("")
    driver = browser.driver

    def tenant_a() -> str:
        log_in(driver, base, KEYS["team-a"])
        assert "tenant key" in driver.find_element(By.ID, "role").text
        assert not driver.find_element(By.ID, "tab-providers").is_displayed()
        wait_for(driver, lambda d: row_of(d, mine), "the batch is not listed")
        seen = watch_until_completed(driver, mine)
        # It moved while we watched: some lines done but not all, then all of them.
        assert any(0 < done < total for _, done, total in seen), seen
        assert seen[-1] == ("completed", lines, lines)
        assert theirs not in listed_ids(driver) and theirs not in driver.page_source
        # The metadata value is text in the table...
        assert XSS in rows(driver)[mine]["cells"][-1]
        assert_no_dialog_and_no_image(driver)

        # ...and in the detail view, with the timeline and the download.
        row_of(driver, mine).find_element(By.CSS_SELECTOR, "button.link").click()
        wait_for(driver, visible("download-output"), "no output download button")
        metadata = driver.find_element(By.ID, "metadata")
        values = [dd.text for dd in metadata.find_elements(By.TAG_NAME, "dd")]
        assert XSS in values
        timeline = driver.find_element(By.ID, "timeline").text
        assert "created" in timeline and "completed" in timeline
        assert_no_dialog_and_no_image(driver)
        driver.find_element(By.ID, "download-output").click()
        wait_for(
            driver,
            lambda d: "Saved" in d.find_element(By.ID, "download-status").text,
            "the download did not finish",
        )
        assert_key_stays_in_the_page(driver, KEYS["team-a"])
        assert_clean_browser_log(driver, KEYS["team-a"])
        output = driver.find_element(By.XPATH, "//dt[.='Output file']/following-sibling::dd[1]")
        output_file = str(output.text)
        # A reload keeps the tab logged in (session storage), on the batches view.
        driver.refresh()
        wait_for(driver, lambda d: row_of(d, mine), "a reload lost the login")
        return output_file

    output_file = await asyncio.to_thread(tenant_a)
    saved = await asyncio.to_thread(downloaded, browser.downloads, f"{output_file}.jsonl")
    results = [json.loads(line) for line in saved.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(lines))
    assert all(r["response"]["status_code"] == 200 for r in results)

    def log_out_then_tenant_b() -> None:
        driver.find_element(By.ID, "logout").click()
        wait_for(driver, visible("login-view"), "logging out did not show the login form")
        assert driver.execute_script("return window.sessionStorage.length") == 0
        assert driver.find_elements(By.CSS_SELECTOR, "#batches-body tr") == []
        log_in(driver, base, KEYS["team-b"])
        wait_for(driver, lambda d: row_of(d, theirs), "team-b's batch is not listed")
        assert mine not in listed_ids(driver) and mine not in driver.page_source
        assert XSS not in driver.page_source
        assert_key_stays_in_the_page(driver, KEYS["team-b"])

    await asyncio.to_thread(log_out_then_tenant_b)


async def test_the_admin_sees_every_tenant_providers_and_spend(
    start_gateway: StartGateway, tmp_path: Path, browser: Browser
) -> None:
    gw = await start_gateway(console_config(tmp_path, line_seconds=0.3))
    finished = [
        await create_batch(gw, KEYS["team-a"], 3, {"project": "alpha"}),
        await create_batch(gw, KEYS["team-b"], 5, {"project": "beta", "note": XSS}),
        await create_batch(gw, KEYS["team-a"], 8, {"project": "gamma"}, refused=2),
    ]
    for batch_id, key in zip(finished, ("team-a", "team-b", "team-a"), strict=True):
        await wait_terminal(gw.client.with_options(api_key=KEYS[key]), batch_id)
    running = await create_batch(gw, KEYS["team-b"], 40, {"project": "nightly-eval"})
    base = gw.url("")
    driver = browser.driver

    def admin() -> None:
        log_in(driver, base, ADMIN_KEY)
        assert "admin key" in driver.find_element(By.ID, "role").text
        wait_for(
            driver,
            lambda d: {*finished, running} <= listed_ids(d),
            "the admin does not see every tenant's batches",
        )
        assert {row["cells"][1] for row in rows(driver).values()} == {"team-a", "team-b"}
        assert_no_dialog_and_no_image(driver)

        # The screenshot of the README: both tenants, finished batches and one running.
        def partly_done(d: WebDriver) -> bool:
            row = rows(d).get(running)
            return row is not None and 8 <= row["completed"] <= 32

        wait_for(driver, partly_done, "the running batch showed no progress")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOT))

        # Filters go to the admin API.
        tenant_filter = driver.find_element(By.ID, "filter-tenant")
        tenant_filter.send_keys("team-b")
        tenant_filter.submit()
        wait_for(
            driver,
            lambda d: listed_ids(d) == {finished[1], running},
            "the tenant filter did not apply",
        )

        # One batch: tenant, provider, its status history, and text metadata.
        row_of(driver, finished[1]).find_element(By.CSS_SELECTOR, "button.link").click()
        wait_for(driver, visible("timeline"), "no detail view")
        detail = driver.find_element(By.ID, "detail").text
        assert "team-b" in detail and "sandbox" in detail
        timeline = driver.find_element(By.ID, "timeline").text
        assert timeline.index("in_progress") < timeline.index("completed")
        values = [dd.text for dd in driver.find_elements(By.CSS_SELECTOR, "#metadata dd")]
        assert XSS in values
        assert driver.find_elements(By.ID, "download-output") == []  # no file contents
        assert_no_dialog_and_no_image(driver)

        driver.find_element(By.ID, "tab-providers").click()
        wait_for(
            driver,
            lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-provider="sandbox"]'),
            "the providers view lists no provider",
        )
        assert "sandbox" in driver.find_element(By.ID, "routes").text

        driver.find_element(By.ID, "tab-spend").click()
        wait_for(
            driver,
            lambda d: "sandbox" in d.find_element(By.ID, "spend-provider").text,
            "no spend per provider",
        )
        assert "gpt-4o-mini" in driver.find_element(By.ID, "spend-model").text
        assert_key_stays_in_the_page(driver, ADMIN_KEY)
        assert_clean_browser_log(driver, ADMIN_KEY)

    await asyncio.to_thread(admin)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_a_wrong_key_gets_the_login_form_again(
    start_gateway: StartGateway, tmp_path: Path, browser: Browser
) -> None:
    gw = await start_gateway(console_config(tmp_path))
    driver = browser.driver

    def wrong() -> None:
        driver.get(gw.url("/console"))
        driver.execute_script("window.sessionStorage.clear()")
        field = wait_for(driver, visible("key"), "no login form")
        field.send_keys("not-a-key-at-all")
        driver.find_element(By.ID, "login").click()
        wait_for(
            driver,
            lambda d: "Incorrect API key" in d.find_element(By.ID, "login-error").text,
            "no error for a wrong key",
        )
        time.sleep(0.5)  # nothing more arrives later
        assert driver.execute_script("return window.sessionStorage.length") == 0
        assert not driver.find_element(By.ID, "batches-view").is_displayed()
        assert driver.find_element(By.ID, "login-view").is_displayed()

    await asyncio.to_thread(wrong)
