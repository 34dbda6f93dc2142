"""`type: vertex` settings: the project and region, where to stage, which models, which
credentials."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from providers.base import InputFile, ProviderError
from providers.config import HttpUrl, ProviderConfig
from providers.gcs import QUANTUM, gs_location

__all__ = ["CHAT", "EMBEDDINGS", "VertexProviderConfig", "is_embedding_model", "publisher_model"]

CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
_PUBLISHER = "publishers/google/models/"
# Client model names sent as they are when not configured: Gemini and text-embedding ids.
_BARE = re.compile(r"(?:gemini-|text-embedding-|text-multilingual-embedding-)[a-z0-9._@-]+")
# A Gemini model id, optionally versioned (`gemini-2.0-flash-001`, `gemini-2.5-pro`).
_MODEL_ID = re.compile(r"[a-z0-9][a-z0-9._@-]{0,127}")
# Project ids: 6-30 lowercase letters, digits and hyphens, starting with a letter.
_PROJECT = r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$"
_LOCATION = r"^(?:global|[a-z]+(?:-[a-z]+)*\d+)$"


def is_embedding_model(model: str) -> bool:
    """Vertex's text-embedding models (`text-embedding-005`, `gemini-embedding-001`, ...)."""
    return "embedding" in model.rpartition("/")[2]


def publisher_model(target: str) -> str | None:
    """`gemini-2.5-flash` or `publishers/google/models/gemini-2.5-flash` -> the latter;
    None for anything that is not a Google publisher model."""
    model_id = target.removeprefix(_PUBLISHER)
    return _PUBLISHER + model_id if _MODEL_ID.fullmatch(model_id) else None


class VertexProviderConfig(ProviderConfig):
    """Vertex AI batch prediction for Gemini and text-embedding models, staged through
    Cloud Storage.

    No key here: credentials come from google-auth, application default credentials unless
    `credentials_file` names a service account key (or authorized_user file). The staging
    buckets must be in the job's region (`location`).
    """

    # Vertex AI Gemini batch prediction: 200,000 requests, 1 GB input.
    batch_limits: ClassVar[tuple[int, int]] = (200_000, 1024 * 1024 * 1024)

    type: Literal["vertex"]
    endpoints: tuple[Literal["/v1/chat/completions", "/v1/embeddings"], ...] | None = (
        "/v1/chat/completions",
        "/v1/embeddings",
    )
    project: str = Field(pattern=_PROJECT)
    location: str = Field("us-central1", pattern=_LOCATION)
    # Client model name -> Vertex model (`publishers/google/models/<id>` or a bare id).
    # A name not listed is sent as `publishers/google/models/<name>` when it is a Gemini or
    # text-embedding model id.
    models: dict[str, str] = Field(default_factory=dict)
    gcs_input_prefix: str
    gcs_output_prefix: str
    credentials_file: Path | None = None
    # Unset: the regional endpoint (`https://aiplatform.googleapis.com` for `global`).
    base_url: HttpUrl | None = None
    storage_url: HttpUrl = "https://storage.googleapis.com"
    api_version: Literal["v1", "v1beta1"] = "v1"
    # Uploads go in resumable chunks of this size (a multiple of 256 KiB); an upload holds
    # about four chunks in memory, hence the cap.
    upload_chunk_bytes: int = Field(8 * 1024 * 1024, ge=QUANTUM, le=32 * 1024 * 1024)

    @field_validator("gcs_input_prefix", "gcs_output_prefix")
    @classmethod
    def _gs_prefix(cls, value: str) -> str:
        if gs_location(value) is None:
            raise ValueError("must be a gs://bucket/prefix URI")
        return value

    @field_validator("models")
    @classmethod
    def _models(cls, value: dict[str, str]) -> dict[str, str]:
        for name, target in value.items():
            if not name or publisher_model(target) is None:
                raise ValueError(
                    f"{name[:100]}: {target[:100]!r} is not a Gemini model "
                    "(publishers/google/models/<id> or a bare model id)"
                )
        return value

    @field_validator("upload_chunk_bytes")
    @classmethod
    def _chunk(cls, value: int) -> int:
        if value % QUANTUM:
            raise ValueError("must be a multiple of 262144 (256 KiB)")
        return value

    @model_validator(mode="after")
    def _base_url(self) -> VertexProviderConfig:
        if self.base_url is None:
            host = "aiplatform.googleapis.com"
            url = (
                f"https://{host}"
                if self.location == "global"
                else f"https://{self.location}-{host}"
            )
            object.__setattr__(self, "base_url", url)
        return self

    @property
    def api_url(self) -> str:
        assert self.base_url is not None
        return self.base_url

    @property
    def input_location(self) -> tuple[str, str]:
        found = gs_location(self.gcs_input_prefix)
        assert found is not None
        return found

    @property
    def output_location(self) -> tuple[str, str]:
        found = gs_location(self.gcs_output_prefix)
        assert found is not None
        return found

    def resolve(self, name: str) -> str | None:
        """The Vertex model for a client's model name, or None."""
        target = self.models.get(name)
        if target is None:
            return publisher_model(name) if _BARE.fullmatch(name) else None
        return publisher_model(target)

    def client_name(self, model: str | None) -> str | None:
        """The name clients use for a job's model (a job found after a lost create)."""
        if not model:
            return None
        for name, target in self.models.items():
            if publisher_model(target) == model:
                return name
        return model.removeprefix(_PUBLISHER)

    def file_model(self, file: InputFile, endpoints: frozenset[str]) -> tuple[str, str]:
        """(client model name, Vertex model) of an input file, or a clear 400: one job runs
        one model."""
        if file.endpoint not in endpoints:
            runs = ", ".join(sorted(endpoints))
            message = f"Vertex AI runs {runs} batches here, not '{file.endpoint}'."
            raise ProviderError("bad_request", message)
        if len(file.models) != 1:
            names = ", ".join(sorted(file.models))[:300]
            message = (
                f"A Vertex AI batch job runs one model; this file names {len(file.models)}: "
                f"{names}."
            )
            raise ProviderError("bad_request", message)
        name = file.models[0]
        model = self.resolve(name)
        if model is None:
            known = ", ".join(sorted(self.models))[:300] or "none"
            message = (
                f"Model '{name[:100]}' is neither configured for this Vertex AI provider "
                f"(models: {known}) nor a Gemini or text-embedding model id."
            )
            raise ProviderError("bad_request", message)
        if is_embedding_model(model) != (file.endpoint == EMBEDDINGS):
            kind = "an embeddings" if is_embedding_model(model) else "a chat"
            message = f"Model '{name[:100]}' is {kind} model; it can't run {file.endpoint} batches."
            raise ProviderError("bad_request", message)
        return name, model

    def secrets(self) -> list[str]:
        """Configured names no client may see: the project, the buckets, the hosts."""
        found = [self.project, self.input_location[0], self.output_location[0]]
        for url in (self.api_url, self.storage_url):
            found += [url, urlsplit(url).netloc]
        if self.credentials_file is not None:
            found.append(str(self.credentials_file))
        return [s for s in found if s]
