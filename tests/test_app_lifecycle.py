"""The app's resources each have their own cleanup: one that fails to close leaves none
of the others open."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path

import pytest

from gateway.api import SERVICE
from gateway.app import BLOBS, STORE
from tests.conftest import StartGateway
from tests.support import make_config


async def test_a_provider_that_fails_to_close_leaves_nothing_else_open(
    start_gateway: StartGateway, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await start_gateway(make_config(tmp_path))
    app = gw.server.app
    closed: list[str] = []

    async def broken() -> None:
        raise RuntimeError("the provider's client would not close")

    monkeypatch.setattr(app[SERVICE].providers["sandbox"], "close", broken)
    for key, name in ((BLOBS, "blobs"), (STORE, "store")):
        resource = app[key]
        close = resource.close

        async def recorded(close=close, name=name) -> None:  # type: ignore[no-untyped-def]
            closed.append(name)
            await close()

        monkeypatch.setattr(resource, "close", recorded)
    with suppress(Exception):  # aiohttp reports the failed cleanup after running the rest
        await gw.server.close()
    assert closed == ["blobs", "store"]
