"""Persistence behind one interface: SQLite embedded by default, PostgreSQL when shared."""

from gateway.store.base import BatchRecord, FileRecord, Page, Store, UnknownCursor

__all__ = [
    "POSTGRES_SCHEMES",
    "BatchRecord",
    "FileRecord",
    "Page",
    "Store",
    "UnknownCursor",
    "open_store",
]

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


async def open_store(url: str) -> Store:
    """The store a `store.url` names: `sqlite:///path` or `postgresql://…`."""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SQLiteStore

        return await SQLiteStore.open(url.removeprefix("sqlite:///"))
    if url.startswith(POSTGRES_SCHEMES):
        from gateway.store.postgres import PostgresStore

        return await PostgresStore.open(url)
    raise ValueError(f"unsupported store URL scheme {url.split(':', 1)[0]!r}")
