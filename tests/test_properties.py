"""Property tests: the JSONL validator and the id codec, over inputs nobody would write by hand."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import ids, instance
from gateway.blobs import LocalBlobs
from gateway.errors import InvalidRequest, NotFound
from gateway.jsonl import JSONLError, JSONLValidator
from gateway.routing import Router
from gateway.service import GatewayService
from gateway.store.sqlite import SQLiteStore
from tests.support import make_config

ENDPOINTS = ("/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/v1/completions")
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batch_files(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str]:
    """Valid request lines (unique custom_ids, one endpoint) and that endpoint."""
    endpoint = draw(st.sampled_from(ENDPOINTS))
    custom_ids = draw(
        st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=25, unique=True)
    )
    lines = []
    for custom_id in custom_ids:
        body = draw(
            st.dictionaries(
                st.text(max_size=8).filter(lambda k: k not in ("model", "stream", "input")),
                JSON_VALUES,
                max_size=3,
            )
        )
        body["model"] = draw(st.text(min_size=1, max_size=10))
        lines.append({"custom_id": custom_id, "method": "POST", "url": endpoint, "body": body})
    return lines, endpoint


def render(lines: list[Any], blanks: list[bool] | None = None, trailing: bool = True) -> bytes:
    out = []
    for i, line in enumerate(lines):
        if blanks and blanks[i % len(blanks)]:
            out.append("   ")
        out.append(line if isinstance(line, str) else json.dumps(line))
    return ("\n".join(out) + ("\n" if trailing else "")).encode()


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(edges, edges[1:], strict=False)]


def validate(chunks: list[bytes]) -> Any:
    validator = JSONLValidator()
    for chunk in chunks:
        validator.feed(chunk)
    return validator.finish()


@SETTINGS
@given(
    batch_files(),
    st.lists(st.booleans(), max_size=5),
    st.booleans(),
    st.lists(st.integers(min_value=0), max_size=40),
)
def test_any_valid_file_is_accepted_and_summarized_in_any_chunking(
    file: tuple[list[dict[str, Any]], str], blanks: list[bool], trailing: bool, cuts: list[int]
) -> None:
    lines, endpoint = file
    data = render(lines, blanks, trailing)
    summary = validate(chunked(data, cuts))
    assert summary.line_count == len(lines)
    assert summary.endpoint == endpoint
    assert summary.models == tuple(sorted({line["body"]["model"] for line in lines}))
    assert validate([data]) == summary


CORRUPTIONS = {
    "not json": lambda line, first: '{"custom_id": ',
    "not an object": lambda line, first: "[1, 2, 3]",
    "duplicate custom_id": lambda line, first: {**line, "custom_id": first["custom_id"]},
    "wrong method": lambda line, first: {**line, "method": "GET"},
    "other endpoint": lambda line, first: {
        **line,
        "url": "/v1/moderations" if line["url"] != "/v1/moderations" else "/v1/embeddings",
    },
    "no model": lambda line, first: {**line, "body": {}},
    "body not an object": lambda line, first: {**line, "body": [line["body"]]},
    "empty custom_id": lambda line, first: {**line, "custom_id": ""},
}


@SETTINGS
@given(
    batch_files(),
    st.sampled_from(sorted(CORRUPTIONS)),
    st.integers(min_value=0),
    st.lists(st.integers(min_value=0), max_size=40),
)
def test_a_single_corruption_is_reported_at_its_line(
    file: tuple[list[dict[str, Any]], str], kind: str, where: int, cuts: list[int]
) -> None:
    lines, _ = file
    if len(lines) < 2:
        lines = [*lines, {**lines[0], "custom_id": lines[0]["custom_id"] + "-2"}]
    k = 1 + where % (len(lines) - 1)  # never the first line: "duplicate" needs one before
    corrupted = [*lines[:k], CORRUPTIONS[kind](lines[k], lines[0]), *lines[k + 1 :]]
    with pytest.raises(JSONLError) as info:
        validate(chunked(render(corrupted), cuts))
    assert info.value.line == k + 1, (kind, str(info.value))


def test_generated_ids_are_unique_well_formed_and_valid() -> None:
    made = [ids.new_file_id() for _ in range(2000)] + [ids.new_batch_id() for _ in range(2000)]
    assert len(set(made)) == len(made)
    assert all(ids.looks_valid(i) for i in made)
    assert all(len(i) in (29, 30) and i.isascii() for i in made)


SHAPED = st.from_regex(r"\A(file-|batch_)[A-Za-z0-9]{24}\Z")


@SETTINGS
@given(
    st.text(max_size=300)
    | st.binary(max_size=64).map(lambda b: b.decode("latin-1"))
    | st.tuples(SHAPED, st.sampled_from(["\n", "\r", " ", "\x00", "/", "é"])).map("".join)
)
def test_looks_valid_is_total_and_strict(value: str) -> None:
    assert ids.looks_valid(value) == bool(re.fullmatch(r"(file-|batch_)[A-Za-z0-9]{24}", value))
    if ids.looks_valid(value):
        assert value.isascii() and value.isprintable()


def test_arbitrary_ids_never_crash_lookups(tmp_path: Path) -> None:
    """Every id-taking use case answers NotFound (or 400 for a cursor), whatever the id."""
    config = make_config(tmp_path)
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(SQLiteStore.open(":memory:"))
    service = GatewayService(
        store,
        LocalBlobs(tmp_path / "blobs"),
        {},
        Router(config, {}),
        config,
        instance_id=instance.start().id,
    )

    @SETTINGS
    @given(st.text(max_size=300) | SHAPED | st.just("' OR 1=1 --") | st.just("../../x"))
    def check(value: str) -> None:
        for call in (
            service.get_file("t", value),
            service.delete_file("t", value),
            service.open_content("t", value),
            service.retrieve_batch("t", value),
            service.cancel_batch("t", value),
        ):
            with pytest.raises(NotFound):
                loop.run_until_complete(call)
        with pytest.raises(InvalidRequest):
            loop.run_until_complete(
                service.list_files("t", purpose=None, after=value, limit=5, order="asc")
            )

    try:
        check()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
