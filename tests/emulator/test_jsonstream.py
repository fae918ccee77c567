"""The streaming reader of Anthropic create bodies: any JSON array, any chunking, same elements."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncbatch.emulator import jsonstream
from asyncbatch.emulator.jsonstream import JSONStreamError, iter_array

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner,
                                                                                            max_size=4), max_leaves=20)


@settings(max_examples=150, deadline=None)
@given(items=st.lists(values, max_size=6), indent=st.sampled_from([None, 0, 2]), ascii_only=st.booleans(),
       chunk=st.integers(min_value=1, max_value=9))
def test_elements_round_trip(items: list[Any], indent: int | None, ascii_only: bool, chunk: int) -> None:
    document = json.dumps({"requests": items}, indent=indent, ensure_ascii=ascii_only).encode()
    original = jsonstream.CHUNK
    jsonstream.CHUNK = chunk  # tiny reads put every boundary (escapes, multi-byte chars) across chunks
    try:
        assert [json.loads(raw) for raw in iter_array(io.BytesIO(document), "requests")] == items
    finally:
        jsonstream.CHUNK = original


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b'{"requests": [1, 2', "expected one of ',]'"),
        (b'{"requests": ["abc', "requests.0: invalid JSON: unexpected end"),
        (b'{"other": []}', "other: Extra inputs are not permitted"),
        (b"{}", "requests: Field required"),
        (b"[]", "expected one of '{'"),
        (b'{"requests": []} trailing', "trailing data"),
    ],
)
def test_malformed_documents(document: bytes, message: str) -> None:
    with pytest.raises(JSONStreamError, match=message):
        list(iter_array(io.BytesIO(document), "requests"))
