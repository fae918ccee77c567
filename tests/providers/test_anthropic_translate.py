"""OpenAI chat completion bodies -> Anthropic Messages params, and Anthropic Messages -> chat completions.

Each feature is pinned by the exact params it produces; each rejection by its error type and field. The
results are also checked against the official SDKs' own types (``anthropic`` params, ``openai``
ChatCompletion), and a property test runs random valid chat bodies through the shape rules Claude enforces.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import msgspec
import pydantic
import pytest
from anthropic.types import Message
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from asyncbatch.errors import UnsupportedFeatureError, ValidationError
from asyncbatch.providers.anthropic_translate import (
    JSON_OBJECT_INSTRUCTION,
    JSON_RESPONSE_TOOL,
    message_to_chat_completion,
    to_messages_params,
    translate,
)

MODEL = "claude-haiku-4-5"
_SDK_PARAMS = pydantic.TypeAdapter(MessageCreateParamsNonStreaming)


def chat_body(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": list(messages) or [user("Hi")], **fields}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any = None, **fields: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content, **fields}


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def function_tool(name: str, **function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **function}}


def params(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Translate, and check the result against the anthropic SDK's own params types on the way."""
    result = to_messages_params(chat_body(*messages, **fields))
    sdk_validate(result)
    return result


def sdk_validate(result: dict[str, Any]) -> None:
    validated = _SDK_PARAMS.validate_python(result)
    for message in validated["messages"]:  # pydantic validates iterables lazily, as they are consumed
        if not isinstance(message["content"], str):
            list(message["content"])
    list(validated.get("tools", ()))


# --- features, one by one --------------------------------------------------------------------------------


def test_minimal_body_gets_default_max_tokens() -> None:
    assert params() == {"model": MODEL, "max_tokens": 4096, "messages": [{"role": "user", "content": "Hi"}]}
    assert to_messages_params(chat_body(), default_max_tokens=7)["max_tokens"] == 7


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 50}, 50),
        ({"max_completion_tokens": 50, "max_tokens": 100}, 50),
    ],
)
def test_max_tokens(fields: dict[str, Any], expected: int) -> None:
    assert params(**fields)["max_tokens"] == expected


def test_system_and_developer_messages_become_system() -> None:
    one = params({"role": "system", "content": "Be brief."}, user("Hi"))
    assert one["system"] == "Be brief."
    assert one["messages"] == [{"role": "user", "content": "Hi"}]
    several = params(
        {
            "role": "developer",
            "content": [{"type": "text", "text": "Rule 1."}, {"type": "text", "text": "Rule 2."}],
        },
        user("Hi"),
        assistant("Hello"),
        {"role": "system", "content": "Now in French."},  # hoisted, in order
        user("Bye"),
    )
    assert several["system"] == [
        {"type": "text", "text": "Rule 1."},
        {"type": "text", "text": "Rule 2."},
        {"type": "text", "text": "Now in French."},
    ]
    assert [m["role"] for m in several["messages"]] == ["user", "assistant", "user"]


def test_multi_part_content_and_images() -> None:
    result = params(
        user(
            [
                {"type": "text", "text": "Compare"},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
                },
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                {"type": "text", "text": "   "},  # blank: Claude rejects it, so it is dropped
            ]
        )
    )
    assert result["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


def test_tools() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    result = params(
        tools=[
            function_tool("weather", description="Weather in a city", parameters=schema, strict=True),
            function_tool("now"),
        ]
    )
    assert result["tools"] == [
        {"name": "weather", "description": "Weather in a city", "input_schema": schema, "strict": True},
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in result


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "now"}}, {"type": "tool", "name": "now"}),
    ],
)
def test_tool_choice(tool_choice: Any, expected: dict[str, Any]) -> None:
    assert params(tools=[function_tool("now")], tool_choice=tool_choice)["tool_choice"] == expected


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        ("none", {"type": "none"}),  # nothing to parallelise
    ],
)
def test_parallel_tool_calls_false(tool_choice: Any, expected: dict[str, Any]) -> None:
    result = params(tools=[function_tool("now")], tool_choice=tool_choice, parallel_tool_calls=False)
    assert result["tool_choice"] == expected
    assert "tool_choice" not in params(parallel_tool_calls=False)  # no tools: nothing to say


def test_tool_choice_auto_or_none_without_tools_is_ignored() -> None:
    assert params(tool_choice="auto") == params()
    assert params(tool_choice="none") == params()


def test_tool_calls_and_tool_results_with_turn_merging() -> None:
    result = params(
        user("Weather in Paris and Rome?"),
        assistant(
            "Let me look.",
            tool_calls=[
                call("call_1", "weather", '{"city": "Paris"}'),
                call("call_2", "weather", '{"city":"Rome"}'),
            ],
        ),
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "21C"}]},
        user("Thanks, and tomorrow?"),
        assistant(None, tool_calls=[call("call_3", "now", "")]),
        {"role": "tool", "tool_call_id": "call_3", "content": ""},
        tools=[function_tool("weather"), function_tool("now")],
    )
    assert result["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "call_2", "name": "weather", "input": {"city": "Rome"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18C"},
                {
                    "type": "tool_result",
                    "tool_use_id": "call_2",
                    "content": [{"type": "text", "text": "21C"}],
                },
                {"type": "text", "text": "Thanks, and tomorrow?"},
            ],
        },
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_3", "name": "now", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_3"}]},
    ]


def test_consecutive_same_role_messages_are_merged() -> None:
    result = params(
        user("One"), user([{"type": "text", "text": "Two"}]), assistant("A"), assistant("B"), user("C")
    )
    assert result["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "Two"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
        {"role": "user", "content": "C"},
    ]


def test_final_assistant_turn_is_a_prefill_without_trailing_whitespace() -> None:
    result = params(user("Answer in JSON"), assistant("{\n  "))
    assert result["messages"][-1] == {"role": "assistant", "content": "{"}


# Blank means what str.strip() removes: Unicode spaces and separators count, a zero-width space does not.
@pytest.mark.parametrize("blank", ["", " \t\r\n", "\u00a0\u3000", "\x1c\x1f\x85", "\u2028\u2029"])
def test_blank_texts_are_dropped_wherever_they_stand(blank: str) -> None:
    result = params(
        {"role": "system", "content": blank},
        user([{"type": "text", "text": blank}, {"type": "text", "text": "Hi"}]),
        assistant([{"type": "text", "text": blank}], tool_calls=[call("call_1", "f", "{}")]),
        {"role": "tool", "tool_call_id": "call_1", "content": blank},
        tools=[function_tool("f")],
    )
    assert "system" not in result
    assert result["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1"}]},
    ]
    with pytest.raises(ValidationError) as caught:
        translate(chat_body(user("Hi"), assistant("ok"), user(blank)))
    assert caught.value.field == "body.messages[2].content"
    assert params(user("\u200b"))["messages"] == [{"role": "user", "content": "\u200b"}]


def test_json_object_adds_a_system_instruction() -> None:
    assert params(response_format={"type": "json_object"})["system"] == JSON_OBJECT_INSTRUCTION
    with_system = params(
        {"role": "system", "content": "Extract."}, user("Hi"), response_format={"type": "json_object"}
    )
    assert with_system["system"] == [
        {"type": "text", "text": "Extract."},
        {"type": "text", "text": JSON_OBJECT_INSTRUCTION},
    ]
    assert params(response_format={"type": "text"}) == params()


SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
JSON_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "reply", "description": "A short reply.", "schema": SCHEMA, "strict": True},
}
JSON_TOOL = {
    "name": JSON_RESPONSE_TOOL,
    "description": (
        "Give your final answer by calling this tool; its input is the 'reply' JSON object. A short reply."
    ),
    "input_schema": SCHEMA,
    "strict": True,
}


def test_json_schema_becomes_a_forced_tool() -> None:
    result = params(response_format=JSON_FORMAT)
    assert result["tools"] == [JSON_TOOL]
    assert result["tool_choice"] == {"type": "tool", "name": JSON_RESPONSE_TOOL}
    minimal = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}
    assert params(response_format=minimal)["tools"] == [
        {
            "name": JSON_RESPONSE_TOOL,
            "description": "Give your final answer by calling this tool; its input is the 'r' JSON object.",
            "input_schema": {"type": "object"},
        }
    ]


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, {"type": "any"}),  # Claude calls one of the tools or answers through the JSON tool
        ("auto", {"type": "any"}),
        ("none", {"type": "tool", "name": JSON_RESPONSE_TOOL}),
        ({"type": "function", "function": {"name": "now"}}, {"type": "tool", "name": "now"}),
    ],
)
def test_json_schema_with_tools(tool_choice: Any, expected: dict[str, Any]) -> None:
    result = params(tools=[function_tool("now")], tool_choice=tool_choice, response_format=JSON_FORMAT)
    assert result["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
        JSON_TOOL,
    ]
    assert result["tool_choice"] == expected


def test_sampling_stop_and_user() -> None:
    result = params(temperature=0.2, top_p=0.9, stop="END", user="user-42")
    assert {k: result[k] for k in ("temperature", "top_p", "stop_sequences", "metadata")} == {
        "temperature": 0.2,
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "user-42"},
    }
    assert params(stop=["a", "b"])["stop_sequences"] == ["a", "b"]
    assert params(safety_identifier="hash-1")["metadata"] == {"user_id": "hash-1"}
    assert params(temperature=1)["temperature"] == 1


def test_dropped_fields_and_neutral_values_change_nothing() -> None:
    plain = params()
    assert (
        params(
            seed=7,
            store=False,
            metadata={"k": "v"},
            service_tier="flex",
            prompt_cache_key="p",
            prompt_cache_retention="24h",
            stream_options={"include_usage": True},
            prediction={"type": "content", "content": "x"},
            n=1,
            stream=False,
            logprobs=False,
            top_logprobs=0,
            frequency_penalty=0,
            presence_penalty=0.0,
            logit_bias={},
            modalities=["text"],
            audio=None,
            functions=None,
            reasoning_effort=None,
            temperature=None,
        )
        == plain
    )


def test_history_replayed_from_openai_responses_is_accepted() -> None:
    """Assistant messages dumped from an OpenAI SDK response carry null refusal/audio/function_call."""
    replayed = assistant("Hello", refusal=None, audio=None, function_call=None, name=None)
    assert params(user("Hi"), replayed, user("Again"))["messages"][1] == {
        "role": "assistant",
        "content": "Hello",
    }


def test_bytes_and_mapping_give_the_same_params() -> None:
    body = chat_body(user("Hi"), tools=[function_tool("now")], tool_choice="required", stop="x")
    assert msgspec.to_builtins(translate(json.dumps(body).encode())) == to_messages_params(body)


# --- rejections ------------------------------------------------------------------------------------------

UNSUPPORTED = UnsupportedFeatureError
INVALID = ValidationError


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        (chat_body(n=2), UNSUPPORTED, "body.n"),
        (chat_body(stream=True), UNSUPPORTED, "body.stream"),
        (chat_body(logprobs=True), UNSUPPORTED, "body.logprobs"),
        (chat_body(top_logprobs=3), UNSUPPORTED, "body.top_logprobs"),
        (chat_body(frequency_penalty=0.5), UNSUPPORTED, "body.frequency_penalty"),
        (chat_body(presence_penalty=-1), UNSUPPORTED, "body.presence_penalty"),
        (chat_body(logit_bias={"50256": -100}), UNSUPPORTED, "body.logit_bias"),
        (chat_body(modalities=["text", "audio"]), UNSUPPORTED, "body.modalities"),
        (chat_body(audio={"voice": "alloy", "format": "wav"}), UNSUPPORTED, "body.audio"),
        (chat_body(functions=[{"name": "f"}]), UNSUPPORTED, "body.functions"),
        (chat_body(function_call="auto"), UNSUPPORTED, "body.function_call"),
        (chat_body(reasoning_effort="low"), UNSUPPORTED, "body.reasoning_effort"),
        (chat_body(verbosity="low"), UNSUPPORTED, "body.verbosity"),
        (chat_body(web_search_options={}), UNSUPPORTED, "body.web_search_options"),
        (chat_body(brand_new_option=1), UNSUPPORTED, "body.brand_new_option"),
        (chat_body(temperature=1.5), UNSUPPORTED, "body.temperature"),
        (chat_body(temperature=2.5), INVALID, "body.temperature"),
        (chat_body({"role": "function", "name": "f", "content": "x"}), UNSUPPORTED, "body.messages[0].role"),
        (chat_body({"role": "critic", "content": "x"}), UNSUPPORTED, "body.messages[0].role"),
        (chat_body({"content": "x"}), INVALID, "body.messages[0].role"),
        (
            chat_body(user([{"type": "input_audio", "input_audio": {}}])),
            UNSUPPORTED,
            "body.messages[0].content[0].type",
        ),
        (chat_body(user([{"type": "file", "file": {}}])), UNSUPPORTED, "body.messages[0].content[0].type"),
        (
            chat_body(assistant([{"type": "refusal", "refusal": "no"}]), user("x")),
            UNSUPPORTED,
            "body.messages[0].content[0].type",
        ),
        (
            chat_body(user([{"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}])),
            UNSUPPORTED,
            "body.messages[0].content[0].image_url.url",
        ),
        (
            chat_body(user([{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}])),
            UNSUPPORTED,
            "body.messages[0].content[0].image_url.url",
        ),
        (
            chat_body(user([{"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}])),
            UNSUPPORTED,
            "body.messages[0].content[0].image_url.url",
        ),
        (
            chat_body(
                user("x"),
                assistant("y"),
                user([{"type": "text", "text": "z"}, {"type": "image_url", "image_url": {"url": "ftp://a/b.png"}}]),
            ),
            UNSUPPORTED,
            "body.messages[2].content[1].image_url.url",
        ),
        (chat_body({"role": "user", "content": "x", "name": "bob"}), UNSUPPORTED, "body.messages[0].name"),
        (chat_body(user("x"), assistant(None, refusal="No.")), UNSUPPORTED, "body.messages[1].refusal"),
        (chat_body(user("x"), assistant(None, audio={"id": "a"})), UNSUPPORTED, "body.messages[1].audio"),
        (chat_body(tools=[{"type": "custom", "custom": {"name": "c"}}]), UNSUPPORTED, "body.tools[0].type"),
        (
            chat_body(tools=[function_tool("f")], tool_choice={"type": "allowed_tools", "allowed_tools": {}}),
            UNSUPPORTED,
            "body.tool_choice.type",
        ),
        (chat_body(tool_choice="required"), INVALID, "body.tool_choice"),
        (chat_body(tools=[function_tool("f")], tool_choice="sometimes"), INVALID, "body.tool_choice"),
        (
            chat_body(
                tools=[function_tool("f")], tool_choice={"type": "function", "function": {"name": "g"}}
            ),
            INVALID,
            "body.tool_choice.function.name",
        ),
        (
            chat_body(tools=[function_tool("f")], tool_choice="required", response_format=JSON_FORMAT),
            UNSUPPORTED,
            "body.tool_choice",
        ),
        (
            chat_body(tools=[function_tool(JSON_RESPONSE_TOOL)], response_format=JSON_FORMAT),
            UNSUPPORTED,
            "body.tools",
        ),
        (chat_body(response_format={"type": "grammar"}), UNSUPPORTED, "body.response_format.type"),
        (
            chat_body(
                response_format={
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {"type": "array"}},
                }
            ),
            UNSUPPORTED,
            "body.response_format.json_schema.schema",
        ),
        (
            chat_body(user("x"), assistant(None, tool_calls=[call("call_1", "f", "[1]")])),
            INVALID,
            "body.messages[1].tool_calls[0].function.arguments",
        ),
        (
            chat_body(user("x"), assistant(None, tool_calls=[call("call_1", "f", "{oops")])),
            INVALID,
            "body.messages[1].tool_calls[0].function.arguments",
        ),
        (
            chat_body(user("x"), assistant(None, tool_calls=[call("call.1", "f", "{}")])),
            UNSUPPORTED,
            "body.messages[1].tool_calls[0].id",
        ),
        (
            chat_body(user("x"), {"role": "tool", "tool_call_id": "call 1", "content": "r"}),
            UNSUPPORTED,
            "body.messages[1].tool_call_id",
        ),
        ({"messages": [user("x")]}, INVALID, "body.model"),
        (chat_body(model=""), INVALID, "body.model"),
        (chat_body(model=3), INVALID, "body.model"),
        (chat_body(messages=[]), INVALID, "body.messages"),
        (chat_body(max_tokens=0), INVALID, "body.max_tokens"),
        (chat_body(max_completion_tokens=True), INVALID, "body.max_completion_tokens"),
        (chat_body(user("  \n")), INVALID, "body.messages[0].content"),
        (chat_body(user("x"), assistant(None)), INVALID, "body.messages[1].content"),
        (chat_body({"role": "system", "content": "Only rules."}), INVALID, "body.messages"),
    ],
)
def test_rejections_name_their_field(body: dict[str, Any], error: type[ValidationError], field: str) -> None:
    with pytest.raises(error) as caught:
        to_messages_params(body)
    assert caught.value.field == field
    assert (type(caught.value) is UnsupportedFeatureError) == (error is UNSUPPORTED)
    assert field in str(caught.value)


def test_invalid_json_bytes() -> None:
    with pytest.raises(ValidationError) as caught:
        translate(b'{"model": ')
    assert caught.value.field == "body"


# --- property: random valid chat bodies satisfy Claude's shape rules ----------------------------------

words = st.text(alphabet="abc xyz.\n", min_size=0, max_size=12)
texts = words.filter(lambda s: s.strip() != "")
image_urls = st.sampled_from(["data:image/jpeg;base64,/9j/4AAQ", "https://example.com/a.png"])
user_parts = st.lists(
    st.one_of(
        words.map(lambda s: {"type": "text", "text": s}),
        image_urls.map(lambda u: {"type": "image_url", "image_url": {"url": u}}),
    ),
    min_size=1,
    max_size=3,
).filter(lambda parts: any(p["type"] == "image_url" or p["text"].strip() for p in parts))


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    """System messages anywhere, user/assistant turns in any order, and well-formed tool exchanges."""
    messages: list[dict[str, Any]] = []
    next_call = 0
    for kind in draw(
        st.lists(st.sampled_from(["system", "user", "assistant", "tools"]), min_size=1, max_size=8)
    ):
        if kind == "system":
            messages.append({"role": draw(st.sampled_from(["system", "developer"])), "content": draw(texts)})
        elif kind == "user":
            messages.append(user(draw(st.one_of(texts, user_parts))))
        elif kind == "assistant":
            messages.append(assistant(draw(texts)))
        else:
            ids = [f"call_{next_call + i}" for i in range(draw(st.integers(1, 3)))]
            next_call += len(ids)
            content = draw(st.one_of(st.none(), words))
            messages.append(assistant(content, tool_calls=[call(i, "lookup", '{"q": "x"}') for i in ids]))
            messages += [{"role": "tool", "tool_call_id": i, "content": draw(words)} for i in ids]
    if not any(m["role"] in ("user", "assistant", "tool") for m in messages):
        messages.append(user(draw(texts)))
    return messages


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": draw(conversations())}
    optional = {
        "max_tokens": st.integers(1, 10_000),
        "max_completion_tokens": st.integers(1, 10_000),
        "temperature": st.floats(0, 1),
        "top_p": st.floats(0, 1),
        "stop": st.one_of(texts, st.lists(texts, min_size=1, max_size=3)),
        "user": texts,
        "parallel_tool_calls": st.booleans(),
        "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, JSON_FORMAT]),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    if draw(st.booleans()):
        body["tools"] = [
            function_tool("lookup", parameters={"type": "object", "properties": {"q": {"type": "string"}}})
        ]
        body["tool_choice"] = draw(
            st.sampled_from(["auto", "none", {"type": "function", "function": {"name": "lookup"}}])
        )
    return body


def visible_texts(messages: list[dict[str, Any]]) -> list[str]:
    """The non-blank user/assistant texts, in order, on either side of the translation."""
    found: list[str] = []
    for message in messages:
        content = message.get("content")
        if message["role"] in ("system", "developer", "tool") or content is None:
            continue
        parts = (
            [content]
            if isinstance(content, str)
            else [p.get("text", "") for p in content if p["type"] == "text"]
        )
        found += [p.strip() for p in parts if p.strip()]
    return found


@settings(max_examples=150, deadline=None)
@given(chat_bodies())
def test_random_chat_bodies_give_well_formed_params(body: dict[str, Any]) -> None:
    result = to_messages_params(body)
    sdk_validate(result)
    assert result["max_tokens"] >= 1
    turns = result["messages"]
    assert turns
    for before, after in itertools.pairwise(turns):
        assert before["role"] != after["role"]
    previous_tool_uses: set[str] = set()
    for turn in turns:
        content = turn["content"]
        assert content and (not isinstance(content, str) or content.strip())
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for block in blocks:
            if block["type"] == "text":
                assert block["text"].strip()
        results = [b["tool_use_id"] for b in blocks if b["type"] == "tool_result"]
        assert set(results) <= previous_tool_uses  # each answers a tool_use of the turn just before
        # tool results come first in their turn
        assert [b["type"] for b in blocks[: len(results)]] == ["tool_result"] * len(results)
        previous_tool_uses = {b["id"] for b in blocks if b["type"] == "tool_use"}
    last = turns[-1]["content"]
    if turns[-1]["role"] == "assistant" and isinstance(last, str):
        assert last == last.rstrip()
    assert visible_texts(turns) == visible_texts(body["messages"])  # nothing said was lost or reordered


# --- Anthropic Message -> OpenAI chat.completion ---------------------------------------------------------


def anthropic_message(
    *content: dict[str, Any], stop_reason: str = "end_turn", **usage: int
) -> dict[str, Any]:
    message = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 5, "service_tier": "batch", **usage},
    }
    Message.model_validate(message)  # a real Message, as the anthropic SDK parses it
    return message


def completion(message: dict[str, Any]) -> dict[str, Any]:
    result = message_to_chat_completion(message, created=1_767_225_600)
    ChatCompletion.model_validate(result)  # and a real chat completion, as the openai SDK parses it
    return result


def test_text_message_to_chat_completion() -> None:
    assert completion(
        anthropic_message({"type": "text", "text": "Hello"}, {"type": "text", "text": " there"})
    ) == {
        "id": "msg_01",
        "object": "chat.completion",
        "created": 1_767_225_600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there", "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 0},
        },
    }


def test_tool_use_to_tool_calls() -> None:
    result = completion(
        anthropic_message(
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            stop_reason="tool_use",
        )
    )
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"] == [
        {
            "id": "toolu_1",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city":"Paris"}'},
        }
    ]


def test_json_schema_answer_comes_back_as_content() -> None:
    answer = {"type": "tool_use", "id": "toolu_2", "name": JSON_RESPONSE_TOOL, "input": {"answer": "42"}}
    choice = completion(anthropic_message(answer, stop_reason="tool_use"))["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == '{"answer":"42"}'
    assert "tool_calls" not in choice["message"]
    assert json.loads(choice["message"]["content"]) == {"answer": "42"}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
    ],
)
def test_finish_reasons(stop_reason: str, finish_reason: str) -> None:
    message = anthropic_message({"type": "text", "text": "x"}, stop_reason=stop_reason)
    assert completion(message)["choices"][0]["finish_reason"] == finish_reason


def test_usage_counts_cache_reads_and_writes_as_prompt_tokens() -> None:
    message = anthropic_message(
        {"type": "text", "text": "x"}, cache_read_input_tokens=100, cache_creation_input_tokens=20
    )
    assert completion(message)["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 5,
        "total_tokens": 135,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


def test_thinking_blocks_are_left_out() -> None:
    message = anthropic_message(
        {"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": "Done"}
    )
    assert completion(message)["choices"][0]["message"]["content"] == "Done"


def test_not_a_message() -> None:
    with pytest.raises(ValidationError) as caught:
        message_to_chat_completion({"type": "error", "error": {"type": "api_error"}})
    assert caught.value.field == "message"
