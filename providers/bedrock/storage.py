"""The adapter's S3 side: staging input objects and reading and deleting job outputs.

Uploads stream through `providers.s3.S3Upload` (multipart, about one part in memory);
reads stream the object in chunks, so a 1 GB output is never held. Every botocore
failure becomes a ProviderError whose message names no bucket, key or account.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from botocore.exceptions import ClientError

from providers.base import ProviderError
from providers.bedrock.aws import AWS_ERRORS, AwsClients, Scrubber, provider_error
from providers.s3 import S3Upload, body_chunks, is_missing

__all__ = ["Storage"]

# A manifest is a few hundred bytes; anything much larger is not one.
_MANIFEST_LIMIT = 1024 * 1024


class Storage:
    def __init__(self, clients: AwsClients, scrub: Scrubber, part_bytes: int) -> None:
        self._clients = clients
        self._scrub = scrub
        self._part_bytes = part_bytes

    async def _s3(self) -> Any:
        try:
            return await self._clients.client("s3")
        except AWS_ERRORS as exc:
            raise provider_error(exc, self._scrub) from None

    async def upload(
        self, bucket: str, key: str, chunks: AsyncIterator[bytes], **extra: Any
    ) -> None:
        """Write `chunks` to one object; a failure (also a refused line while the chunks
        are made) aborts the multipart upload and leaves no object."""
        upload = S3Upload(await self._s3(), bucket, key, self._part_bytes, **extra)
        try:
            async for chunk in chunks:
                await upload.write(chunk)
            await upload.commit()
        except BaseException as exc:
            await upload.abort()
            if isinstance(exc, AWS_ERRORS):
                raise provider_error(exc, self._scrub) from None
            raise

    async def head(self, bucket: str, key: str) -> tuple[int, int] | None:
        """(size, last modified) of an object; None when there is none."""
        s3 = await self._s3()
        try:
            answer = await s3.head_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise provider_error(exc, self._scrub) from None
        except AWS_ERRORS as exc:
            raise provider_error(exc, self._scrub) from None
        modified = answer.get("LastModified")
        return int(answer.get("ContentLength") or 0), int(modified.timestamp()) if modified else 0

    @asynccontextmanager
    async def open(self, bucket: str, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The object's bytes as chunks; a missing object raises not_found on entry."""
        s3 = await self._s3()
        try:
            answer = await s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if is_missing(exc):
                raise ProviderError("not_found", "The provider has no such file.") from None
            raise provider_error(exc, self._scrub) from None
        except AWS_ERRORS as exc:
            raise provider_error(exc, self._scrub) from None
        async with answer["Body"] as body:
            yield self._chunks(body)

    async def _chunks(self, body: Any) -> AsyncIterator[bytes]:
        try:
            async for chunk in body_chunks(body):
                yield chunk
        except AWS_ERRORS as exc:
            raise provider_error(exc, self._scrub) from None

    async def read_json(self, bucket: str, key: str) -> Any:
        """A small JSON object (a manifest); None when missing or unreadable."""
        found = await self.head(bucket, key)
        if found is None or found[0] > _MANIFEST_LIMIT:
            return None
        async with self.open(bucket, key) as chunks:
            data = b"".join([chunk async for chunk in chunks])
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            return None

    async def delete(self, bucket: str, key: str) -> None:
        s3 = await self._s3()
        try:
            await s3.delete_object(Bucket=bucket, Key=key)
        except AWS_ERRORS as exc:
            raise provider_error(exc, self._scrub) from None

    async def delete_folder(self, bucket: str, prefix: str) -> int:
        """Delete every object under `prefix` (which ends with `/`); returns how many."""
        s3 = await self._s3()
        deleted = 0
        try:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents") or ():
                    await s3.delete_object(Bucket=bucket, Key=item["Key"])
                    deleted += 1
        except AWS_ERRORS as exc:
            raise provider_error(exc, self._scrub) from None
        return deleted
