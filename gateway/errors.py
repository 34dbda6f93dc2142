"""Every error a client can see, and the one middleware that renders them.

    APIError                      (status, type, code) -> OpenAI error envelope
      InvalidRequest    400 invalid_request_error
      Unauthorized      401 invalid_request_error / invalid_api_key
      PermissionDenied  403 permission_error
      NotFound          404 invalid_request_error
      MethodNotAllowed  405 invalid_request_error
      RequestTimeout    408 invalid_request_error (the connection is closed after it)
      Conflict          409 invalid_request_error (x-should-retry: false)
      PayloadTooLarge   413 invalid_request_error
      UnsupportedMedia  415 invalid_request_error
      RateLimited       429 rate_limit_exceeded (Retry-After)
      QuotaExceeded     429 insufficient_quota (x-should-retry: false)
      UpstreamError     502/503/504 upstream_error (no provider key, URL or id inside)
      InternalError     500 server_error

Handlers raise; only `error_middleware` builds bodies. Messages never carry the
Authorization header, a provider key or an upstream URL.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.logs import request_id, route_of
from providers.base import ProviderError

log = logging.getLogger("gateway.errors")


class APIError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(APIError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(APIError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTimeout(APIError):
    """The client stopped sending its body; answered, then the connection is dropped."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class Conflict(APIError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "file_too_large"


class UnsupportedMedia(APIError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_exceeded"
    code = "rate_limit_exceeded"


def rate_limited(retry_after: float) -> RateLimited:
    seconds = max(1, math.ceil(retry_after))
    return RateLimited(
        f"Too many requests for this key; retry after {seconds} seconds.",
        headers={"Retry-After": str(seconds)},
    )


class QuotaExceeded(APIError):
    """A standing quota (active batches, stored bytes): retrying soon will not help."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class UpstreamError(APIError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class InternalError(APIError):
    status = 500
    type = "server_error"
    code = "internal_error"


def from_provider(exc: ProviderError) -> APIError:
    """Map a provider failure to what the client sees (its message is already safe)."""
    if exc.kind == "bad_request":
        return InvalidRequest(exc.message, code=exc.code or "upstream_rejected")
    if exc.kind == "not_found":
        return UpstreamError(
            "The upstream provider no longer has this object.", code="upstream_not_found"
        )
    if exc.kind == "auth":
        return UpstreamError(
            "The upstream provider rejected the gateway's credentials.", code="upstream_auth_failed"
        )
    err = UpstreamError(
        f"The upstream provider is unavailable: {exc.message}", code="upstream_unavailable"
    )
    err.status = 503
    return err


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except APIError as exc:
        error = exc
    except ProviderError as exc:
        error = from_provider(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http(exc, request)
    except Exception as exc:  # the last line of defence: never a stack trace to a client
        if _client_gone(request):
            # The caller hung up mid-request (e.g. during an upload): nobody to answer.
            log.info("client disconnected during %s %s", request.method, route_of(request))
            return web.Response(status=499)
        log.error(
            "unhandled error on %s %s: %s", request.method, route_of(request), type(exc).__name__
        )
        error = InternalError("The gateway had an internal error; it has been logged.")
    headers = dict(error.headers)
    if error.status == 409 or isinstance(error, QuotaExceeded):
        headers.setdefault("x-should-retry", "false")  # unless the error says it ends by itself
    response = web.json_response(error.body(), status=error.status, headers=headers)
    if isinstance(error, RequestTimeout):
        await _answer_and_close(request, response)
    return response


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _answer_and_close(request: web.Request, response: web.Response) -> None:
    """Send the answer now and drop the connection, so a stalled client holds no slot.

    Without this, aiohttp would keep reading ("lingering") the unsent body for seconds.
    """
    if (rid := request_id.get()) is not None:
        response.headers["X-Request-ID"] = rid
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()


def _from_http(exc: web.HTTPException, request: web.Request) -> APIError:
    path = request.path if len(request.path) <= 200 else f"{request.path[:200]}..."
    if exc.status == 404:
        return NotFound(f"Unknown request URL: {request.method} {path}.", code="unknown_url")
    if exc.status == 405:
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return MethodNotAllowed(
            f"Method {request.method} is not allowed for {path}.", headers=allow
        )
    if exc.status == 413:
        return PayloadTooLarge("The request body is too large.")
    err = InvalidRequest(exc.reason or "Bad request.")
    err.status = exc.status
    return err
