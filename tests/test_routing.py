"""Routing rules: match on endpoint/model/metadata/tenant/header, weights, fallbacks."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.auth import hash_key
from gateway.config import parse_config
from gateway.errors import InvalidRequest
from gateway.routing import Router, RouteRequest
from tests.conftest import StartGateway
from tests.support import chat_file, make_config


class Fake:
    def __init__(self, endpoints: set[str] | None = None, up: bool = True) -> None:
        self.endpoints = endpoints
        self.up = up

    def supports(self, endpoint: str) -> bool:
        return self.endpoints is None or endpoint in self.endpoints

    def available(self) -> bool:
        return self.up


def sandbox(name: str) -> dict[str, Any]:
    return {"type": "sandbox", "dir": f"./{name}", "validate_seconds": 0, "line_seconds": 0}


def request(**kw: Any) -> RouteRequest:
    base: dict[str, Any] = {
        "endpoint": "/v1/chat/completions",
        "models": ("gpt-4o-mini",),
        "metadata": {},
        "tenant": "default",
    }
    return RouteRequest(**{**base, **kw})


def router(tmp_path: Path, providers: dict[str, Fake], **raw: Any) -> Router:
    config = parse_config({"providers": {n: sandbox(n) for n in providers}, **raw}, tmp_path)
    return Router(config, providers)


def test_first_matching_rule_wins_and_matches_every_dimension(tmp_path: Path) -> None:
    providers = {n: Fake() for n in ("a", "b", "c", "d", "e", "z")}
    r = router(
        tmp_path,
        providers,
        routes=[
            {"match": {"provider_header": "e"}, "to": "e"},
            {"match": {"model": "claude-*"}, "to": "a"},
            {"match": {"endpoint": "/v1/embeddings"}, "to": "b"},
            {"match": {"metadata": {"team": "research"}}, "to": "c"},
            {"match": {"tenant": "team-d"}, "to": "d"},
        ],
        default="z",
    )
    assert r.choose(request(models=("claude-3",))).providers == ("a",)
    # A file that mixes models matches only a rule that accepts all of them.
    assert r.choose(request(models=("claude-3", "gpt-4o"))).providers == ("z",)
    assert r.choose(request(endpoint="/v1/embeddings")).providers == ("b",)
    assert r.choose(request(metadata={"team": "research"})).rule == "routes[3]"
    assert r.choose(request(tenant="team-d")).providers == ("d",)
    assert r.choose(request(provider_header="e")).providers == ("e",)
    assert r.choose(request()).rule == "default"


def test_unsupported_endpoint_and_open_breaker_are_skipped(tmp_path: Path) -> None:
    providers = {
        "anyapi": Fake({"/v1/chat/completions", "/v1/embeddings", "/v1/completions"}),
        "fastapi": Fake(),
        "down": Fake(up=False),
    }
    r = router(
        tmp_path,
        providers,
        routes=[{"match": {}, "to": "down", "fallback": ["anyapi", "fastapi"]}],
        default="anyapi",
    )
    assert r.choose(request()).providers == ("anyapi", "fastapi")
    # anyapi.ai has no /v1/responses: never chosen for it.
    assert r.choose(request(endpoint="/v1/responses")).providers == ("fastapi",)
    providers["fastapi"].up = False
    with pytest.raises(Exception) as info:
        r.choose(request(endpoint="/v1/responses"))
    assert getattr(info.value, "status", None) == 503


def test_weights_are_followed_within_five_percent(tmp_path: Path) -> None:
    providers = {"anyapi": Fake(), "fastapi": Fake()}
    targets = [{"provider": "anyapi", "weight": 3}, {"provider": "fastapi", "weight": 1}]
    r = router(tmp_path, providers, routes=[{"to": targets}], default="anyapi", routing={"seed": 7})
    firsts = Counter(r.choose(request()).providers[0] for _ in range(1000))
    assert abs(firsts["anyapi"] / 1000 - 0.75) <= 0.05
    # The same seed routes the same way.
    one, two = (
        router(tmp_path, providers, routes=[{"to": targets}], default="anyapi", routing={"seed": 7})
        for _ in range(2)
    )
    assert [one.choose(request()).providers for _ in range(50)] == [
        two.choose(request()).providers for _ in range(50)
    ]


async def test_weighted_creates_through_the_gateway(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    targets = [{"provider": "heavy", "weight": 3}, {"provider": "light", "weight": 1}]
    config = make_config(
        tmp_path,
        providers={"heavy": sandbox("heavy"), "light": sandbox("light")},
        routes=[{"to": targets}],
        default="heavy",
        routing={"seed": 1, "expose_provider": True},
        poller={"enabled": False},
    )
    gw = await start_gateway(config)
    f = await gw.client.files.create(file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch")
    counts: Counter[str] = Counter()
    for _ in range(1000):
        batch = await gw.client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        assert batch.metadata is not None
        counts[batch.metadata["gateway_provider"]] += 1
    assert abs(counts["heavy"] / 1000 - 0.75) <= 0.05, counts
    stored = await gw.service.store.list_batches("default", after=None, limit=100)
    assert {r.provider for r in stored.data} == {"heavy", "light"}


async def test_provider_header_only_where_the_key_allows(
    start_gateway: StartGateway, tmp_path: Path
) -> None:
    keys = [
        {"name": "ops", "key_sha256": hash_key("k-ops"), "allow_provider_header": True},
        {"name": "team", "key_sha256": hash_key("k-team")},
    ]
    config = make_config(
        tmp_path,
        auth={"keys": keys},
        providers={"main": sandbox("main"), "pinned": sandbox("pinned")},
        default="main",
        poller={"enabled": False},
    )
    ops = await start_gateway(config, api_key="k-ops")
    team = openai.AsyncOpenAI(base_url=ops.base_url, api_key="k-team", max_retries=0)
    try:
        for client, expected in ((ops.client, "pinned"), (team, "main")):
            f = await client.files.create(
                file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
            )
            batch = await client.batches.create(
                input_file_id=f.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_headers={"X-Batch-Provider": "pinned"},
            )
            record = await ops.service.store.get_batch(batch.id)
            assert record is not None and record.provider == expected
            assert batch.metadata is None  # the provider is not exposed by default
        with pytest.raises(openai.BadRequestError):
            f = await ops.client.files.create(
                file=("in.jsonl", io.BytesIO(chat_file(1))), purpose="batch"
            )
            await ops.client.batches.create(
                input_file_id=f.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                extra_headers={"X-Batch-Provider": "nope"},
            )
    finally:
        await team.close()


def test_mixed_model_file_is_routed_by_all_its_models(tmp_path: Path) -> None:
    r = router(
        tmp_path,
        {"claude": Fake(), "other": Fake()},
        routes=[{"match": {"model": "claude-*"}, "to": "claude"}],
        default="other",
    )
    assert r.choose(request(models=("claude-a", "claude-b"))).providers == ("claude",)
    assert r.choose(request(models=("claude-a", "gpt-4o"))).providers == ("other",)


def test_no_usable_provider_is_a_clear_400(tmp_path: Path) -> None:
    r = router(tmp_path, {"only": Fake({"/v1/embeddings"})}, default="only")
    with pytest.raises(InvalidRequest) as info:
        r.choose(request())
    assert info.value.param == "endpoint"
