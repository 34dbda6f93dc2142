"""/v1/files: upload (multipart, streamed), list, retrieve, content, delete."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from functools import partial

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ValidationError

from gateway import idempotency
from gateway.api import (
    choice_param,
    cursor_param,
    idle_limited,
    int_param,
    json_response,
    service,
)
from gateway.auth import tenant_of
from gateway.blobs import mapped
from gateway.errors import InvalidRequest, PayloadTooLarge, UnsupportedMedia
from gateway.file_service import PARTIAL_HEADER, PartialContent
from gateway.store import FileRecord
from gateway.wire import (
    FILE_PURPOSES,
    LIST_ORDERS,
    MAX_FILES_PAGE,
    MAX_FORM_PARTS,
    UPLOAD_PURPOSES,
    ExpiresAfter,
    file_list,
    file_object,
    invalid_request,
)

CHUNK = 256 * 1024
MAX_FIELD = 1024
# Room for the multipart framing and the small text fields around the file.
FORM_OVERHEAD = 64 * 1024
EXPIRES_AFTER = "expires_after"


async def _text(part: BodyPartReader, idle: float) -> str:
    data = bytearray()
    while chunk := await idle_limited(part.read_chunk(MAX_FIELD), idle):
        data += chunk
        if len(data) > MAX_FIELD:
            raise InvalidRequest(f"The form field '{part.name}' is too long.", param=part.name)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise InvalidRequest(
            f"The form field '{part.name}' is not UTF-8.", param=part.name
        ) from None


async def _chunks(part: BodyPartReader, idle: float) -> AsyncIterator[bytes]:
    try:
        while chunk := await idle_limited(part.read_chunk(CHUNK), idle):
            yield bytes(chunk)
    except (ValueError, HttpProcessingError):  # broken multipart framing or part headers
        raise _malformed() from None


def _malformed() -> InvalidRequest:
    return InvalidRequest("The multipart/form-data body is malformed.", code="invalid_multipart")


async def _next_part(reader: MultipartReader, idle: float) -> BodyPartReader | None:
    try:
        part = await idle_limited(reader.next(), idle)
    except (ValueError, HttpProcessingError):
        raise _malformed() from None
    if part is not None and not isinstance(part, BodyPartReader):
        raise InvalidRequest("Nested multipart bodies are not supported.")
    return part


def _expires_after(fields: Mapping[str, str]) -> ExpiresAfter | None:
    """The form's expiry, sent as expires_after[anchor] and expires_after[seconds].

    Any other field named expires_after... is refused, not ignored: a client that
    meant its file to expire soon must not have it kept for 30 days.
    """
    given: dict[str, str] = {}
    for name, value in fields.items():
        if not name.startswith(EXPIRES_AFTER):
            continue
        key = name.removeprefix(f"{EXPIRES_AFTER}[").removesuffix("]")
        if name != f"{EXPIRES_AFTER}[{key}]" or key not in ExpiresAfter.model_fields:
            raise InvalidRequest(
                f"Unrecognized form field {name[:64]!r}: send expires_after as the fields "
                "'expires_after[anchor]' and 'expires_after[seconds]'.",
                param=EXPIRES_AFTER,
            )
        given[key] = value
    if not given:
        return None
    try:
        return ExpiresAfter.model_validate(given)
    except ValidationError as exc:
        raise invalid_request(exc, form_field=EXPIRES_AFTER) from None


async def upload(request: web.Request) -> web.Response:
    key = idempotency.key_of(request)
    if request.content_type != "multipart/form-data":
        raise UnsupportedMedia(
            "Upload files as multipart/form-data with parts 'file' and 'purpose'."
        )
    svc = service(request)
    if (request.content_length or 0) > svc.limits.max_file_bytes + FORM_OVERHEAD:
        raise _too_large(svc.limits.max_file_bytes)
    try:
        reader = await request.multipart()
    except ValueError:  # no boundary in the Content-Type
        raise _malformed() from None
    if key is None:
        return await _receive(request, reader, None)
    return await idempotency.once(
        svc.store,
        tenant_of(request),
        key,
        idempotency.UPLOAD_FILE,
        partial(_receive, request, reader),
        replay_fingerprint=partial(
            _fingerprint_form, reader, svc.limits.upload_idle_seconds, svc.limits.max_file_bytes
        ),
    )


async def _receive(
    request: web.Request, reader: MultipartReader, attempt: idempotency.Attempt | None
) -> web.Response:
    """Store the uploaded file; with an Idempotency-Key, fingerprint the form once read whole."""
    tenant = tenant_of(request)
    svc = service(request)
    idle = svc.limits.upload_idle_seconds
    fields: dict[str, str] = {}
    record: FileRecord | None = None
    filename: str | None = None
    expires_after: ExpiresAfter | None = None
    parts = 0
    try:
        while (part := await _next_part(reader, idle)) is not None:
            parts += 1
            if parts > MAX_FORM_PARTS:
                raise _too_many_parts()
            if part.name == "file" and part.filename is not None:
                if record is not None:
                    raise InvalidRequest("Send exactly one 'file' part.", param="file")
                purpose = fields.get("purpose", "batch")
                if purpose not in UPLOAD_PURPOSES:
                    raise _bad_purpose(purpose)
                expires_after = _expires_after(fields)  # refused before anything is stored
                filename = part.filename
                record = await svc.upload(
                    tenant,
                    part.filename[:255] or "upload.jsonl",
                    _chunks(part, idle),
                    expires_after,
                )
            elif part.name:
                fields[part.name] = await _text(part, idle)
        if record is None:
            raise InvalidRequest("The 'file' part is missing.", param="file")
        if attempt is not None:  # the whole form is read: the answers below can be stored
            attempt.fingerprint = idempotency.upload_fingerprint(fields, filename, record.sha256)
        if "purpose" not in fields:
            raise InvalidRequest("The 'purpose' field is missing.", param="purpose")
        if fields["purpose"] not in UPLOAD_PURPOSES:
            raise _bad_purpose(fields["purpose"])
        if _expires_after(fields) != expires_after:  # the file is stored: too late to apply
            raise InvalidRequest(
                "Send the expires_after fields before the 'file' part.", param=EXPIRES_AFTER
            )
    except BaseException:
        if record is not None:  # a later part was bad: nothing of this upload stays
            await svc.discard_upload(record)
        raise
    return json_response(file_object(record))


async def _fingerprint_form(reader: MultipartReader, idle: float, max_bytes: int) -> str:
    """The fingerprint of a form whose key already has an answer: the file is hashed
    as it streams in, and nothing is stored."""
    fields: dict[str, str] = {}
    filename: str | None = None
    digest: hashlib._Hash | None = None
    parts = 0
    while (part := await _next_part(reader, idle)) is not None:
        parts += 1
        if parts > MAX_FORM_PARTS:
            raise _too_many_parts()
        if part.name == "file" and part.filename is not None:
            if digest is not None:
                raise InvalidRequest("Send exactly one 'file' part.", param="file")
            filename, digest, size = part.filename, hashlib.sha256(), 0
            async for chunk in _chunks(part, idle):
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                digest.update(chunk)
        elif part.name:
            fields[part.name] = await _text(part, idle)
    return idempotency.upload_fingerprint(
        fields, filename, digest.hexdigest() if digest is not None else None
    )


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The file is larger than the limit of {max_bytes} bytes.", param="file")


def _too_many_parts() -> InvalidRequest:
    return InvalidRequest(f"A file upload has at most {MAX_FORM_PARTS} form parts.")


def _bad_purpose(purpose: str) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid purpose {purpose[:64]!r}: this gateway accepts uploads with purpose 'batch'.",
        param="purpose",
    )


async def list_files(request: web.Request) -> web.Response:
    purpose = request.query.get("purpose")
    if purpose is not None and purpose not in FILE_PURPOSES:
        raise InvalidRequest(
            f"'purpose' must be one of: {', '.join(FILE_PURPOSES)}.", param="purpose"
        )
    page = await service(request).list_files(
        tenant_of(request),
        purpose=purpose,
        after=cursor_param(request),
        limit=int_param(request, "limit", MAX_FILES_PAGE, 1, MAX_FILES_PAGE),
        order=choice_param(request, "order", "desc", LIST_ORDERS),
    )
    return json_response(file_list(page))


async def retrieve(request: web.Request) -> web.Response:
    record = await service(request).get_file(tenant_of(request), request.match_info["file_id"])
    return json_response(file_object(record))


async def delete(request: web.Request) -> web.Response:
    file_id = request.match_info["file_id"]
    await service(request).delete_file(tenant_of(request), file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})


async def content(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    source = await svc.open_content(tenant_of(request), request.match_info["file_id"])
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    stream: AbstractAsyncContextManager[AsyncIterator[bytes | memoryview]]
    if isinstance(source, PartialContent):
        response.headers[PARTIAL_HEADER] = "true"
        stream = source.stream
    elif isinstance(source, FileRecord):
        assert source.blob is not None
        response.content_length = source.bytes
        path = svc.blobs.local_path(source.blob)
        stream = mapped(path) if path is not None else svc.blobs.open(source.blob)
    else:
        stream = source  # the provider's bytes, relayed as they arrive
    if request.method == "HEAD":  # what a GET would answer, without the body
        await response.prepare(request)
        await response.write_eof()
        return response
    sent = 0
    try:
        async with stream as chunks:
            await response.prepare(request)
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
            await response.write_eof()
    finally:
        svc.events.file_bytes("download", sent)
    return response
