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


keys = st.sampled_from(["custom_id", "params"]) | st.text(max_size=3)
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
                      max_leaves=12)
request = st.fixed_dictionaries({"custom_id": st.text(max_size=5), "params": nested})


@settings(max_examples=150, deadline=None)
@given(items=st.lists(request | nested, max_size=8), indent=st.sampled_from([None, 0, 2]), ascii_only=st.booleans(),
       chunk=st.integers(min_value=1, max_value=64), run_bytes=st.integers(min_value=1, max_value=400))
def test_runs_of_elements_round_trip(
    items: list[Any], indent: int | None, ascii_only: bool, chunk: int, run_bytes: int
) -> None:
    """Elements taken a run at a time: nested objects that start with the same keys (boundaries that are not),
    elements of other shapes, runs cut anywhere."""
    document = json.dumps({"requests": items}, indent=indent, ensure_ascii=ascii_only).encode()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jsonstream, "CHUNK", chunk)
        patch.setattr(jsonstream, "RUN_BYTES", run_bytes)
        found = iter_array(io.BytesIO(document), "requests", first_keys=("custom_id", "params"))
        assert [json.loads(raw) for raw in found] == items


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
@pytest.mark.parametrize("first_keys", [(), ("custom_id",)])
def test_malformed_documents(document: bytes, message: str, first_keys: tuple[str, ...]) -> None:
    with pytest.raises(JSONStreamError, match=message):
        list(iter_array(io.BytesIO(document), "requests", first_keys=first_keys))
