"""What the service reports as it works; metrics subclass it, tests may too."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.store.base import BatchRecord, UsageRow


class ServiceEvents:
    """What the service reports as it works (metrics subclass this)."""

    def routed(self, rule: str, provider: str) -> None:
        return None

    def created(self, provider: str, endpoint: str) -> None:
        return None

    def fallback(self, from_provider: str, to_provider: str, reason: str) -> None:
        return None

    def terminal(self, record: BatchRecord) -> None:
        return None

    def file_bytes(self, direction: str, size: int) -> None:
        return None

    def repaired(self, provider: str, kind: str, action: str) -> None:
        return None

    def provider_deletion(self, provider: str, outcome: str) -> None:
        return None

    def usage_recorded(self, rows: Sequence[UsageRow]) -> None:
        """A batch's usage rows were written (once per batch, by whichever process)."""
        return None

    def budget(self, key: str, used_usd: float, limit_usd: float) -> None:
        """A key's monthly spend (recorded plus committed) as last checked."""
        return None

    def sharded(self, providers: Sequence[str], kind: str) -> None:
        """A sharded batch got children (`kind`: "split" or "heal"), one per provider named."""
        return None

    def healed(self, from_provider: str, to_provider: str, sent: int, succeeded: int) -> None:
        """Failed lines re-run elsewhere (`sent`), and how many of them succeeded there."""
        return None

    def failed_everywhere(self, lines: int) -> None:
        """Lines of a sharded batch that ended failed after every attempt."""
        return None
