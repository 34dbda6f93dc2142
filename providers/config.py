"""What every provider type's config model shares.

A provider type's own model lives in its module (`providers/<type>.py`) and subclasses
`ProviderConfig` (or `RemoteConfig` for an API reached over HTTPS); `gateway.config`
builds the `type:` union from `providers.registry`. Models are frozen and refuse
unknown keys, like the rest of config.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from providers.base import ALL_ENDPOINTS

__all__ = ["Endpoint", "HttpUrl", "ProviderConfig", "RemoteConfig", "RetentionConfig"]

Endpoint = Literal[ALL_ENDPOINTS]  # type: ignore[valid-type]


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_http_url)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetentionConfig(_Model):
    """What the gateway deletes at the provider once it no longer needs it."""

    # The provider's copy of an input file, once no batch there still runs from it.
    delete_inputs: bool = True
    # Output and error files, once the gateway holds its copy (blobs.keep_provider_outputs).
    delete_outputs: bool = True


class ProviderConfig(_Model):
    """The settings every provider type has: endpoints, timeouts, retries, breaker, egress."""

    # Whether `api_key` must be set: "required" disables the provider when it is missing;
    # "optional" only when it names an unset variable (`${VAR:-}` says "no key").
    key_policy: ClassVar[Literal["required", "optional", "none"]] = "none"

    # The most lines and bytes one batch may have at this provider type, as its docs say
    # (OpenAI's 50,000 requests and 200 MB unless a type says otherwise); a sharded batch
    # is cut into children that fit (`max_batch_lines` / `max_batch_bytes` override it).
    batch_limits: ClassVar[tuple[int, int]] = (50_000, 200 * 1024 * 1024)

    type: str
    endpoints: tuple[Endpoint, ...] | None = None
    max_batch_lines: int | None = Field(None, ge=1)
    max_batch_bytes: int | None = Field(None, ge=1024)
    connect_timeout_seconds: float = Field(10.0, gt=0)
    read_timeout_seconds: float = Field(60.0, gt=0)
    max_retries: int = Field(2, ge=0)
    retry_backoff_seconds: float = Field(0.5, ge=0)
    retry_max_backoff_seconds: float = Field(8.0, ge=0)
    max_concurrency: int = Field(64, ge=1)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown_seconds: float = Field(30.0, ge=0)
    retention: RetentionConfig = RetentionConfig()
    # An http:// proxy (credentials may be in it) for every call to this provider; unset,
    # HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment apply.
    proxy: str | None = None
    # A PEM bundle trusted instead of the system store (curl's --cacert).
    ca_file: Path | None = None
    # false: any certificate is accepted (warned about at every start).
    tls_verify: bool = True
    # What carries the small JSON calls: the kept-alive pool, or aiohttp's client as a fallback.
    transport: Literal["pool", "aiohttp"] = "pool"
    # Set by the loader, not by users: why a provider is out of routing.
    disabled_reason: str | None = Field(None, exclude=True)

    @field_validator("proxy")
    @classmethod
    def _http_proxy(cls, value: str | None) -> str | None:
        # The messages never repeat the value: it may hold the proxy's password.
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("not a valid URL") from None
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("must be an http://host:port URL (https:// proxies are not supported)")
        if parts.path.strip("/") or parts.query or parts.fragment:
            raise ValueError("must be an http://host:port URL, without a path")
        return value

    @model_validator(mode="after")
    def _verify_or_ca(self) -> ProviderConfig:
        if self.ca_file is not None and not self.tls_verify:
            raise ValueError("set ca_file or tls_verify: false, not both")
        return self

    def limits(self) -> tuple[int, int]:
        """(lines, bytes) one batch may have here."""
        lines, size = self.batch_limits
        return self.max_batch_lines or lines, self.max_batch_bytes or size

    def key_missing(self) -> bool:
        """A key this provider cannot work without is not set (the loader disables it)."""
        return self.key_policy == "required" and self.secret_key() is None

    def secret_key(self) -> str | None:
        """The API key in clear, for the adapter; None when the type has none or it is unset."""
        key = getattr(self, "api_key", None)
        return key.get_secret_value() or None if isinstance(key, SecretStr) else None


class RemoteConfig(ProviderConfig):
    """A provider reached over HTTP(S) with a key: `base_url` and `api_key`."""

    key_policy: ClassVar[Literal["required", "optional", "none"]] = "required"

    base_url: HttpUrl
    api_key: SecretStr | None = None
