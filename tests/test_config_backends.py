"""`store:` and `blobs:` in config.yaml: the backends they select and the mistakes they catch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from tests.support import sqlite_path

SANDBOX = {"providers": {"s": {"type": "sandbox"}}, "default": "s"}


def parse(tmp_path: Path, **sections: Any) -> Any:
    return parse_config({**SANDBOX, **sections}, tmp_path)


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgres_url_is_accepted_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    url = f"{scheme}://gw:s3cret@db.internal:5432/gateway"
    monkeypatch.setenv("PG_URL", url)
    config = parse(tmp_path, store={"url": "${PG_URL}"})
    assert config.store.url == url
    assert sqlite_path(config) is None
    assert config.store.display_url() == f"{scheme}://gw:***@db.internal:5432/gateway"


def test_an_unset_store_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_URL", raising=False)
    with pytest.raises(ConfigError, match=r"store\.url: \$\{PG_URL\} is not set"):
        parse(tmp_path, store={"url": "${PG_URL}"})


def test_an_unsupported_store_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store.url.*unsupported store 'mysql'"):
        parse(tmp_path, store={"url": "mysql://db/gateway"})


def test_blobs_default_to_a_local_directory(tmp_path: Path) -> None:
    config = parse(tmp_path)
    assert config.blobs.s3 is None
    assert config.blobs.dir == (tmp_path / "data" / "files").resolve()


def test_s3_blobs_read_their_keys_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S3_KEY", "AKIAEXAMPLE")
    monkeypatch.setenv("S3_SECRET", "very-secret")
    s3 = {
        "endpoint_url": "http://minio:9000",
        "bucket": "gateway-files",
        "prefix": "prod/",
        "access_key_id": "${S3_KEY}",
        "secret_access_key": "${S3_SECRET}",
    }
    config = parse(tmp_path, blobs={"s3": s3})
    assert config.blobs.dir is None and config.blobs.s3 is not None
    assert config.blobs.s3.secret_access_key.get_secret_value() == "very-secret"
    assert config.blobs.s3.part_bytes == 8 * 1024 * 1024
    assert "very-secret" not in config.blobs.describe() + repr(config.blobs)


@pytest.mark.parametrize(
    ("blobs", "message"),
    [
        ({"dir": "./files", "s3": {"bucket": "gateway"}}, "either blobs.dir or blobs.s3"),
        ({"s3": {"bucket": "gateway", "access_key_id": "a"}}, "both access_key_id"),
        ({"s3": {"bucket": "gateway", "part_bytes": 1024}}, "blobs.s3.part_bytes"),
        ({"s3": {"endpoint_url": "http://minio:9000"}}, "blobs.s3.bucket"),
        ({"s3": {"bucket": "gateway", "access_key_id": "${NO_SUCH_VAR}"}}, "NO_SUCH_VAR"),
    ],
)
def test_bad_blobs_config_is_rejected(tmp_path: Path, blobs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(tmp_path, blobs=blobs)
