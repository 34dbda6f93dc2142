"""Records and the store interface every backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from gateway.instance import Instance
from gateway.store.idempotency import IdempotencyRecord

T = TypeVar("T")


@dataclass(slots=True)
class FileRecord:
    id: str
    tenant: str
    purpose: str
    filename: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    sha256: str | None = None
    line_count: int | None = None
    endpoint: str | None = None
    models: tuple[str, ...] = ()
    # Bytes live either in the local blob store (`blob`) or at a provider.
    blob: str | None = None
    provider: str | None = None
    upstream_id: str | None = None
    batch_id: str | None = None


@dataclass(slots=True)
class BatchRecord:
    id: str
    tenant: str
    provider: str
    input_file_id: str
    created_at: int
    # The public Batch object as last normalized (gateway ids only).
    object: dict[str, Any]
    upstream_id: str | None = None
    output_ttl: int | None = None
    # Name of the webhook (config `webhooks:`) told when the batch ends.
    webhook: str | None = None
    # True between the row write and the upstream create completing.
    pending: bool = True
    # The instance running the create while pending; None once handed to the gateway
    # to settle in the background (the client already holds the batch id).
    owner: str | None = None
    # Background settling rounds so far (creates handed over after an unknown outcome).
    settle_attempts: int = 0
    # A sharded batch's child: the parent batch the client holds (`gateway.sharding`).
    parent_id: str | None = None

    @property
    def status(self) -> str:
        return str(self.object["status"])


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One batch's usage of one model: what ran, what it cost, and at what price."""

    model: str
    tenant: str
    provider: str
    endpoint: str
    lines_succeeded: int = 0
    lines_failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    # None when the model's price is unknown (never guessed).
    cost_usd: float | None = None
    # The price used, as `gateway.pricing.Price.as_json()`.
    price: dict[str, Any] | None = None
    accounted_at: int | None = None
    batch_id: str | None = None


@dataclass(frozen=True, slots=True)
class ShardRow:
    """A child's place in its sharded parent (see migration 0012)."""

    child_id: str
    parent_id: str
    position: int
    # 1: a slice of the parent's input; 2 and later: a heal of the child named in `heals`.
    attempt: int
    lines: int
    heals: str | None = None
    examined: bool = False


@dataclass(frozen=True, slots=True)
class BatchEvent:
    """One thing that happened to a batch (see migration 0013), for operators."""

    batch_id: str
    at: int
    # "status", "attempt" or "routed".
    kind: str
    status: str | None = None
    provider: str | None = None
    # For an attempt: "created", "found", "failed" or "unknown".
    outcome: str | None = None
    # An attempt's error, or the routing rule.
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class AdminFilter:
    """What an operator's batch list keeps (every field optional)."""

    tenant: str | None = None
    provider: str | None = None
    status: str | None = None
    created_after: int | None = None
    created_before: int | None = None
    metadata: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ProviderDeletion:
    provider: str
    upstream_id: str
    # "input" or "output": what the copy was, for the leftovers report.
    what: str
    attempts: int
    next_attempt_at: float
    last_error: str | None


@dataclass(slots=True)
class WebhookDelivery:
    id: int
    batch_id: str
    webhook: str
    event: bytes
    attempts: int


@dataclass(slots=True)
class Page(Generic[T]):
    data: list[T] = field(default_factory=list)
    has_more: bool = False


class RetentionMethods(Protocol):
    """Provider copies the gateway no longer needs, queued for deletion there."""

    async def queue_ended_inputs(self, providers: Sequence[str], now: float, limit: int) -> int:
        """Queue copies of input files that a batch at their provider used and no batch
        still runs from (they leave the upload cache)."""
        ...

    async def queue_kept_outputs(self, providers: Sequence[str], now: float, limit: int) -> int:
        """Queue provider copies of output files the gateway holds a copy of."""
        ...

    async def due_deletions(self, now: float, limit: int) -> list[ProviderDeletion]: ...

    async def finish_deletion(
        self, provider: str, upstream_id: str, *, retry_at: float | None, error: str | None
    ) -> None:
        """Deleted (`retry_at` None), or to be tried again at `retry_at`."""
        ...

    async def leftovers(self) -> list[ProviderDeletion]: ...


class ProviderStateMethods(Protocol):
    """Adapters' own state (`providers.context.StateStore`), one JSON object per key."""

    async def get_provider_state(self, provider: str, key: str) -> dict[str, Any] | None: ...

    async def put_provider_state(
        self, provider: str, key: str, state: dict[str, Any], *, active: bool, now: float
    ) -> None: ...

    async def delete_provider_state(self, provider: str, key: str) -> None: ...

    async def active_provider_states(self, provider: str) -> list[dict[str, Any]]: ...


class UsageMethods(Protocol):
    """Usage and spend (`gateway.store.usage`)."""

    async def batches_to_account(self, after: int, limit: int) -> list[tuple[int, BatchRecord]]:
        """(seq, batch) for ended batches whose usage is not written yet, after `after`."""
        ...

    async def record_usage(
        self, batch_id: str, rows: Sequence[UsageRow], usage: dict[str, Any] | None, now: float
    ) -> bool:
        """Write a batch's usage exactly once; False if it was accounted already."""
        ...

    async def usage_rows(self, batch_id: str) -> list[UsageRow]: ...

    async def put_estimate(
        self, batch_id: str, tenant: str, cost_usd: float, now: float
    ) -> None: ...

    async def spend(self, tenant: str, since: int) -> tuple[float, float]:
        """(recorded cost since `since`, estimated cost of batches not yet accounted)."""
        ...

    async def usage_report(
        self, group_by: str, start: int, end: int, tenant: str | None
    ) -> list[dict[str, Any]]: ...


class ShardMethods(Protocol):
    """Sharded batches' children (`gateway.store.shards`)."""

    async def add_children(
        self, files: Sequence[FileRecord], batches: Sequence[BatchRecord], rows: Sequence[ShardRow]
    ) -> bool:
        """Insert children with their input files in one transaction; False (and nothing
        written) when one of them, or a heal of the same child, exists already."""
        ...

    async def shard_children(self, parent_id: str) -> list[tuple[ShardRow, BatchRecord]]:
        """A parent's children in (position, attempt) order."""
        ...

    async def mark_examined(self, child_id: str) -> None: ...

    async def expire_child_files(self, now: float, *, accounted: bool) -> int:
        """Expire ended sharded batches' children's files (accounted ones only, with
        `accounted`, and results whose provider copy is queued for deletion)."""
        ...


class EventMethods(Protocol):
    """Batch history and the operators' view across tenants (`gateway.store.events`)."""

    async def add_batch_event(self, event: BatchEvent) -> None:
        """Record an attempt or a routing decision (statuses are recorded by the store)."""
        ...

    async def batch_events(self, batch_id: str) -> list[BatchEvent]:
        """The batch's events, oldest first."""
        ...

    async def routing_rules(self, batch_ids: Sequence[str]) -> dict[str, str]:
        """The rule that routed each of these batches (those routed by one)."""
        ...

    async def admin_batches(
        self, where: AdminFilter, *, after: str | None, limit: int
    ) -> Page[BatchRecord]:
        """Every tenant's batches the filter keeps, newest first, without sharded
        batches' children; UnknownCursor when `after` names no such batch."""
        ...


class Store(
    RetentionMethods, ProviderStateMethods, UsageMethods, ShardMethods, EventMethods, Protocol
):
    """Everything the gateway persists; SQLite and PostgreSQL implement it alike."""

    async def close(self) -> None: ...

    async def insert_file(self, record: FileRecord) -> str:
        """Store a file; for a provider file already stored, the existing row's id."""
        ...

    async def get_file(self, file_id: str, tenant: str | None = None) -> FileRecord | None: ...

    async def find_file_by_upstream(self, provider: str, upstream_id: str) -> FileRecord | None: ...

    async def list_files(
        self, tenant: str, *, purpose: str | None, after: str | None, limit: int, order: str
    ) -> Page[FileRecord]: ...

    async def delete_file(self, file_id: str) -> None: ...

    async def get_upstream_file(self, file_id: str, provider: str) -> str | None: ...

    async def put_upstream_file(self, file_id: str, provider: str, upstream_id: str) -> str:
        """Record a provider's copy of a file unless one is recorded; the copy that stands."""
        ...

    async def delete_upstream_file(self, file_id: str, provider: str) -> None: ...

    async def insert_batch(self, record: BatchRecord) -> None: ...

    async def update_batch(self, record: BatchRecord, *, event: bytes | None = None) -> bool:
        """Persist the batch; with `event`, queue its webhook in the same transaction.
        A change of status is recorded as a status event in that transaction too.

        False, and nothing written, when the row is already terminal: an ended batch
        never changes again, and only the write that ended it queues the webhook.
        """
        ...

    async def delete_batch(self, batch_id: str) -> None: ...

    async def get_batch(self, batch_id: str, tenant: str | None = None) -> BatchRecord | None: ...

    async def list_batches(
        self, tenant: str, *, after: str | None, limit: int
    ) -> Page[BatchRecord]: ...

    async def pending_batches(self) -> list[BatchRecord]: ...

    async def batch_of_upstream(self, provider: str, upstream_id: str) -> str | None:
        """The gateway batch that points at this upstream batch, if any."""
        ...

    async def unowned_pending_batches(self) -> list[BatchRecord]:
        """Pending creates no live instance runs: handed over (owner None) or orphaned
        (the owner's instance row is gone), oldest first."""
        ...

    async def count_active_batches(self, tenant: str) -> int:
        """Non-terminal batches of a tenant, pending creates included."""
        ...

    async def bytes_stored(self, tenant: str) -> int:
        """Bytes of the tenant's uploads held by the gateway (copies of outputs don't count)."""
        ...

    async def file_in_use(self, file_id: str) -> bool:
        """Whether a non-terminal batch reads this file as its input."""
        ...

    async def expired_files(self, now: float, limit: int) -> list[FileRecord]:
        """Files whose expires_at has passed and that no active batch reads."""
        ...

    async def files_to_keep(
        self, providers: Sequence[str], after: str, now: float, limit: int
    ) -> list[FileRecord]:
        """Unexpired output files of ended batches at these providers with no blob yet,
        by id after `after`."""
        ...

    async def set_file_blob(self, file_id: str, blob: str, size: int) -> bool:
        """Record the gateway's copy of a file; False if the row is gone or has one."""
        ...

    async def active_batches(self, provider: str | None = None) -> list[BatchRecord]: ...

    async def count_batches(self) -> list[tuple[str, str, int]]:
        """(provider, status, count) over every batch, for the dashboard's gauges."""
        ...

    async def due_deliveries(self, now: float, limit: int) -> list[WebhookDelivery]: ...

    async def finish_delivery(
        self, delivery_id: int, *, delivered: bool, next_attempt_at: float | None, error: str | None
    ) -> None:
        """Mark delivered, or reschedule (next_attempt_at), or give up (None)."""
        ...

    async def claim_active_batches(
        self,
        owner: str,
        limit: int,
        lease_seconds: float,
        now: float,
        provider: str | None = None,
    ) -> list[BatchRecord]:
        """Lease up to `limit` due, active batches to `owner` until `now + lease_seconds`.

        Due means non-pending, non-terminal, `next_poll_at <= now` and no unexpired
        lease, taken in `next_poll_at` order. Atomic across processes: two owners
        claiming at once never get the same batch.
        """
        ...

    async def release_batch(self, batch_id: str, owner: str, next_poll_at: float) -> bool:
        """Hand a claimed batch back, due again at `next_poll_at`.

        False when `owner` no longer holds the lease (it expired and was taken).
        """
        ...

    async def acquire_lease(self, name: str, owner: str, seconds: float, now: float) -> bool:
        """Take or renew the named lease; False while another owner holds it."""
        ...

    async def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up (at shutdown), so a successor need not wait for it to expire."""
        ...

    async def register_instance(self, instance: Instance) -> None: ...

    async def heartbeat(self, instance_id: str, now: float) -> bool:
        """False when the row is gone (another process judged this one dead)."""
        ...

    async def instances(self) -> list[Instance]: ...

    async def forget_instance(self, instance_id: str) -> None:
        """Drop a gone instance: its row, its named leases and its batch leases."""
        ...

    async def hit_rate_window(self, key: str, window_start: int, limit: int) -> tuple[bool, int]:
        """Count one hit for `key` in the window starting at `window_start`.

        Returns (allowed, hits): a hit over `limit` is refused and not counted, so
        the count never exceeds the limit. Atomic across processes.
        """
        ...

    async def prune_rate_windows(self, before: int) -> int:
        """Drop windows that started before `before`; returns how many."""
        ...

    async def claim_idempotency_key(
        self, tenant: str, key: str, operation: str, owner: str, now: float, lock_seconds: float
    ) -> IdempotencyRecord | None:
        """Take the key for `owner` until `now + lock_seconds`: None when taken.

        A key is free when it has no row or its running request's lock ran out (the
        process died); otherwise the row met is returned, answered or still held.
        Atomic across processes: of two claims at once, one gets the key.
        """
        ...

    async def renew_idempotency_key(self, tenant: str, key: str, owner: str, until: float) -> bool:
        """Extend a running request's lock; False when `owner` no longer holds the key."""
        ...

    async def finish_idempotency_key(
        self,
        tenant: str,
        key: str,
        owner: str,
        *,
        fingerprint: str,
        status: int,
        body: bytes,
        now: float,
    ) -> bool:
        """Store the answer (kept from `now`); False when `owner` no longer holds the key."""
        ...

    async def release_idempotency_key(self, tenant: str, key: str, owner: str) -> None:
        """Free a held key without an answer (a 5xx, 429 or a request that died)."""
        ...

    async def prune_idempotency_keys(self, before: float) -> int:
        """Drop keys stored (or claimed) before `before`; returns how many."""
        ...


class UnknownCursor(Exception):
    """`after` names no object the caller can see."""
