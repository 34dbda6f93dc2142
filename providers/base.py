"""The one seam every provider adapter fills.

The gateway speaks OpenAI's vocabulary everywhere, so an adapter's whole job is
to translate its provider into `UpstreamBatch` / `UpstreamFile` (still carrying
the *provider's* ids; `gateway.service` rewrites them once for every adapter)
and to raise `ProviderError` with a `kind` the gateway can act on.

    ProviderError
      kind = "retryable"    connection error, timeout, 429, 5xx: another try may work
      kind = "auth"         the provider refused our key (never the client's fault)
      kind = "not_found"    the upstream object is gone
      kind = "bad_request"  the provider rejected the input itself
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

ErrorKind = Literal["retryable", "auth", "not_found", "bad_request"]
Lookup = Literal["tag", "count", "none"]

BATCH_STATUSES = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)
# The metadata key under which the gateway tags upstream batches with its own id.
GATEWAY_TAG = "gateway_batch_id"
# Uploads are named after the gateway file id, so a duplicate upload is findable.
GATEWAY_FILE_NAME = re.compile(r"(file-[A-Za-z0-9]{24})\.jsonl")
# How far before a create's start a lookup reads the provider's list: the provider's
# clock may run behind ours.
CLOCK_SKEW_SECONDS = 300

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})

# Every endpoint OpenAI's Batch API accepts; adapters narrow it per provider.
ALL_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)

TIMESTAMP_FIELDS = (
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


class ProviderError(Exception):
    """An upstream call failed; `message` is safe to show a client (no keys, no URLs)."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.status = status
        self.code = code
        # Seconds the provider asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after
        # The request may have been carried out upstream (timeout or reset after sending).
        self.ambiguous = ambiguous

    @property
    def retryable(self) -> bool:
        return self.kind == "retryable"


@dataclass(frozen=True, slots=True)
class RequestCounts:
    total: int = 0
    completed: int = 0
    failed: int = 0


@dataclass(slots=True)
class UpstreamBatch:
    """A provider's batch in OpenAI vocabulary, with the provider's own ids.

    Timestamps are Unix seconds or None; an adapter turns placeholders into None
    rather than passing on a wrong number.
    """

    id: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    model: str | None = None
    errors: list[dict[str, Any]] | None = None
    request_counts: RequestCounts | None = None
    usage: dict[str, Any] | None = None
    timestamps: dict[str, int | None] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    id: str
    # None when the provider does not say (then only a read tells whether it is empty).
    bytes: int | None
    created_at: int
    filename: str


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """What a provider needs to create a batch from an already uploaded file."""

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: dict[str, Any] | None = None
    # The gateway's own id, for adapters that can tag the upstream batch with it.
    gateway_batch_id: str | None = None

    def tagged_metadata(self, max_pairs: int = 16) -> dict[str, str] | None:
        """The caller's metadata with the gateway tag, which always gets in.

        The tag is how a create of unknown outcome is found again, so only the gateway
        writes it: a caller's own value under its key is dropped, and so are the caller's
        last keys when the provider's limit leaves no room (the gateway keeps the
        caller's metadata whole and returns it; the provider need not hold all of it).
        """
        metadata = {k: v for k, v in (self.metadata or {}).items() if k != GATEWAY_TAG}
        if not self.gateway_batch_id:
            return metadata or None
        keep = list(metadata.items())[: max_pairs - 1]
        return {**dict(keep), GATEWAY_TAG: self.gateway_batch_id}


ByteStream = AbstractAsyncContextManager[AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class InputFile:
    """A validated gateway input file, as handed to `Provider.upload_file`.

    Its bytes are a local file (`path`, which an adapter may hand on whole) or,
    for blobs kept elsewhere (S3), only readable as a stream (`opener`).
    `open()` reads either way.
    """

    path: Path | None
    filename: str
    bytes: int
    line_count: int
    endpoint: str
    models: tuple[str, ...]
    opener: Callable[[], ByteStream] | None = None

    def __post_init__(self) -> None:
        if self.path is None and self.opener is None:
            raise ValueError("an InputFile needs a path or an opener")

    def open(self) -> ByteStream:
        """The bytes as chunks; each call reads from the start (so a retry can re-send)."""
        if self.opener is not None:
            return self.opener()
        assert self.path is not None
        return _file_chunks(self.path)


@asynccontextmanager
async def _file_chunks(path: Path) -> AsyncIterator[AsyncIterator[bytes]]:
    with path.open("rb") as fh:

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := fh.read(256 * 1024):
                yield chunk

        yield chunks()


@runtime_checkable
class Provider(Protocol):
    """An upstream that runs batches. One instance per configured provider."""

    name: str
    endpoints: frozenset[str]
    # Its output files live at a remote service; the gateway keeps a copy of each
    # once the batch has ended (`blobs.keep_provider_outputs`).
    remote_files: bool
    # How a create of unknown outcome is recognised at the provider: "tag", its batches
    # carry the gateway's id (`find_batch`); "count", they carry nothing, so `candidates`
    # lists the batches made since with the same request count and the gateway decides;
    # "none", it can't be, and such a create is taken as not made (see the README).
    lookup: Lookup

    def supports(self, endpoint: str) -> bool: ...

    async def upload_file(self, file: InputFile) -> str:
        """Upload a validated JSONL input file; return the provider's file id."""
        ...

    async def create_batch(self, request: BatchRequest) -> UpstreamBatch: ...

    async def get_batch(self, upstream_id: str) -> UpstreamBatch: ...

    async def cancel_batch(self, upstream_id: str) -> UpstreamBatch: ...

    async def get_file(self, upstream_file_id: str) -> UpstreamFile: ...

    async def find_batch(self, gateway_batch_id: str, since: int) -> UpstreamBatch | None:
        """The upstream batch tagged with this gateway id, created at `since` or later.

        Used when a create's outcome is unknown (5xx, timeout, crash) so it is attached,
        not duplicated. None only after a complete search of every batch the provider
        made since `since - CLOCK_SKEW_SECONDS`; a search that cannot be completed
        raises, so no caller ever creates again on a guess.
        """
        ...

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        """(gateway batch id, batch) for every tagged upstream batch made since `since`."""
        ...

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        """(gateway file id, upstream file id) for every upload made since `since`."""
        ...

    async def delete_file(self, upstream_file_id: str) -> None: ...

    async def candidates(self, request: BatchRequest, since: int) -> list[UpstreamBatch]:
        """For `lookup == "count"`: every batch made since `since` (less the clock skew)
        with as many requests as `request`'s input file. Raises unless complete."""
        ...

    async def adopt(self, upstream_id: str, request: BatchRequest) -> UpstreamBatch:
        """Take a found batch as the one `request` made (an adapter may record what its
        create would have), and return it."""
        ...

    def open_file_content(self, upstream_file_id: str) -> ByteStream:
        """Context manager yielding the file's bytes as chunks.

        Entering it performs the request, so a missing file raises before the
        gateway starts its own response.
        """
        ...

    async def close(self) -> None: ...


class BaseProvider:
    """Shared behaviour: endpoint support and a no-op close."""

    name: str
    endpoints: frozenset[str]
    remote_files = True
    lookup: Lookup = "none"

    def __init__(self, name: str, endpoints: frozenset[str]) -> None:
        self.name = name
        self.endpoints = endpoints

    def supports(self, endpoint: str) -> bool:
        return endpoint in self.endpoints

    async def find_batch(self, gateway_batch_id: str, since: int) -> UpstreamBatch | None:
        for tag, batch in await self.tagged_batches(since):
            if tag == gateway_batch_id:
                return batch
        return None

    async def tagged_batches(self, since: int) -> list[tuple[str, UpstreamBatch]]:
        return []

    async def tagged_files(self, since: int) -> list[tuple[str, str]]:
        return []

    async def delete_file(self, upstream_file_id: str) -> None:
        return None

    async def candidates(self, request: BatchRequest, since: int) -> list[UpstreamBatch]:
        return []

    async def adopt(self, upstream_id: str, request: BatchRequest) -> UpstreamBatch:
        return await self.get_batch(upstream_id)

    async def get_batch(self, upstream_id: str) -> UpstreamBatch:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def now() -> int:
    return int(time.time())
