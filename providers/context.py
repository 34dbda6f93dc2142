"""What the gateway hands every adapter: where to keep its state and its bytes.

Adapters keep nothing on local disk, so any replica can serve any batch and S3 works for
every provider type. What an adapter must remember (a provider job name, a custom_id map,
the ids of files it wrote) goes to a `StateStore`: one JSON object per key, kept in the
gateway's store (`provider_state` table) under the provider's name. The bytes it keeps
(input copies, spooled results) go to the gateway's blob store. Both protocols are
declared here so that `providers/` never imports `gateway/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from providers.base import ByteStream, Provider
from providers.config import ProviderConfig
from providers.transport import HTTPSettings

__all__ = ["BlobStore", "BlobWriter", "ProviderContext", "ProviderType", "StateStore"]


class BlobWriter(Protocol):
    async def write(self, chunk: bytes) -> None: ...

    async def commit(self) -> None:
        """Make the blob visible under its key."""
        ...

    async def abort(self) -> None:
        """Drop everything written; the key stays as it was."""
        ...


class BlobStore(Protocol):
    """Bytes by key, written all-or-nothing (a blob exists only once committed)."""

    def writer(self, key: str) -> BlobWriter: ...

    def open(self, key: str) -> ByteStream:
        """The blob's bytes as chunks; entering raises FileNotFoundError for a missing key."""
        ...

    def local_path(self, key: str) -> Path | None:
        """A local file holding the blob, when the backend has one."""
        ...

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...


class StateStore(Protocol):
    """One provider's state: a JSON object per key (an upstream batch or file id).

    Every save is one atomic write; `active=True` marks work that some process must carry
    on (an emulated run), which `active()` lists after a restart. `claim` takes a lease on
    a key for this process, so one replica (not all) resumes such work.
    """

    async def load(self, key: str) -> dict[str, Any] | None: ...

    async def save(self, key: str, state: dict[str, Any], *, active: bool = False) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def active(self) -> list[dict[str, Any]]: ...

    async def claim(self, key: str, seconds: float) -> bool:
        """Hold `key` for `seconds` (renewable by calling again); False if another
        live process holds it."""
        ...

    async def release(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class ProviderContext:
    """Everything an adapter gets besides its own config."""

    name: str
    endpoints: frozenset[str]
    state: StateStore
    blobs: BlobStore
    # How to reach the upstream; None for types that call nothing (sandbox).
    http: HTTPSettings | None = None


@dataclass(frozen=True, slots=True)
class ProviderType:
    """What `providers.registry` knows of a provider type: its `type:` name, its config
    model, and how to build its adapter from that config."""

    name: str
    config: type[ProviderConfig]
    build: Callable[[ProviderContext, Any], Provider]
