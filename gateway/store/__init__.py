"""Persistence behind one interface; SQLite is the embedded default."""

from gateway.store.base import BatchRecord, FileRecord, Page, Store

__all__ = ["BatchRecord", "FileRecord", "Page", "Store", "open_store"]


async def open_store(url: str) -> Store:
    from gateway.store.sqlite import SQLiteStore

    return await SQLiteStore.open(url.removeprefix("sqlite:///"))
