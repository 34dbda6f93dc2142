"""Blobs in any S3-compatible bucket, so replicas on different machines share them.

Uploads stream: bytes collect into parts of `part_bytes` and each full part is
sent as it fills (multipart upload), so memory per upload stays about one part
whatever the file size. Files smaller than a part become one PutObject. An
aborted upload aborts its multipart upload, leaving nothing in the bucket.

A process that dies mid-upload leaves an incomplete multipart upload that only
the bucket can clean up: give it a lifecycle rule (AbortIncompleteMultipartUpload
after a day). The gateway doesn't sweep at startup, because the other replicas'
uploads in flight look exactly the same.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.response import StreamingBody
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from gateway.blobs import CHUNK
from gateway.config import S3BlobsConfig
from providers.base import ByteStream

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

log = logging.getLogger("gateway.blobs")

_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


class S3BlobWriter:
    def __init__(self, blobs: S3Blobs, key: str) -> None:
        self._blobs = blobs
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []

    async def write(self, chunk: bytes) -> None:
        self._buffer += chunk
        size = self._blobs.part_bytes
        # Exactly `size` per part: some S3 APIs (R2) want every part but the last equal.
        while len(self._buffer) >= size:
            part = bytes(memoryview(self._buffer)[:size])
            del self._buffer[:size]
            await self._upload_part(part)

    async def commit(self) -> None:
        client, bucket = self._blobs.client, self._blobs.bucket
        if self._upload_id is None:
            await client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))
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
            await self._blobs.client.abort_multipart_upload(
                Bucket=self._blobs.bucket, Key=self._key, UploadId=upload_id
            )
        except (BotoCoreError, ClientError) as exc:
            # The caller is already failing with the reason that matters; the bucket's
            # lifecycle rule removes what is left.
            log.warning("could not abort the multipart upload of %s: %s", self._key, exc)

    async def _upload_part(self, data: bytes) -> None:
        client, bucket = self._blobs.client, self._blobs.bucket
        if self._upload_id is None:
            created = await client.create_multipart_upload(Bucket=bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        sent = await client.upload_part(
            Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=data
        )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})


class S3Blobs:
    def __init__(self, client: S3Client, stack: AsyncExitStack, config: S3BlobsConfig) -> None:
        self.client = client
        self.bucket = config.bucket
        self.part_bytes = config.part_bytes
        self._prefix = config.prefix.strip("/")
        self._stack = stack

    @classmethod
    async def connect(cls, config: S3BlobsConfig) -> S3Blobs:
        """A client for the bucket, checked once so a wrong bucket fails at startup."""
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=config.endpoint_url,
                region_name=config.region,
                aws_access_key_id=_secret(config.access_key_id),
                aws_secret_access_key=_secret(config.secret_access_key),
                config=AioConfig(
                    s3={"addressing_style": config.addressing_style},
                    connect_timeout=10,
                    read_timeout=60,
                    retries={"mode": "standard", "max_attempts": 3},
                    # The default CRC checksums of recent botocore are not yet accepted by
                    # every S3-compatible server; send checksums only where S3 needs them.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        )
        try:
            await client.head_bucket(Bucket=config.bucket)
        except (BotoCoreError, ClientError) as exc:
            await stack.aclose()
            raise RuntimeError(
                f"blobs.s3: bucket {config.describe()} is not usable: {exc}"
            ) from None
        return cls(client, stack, config)

    def object_key(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def writer(self, key: str) -> S3BlobWriter:
        return S3BlobWriter(self, self.object_key(key))

    def open(self, key: str) -> ByteStream:
        return self._open(key)

    @asynccontextmanager
    async def _open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise FileNotFoundError(key) from None
            raise
        async with response["Body"] as body:
            yield _body_chunks(body)

    def local_path(self, key: str) -> Path | None:
        return None

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    async def close(self) -> None:
        await self._stack.aclose()


async def _body_chunks(body: StreamingBody) -> AsyncIterator[bytes]:
    while chunk := await body.read(CHUNK):
        yield chunk


def _secret(value: object) -> str | None:
    get = getattr(value, "get_secret_value", None)
    return str(get()) if get is not None else None
