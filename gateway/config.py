"""config.yaml, parsed once into frozen pydantic models.

Secrets are referenced as `${VAR}` / `${VAR:-default}` and resolved here, once;
request code never reads the environment. Relative paths resolve against the
config file's own folder so a copied config directory is self-contained.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union
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

from providers.config import Endpoint, ProviderConfig
from providers.registry import TYPES

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# Embedding inputs one batch may hold, over all its lines (OpenAI's documented limit).
EMBEDDING_INPUTS = 50_000

# The `provider` of a sharded batch's parent row: its children run at real providers.
SHARDED = "shard"


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
    # Copy each output/error file of a remote provider here once its batch has ended:
    # downloads then come from the gateway (fast, and still there when the provider is
    # down or has dropped the file).
    keep_provider_outputs: bool = True

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


class KeyLimits(_Model):
    """Per-key quotas; None means unlimited."""

    requests_per_minute: int | None = Field(None, ge=1)
    max_active_batches: int | None = Field(None, ge=1)
    max_bytes_stored: int | None = Field(None, ge=1)
    # Spend per calendar month (UTC) in USD: recorded usage plus the estimated cost of
    # batches still running; a create past it gets 429 insufficient_quota.
    max_spend_usd: float | None = Field(None, gt=0)


class KeyConfig(_Model):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    # May this key pick a provider itself with the X-Batch-Provider header?
    allow_provider_header: bool = False
    webhook: str | None = None
    limits: KeyLimits = KeyLimits()
    # The providers this key's batches may run on (None: any).
    providers: tuple[str, ...] | None = None


class AuthConfig(_Model):
    open: bool = False
    keys: tuple[KeyConfig, ...] = ()
    # For the open (keyless) tenant: whether X-Batch-Provider is honoured.
    allow_provider_header: bool = False
    # An operator key that may list and retrieve any tenant's objects (read-only).
    admin_key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")

    @field_validator("keys")
    @classmethod
    def _unique(cls, keys: tuple[KeyConfig, ...]) -> tuple[KeyConfig, ...]:
        names = [k.name for k in keys]
        hashes = [k.key_sha256 for k in keys]
        if len(set(names)) != len(names) or len(set(hashes)) != len(hashes):
            raise ValueError("key names and key hashes must be unique")
        return keys


class WebhookConfig(_Model):
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr
    max_attempts: int = Field(12, ge=1)
    # First retry after about this long, doubling each time (capped at an hour).
    retry_backoff_seconds: float = Field(2.0, gt=0)


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # None ("auto"): JSON lines, or short text lines when stderr is a terminal.
    format: Literal["json", "text"] | None = None
    # One line per request (method, route, status, duration) at INFO.
    access_log: bool = True


class PollerConfig(_Model):
    enabled: bool = True
    interval_seconds: float = Field(30.0, gt=0)
    jitter: float = Field(0.1, ge=0, le=1)
    concurrency_per_provider: int = Field(32, ge=1)
    # How long a replica holds a batch it polls (and the housekeeping role); a replica
    # that dies hands them over when this runs out. Keep it above the slowest refresh.
    lease_seconds: float = Field(120.0, gt=0)
    # Every process renews its heartbeat this often; one silent for
    # `instance_timeout_seconds` on another host is taken for dead (on the same host a
    # gone pid or a reboot tells at once), and its pending creates and leases are taken over.
    heartbeat_seconds: float = Field(2.0, gt=0)
    instance_timeout_seconds: float = Field(60.0, gt=0)
    # The orphan sweep: how often, and how far back it lists each provider's batches
    # and uploads (further back while an older create is still unsettled).
    repair_interval_seconds: float = Field(300.0, gt=0)
    repair_window_seconds: float = Field(3600.0, gt=0)
    # A batch its provider has not ended this long after its `expires_at` is cancelled
    # there and marked `expired` (with what output the provider has).
    expiry_grace_seconds: float = Field(3600.0, ge=0)
    webhook_interval_seconds: float = Field(1.0, gt=0)
    # How often expired files (rows and blobs) are removed.
    sweep_interval_seconds: float = Field(60.0, gt=0)


class LimitsConfig(_Model):
    max_file_bytes: int = Field(200 * 1024 * 1024, ge=1)
    max_file_lines: int = Field(50_000, ge=1)
    max_line_bytes: int = Field(50 * 1024 * 1024, ge=1)
    # JSON request bodies (POST /v1/batches); uploads are bounded by max_file_bytes.
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    # A request body that sends nothing for this long is answered 408 and closed.
    upload_idle_seconds: float = Field(30.0, gt=0)
    # Uploads may be this large when a route shards (`routes[].shard`); a create that is
    # not sharded still gets the limits above.
    max_shard_file_bytes: int = Field(1024 * 1024 * 1024, ge=1)
    max_shard_file_lines: int = Field(500_000, ge=1)


# The `type:` union, one member per provider type in the registry.
if TYPE_CHECKING:
    AnyProviderConfig = ProviderConfig
else:
    AnyProviderConfig = Annotated[
        Union[tuple(kind.config for kind in TYPES.values())],  # noqa: UP007
        Field(discriminator="type"),
    ]


class RouteMatch(_Model):
    endpoint: Endpoint | None = None
    model: str | None = None
    metadata: dict[str, str] | None = None
    tenant: str | None = None
    # The value of an X-Batch-Provider header (only where the caller's key allows it).
    provider_header: str | None = None


class Target(_Model):
    provider: str
    weight: float = Field(1.0, gt=0)


def _targets(value: Any) -> Any:
    """`to: name`, `to: [name, {provider, weight}]`: bare names are weight 1."""
    if isinstance(value, str):
        return [{"provider": value}]
    if isinstance(value, list):
        return [{"provider": v} if isinstance(v, str) else v for v in value]
    return value


class ShardConfig(_Model):
    """Cut a batch into children spread over providers (`gateway.sharding`)."""

    across: tuple[Target, ...] = Field(min_length=1)
    # Per child, below each provider's own limits (`providers.<name>.max_batch_lines`).
    max_lines: int | None = Field(None, ge=1)
    max_bytes: int | None = Field(None, ge=1024)

    _across = field_validator("across", mode="before")(_targets)


# The per-line codes a heal re-runs by default: rate limits, server errors, timeouts and
# requests the provider's window ran out on.
HEAL_CODES: tuple[int | str, ...] = (429, 500, 503, "timeout", "batch_expired")


class HealConfig(_Model):
    """Re-run a child's failed lines on other providers (`gateway.sharding`)."""

    retry_failed_lines_on: tuple[str, ...] = Field(min_length=1)
    # Runs of one line in all, the first included (2: one retry).
    max_attempts: int = Field(2, ge=2, le=10)
    # A line's `response.status_code`, or its `error.code` (`batch_expired`, `timeout`,
    # `batch_failed` for every line of a child that failed as a whole).
    codes: tuple[int | str, ...] = HEAL_CODES


class Route(_Model):
    match: RouteMatch = RouteMatch()
    to: tuple[Target, ...] = ()
    fallback: tuple[str, ...] = ()
    webhook: str | None = None
    shard: ShardConfig | None = None
    heal: HealConfig | None = None

    _one_target = field_validator("to", mode="before")(_targets)

    @model_validator(mode="after")
    def _somewhere(self) -> Route:
        if not self.to and self.shard is None:
            raise ValueError("a route needs `to:` or `shard:`")
        if self.heal is not None and self.shard is None:
            raise ValueError("`heal:` needs `shard:` (healed lines are merged into one result)")
        return self


class PriceConfig(_Model):
    """A model's price at one provider, in USD per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(0.0, ge=0)
    # Cached prompt tokens; unset, they cost `input`.
    cached_input: float | None = Field(None, ge=0)
    # What a batch pays of those prices (0.5: half); unset, the provider type's discount.
    batch_discount: float | None = Field(None, gt=0, le=1)


class UsageConfig(_Model):
    # Account ended batches (with `blobs.keep_provider_outputs: false`, that reads each
    # remote output once more from its provider).
    enabled: bool = True
    # Per-tenant labels on the usage metrics (tenants may be many: off by default).
    tenant_labels: bool = False
    # How often the accountant looks for ended batches it has not counted yet.
    sweep_seconds: float = Field(10.0, gt=0)


class RoutingConfig(_Model):
    # Seed for weighted choice; set it to make routing reproducible (tests).
    seed: int | None = None
    # Show the chosen provider in the batch's metadata as `gateway_provider`.
    expose_provider: bool = False


class Config(_Model):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    blobs: BlobsConfig = BlobsConfig()
    auth: AuthConfig = AuthConfig(open=True)
    limits: LimitsConfig = LimitsConfig()
    providers: dict[str, AnyProviderConfig]
    routes: tuple[Route, ...] = ()
    default: str
    default_fallback: tuple[str, ...] = ()
    routing: RoutingConfig = RoutingConfig()
    poller: PollerConfig = PollerConfig()
    logging: LoggingConfig = LoggingConfig()
    webhooks: dict[str, WebhookConfig] = {}
    # Price overrides: provider name -> model -> price (`gateway.pricing` has the defaults).
    pricing: dict[str, dict[str, PriceConfig]] = {}
    usage: UsageConfig = UsageConfig()
    # Serve an active batch's last state for this long before asking the provider again
    # (0: every retrieve of an active batch reaches the provider; concurrent ones share one call).
    retrieve_cache_seconds: float = Field(0.0, ge=0)
    # Folder that relative paths were resolved against (the config file's own).
    base_dir: Path = Field(Path("."), exclude=True)

    def upload_limits(self) -> tuple[int, int, int]:
        """(bytes, lines, embedding inputs) an upload may have: larger when some route
        shards (its children then keep to each provider's limits)."""
        limits = self.limits
        if any(route.shard for route in self.routes):
            return (
                max(limits.max_file_bytes, limits.max_shard_file_bytes),
                max(limits.max_file_lines, limits.max_shard_file_lines),
                max(EMBEDDING_INPUTS, limits.max_shard_file_lines),
            )
        return limits.max_file_bytes, limits.max_file_lines, EMBEDDING_INPUTS


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


def _ca_file(name: str, path: Path) -> Path:
    """Read now, so a missing or broken bundle is a config error, not a failed start."""
    try:
        ssl.create_default_context(cafile=str(path))
    except OSError as exc:  # ssl.SSLError included
        ssl_error = isinstance(exc, ssl.SSLError)
        problem = "not a PEM bundle of certificates" if ssl_error else exc.strerror
        raise ConfigError(
            f"config is invalid:\n  providers.{name}.ca_file: cannot use {path}: {problem}"
        ) from None
    return path


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
        if provider.key_missing():
            reason = f"api_key is not set ({', '.join(unset) or 'empty'})"
        elif provider.key_policy == "optional" and (
            key_vars := [var for p, var in missing if p == f"providers.{name}.api_key"]
        ):
            # The key is optional, but naming an unset variable is a mistake, not "no key";
            # `${VAR:-}` says "no key" explicitly.
            reason = f"api_key is not set ({', '.join(key_vars)})"
        updates: dict[str, Any] = {"disabled_reason": reason}
        if "dir" in type(provider).model_fields:
            updates["dir"] = _resolve(base_dir, provider.dir)  # type: ignore[attr-defined]
        if getattr(provider, "credentials_file", None) is not None:  # a service-account key
            updates["credentials_file"] = _resolve(base_dir, Path(provider.credentials_file))  # type: ignore[attr-defined]
        if provider.ca_file is not None:
            updates["ca_file"] = _ca_file(name, _resolve(base_dir, provider.ca_file))
        providers[name] = provider.model_copy(update=updates)

    _check_references(config, providers)

    store = config.store
    if store.url.startswith("sqlite:///"):
        db = _resolve(base_dir, Path(store.url.removeprefix("sqlite:///")))
        store = store.model_copy(update={"url": f"sqlite:///{db}"})
    blobs = config.blobs
    if blobs.dir is not None:  # a copy, so the section's other settings stay
        blobs = blobs.model_copy(update={"dir": _resolve(base_dir, blobs.dir)})
    return config.model_copy(update={"providers": providers, "store": store, "blobs": blobs})


def _check_references(config: Config, providers: dict[str, Any]) -> None:
    """Every provider and webhook a rule names must exist."""
    problems = []
    for i, route in enumerate(config.routes):
        for j, target in enumerate(route.to):
            if target.provider not in providers:
                problems.append(f"routes.{i}.to.{j}: unknown provider {target.provider!r}")
        for j, name in enumerate(route.fallback):
            if name not in providers:
                problems.append(f"routes.{i}.fallback.{j}: unknown provider {name!r}")
        shard = route.shard.across if route.shard else ()
        for j, target in enumerate(shard):
            if target.provider not in providers:
                problems.append(
                    f"routes.{i}.shard.across.{j}: unknown provider {target.provider!r}"
                )
        for j, name in enumerate(route.heal.retry_failed_lines_on if route.heal else ()):
            if name not in providers:
                problems.append(
                    f"routes.{i}.heal.retry_failed_lines_on.{j}: unknown provider {name!r}"
                )
        if route.webhook is not None and route.webhook not in config.webhooks:
            problems.append(f"routes.{i}.webhook: unknown webhook {route.webhook!r}")
    if SHARDED in providers:
        problems.append(f"providers.{SHARDED}: the name is reserved for sharded batches")
    if config.default not in providers:
        problems.append(f"default: unknown provider {config.default!r}")
    for j, name in enumerate(config.default_fallback):
        if name not in providers:
            problems.append(f"default_fallback.{j}: unknown provider {name!r}")
    for i, key in enumerate(config.auth.keys):
        if key.webhook is not None and key.webhook not in config.webhooks:
            problems.append(f"auth.keys.{i}.webhook: unknown webhook {key.webhook!r}")
        for j, name in enumerate(key.providers or ()):
            if name not in providers:
                problems.append(f"auth.keys.{i}.providers.{j}: unknown provider {name!r}")
    for name in config.pricing:
        if name not in providers:
            problems.append(f"pricing.{name}: unknown provider {name!r}")
    if problems:
        raise ConfigError("config is invalid:\n" + "\n".join(f"  {p}" for p in problems))


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
