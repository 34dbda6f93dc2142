"""Streaming to and from S3: what the blob store and S3-staging adapters share.

An upload collects bytes into parts of `part_bytes` and sends each full part as it fills
(multipart upload), so memory per upload stays about one part whatever the object's size;
an object smaller than a part becomes one PutObject. An aborted upload aborts its multipart
upload, leaving nothing in the bucket. A process that dies mid-upload leaves an incomplete
multipart upload that only the bucket's lifecycle rule (AbortIncompleteMultipartUpload)
cleans up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from aiobotocore.response import StreamingBody
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = ["MISSING", "S3Upload", "body_chunks", "is_missing"]

log = logging.getLogger("providers.s3")

MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
CHUNK = 256 * 1024


def is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in MISSING


async def body_chunks(body: StreamingBody) -> AsyncIterator[bytes]:
    while chunk := await body.read(CHUNK):
        yield chunk


class S3Upload:
    """One object written in parts; `extra` goes to the create (e.g. SSE-KMS settings)."""

    def __init__(self, client: Any, bucket: str, key: str, part_bytes: int, **extra: Any) -> None:
        self._client = client
        self._bucket = bucket
        self._key = key
        self._part_bytes = part_bytes
        self._extra = extra
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        size = self._part_bytes
        # Exactly `size` per part: some S3 APIs (R2) want every part but the last equal.
        while len(self._buffer) >= size:
            part = bytes(memoryview(self._buffer)[:size])
            del self._buffer[:size]
            await self._upload_part(part)

    async def commit(self) -> None:
        client, bucket = self._client, self._bucket
        if self._upload_id is None:
            await client.put_object(
                Bucket=bucket, Key=self._key, Body=bytes(self._buffer), **self._extra
            )
        else:
            if self._buffer:
                await self._upload_part(bytes(self._buffer))
            await client.complete_multipart_upload(
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer = bytearray()

    async def abort(self) -> None:
        self._buffer = bytearray()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            await self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=upload_id
            )
        except (BotoCoreError, ClientError) as exc:
            # The caller is already failing with the reason that matters; the bucket's
            # lifecycle rule removes what is left.
            log.warning("could not abort the multipart upload of %s: %s", self._key, exc)

    async def _upload_part(self, data: bytes) -> None:
        client, bucket = self._client, self._bucket
        if self._upload_id is None:
            created = await client.create_multipart_upload(
                Bucket=bucket, Key=self._key, **self._extra
            )
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = await client.upload_part(
            Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
