"""Loaded by schemathesis (SCHEMATHESIS_HOOKS) in `test_openapi.py`'s fuzz run.

Uploads are `format: binary`; random bytes are almost never a valid batch file,
so valid JSONL files are mixed into the draw. That lets the stateful phase get
past the upload and follow the links to create, retrieve and cancel batches.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from tests.support import chat_file, chat_line, jsonl

VALID_FILES = [chat_file(1), chat_file(3), jsonl([chat_line(0, model="gpt-4o")])]

schemathesis.openapi.format(
    "binary", st.one_of(st.sampled_from(VALID_FILES), st.binary(max_size=512))
)
