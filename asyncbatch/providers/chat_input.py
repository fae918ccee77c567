"""OpenAI chat completion bodies decoded into Structs: the input side of every translation to another provider.

A body is decoded straight into Structs that declare every OpenAI field a translation understands (unknown
fields are forbidden), so a field or content-part type we do not know raises
:class:`~asyncbatch.errors.UnsupportedFeatureError` naming it (``field="body.<path>"``) and a badly typed value
raises :class:`~asyncbatch.errors.ValidationError`, before anything is stored. Each translation then decides,
field by field, what its provider can carry (see :mod:`.anthropic_translate`, :mod:`.gemini_translate`).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..errors import UnsupportedFeatureError, ValidationError

PositiveInt = Annotated[int, Meta(ge=1)]

class TextPart(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    text: str


class ImageUrl(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    detail: str | None = None


class ImagePart(msgspec.Struct, tag="image_url", tag_field="type", forbid_unknown_fields=True):
    image_url: ImageUrl


class FunctionCall(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: str


class ToolCall(msgspec.Struct, tag="function", tag_field="type", forbid_unknown_fields=True):
    id: str
    function: FunctionCall


class Message(msgspec.Struct, tag_field="role", forbid_unknown_fields=True, kw_only=True):
    name: None = None  # participant names have no Claude equivalent


class SystemMessage(Message, tag="system"):
    content: str | list[TextPart]


class DeveloperMessage(SystemMessage, tag="developer"):
    pass


class UserMessage(Message, tag="user"):
    content: str | list[TextPart | ImagePart]


class AssistantMessage(Message, tag="assistant"):
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    refusal: None = None
    audio: None = None
    function_call: None = None


class ToolMessage(Message, tag="tool"):
    tool_call_id: str
    content: str | list[TextPart]


AnyMessage = SystemMessage | DeveloperMessage | UserMessage | AssistantMessage | ToolMessage


class FunctionDef(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(msgspec.Struct, tag="function", tag_field="type", forbid_unknown_fields=True):
    function: FunctionDef


class NamedFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class NamedToolChoice(msgspec.Struct, tag="function", tag_field="type", forbid_unknown_fields=True):
    function: NamedFunction


class JsonSchema(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class TextFormat(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    pass


class JsonObjectFormat(msgspec.Struct, tag="json_object", tag_field="type", forbid_unknown_fields=True):
    pass


class JsonSchemaFormat(msgspec.Struct, tag="json_schema", tag_field="type", forbid_unknown_fields=True):
    json_schema: JsonSchema


class ChatBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The OpenAI chat completion fields the translations know; each translation's module says what it does with
    each of them."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[AnyMessage], Meta(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaFormat | None = None
    # accepted with their neutral value only (NEUTRAL)
    n: int | None = None
    stream: bool | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, int] | None = None
    modalities: list[str] | None = None
    # accepted as null only
    audio: None = None
    functions: None = None
    function_call: None = None
    reasoning_effort: None = None
    verbosity: None = None
    web_search_options: None = None
    moderation: None = None
    # dropped
    seed: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    stream_options: Any = None
    prediction: Any = None


NEUTRAL: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "stream": (False,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
}

#: The NEUTRAL fields in one C call; most requests give none of them.
_neutral_values = operator.attrgetter(*NEUTRAL)
_NONE_GIVEN = (None,) * len(NEUTRAL)

_chat_decoder = msgspec.json.Decoder(ChatBody)


def load_chat(body: Mapping[str, Any] | bytes, provider: str) -> ChatBody:
    """A chat body given as a mapping or as its JSON bytes, decoded straight into Structs."""
    try:
        if isinstance(body, bytes):
            return _chat_decoder.decode(body)
        return msgspec.convert(dict(body), ChatBody)
    except msgspec.ValidationError as exc:
        raise body_error(str(exc), provider) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc}", field="body") from None


def check_neutral(chat: ChatBody, provider: str, *, carried: frozenset[str] = frozenset()) -> None:
    """Refuse a NEUTRAL field given with another value than its neutral one, unless ``provider`` carries it."""
    if (values := _neutral_values(chat)) == _NONE_GIVEN:
        return  # most requests give none of them
    for (name, allowed), value in zip(NEUTRAL.items(), values, strict=True):
        if value is not None and value not in allowed and name not in carried:
            raise UnsupportedFeatureError(f"{name}={value!r} has no {provider} equivalent", field=f"body.{name}")


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD = re.compile(r"^Object (?P<kind>contains unknown|missing required) field `(?P<name>[^`]+)`$")
_TAG = re.compile(r"^Invalid value (?P<value>.+)$")
_NULL_ONLY = re.compile(r"^Expected `null`, got")


def body_error(text: str, provider: str) -> ValidationError:
    """msgspec's error (``<reason> - at `$.path```) as our error, its path as ``field="body.path"``.

    Unknown fields, unknown tags (role, part or tool ``type``) and non-null values of null-only fields are
    features we cannot translate; anything else is a plain invalid value.
    """
    match = _AT.match(text)
    reason, path = (match["reason"], "body" + (match["path"] or "")) if match else (text, "body")
    if field := _FIELD.match(reason):
        where = f"{path}.{field['name']}"
        if field["kind"] == "missing required":
            return ValidationError("required field is missing", field=where)
        return UnsupportedFeatureError(f"{field['name']!r} cannot be translated for {provider}", field=where)
    if tag := _TAG.match(reason):
        return UnsupportedFeatureError(f"{tag['value']} is not supported for {provider}", field=path)
    if _NULL_ONLY.match(reason):
        return UnsupportedFeatureError(
            f"this field has no {provider} equivalent (only null is accepted)", field=path
        )
    return ValidationError(reason, field=path)


def non_blank(text: str) -> bool:
    """``text.strip() != ""`` without building the stripped copy (the same white space as ``str.strip``)."""
    return bool(text) and not text.isspace()


def data_url(url: str, at: str, provider: str) -> tuple[str, str] | None:
    """(media type, base64 data) of a base64 ``data:`` URL; None for an http(s) URL; else unsupported."""
    if url.startswith(("http://", "https://")):
        return None
    if not url.startswith("data:"):
        raise UnsupportedFeatureError("images must be http(s) URLs or base64 data URLs", field=at)
    header, comma, data = url[len("data:") :].partition(",")
    media_type, *options = header.split(";")
    if not comma or "base64" not in options:
        raise UnsupportedFeatureError(f"only base64 data URLs can be sent to {provider}", field=at)
    return media_type, data
