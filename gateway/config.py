"""config.yaml, parsed once into frozen pydantic models.

Secrets are referenced as `${VAR}` / `${VAR:-default}` and resolved here, once;
request code never reads the environment. Relative paths resolve against the
config file's own folder so a copied config directory is self-contained.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
)

from providers.base import ALL_ENDPOINTS

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config file that cannot be used; the message names the YAML path."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class StoreConfig(_Model):
    url: str = "sqlite:///./data/gateway.db"


class BlobsConfig(_Model):
    dir: Path = Path("./data/files")


class KeyConfig(_Model):
    name: str = Field(min_length=1)
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class AuthConfig(_Model):
    open: bool = False
    keys: tuple[KeyConfig, ...] = ()


class LimitsConfig(_Model):
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_file_lines: int = Field(50_000, ge=1)
    max_line_bytes: int = Field(50 * 1024 * 1024, ge=1)


Endpoint = Literal[ALL_ENDPOINTS]  # type: ignore[valid-type]


class _ProviderBase(_Model):
    endpoints: tuple[Endpoint, ...] | None = None
    # Set by the loader, not by users: why a provider is out of routing.
    disabled_reason: str | None = Field(None, exclude=True)


class SandboxProviderConfig(_ProviderBase):
    type: Literal["sandbox"]
    dir: Path = Path("./data/sandbox")
    validate_seconds: float = Field(1.0, ge=0)
    line_seconds: float = Field(0.2, ge=0)
    finalize_seconds: float = Field(1.0, ge=0)
    cancel_seconds: float = Field(1.0, ge=0)


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class OpenAIProviderConfig(_ProviderBase):
    type: Literal["openai"]
    base_url: HttpUrl
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(60.0, gt=0)


class AnthropicProviderConfig(_ProviderBase):
    """Anthropic Message Batches; runs `/v1/chat/completions` batches only."""

    type: Literal["anthropic"]
    endpoints: tuple[Literal["/v1/chat/completions"], ...] | None = ("/v1/chat/completions",)
    base_url: HttpUrl = "https://api.anthropic.com"
    api_key: SecretStr | None = None
    anthropic_version: str = "2023-06-01"
    # Anthropic requires max_tokens; used for lines that set neither max_tokens nor
    # max_completion_tokens (without it such lines are rejected at create).
    default_max_tokens: int | None = Field(None, ge=1)
    dir: Path = Path("./data/anthropic")
    timeout_seconds: float = Field(60.0, gt=0)


class EmulatedProviderConfig(_ProviderBase):
    """A synchronous OpenAI-compatible server (vLLM, Ollama, ...) run as a batch by the
    gateway itself. `base_url` includes the API prefix (`http://localhost:8000/v1`)."""

    type: Literal["emulated"]
    endpoints: tuple[Endpoint, ...] | None = (
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
    )
    base_url: HttpUrl
    api_key: SecretStr | None = None
    concurrency: int = Field(8, ge=1, le=256)  # the HTTP client pools 256 connections
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_retries: int = Field(5, ge=0)
    retry_backoff_seconds: float = Field(1.0, ge=0)
    completion_window_seconds: float = Field(86_400, gt=0)
    timeout_seconds: float = Field(600.0, gt=0)
    dir: Path = Path("./data/emulated")


AnyProviderConfig = (
    SandboxProviderConfig | OpenAIProviderConfig | AnthropicProviderConfig | EmulatedProviderConfig
)
ProviderConfig = Annotated[AnyProviderConfig, Field(discriminator="type")]
# Remote providers that cannot work without a key: a missing one disables them.
_NEEDS_KEY = (OpenAIProviderConfig, AnthropicProviderConfig)


class RouteMatch(_Model):
    endpoint: Endpoint | None = None
    model: str | None = None
    metadata: dict[str, str] | None = None


class Route(_Model):
    match: RouteMatch = RouteMatch()
    to: str


class Config(_Model):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    blobs: BlobsConfig = BlobsConfig()
    auth: AuthConfig = AuthConfig(open=True)
    limits: LimitsConfig = LimitsConfig()
    providers: dict[str, ProviderConfig]
    routes: tuple[Route, ...] = ()
    default: str
    # Folder that relative paths were resolved against (the config file's own).
    base_dir: Path = Field(Path("."), exclude=True)

    def enabled_providers(self) -> dict[str, AnyProviderConfig]:
        return {n: p for n, p in self.providers.items() if p.disabled_reason is None}

    def sqlite_path(self) -> Path | None:
        if not self.store.url.startswith("sqlite:///"):
            return None
        return Path(self.store.url.removeprefix("sqlite:///"))


def interpolate(value: Any, missing: list[tuple[str, str]], path: str = "") -> Any:
    """Resolve `${VAR}` / `${VAR:-default}` in every string; note unset variables."""
    if isinstance(value, dict):
        return {
            k: interpolate(v, missing, f"{path}.{k}" if path else str(k)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [interpolate(v, missing, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        found = os.environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        missing.append((path, name))
        return ""

    return _VAR.sub(replace, value)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(
            str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged-"))
        )
        lines.append(f"  {loc or '<root>'}: {err['msg']}")
    return "\n".join(lines)


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def parse_config(raw: Any, base_dir: Path) -> Config:
    """Validate an already loaded YAML tree; raises ConfigError naming the bad path."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    missing: list[tuple[str, str]] = []
    data = interpolate(raw, missing)
    try:
        config = TypeAdapter(Config).validate_python({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(f"config is invalid:\n{_format_errors(exc)}") from None

    providers: dict[str, Any] = {}
    for name, provider in config.providers.items():
        reason = None
        unset = [var for p, var in missing if p.startswith(f"providers.{name}.")]
        key = getattr(provider, "api_key", None)
        if isinstance(provider, _NEEDS_KEY) and (key is None or not key.get_secret_value()):
            reason = f"api_key is not set ({', '.join(unset) or 'empty'})"
        elif isinstance(provider, EmulatedProviderConfig) and (
            key_vars := [var for p, var in missing if p == f"providers.{name}.api_key"]
        ):
            # The key is optional, but naming an unset variable is a mistake, not "no key";
            # `${VAR:-}` says "no key" explicitly.
            reason = f"api_key is not set ({', '.join(key_vars)})"
        updates: dict[str, Any] = {"disabled_reason": reason}
        if "dir" in type(provider).model_fields:
            updates["dir"] = _resolve(base_dir, provider.dir)  # type: ignore[union-attr]
        providers[name] = provider.model_copy(update=updates)

    for i, route in enumerate(config.routes):
        if route.to not in providers:
            raise ConfigError(f"config is invalid:\n  routes.{i}.to: unknown provider {route.to!r}")
    if config.default not in providers:
        raise ConfigError(f"config is invalid:\n  default: unknown provider {config.default!r}")

    store = config.store
    if store.url.startswith("sqlite:///"):
        db = _resolve(base_dir, Path(store.url.removeprefix("sqlite:///")))
        store = StoreConfig(url=f"sqlite:///{db}")
    elif not store.url.startswith("sqlite:"):
        raise ConfigError(
            f"config is invalid:\n  store.url: unsupported store {store.url.split(':')[0]!r}"
        )
    return config.model_copy(
        update={
            "providers": providers,
            "store": store,
            "blobs": BlobsConfig(dir=_resolve(base_dir, config.blobs.dir)),
        }
    )


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(raw, path.resolve().parent)
