"""Signed webhook events for batches that ended, delivered at least once.

Events are queued in the store in the same transaction as the terminal status,
so a crash cannot lose one; the sender retries with backoff until the receiver
answers 2xx or `max_attempts` is reached. Receivers dedupe on the event id.

Signature: `X-Gateway-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import Mapping

import aiohttp

from gateway.config import WebhookConfig
from gateway.store.base import Store, WebhookDelivery
from providers.retry import backoff_seconds

log = logging.getLogger("gateway.webhooks")

SIGNATURE_HEADER = "X-Gateway-Signature"
MAX_BACKOFF = 3600.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, *, tolerance: float = 300.0) -> bool:
    """What a receiver does: check the signature and that it is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    expected = sign(secret, timestamp, body)
    fresh = abs(time.time() - timestamp) <= tolerance
    return fresh and hmac.compare_digest(expected, header)


class WebhookSender:
    def __init__(self, store: Store, webhooks: Mapping[str, WebhookConfig]) -> None:
        self.store = store
        self.webhooks = webhooks
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def deliver_due(self, limit: int = 100) -> int:
        """Send every event that is due; returns how many were delivered."""
        due = await self.store.due_deliveries(time.time(), limit)
        results = await asyncio.gather(*(self._deliver(d) for d in due))
        return sum(results)

    async def _deliver(self, delivery: WebhookDelivery) -> bool:
        webhook = self.webhooks.get(delivery.webhook)
        if webhook is None:
            await self.store.finish_delivery(
                delivery.id, delivered=False, next_attempt_at=None, error="webhook not configured"
            )
            return False
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(
                webhook.secret.get_secret_value(), int(time.time()), delivery.event
            ),
        }
        error: str | None = None
        try:
            async with self.session.post(webhook.url, data=delivery.event, headers=headers) as resp:
                if 200 <= resp.status < 300:
                    await self.store.finish_delivery(
                        delivery.id, delivered=True, next_attempt_at=None, error=None
                    )
                    return True
                error = f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = type(exc).__name__
        attempts = delivery.attempts + 1
        retry_at = None
        if attempts < webhook.max_attempts:
            retry_at = time.time() + backoff_seconds(
                attempts - 1, webhook.retry_backoff_seconds, cap=MAX_BACKOFF
            )
        log.warning(
            "webhook %s for batch %s failed (%s); %s",
            delivery.webhook,
            delivery.batch_id,
            error,
            "will retry" if retry_at else "giving up",
        )
        await self.store.finish_delivery(
            delivery.id, delivered=False, next_attempt_at=retry_at, error=error
        )
        return False
