"""Blobs in any S3-compatible bucket, so replicas on different machines share them.

Uploads stream in parts (`providers.s3.S3Upload`), so memory per upload stays about one
part whatever the file size. A process that dies mid-upload leaves an incomplete multipart
upload that only the bucket can clean up: give it a lifecycle rule
(AbortIncompleteMultipartUpload after a day). The gateway doesn't sweep at startup, because
the other replicas' uploads in flight look exactly the same.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from gateway.config import S3BlobsConfig
from providers.base import ByteStream
from providers.s3 import S3Upload, body_chunks, is_missing

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


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

    def writer(self, key: str) -> S3Upload:
        return S3Upload(self.client, self.bucket, self.object_key(key), self.part_bytes)

    def open(self, key: str) -> ByteStream:
        return self._open(key)

    @asynccontextmanager
    async def _open(self, key: str) -> AsyncIterator[AsyncIterator[bytes]]:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if is_missing(exc):
                raise FileNotFoundError(key) from None
            raise
        async with response["Body"] as body:
            yield body_chunks(body)

    def local_path(self, key: str) -> Path | None:
        return None

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    async def exists(self, key: str) -> bool:
        try:
            await self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if is_missing(exc):
                return False
            raise
        return True

    async def close(self) -> None:
        await self._stack.aclose()


def _secret(value: object) -> str | None:
    get = getattr(value, "get_secret_value", None)
    return str(get()) if get is not None else None
