"""OpenAI chat and embeddings bodies -> Gemini requests, checked field by field against what the official
``google-genai`` SDK itself sends for the same request built from its own types; Gemini responses -> OpenAI
bodies checked against the ``openai`` SDK's models; and a property: no text is lost in translation."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from asyncbatch.errors import UnsupportedFeatureError, ValidationError
from asyncbatch.providers.gemini_translate import (
    embed_response_to_openai,
    response_to_chat_completion,
    to_embed_request,
    to_generate_request,
)

genai = pytest.importorskip("google.genai")
from google.genai import _common, batches, models, types  # noqa: E402

MODEL = "gemini-2.5-flash"
PNG = base64.b64encode(b"\x89PNG fake image").decode()
_SDK = genai.Client(api_key="unused")._api_client
_OPAQUE = {"properties", "args", "response"}  # keys under these are the user's names, not field names


def camel(value: Any, parent: str = "") -> Any:
    """The SDK sends some nested fields in snake_case (``mime_type``, ``min_items``); Google's parsers read
    both spellings, so compare in camelCase."""
    if isinstance(value, dict):
        return {(k if parent in _OPAQUE else re.sub(r"_([a-z])", lambda m: m[1].upper(), k)): camel(v, k)
                for k, v in value.items()}
    if isinstance(value, list):
        return [camel(v, parent) for v in value]
    return value


def sdk_request(contents: list[types.Content], config: types.GenerateContentConfig | None = None) -> dict[str, Any]:
    """What the SDK puts on the wire for ``generate_content(model, contents, config)`` (less the model)."""
    params = types._GenerateContentParameters(model=MODEL, contents=contents, config=config)
    wire = models._GenerateContentParameters_to_mldev(_SDK, params)
    wire = _common.encode_unserializable_types(_common.convert_to_dict(wire))
    wire.pop("_url", None)
    if wire.get("generationConfig") == {}:
        del wire["generationConfig"]  # sent when a config has no generation fields; the same as none
    return camel(wire)


def chat(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages) or [{"role": "user", "content": "Hi"}], **fields}


def test_every_carried_field_matches_the_sdk() -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["a"],
              "properties": {"a": {"type": ["integer", "null"]},
                             "b": {"type": "string", "enum": ["x", "y"], "description": "B"},
                             "c": {"type": "array", "items": {"type": "number"}, "minItems": 1}}}
    body = chat(
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}",
                                                                         "detail": "high"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "42"},
        tools=[{"type": "function", "function": {"name": "f", "description": "d", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}}}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        temperature=0.5, top_p=0.9, max_completion_tokens=10, stop="x", n=2, seed=3, presence_penalty=0.1,
        frequency_penalty=0.2, user="u-1", store=False,
        response_format={"type": "json_schema", "json_schema": {"name": "r", "strict": True, "schema": schema}},
    )
    expected = sdk_request(
        [types.Content(role="user", parts=[types.Part(text="look"), types.Part(
            inline_data=types.Blob(mime_type="image/png", data=base64.b64decode(PNG)))]),
         types.Content(role="model", parts=[types.Part(function_call=types.FunctionCall(id="call_1", name="f",
                                                                                         args={"q": "x"}))]),
         types.Content(role="user", parts=[types.Part(function_response=types.FunctionResponse(
             id="call_1", name="f", response={"output": "42"}))])],
        types.GenerateContentConfig(
            system_instruction="be brief", temperature=0.5, top_p=0.9, max_output_tokens=10, stop_sequences=["x"],
            candidate_count=2, seed=3, presence_penalty=0.1, frequency_penalty=0.2,
            response_mime_type="application/json",
            response_schema={"type": "object", "required": ["a"], "properties": {
                "a": {"type": "integer", "nullable": True}, "b": {"type": "string", "enum": ["x", "y"],
                                                                  "description": "B"},
                "c": {"type": "array", "items": {"type": "number"}, "minItems": 1}}},
            tools=[types.Tool(function_declarations=[types.FunctionDeclaration(
                name="f", description="d", parameters={"type": "object", "properties": {"q": {"type": "string"}}})])],
            tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
                mode="ANY", allowed_function_names=["f"])),
        ),
    )
    assert to_generate_request(body) == expected


@pytest.mark.parametrize(("choice", "mode"), [("auto", "AUTO"), ("none", "NONE"), ("required", "ANY")])
def test_tool_choice_modes(choice: str, mode: str) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    translated = to_generate_request(chat(tools=tools, tool_choice=choice))
    expected = sdk_request([types.Content(role="user", parts=[types.Part(text="Hi")])], types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[types.FunctionDeclaration(name="f")])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode=mode))))
    assert translated == expected


def test_json_mode_and_plain_text_and_neighbours_merged() -> None:
    translated = to_generate_request(chat(
        {"role": "developer", "content": "one"}, {"role": "system", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"},
        response_format={"type": "json_object"}, max_tokens=7))
    assert translated == {
        "contents": [{"parts": [{"text": "a"}, {"text": "b"}], "role": "user"},
                     {"parts": [{"text": "c"}], "role": "model"}],
        "systemInstruction": {"parts": [{"text": "one"}, {"text": "two"}], "role": "user"},
        "generationConfig": {"maxOutputTokens": 7, "responseMimeType": "application/json"},
    }
    assert to_generate_request(chat(response_format={"type": "text"})) == {
        "contents": [{"parts": [{"text": "Hi"}], "role": "user"}]}


def test_parallel_tool_results_share_one_turn() -> None:
    calls = [{"id": f"c{i}", "type": "function", "function": {"name": f"f{i}", "arguments": "{}"}} for i in range(2)]
    translated = to_generate_request(chat(
        {"role": "user", "content": "go"}, {"role": "assistant", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c0", "content": "zero"},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "one"}]}))
    last = translated["contents"][-1]
    assert last["role"] == "user"
    assert [p["functionResponse"] for p in last["parts"]] == [
        {"name": "f0", "response": {"output": "zero"}, "id": "c0"},
        {"name": "f1", "response": {"output": "one"}, "id": "c1"}]


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        (chat({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]}),
         "body.messages[0].content[0].image_url.url", UnsupportedFeatureError),
        (chat(tools=[{"type": "function", "function": {"name": "f"}}], parallel_tool_calls=False),
         "body.parallel_tool_calls", UnsupportedFeatureError),
        (chat(logprobs=True), "body.logprobs", UnsupportedFeatureError),
        (chat(audio={"voice": "x"}), "body.audio", UnsupportedFeatureError),
        (chat(frobnicate=1), "body.frobnicate", UnsupportedFeatureError),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": {
            "type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}}}),
         "body.response_format.json_schema.schema.properties.a.$ref", UnsupportedFeatureError),
        (chat(response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": {
            "type": ["string", "integer"]}}}), "body.response_format.json_schema.schema.type", UnsupportedFeatureError),
        (chat({"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "nope", "content": "r"}),
         "body.messages[1].tool_call_id", ValidationError),
        (chat({"role": "user", "content": ""}), "body.messages[0].content", ValidationError),
        (chat(tool_choice="required"), "body.tool_choice", ValidationError),
        (chat({"role": "system", "content": "only"}), "body.messages", ValidationError),
        (chat(temperature=3), "body.temperature", ValidationError),
    ],
)
def test_what_cannot_be_carried_is_refused_naming_the_field(
    body: dict[str, Any], field: str, kind: type[ValidationError]
) -> None:
    with pytest.raises(kind) as caught:
        to_generate_request(body)
    assert caught.value.field == field and type(caught.value) is kind


def test_embeddings_match_the_sdk() -> None:
    wire = batches._EmbedContentBatch_to_mldev(_SDK, types.EmbedContentBatch(
        contents=["embed me"], config=types.EmbedContentConfig(output_dimensionality=4)))
    expected = camel(_common.convert_to_dict(wire))["requests"][0]["request"]
    assert to_embed_request({"model": "gemini-embedding-001", "input": ["embed me"], "dimensions": 4,
                             "user": "u"}) == expected
    with pytest.raises(UnsupportedFeatureError) as many:
        to_embed_request({"model": "m", "input": ["a", "b"]})
    assert many.value.field == "body.input"
    with pytest.raises(UnsupportedFeatureError) as encoded:
        to_embed_request({"model": "m", "input": "a", "encoding_format": "base64"})
    assert encoded.value.field == "body.encoding_format"


def test_response_becomes_a_chat_completion() -> None:
    response = {
        "candidates": [
            {"content": {"parts": [{"text": "thinking...", "thought": True}, {"text": "Hello"}, {"text": " there"}],
                         "role": "model"}, "finishReason": "MAX_TOKENS", "index": 0},
            {"content": {"parts": [{"functionCall": {"name": "f", "args": {"q": 1}}}], "role": "model"},
             "finishReason": "STOP", "index": 1},
        ],
        "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
                          "cachedContentTokenCount": 4, "totalTokenCount": 18},
        "modelVersion": MODEL, "responseId": "resp-1",
    }
    body = response_to_chat_completion(response, created=1700000000)
    completion = ChatCompletion.model_validate(body)
    first, second = completion.choices
    assert first.message.content == "Hello there" and first.finish_reason == "length"
    assert second.finish_reason == "tool_calls" and second.message.tool_calls is not None
    call = second.message.tool_calls[0]
    assert call.function.name == "f" and call.function.arguments == '{"q":1}' and call.id == "call_1_0"
    assert completion.usage is not None and completion.usage.completion_tokens == 8
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 4
    assert (completion.id, completion.model, completion.created) == ("resp-1", MODEL, 1700000000)


def test_embedding_response_becomes_openais() -> None:
    body = embed_response_to_openai({"embedding": {"values": [0.1, 0.2]}}, model="gemini-embedding-001")
    parsed = CreateEmbeddingResponse.model_validate(body)
    assert parsed.data[0].embedding == [0.1, 0.2] and parsed.model == "gemini-embedding-001"


_TEXT = st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t)


@settings(max_examples=150, deadline=None)
@given(
    system=st.lists(_TEXT, max_size=2),
    turns=st.lists(st.tuples(st.sampled_from(["user", "assistant", "tool"]), _TEXT), min_size=1, max_size=6),
)
def test_no_text_is_lost(system: list[str], turns: list[tuple[str, str]]) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": s} for s in system]
    sent: list[str] = list(system)
    for i, (role, text) in enumerate(turns):
        if role == "tool":  # a tool result answers a call made just before it
            messages.append({"role": "assistant", "tool_calls": [
                {"id": f"c{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}}]})
            messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": text})
        else:
            messages.append({"role": role, "content": text})
        sent.append(text)
    if all(m["role"] == "system" for m in messages):
        return
    request = to_generate_request(chat(*messages))
    found = [p["text"] for p in request.get("systemInstruction", {}).get("parts", [])]
    for content in request["contents"]:
        for part in content["parts"]:
            if "text" in part:
                found.append(part["text"])
            elif "functionResponse" in part:
                found.append(part["functionResponse"]["response"]["output"])
    assert found == sent
