"""config.yaml: interpolation, clear errors with the YAML path, self-contained folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from providers.openai_compat import OpenAIProviderConfig
from tests.support import enabled_providers, sqlite_path

REPO = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )


def test_shipped_config_is_valid_and_lists_the_providers() -> None:
    config = load_config(REPO / "config.yaml")
    assert config.default == "sandbox"
    assert sqlite_path(config) == REPO / "data" / "gateway.db"
    anyapi, fastapi = config.providers["anyapi"], config.providers["fastapi"]
    assert isinstance(anyapi, OpenAIProviderConfig) and isinstance(fastapi, OpenAIProviderConfig)
    assert anyapi.base_url == "https://api.anyapi.ai/v1"
    assert fastapi.base_url == "https://api.fastapi.ai/v1"
    assert set(anyapi.endpoints or ()) == {
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
    }


def test_env_interpolation_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-from-env")
    monkeypatch.delenv("UNSET_PORT", raising=False)
    monkeypatch.delenv("UNSET_KEY", raising=False)
    path = write(
        tmp_path,
        """
server: {port: "${UNSET_PORT:-9123}"}
providers:
  up: {type: openai, base_url: "https://example.invalid/v1", api_key: "${MY_KEY}"}
  nokey: {type: openai, base_url: "https://example.invalid/v1", api_key: "${UNSET_KEY}"}
default: up
""",
    )
    config = load_config(path)
    assert config.server.port == 9123
    up = config.providers["up"]
    assert isinstance(up, OpenAIProviderConfig) and up.api_key is not None
    assert up.api_key.get_secret_value() == "sk-from-env"
    assert up.disabled_reason is None
    assert config.providers["nokey"].disabled_reason == "api_key is not set (UNSET_KEY)"
    assert set(enabled_providers(config)) == {"up"}


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "copied"
    folder.mkdir()
    path = write(
        folder,
        """
store: {url: "sqlite:///./state/gw.db"}
blobs: {dir: ./blobs, keep_provider_outputs: false}
providers: {sandbox: {type: sandbox, dir: ./sbx}}
default: sandbox
""",
    )
    config = load_config(path)
    assert sqlite_path(config) == folder / "state" / "gw.db"
    assert config.blobs.dir == folder / "blobs"
    assert config.blobs.keep_provider_outputs is False  # resolving kept the other settings
    assert config.providers["sandbox"].dir == folder / "sbx"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("providers: {s: {type: sandbox}}\ndefault: s\nserver: {port: 99999}", "server.port"),
        ("providers: {s: {type: nope}}\ndefault: s", "providers.s"),
        ("providers: {s: {type: sandbox, speed: 1}}\ndefault: s", "providers.s.sandbox.speed"),
        ("providers: {s: {type: sandbox}}\ndefault: t", "default"),
        ("providers: {s: {type: sandbox}}\ndefault: s\nroutes: [{to: x}]", "routes.0.to"),
        ("providers: {s: {type: sandbox}}", "default"),
        ("providers: [1, 2\n", "not valid YAML"),
    ],
)
def test_invalid_config_names_the_path(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert where in str(info.value)


def test_cli_rejects_a_bad_config_with_nonzero_exit(tmp_path: Path) -> None:
    path = write(tmp_path, "providers: {s: {type: sandbox}}\ndefault: s\nserver: {port: -1}\n")
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 2
    assert "server.port" in result.stderr
    result = run_cli("serve", "--config", str(path))
    assert result.returncode == 2


def test_check_config_prints_routing_without_secrets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
store: {url: "postgresql://gw:pg-very-secret@db.invalid/gw"}
blobs: {s3: {bucket: gw-files, access_key_id: AKIA-X, secret_access_key: s3-very-secret}}
providers:
  sandbox: {type: sandbox}
  paid: {type: openai, base_url: "https://example.invalid/v1", api_key: "sk-very-secret"}
routes:
  - {match: {model: "gpt-4o*"}, to: paid}
default: sandbox
""",
    )
    result = run_cli("check-config", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "routes[0]  model=gpt-4o*  ->  paid" in result.stdout
    assert "default  *  ->  sandbox" in result.stdout
    assert "store:  postgresql://gw:***@db.invalid/gw" in result.stdout
    assert "blobs:  s3://gw-files/" in result.stdout
    for secret in ("sk-very-secret", "pg-very-secret", "s3-very-secret"):
        assert secret not in result.stdout + result.stderr


def test_hash_key_prints_sha256() -> None:
    result = run_cli("hash-key", "abc")
    assert result.stdout.strip() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
