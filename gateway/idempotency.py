"""`Idempotency-Key` on POST /v1/batches and POST /v1/files, with Stripe's semantics.

A client that retries a create after a lost answer must not get a second batch or
a second file. With the header, the first answer that ended the request (a 2xx, or
a 4xx other than 408, 409 and 429) is stored per tenant and key, and a retry of
the same request gets it again, byte for byte, without the work being done again.

- The same key with a different request (another fingerprint), or first used on
  the other endpoint, is refused: 400 `idempotency_key_reused` (Stripe refuses a
  key reused across endpoints too).
- A request arriving while the first is still running gets 409
  `idempotency_key_in_use`, marked retryable (see `_in_use`).
- A 5xx or 429, an exception or a client gone frees the key, so a retry runs
  again (the gateway answers a 5xx only when no batch was made). A process that
  dies mid-request stops renewing its lock, and the key is free LOCK_SECONDS later.
- Failures before the request could be fingerprinted (bad header, wrong media
  type, unparseable or oversized body, a form not read to its end) never touch
  the key, as in Stripe, where a request that never began executing saves nothing.
- Keys are kept KEEP_SECONDS (24 h) after their answer, then pruned by the poller.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import APIError, Conflict, InvalidRequest, from_provider
from gateway.store import Store
from gateway.store.idempotency import IdempotencyRecord
from providers.base import ProviderError

log = logging.getLogger("gateway.idempotency")

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# A running request holds its key this long past its last renewal; it renews every
# RENEW_SECONDS, so only a dead (or frozen) process lets a lock run out.
LOCK_SECONDS = 60.0
RENEW_SECONDS = 15.0
KEEP_SECONDS = 24 * 3600
RETRY_AFTER_SECONDS = 1

# The operations a key may belong to (stored with it; one key, one operation).
CREATE_BATCH = "POST /v1/batches"
UPLOAD_FILE = "POST /v1/files"


def key_of(request: web.Request) -> str | None:
    """The request's Idempotency-Key, None without one; 400 for an unusable value."""
    value = request.headers.get(HEADER)
    if value is None:
        return None
    if not value.strip():
        raise InvalidRequest(
            f"The {HEADER} header is empty; send a unique key of 1 to {MAX_KEY_LENGTH} "
            "characters, or leave the header out.",
            code="invalid_idempotency_key",
        )
    if len(value) > MAX_KEY_LENGTH:
        raise InvalidRequest(
            f"The {HEADER} header is {len(value)} characters long; it may be at most "
            f"{MAX_KEY_LENGTH}.",
            code="invalid_idempotency_key",
        )
    if not value.isprintable():
        raise InvalidRequest(
            f"The {HEADER} header may only contain printable characters.",
            code="invalid_idempotency_key",
        )
    return value


def fingerprint(value: Any) -> str:
    """sha256 of canonical JSON (keys sorted): equal for requests that mean the same."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def batch_fingerprint(body: Any, provider_header: str | None) -> str:
    """A create is its parsed JSON body plus the provider header, which can route it."""
    return fingerprint({"body": body, "provider_header": provider_header})


def upload_fingerprint(
    fields: Mapping[str, str], filename: str | None, content_sha256: str | None
) -> str:
    """An upload is its parsed form: the multipart boundary differs between two calls."""
    return fingerprint(
        {"fields": dict(fields), "filename": filename, "content_sha256": content_sha256}
    )


@dataclass(slots=True)
class Attempt:
    """The request holding a key; its work sets `fingerprint` once the request is read whole.

    Without a fingerprint nothing is stored: the answer could not be matched to a retry.
    """

    fingerprint: str | None = None


Work = Callable[[Attempt], Awaitable[web.Response]]


async def once(
    store: Store,
    tenant: str,
    key: str,
    operation: str,
    work: Work,
    *,
    fingerprint: str | None = None,
    replay_fingerprint: Callable[[], Awaitable[str]] | None = None,
) -> web.Response:
    """Run `work` at most once per (tenant, key); a retry gets the stored answer.

    Pass `fingerprint` when it is known before the work (a JSON body); else the
    work sets it on its Attempt, and `replay_fingerprint` computes it, without
    doing the work, for a request whose key already has an answer (an upload).
    """
    owner = secrets.token_hex(16)
    found = await store.claim_idempotency_key(
        tenant, key, operation, owner, time.time(), LOCK_SECONDS
    )
    if found is not None:
        return await _answer_again(found, operation, fingerprint, replay_fingerprint)
    return await _Held(store, tenant, key, owner).run(work, Attempt(fingerprint))


async def _answer_again(
    found: IdempotencyRecord,
    operation: str,
    fingerprint: str | None,
    replay_fingerprint: Callable[[], Awaitable[str]] | None,
) -> web.Response:
    if not found.answered:
        raise _in_use()
    if found.operation != operation:
        raise _reused(
            f"This {HEADER} was already used for {found.operation}; a key can only be "
            f"retried on the endpoint it was first used for. Use a new key for {operation}."
        )
    if fingerprint is None:
        assert replay_fingerprint is not None, "once() needs a fingerprint or a way to make one"
        fingerprint = await replay_fingerprint()
    if fingerprint != found.fingerprint:
        raise _reused(
            f"This {HEADER} was already used with a different request; a key can only be "
            "retried with the same request. Use a new key for a new request."
        )
    assert found.status is not None and found.body is not None
    return web.Response(
        body=found.body,
        status=found.status,
        content_type="application/json",
        headers={REPLAYED_HEADER: "true"},
    )


def _reused(message: str) -> InvalidRequest:
    return InvalidRequest(message, code="idempotency_key_reused")


def _in_use() -> Conflict:
    """A 409 marked retryable (`x-should-retry: true`, `Retry-After`): unlike a file in
    use, it ends by itself; once the first request answers, a retry gets its answer."""
    return Conflict(
        f"A request with this {HEADER} is still being processed; retry after it has "
        "finished to get its answer.",
        code="idempotency_key_in_use",
        headers={"x-should-retry": "true", "Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def keeps(status: int) -> bool:
    """Answers that ended the request. 5xx and 429 may succeed if retried; 409 is a
    request in the way, 408 a body that stalled: those free the key."""
    return 200 <= status < 300 or (400 <= status < 500 and status not in (408, 409, 429))


class _Held:
    """A key this request holds: renewed while the work runs, then stored or freed."""

    def __init__(self, store: Store, tenant: str, key: str, owner: str) -> None:
        self.store = store
        self.tenant = tenant
        self.key = key
        self.owner = owner

    async def run(self, work: Work, attempt: Attempt) -> web.Response:
        renewer = asyncio.create_task(self._renew())
        stored = False
        try:
            try:
                response = await work(attempt)
            except (APIError, ProviderError) as exc:
                error = from_provider(exc) if isinstance(exc, ProviderError) else exc
                if attempt.fingerprint is not None and keeps(error.status):
                    # What error_middleware sends: web.json_response(error.body()).
                    body = json.dumps(error.body()).encode()
                    stored = await self._finish(attempt.fingerprint, error.status, body)
                raise
            if (
                attempt.fingerprint is not None
                and keeps(response.status)
                and isinstance(response.body, bytes)
            ):
                stored = await self._finish(attempt.fingerprint, response.status, response.body)
            return response
        finally:
            renewer.cancel()
            if not stored:
                # Shielded: a cancelled request (client gone) still frees its key.
                await asyncio.shield(self._release())

    async def _finish(self, fingerprint: str, status: int, body: bytes) -> bool:
        try:
            done = await self.store.finish_idempotency_key(
                self.tenant,
                self.key,
                self.owner,
                fingerprint=fingerprint,
                status=status,
                body=body,
                now=time.time(),
            )
        except Exception as exc:  # the answer still goes out; a retry may run again
            log.error("idempotency: storing an answer failed: %s", type(exc).__name__)
            return False
        if not done:
            log.warning("idempotency: a key's lock ran out before its request answered")
        return done

    async def _release(self) -> None:
        try:
            await self.store.release_idempotency_key(self.tenant, self.key, self.owner)
        except Exception as exc:  # the lock then runs out by itself
            log.error("idempotency: freeing a key failed: %s", type(exc).__name__)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                until = time.time() + LOCK_SECONDS
                if not await self.store.renew_idempotency_key(
                    self.tenant, self.key, self.owner, until
                ):
                    return  # taken over: this process stalled past its lock
            except Exception as exc:
                log.warning("idempotency: renewing a key's lock failed: %s", type(exc).__name__)
