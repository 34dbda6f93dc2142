"""Gateway ids: random, opaque and unguessable, never derived from a provider's id."""

from __future__ import annotations

import re
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
_ID = re.compile(r"(file-|batch_)[A-Za-z0-9]{24}")


def _random(n: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def new_file_id() -> str:
    return f"file-{_random()}"


def new_batch_id() -> str:
    return f"batch_{_random()}"


def looks_valid(value: str) -> bool:
    """Cheap shape check so hostile ids never reach the store or a log line."""
    # fullmatch, not match with `$`: `$` also matches before a trailing newline.
    return _ID.fullmatch(value) is not None
