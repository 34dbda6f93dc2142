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
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
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


STORE_SCHEMES = ("sqlite:///", "postgresql://", "postgres://")


class StoreConfig(_Model):
    # sqlite:///path (one process, one machine) or postgresql://user:pass@host/db (shared).
    url: str = "sqlite:///./data/gateway.db"

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(STORE_SCHEMES):
            scheme = value.split(":", 1)[0] if ":" in value else value
            raise ValueError(
                f"unsupported store {scheme[:32]!r}: use one of {', '.join(STORE_SCHEMES)}"
            )
        return value

    def display_url(self) -> str:
        """The URL without its password, for logs and check-config."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


class S3BlobsConfig(_Model):
    """Any S3-compatible object store (AWS S3, MinIO, Ceph, R2, ...)."""

    bucket: str = Field(min_length=3, max_length=63)
    # None: AWS's own endpoint for `region`.
    endpoint_url: str | None = None
    prefix: str = ""
    region: str = "us-east-1"
    # Both unset: botocore's default chain (env, profile, instance or pod role).
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None
    # Path style works with every S3 API; virtual hosts need wildcard DNS (MinIO lacks it).
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    # S3's minimum part is 5 MiB; memory per upload in flight is about twice this.
    part_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024, le=512 * 1024 * 1024)

    @model_validator(mode="after")
    def _both_keys_or_none(self) -> S3BlobsConfig:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("set both access_key_id and secret_access_key, or neither")
        return self

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else f" ({self.region})"
        return f"s3://{self.bucket}/{self.prefix}{where}"


class BlobsConfig(_Model):
    """Exactly one backend: a local directory (the default) or an S3 bucket."""

    dir: Path | None = None
    s3: S3BlobsConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_backend(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if data.get("dir") is not None and data.get("s3") is not None:
                raise ValueError("set either blobs.dir or blobs.s3, not both")
            if data.get("s3") is None and data.get("dir") is None:
                data = {**data, "dir": Path("./data/files")}
        return data

    def describe(self) -> str:
        return self.s3.describe() if self.s3 is not None else str(self.dir)


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


class OpenAIProviderConfig(_ProviderBase):
    type: Literal["openai"]
    base_url: str
    api_key: SecretStr | None = None
    timeout_seconds: float = Field(60.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


ProviderConfig = Annotated[
    SandboxProviderConfig | OpenAIProviderConfig, Field(discriminator="type")
]


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

    def enabled_providers(self) -> dict[str, SandboxProviderConfig | OpenAIProviderConfig]:
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


_REQUIRED = ("store.", "blobs.")


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()


def parse_config(raw: Any, base_dir: Path) -> Config:
    """Validate an already loaded YAML tree; raises ConfigError naming the bad path."""
    if not isinstance(raw, dict):
        raise ConfigError("config: the top level must be a mapping")
    missing: list[tuple[str, str]] = []
    data = interpolate(raw, missing)
    # Unlike a provider's key, the store and the blobs have no "disabled" state.
    required = [f"  {p}: ${{{var}}} is not set" for p, var in missing if p.startswith(_REQUIRED)]
    if required:
        raise ConfigError("config is invalid:\n" + "\n".join(required))
    try:
        config = TypeAdapter(Config).validate_python({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(f"config is invalid:\n{_format_errors(exc)}") from None

    providers: dict[str, Any] = {}
    for name, provider in config.providers.items():
        reason = None
        unset = [var for p, var in missing if p.startswith(f"providers.{name}.")]
        if isinstance(provider, OpenAIProviderConfig) and (
            provider.api_key is None or not provider.api_key.get_secret_value()
        ):
            reason = f"api_key is not set ({', '.join(unset) or 'empty'})"
        updates: dict[str, Any] = {"disabled_reason": reason}
        if isinstance(provider, SandboxProviderConfig):
            updates["dir"] = _resolve(base_dir, provider.dir)
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
    blobs = config.blobs
    if blobs.dir is not None:
        blobs = BlobsConfig(dir=_resolve(base_dir, blobs.dir))
    return config.model_copy(update={"providers": providers, "store": store, "blobs": blobs})


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
