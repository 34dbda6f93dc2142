"""AWS plumbing for the Bedrock adapter: clients, botocore failures as ProviderErrors, and
the scrubbing of AWS names from every message.

Credentials come from aiobotocore's session, so the standard chain applies (environment,
shared config and credentials files with an optional `profile:`, container and instance
roles); config.yaml never holds a key. botocore's own retries are off: the gateway retries
by `ProviderError.kind`, and a create whose answer was lost must be looked up before it is
tried again, which only the gateway knows how to do.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
    ProxyConnectionError,
    ReadTimeoutError,
    SSLError,
)

from providers.base import ErrorKind, ProviderError
from providers.retry import retry_after_seconds

if TYPE_CHECKING:
    from providers.bedrock.config import BedrockProviderConfig

__all__ = ["AWS_ERRORS", "AwsClients", "Scrubber", "provider_error"]

log = logging.getLogger("providers.bedrock")

_RETRYABLE = frozenset(
    {"ThrottlingException", "TooManyRequestsException", "ServiceQuotaExceededException"}
    | {"ServiceUnavailableException", "InternalServerException", "InternalFailure"}
    | {"SlowDown", "RequestTimeout", "RequestLimitExceeded", "ModelNotReadyException"}
)
_AUTH = frozenset(
    {"AccessDeniedException", "AccessDenied", "UnrecognizedClientException"}
    | {"InvalidSignatureException", "SignatureDoesNotMatch", "IncompleteSignature"}
    | {"ExpiredToken", "ExpiredTokenException", "InvalidAccessKeyId", "InvalidClientTokenId"}
    | {"MissingAuthenticationToken", "InvalidToken", "KMS.AccessDeniedException"}
    | {"NoSuchBucket", "AllAccessDisabled"}  # the gateway's configuration, not the input
)
_NOT_FOUND = frozenset({"ResourceNotFoundException", "NoSuchKey", "NotFound", "404"})
_NO_CREDENTIALS = (
    NoCredentialsError,
    PartialCredentialsError,
    CredentialRetrievalError,
    ProfileNotFound,
    NoRegionError,
)

# What AWS messages carry that no client may see; the configured bucket names, role and
# key ARNs and endpoints are replaced before these.
_PATTERNS = (
    (re.compile(r"\barn:aws[A-Za-z-]*:[^\s\"'<>,;()\[\]]+"), "[arn]"),
    (re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+"), "[uri]"),
    (re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{12,}\b"), "[redacted]"),
    (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "[upstream id]"),
    (re.compile(r"(?<![\w.-])\d{12}(?![\w-])"), "[account]"),
    # A job id is 12 lowercase letters and digits; English words of that length have no
    # digit, so only tokens with one are taken (the ids a call knows are replaced exactly).
    (re.compile(r"\b(?=[a-z]*\d)[a-z0-9]{12}\b"), "[upstream id]"),
    (re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b"), "[host]"),
    (re.compile(r"\b(?:[A-Za-z0-9-]+\.)*[A-Za-z][A-Za-z0-9-]*:\d{2,5}\b"), "[host]"),
)


class Scrubber:
    """Makes an AWS message safe for a client and a log line."""

    def __init__(self, literals: Iterable[str | None]) -> None:
        # Longest first, so a bucket name inside a longer literal doesn't split it.
        self._literals = sorted({s for s in literals if s and len(s) >= 3}, key=len, reverse=True)

    def __call__(self, text: str, *known_ids: str) -> str:
        for literal in (*known_ids, *self._literals):
            if literal:
                text = text.replace(literal, "[redacted]")
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text[:1000]


def _client_error(exc: ClientError, scrub: Scrubber, ids: tuple[str, ...]) -> ProviderError:
    response: Mapping[str, Any] = exc.response or {}
    error = response.get("Error") or {}
    meta = response.get("ResponseMetadata") or {}
    code = str(error.get("Code") or "") or None
    status = meta.get("HTTPStatusCode")
    status = status if isinstance(status, int) else None
    headers = meta.get("HTTPHeaders") or {}
    kind: ErrorKind
    if code in _RETRYABLE or status == 429 or (status or 0) >= 500:
        kind = "retryable"
    elif code in _AUTH or status in (401, 403):
        kind = "auth"
    elif code in _NOT_FOUND or status == 404:
        kind = "not_found"
    else:
        kind = "bad_request"
    message = error.get("Message") or error.get("message")
    text = scrub(str(message), *ids) if message else f"{code or 'HTTP'} {status or ''}".strip()
    return ProviderError(
        kind,
        text,
        status=status,
        code=code,
        retry_after=retry_after_seconds(headers),
        # Only a 5xx (or no answer) may come after the work was done.
        ambiguous=status is None or status >= 500,
    )


def _connect_failure(exc: EndpointConnectionError) -> bool:
    """aiobotocore reports both a failed connect and a connection lost mid-request as an
    EndpointConnectionError; only the first proves the request was never sent."""
    return isinstance(exc.kwargs.get("error"), aiohttp.ClientConnectorError | socket.gaierror)


def provider_error(exc: Exception, scrub: Scrubber, *ids: str) -> ProviderError:
    """A botocore/aiobotocore failure as a ProviderError whose message names no AWS
    resource, host or key (`ids`: upstream ids this call knows, replaced exactly)."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientError):
        return _client_error(exc, scrub, ids)
    name = type(exc).__name__
    if isinstance(exc, _NO_CREDENTIALS):
        message = f"no usable AWS credentials or region for Bedrock ({name})"
        return ProviderError("auth", message)
    if isinstance(exc, ReadTimeoutError | asyncio.TimeoutError):
        return ProviderError("retryable", "the request timed out", ambiguous=True)
    if isinstance(exc, ConnectTimeoutError | ProxyConnectionError | SSLError):
        return ProviderError("retryable", f"could not connect ({name})")
    if isinstance(exc, EndpointConnectionError):
        if _connect_failure(exc):
            return ProviderError("retryable", f"could not connect ({name})")
        return ProviderError("retryable", f"connection failed ({name})", ambiguous=True)
    if isinstance(exc, ConnectionClosedError | aiohttp.ClientError | ConnectionError):
        return ProviderError("retryable", f"connection failed ({name})", ambiguous=True)
    if isinstance(exc, ParamValidationError):
        return ProviderError("bad_request", "the request does not fit the Bedrock API")
    return ProviderError("retryable", f"the request failed ({name})", ambiguous=True)


Service = Literal["bedrock", "s3"]
# The exceptions `provider_error` knows; anything else is a bug and propagates.
AWS_ERRORS = (BotoCoreError, ClientError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class AwsClients:
    """One Bedrock control-plane client and one S3 client per adapter, made on first use
    (they need a running loop) and kept for the process."""

    def __init__(self, name: str, settings: BedrockProviderConfig) -> None:
        self._settings = settings
        self._stack = AsyncExitStack()
        self._clients: dict[str, Any] = {}
        self._lock = asyncio.Lock()
        if not settings.tls_verify:
            log.warning(
                "provider %s: TLS certificate verification is off (tls_verify: false); "
                "anyone on the network path can read and change its traffic",
                name,
            )

    def _config(self, service: Service) -> AioConfig:
        s = self._settings
        options: dict[str, Any] = {
            "connect_timeout": s.connect_timeout_seconds,
            "read_timeout": s.read_timeout_seconds,
            "retries": {"mode": "standard", "total_max_attempts": 1},
            "user_agent_extra": "batch-gateway",
        }
        if s.proxy:
            options["proxies"] = {"http": s.proxy, "https": s.proxy}
        if service == "s3":
            # Checksums only where S3 requires them, as the blob store does: S3-compatible
            # endpoints (and VPC endpoint proxies) don't all accept the newer CRC headers.
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        return AioConfig(**options)

    async def client(self, service: Service) -> Any:
        """ "bedrock" or "s3"; a missing profile or region raises as an auth ProviderError
        (the caller maps it)."""
        async with self._lock:
            if service not in self._clients:
                s = self._settings
                verify: str | bool | None = None
                if s.ca_file is not None:
                    verify = str(s.ca_file)
                elif not s.tls_verify:
                    verify = False
                endpoint = s.s3_endpoint_url if service == "s3" else s.endpoint_url
                session: Any = AioSession(profile=s.profile)  # overloads per service name
                self._clients[service] = await self._stack.enter_async_context(
                    session.create_client(
                        service,
                        region_name=s.region,
                        endpoint_url=endpoint,
                        verify=verify,
                        config=self._config(service),
                    )
                )
            return self._clients[service]

    async def close(self) -> None:
        await self._stack.aclose()
        self._clients.clear()
