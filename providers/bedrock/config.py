"""`type: bedrock` settings: where to stage, which role Bedrock assumes, which models."""

from __future__ import annotations

import re
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from providers.base import InputFile, ProviderError
from providers.bedrock.jobs import (
    BEDROCK_ID,
    CHAT_FAMILIES,
    FAMILIES,
    Family,
    model_family,
    s3_location,
)
from providers.config import HttpUrl, ProviderConfig

__all__ = ["BedrockModel", "BedrockProviderConfig"]

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
_REGION = r"^[a-z]{2}(?:-[a-z]+)+-\d{1,2}$"
_ROLE_ARN = re.compile(r"arn:aws[A-Za-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_MIN_PART = 5 * 1024 * 1024


class BedrockModel(BaseModel):
    """A model entry with its family named, for ids that don't say it (an application
    inference profile ARN)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=2048)
    family: Literal[FAMILIES] | None = None  # type: ignore[valid-type]


class BedrockProviderConfig(ProviderConfig):
    """Amazon Bedrock batch inference (model invocation jobs), staged through S3.

    No key here: credentials come from the standard AWS chain (environment, shared files
    with `profile`, container or instance role). Bedrock's documented per-job record
    limits are `min_records` (100) and `max_records` (50,000); check your account's
    quotas ("Minimum/Maximum number of records per batch inference job").
    """

    # Bedrock quotas: 50,000 records per job, 1 GB per input file.
    batch_limits: ClassVar[tuple[int, int]] = (50_000, 1024 * 1024 * 1024)

    type: Literal["bedrock"]
    endpoints: tuple[Literal["/v1/chat/completions", "/v1/embeddings"], ...] | None = (
        "/v1/chat/completions",
        "/v1/embeddings",
    )
    region: str = Field(pattern=_REGION)
    input_s3_uri: str
    output_s3_uri: str
    role_arn: str
    # The model names clients send -> a Bedrock model id, inference profile id or ARN
    # (or {id, family}). A name not listed is sent as is when it is a Bedrock model id.
    models: dict[str, str | BedrockModel] = Field(default_factory=dict)
    # SSE-KMS for the staged input objects, and the job's output encryption key.
    kms_key_id: str | None = Field(None, min_length=1, max_length=2048)
    profile: str | None = Field(None, min_length=1)
    # VPC (PrivateLink) endpoints, or an emulator; unset: the region's public endpoints.
    endpoint_url: HttpUrl | None = None
    s3_endpoint_url: HttpUrl | None = None
    min_records: int = Field(100, ge=1)
    max_records: int = Field(50_000, ge=1)
    timeout_hours: int | None = Field(None, ge=24, le=168)
    # For Claude lines without max_tokens / max_completion_tokens (Anthropic requires it).
    default_max_tokens: int | None = Field(None, ge=1)
    # Multipart part size of the staged input; an upload holds about three parts in memory.
    part_bytes: int = Field(8 * 1024 * 1024, ge=_MIN_PART, le=32 * 1024 * 1024)

    @field_validator("input_s3_uri", "output_s3_uri")
    @classmethod
    def _s3_uri(cls, value: str) -> str:
        if s3_location(value) is None:
            raise ValueError("must be an s3://bucket/prefix URI")
        return value

    @field_validator("role_arn")
    @classmethod
    def _role(cls, value: str) -> str:
        if not _ROLE_ARN.fullmatch(value):
            raise ValueError("must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, str | BedrockModel]) -> dict[str, str | BedrockModel]:
        for name, target in value.items():
            entry = target if isinstance(target, BedrockModel) else BedrockModel(id=target)
            if entry.family is None and model_family(entry.id) is None:
                raise ValueError(
                    f"{name}: the family of {entry.id[:100]!r} can't be told from its id; "
                    f"write it as {{id: ..., family: one of {', '.join(FAMILIES)}}}"
                )
        return value

    @model_validator(mode="after")
    def _limits(self) -> BedrockProviderConfig:
        if self.min_records > self.max_records:
            raise ValueError("min_records must not be larger than max_records")
        return self

    @property
    def base_url(self) -> str:
        """Where the control plane is, for check-config's listing."""
        return self.endpoint_url or f"https://bedrock.{self.region}.amazonaws.com"

    def resolve(self, name: str) -> tuple[str, Family] | None:
        """(Bedrock model id, family) for a client's model name; None when it is neither
        configured nor a Bedrock model id whose family its id tells."""
        target = self.models.get(name)
        if target is None:
            if not BEDROCK_ID.fullmatch(name) or name.startswith("arn:"):
                return None
            target = name
        entry = target if isinstance(target, BedrockModel) else BedrockModel(id=target)
        family = entry.family or model_family(entry.id)
        return (entry.id, family) if family is not None else None

    def file_model(self, file: InputFile, endpoints: frozenset[str]) -> tuple[str, str, Family]:
        """(client model name, Bedrock model id, family) of an input file, or a clear 400:
        one job runs one model, on the endpoint its family serves."""
        if file.endpoint not in endpoints:
            runs = ", ".join(sorted(endpoints))
            message = f"Bedrock runs {runs} batches here, not '{file.endpoint}'."
            raise ProviderError("bad_request", message)
        if len(file.models) != 1:
            names = ", ".join(sorted(file.models))[:300]
            count = len(file.models)
            message = f"A Bedrock batch job runs one model; this file names {count}: {names}."
            raise ProviderError("bad_request", message)
        name = file.models[0]
        resolved = self.resolve(name)
        if resolved is None:
            known = ", ".join(sorted(self.models))[:300] or "none"
            message = (
                f"Model '{name[:100]}' is not configured for this Bedrock provider "
                f"(models: {known})."
            )
            raise ProviderError("bad_request", message)
        model_id, family = resolved
        if (family in CHAT_FAMILIES) != (file.endpoint == CHAT):
            kind = "a chat" if family in CHAT_FAMILIES else "an embeddings"
            message = f"Model '{name[:100]}' is {kind} model; it can't run {file.endpoint} batches."
            raise ProviderError("bad_request", message)
        return name, model_id, family

    def client_name(self, model_id: str | None) -> str | None:
        """The model name clients use for a job's model id (for a job whose create's
        answer was lost); never an ARN."""
        for name, target in self.models.items():
            ident = target.id if isinstance(target, BedrockModel) else target
            if ident == model_id:
                return name
        return model_id if model_id and not model_id.startswith("arn:") else None

    def family_of(self, model_id: str) -> Family | None:
        """The family of a job's model id (configured, else told by the id)."""
        for target in self.models.values():
            if isinstance(target, BedrockModel) and target.id == model_id and target.family:
                return target.family
        return model_family(model_id)

    def secrets(self) -> list[str]:
        """Configured names no client may see: buckets, the role, the key, hosts, ARNs."""
        found: list[str | None] = [self.role_arn, self.kms_key_id]
        for uri in (self.input_s3_uri, self.output_s3_uri):
            location = s3_location(uri)
            found.append(location[0] if location else None)
        for url in (self.endpoint_url, self.s3_endpoint_url):
            found += [url, urlsplit(url).netloc] if url else []
        for target in self.models.values():
            ident = target.id if isinstance(target, BedrockModel) else target
            found.append(ident if ident.startswith("arn:") else None)
        return [s for s in found if s]
