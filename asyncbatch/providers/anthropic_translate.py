"""OpenAI chat completion bodies -> Anthropic Messages ``params``, and Anthropic Messages -> chat completions.

Users run the same OpenAI-format batch on Claude by switching provider, so the translation must either keep
the meaning of a request or refuse it: a request that would silently behave differently on Claude is worse
than one rejected before anything is stored. The rules:

* Bodies are decoded straight into Structs that declare every OpenAI field we understand (unknown fields
  are forbidden), so a field or content-part type we do not know raises
  :class:`~asyncbatch.errors.UnsupportedFeatureError` naming it (``field="body.<path>"``), and a badly typed
  value raises :class:`~asyncbatch.errors.ValidationError`.
* Translated: ``system``/``developer`` messages (all of them, wherever they stand, in order) -> ``system``;
  text and image parts (base64 data URLs -> base64 sources, http(s) URLs -> url sources; ``detail`` is
  dropped: Claude has no such knob); ``tools`` -> ``{name, description, input_schema, strict}``;
  ``tool_choice`` auto/none/required/named -> auto/none/any/tool, ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``; assistant ``tool_calls`` -> ``tool_use`` blocks; ``tool`` messages ->
  ``tool_result`` blocks in a user turn; consecutive same-role turns are merged; ``max_completion_tokens``
  (else ``max_tokens``, else the default); ``temperature`` (0-1 only: OpenAI's 1-2 range has no Claude
  equivalent), ``top_p``, ``stop`` -> ``stop_sequences``, ``user`` / ``safety_identifier`` ->
  ``metadata.user_id``.
* JSON mode: ``json_object`` appends :data:`JSON_OBJECT_INSTRUCTION` to ``system``. ``json_schema`` adds a
  tool named :data:`JSON_RESPONSE_TOOL` whose ``input_schema`` is the schema and forces it (``tool_choice``
  ``tool``; ``any`` when the request has its own tools and lets Claude use them, so that it either calls
  one of them or answers; a named tool_choice is kept; ``required`` cannot be expressed and is refused).
  The answer therefore comes back as that tool's ``tool_use`` input, and
  :func:`message_to_chat_completion` turns it back into ``message.content`` (a JSON string), as OpenAI
  would return it.
* Accepted only with their neutral value (else unsupported): ``n`` (1), ``stream`` (false), ``logprobs``
  (false), ``top_logprobs`` (0), ``frequency_penalty`` / ``presence_penalty`` (0), ``logit_bias`` ({}),
  ``modalities`` (["text"]); accepted only as null: ``audio``, ``functions``, ``function_call``,
  ``reasoning_effort``, ``verbosity``, ``web_search_options``, ``moderation``, and a message's ``name``,
  ``refusal``, ``audio``, ``function_call``.
* Silently dropped, because they change neither the model's input nor its sampling: ``seed`` (OpenAI's
  determinism is best effort anyway), ``store``, ``metadata``, ``service_tier``, ``prompt_cache_key``,
  ``prompt_cache_retention``, ``stream_options``, ``prediction``, image ``detail``.
* Shape rules Claude enforces and OpenAI does not: blank text parts are dropped, and a message left with no
  content is a ValidationError; a final assistant turn is a prefill (Claude continues it rather than writing
  a new turn) and loses its trailing whitespace, which Claude rejects; tool call ids must match
  ``^[a-zA-Z0-9_-]+$`` (OpenAI's ``call_...`` ids do); ``tool_choice`` auto/none without tools is ignored,
  required/named without tools (or naming an absent tool) is a ValidationError.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ..errors import UnsupportedFeatureError, ValidationError
from ..model import Usage

__all__ = [
    "JSON_OBJECT_INSTRUCTION",
    "JSON_RESPONSE_TOOL",
    "AnthropicUsage",
    "MessagesParams",
    "body_error",
    "message_to_chat_completion",
    "to_messages_params",
    "translate",
]

#: The tool that carries a ``response_format: json_schema`` answer; user tools may not use this name.
JSON_RESPONSE_TOOL = "json_response"
#: Appended to ``system`` for ``response_format: json_object``.
JSON_OBJECT_INSTRUCTION = "Respond only with a single valid JSON object, with no text before or after it."
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

PositiveInt = Annotated[int, Meta(ge=1)]


# --- OpenAI chat completion body (input) -----------------------------------------------------------------


class _TextPart(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    text: str


class _ImageUrl(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    detail: str | None = None


class _ImagePart(msgspec.Struct, tag="image_url", tag_field="type", forbid_unknown_fields=True):
    image_url: _ImageUrl


class _FunctionCall(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    arguments: str


class _ToolCall(msgspec.Struct, tag="function", tag_field="type", forbid_unknown_fields=True):
    id: str
    function: _FunctionCall


class _Message(msgspec.Struct, tag_field="role", forbid_unknown_fields=True, kw_only=True):
    name: None = None  # participant names have no Claude equivalent


class _SystemMessage(_Message, tag="system"):
    content: str | list[_TextPart]


class _DeveloperMessage(_SystemMessage, tag="developer"):
    pass


class _UserMessage(_Message, tag="user"):
    content: str | list[_TextPart | _ImagePart]


class _AssistantMessage(_Message, tag="assistant"):
    content: str | list[_TextPart] | None = None
    tool_calls: list[_ToolCall] | None = None
    refusal: None = None
    audio: None = None
    function_call: None = None


class _ToolMessage(_Message, tag="tool"):
    tool_call_id: str
    content: str | list[_TextPart]


_AnyMessage = _SystemMessage | _DeveloperMessage | _UserMessage | _AssistantMessage | _ToolMessage


class _FunctionDef(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class _Tool(msgspec.Struct, tag="function", tag_field="type", forbid_unknown_fields=True):
    function: _FunctionDef


class _NamedFunction(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class _NamedToolChoice(msgspec.Struct, tag="function", tag_field="type", forbid_unknown_fields=True):
    function: _NamedFunction


class _JsonSchema(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class _TextFormat(msgspec.Struct, tag="text", tag_field="type", forbid_unknown_fields=True):
    pass


class _JsonObjectFormat(msgspec.Struct, tag="json_object", tag_field="type", forbid_unknown_fields=True):
    pass


class _JsonSchemaFormat(msgspec.Struct, tag="json_schema", tag_field="type", forbid_unknown_fields=True):
    json_schema: _JsonSchema


class _ChatBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The OpenAI chat completion fields the translation knows; see the module docstring for each rule."""

    model: Annotated[str, Meta(min_length=1)]
    messages: Annotated[list[_AnyMessage], Meta(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    max_tokens: PositiveInt | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    tools: list[_Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | _NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: _TextFormat | _JsonObjectFormat | _JsonSchemaFormat | None = None
    # accepted with their neutral value only (_NEUTRAL)
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


_NEUTRAL: dict[str, tuple[object, ...]] = {
    "n": (1,),
    "stream": (False,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "modalities": (["text"],),
}

#: The _NEUTRAL fields in one C call; most requests give none of them.
_neutral_values = operator.attrgetter(*_NEUTRAL)
_NONE_GIVEN = (None,) * len(_NEUTRAL)

_chat_decoder = msgspec.json.Decoder(_ChatBody)


# --- Anthropic Messages params (output) ------------------------------------------------------------------


class TextBlock(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class Base64Source(msgspec.Struct, tag="base64", tag_field="type"):
    media_type: str
    data: str


class UrlSource(msgspec.Struct, tag="url", tag_field="type"):
    url: str


class ImageBlock(msgspec.Struct, tag="image", tag_field="type"):
    source: Base64Source | UrlSource


class ToolUseBlock(msgspec.Struct, tag="tool_use", tag_field="type"):
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(msgspec.Struct, tag="tool_result", tag_field="type"):
    tool_use_id: str
    content: str | list[TextBlock] | UnsetType = UNSET


Block = TextBlock | ImageBlock | ToolUseBlock | ToolResultBlock
Role = Literal["user", "assistant"]


class Turn(msgspec.Struct):
    role: Role
    content: str | list[Block]


class ToolDef(msgspec.Struct, kw_only=True):
    name: str
    description: str | UnsetType = UNSET
    input_schema: dict[str, Any]
    strict: bool | UnsetType = UNSET


class ToolChoice(msgspec.Struct, kw_only=True):
    type: Literal["auto", "any", "tool", "none"]
    name: str | UnsetType = UNSET
    disable_parallel_tool_use: bool | UnsetType = UNSET


class RequestMetadata(msgspec.Struct):
    user_id: str


class MessagesParams(msgspec.Struct, kw_only=True):
    """Anthropic Messages ``params``; unset fields are left out of the JSON."""

    model: str
    max_tokens: int
    messages: list[Turn]
    system: str | list[TextBlock] | UnsetType = UNSET
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    metadata: RequestMetadata | UnsetType = UNSET
    tools: list[ToolDef] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET


# --- translation -----------------------------------------------------------------------------------------


def to_messages_params(body: Mapping[str, Any], *, default_max_tokens: int = 4096) -> dict[str, Any]:
    """An OpenAI chat completion body as Anthropic Messages ``params`` (plain JSON-ready dicts)."""
    params: dict[str, Any] = msgspec.to_builtins(translate(body, default_max_tokens=default_max_tokens))
    return params


def translate(body: Mapping[str, Any] | bytes, *, default_max_tokens: int = 4096) -> MessagesParams:
    """Translate a chat body given as a mapping or as its JSON bytes (decoded straight into Structs)."""
    chat = _load(body)
    if (values := _neutral_values(chat)) != _NONE_GIVEN:
        for (name, allowed), value in zip(_NEUTRAL.items(), values, strict=True):
            if value is not None and value not in allowed:
                raise UnsupportedFeatureError(
                    f"{name}={value!r} has no Anthropic equivalent", field=f"body.{name}"
                )
    if chat.temperature is not None and chat.temperature > 1:
        raise UnsupportedFeatureError(
            "Anthropic's temperature range is 0-1; OpenAI's 1-2 has no equivalent", field="body.temperature"
        )
    system, messages = _conversation(chat.messages)
    if isinstance(chat.response_format, _JsonObjectFormat):
        system.append(JSON_OBJECT_INSTRUCTION)
    tools, tool_choice = _tools(chat)
    stop = [chat.stop] if isinstance(chat.stop, str) else chat.stop
    user_id = chat.safety_identifier or chat.user
    return MessagesParams(
        model=chat.model,
        max_tokens=chat.max_completion_tokens or chat.max_tokens or default_max_tokens,
        messages=messages,
        system=_system(system),
        temperature=_given(chat.temperature),
        top_p=_given(chat.top_p),
        stop_sequences=stop or UNSET,
        metadata=RequestMetadata(user_id=user_id) if user_id else UNSET,
        tools=tools or UNSET,
        tool_choice=tool_choice or UNSET,
    )


def _load(body: Mapping[str, Any] | bytes) -> _ChatBody:
    try:
        if isinstance(body, bytes):
            return _chat_decoder.decode(body)
        return msgspec.convert(dict(body), _ChatBody)
    except msgspec.ValidationError as exc:
        raise body_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc}", field="body") from None


_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_FIELD = re.compile(r"^Object (?P<kind>contains unknown|missing required) field `(?P<name>[^`]+)`$")
_TAG = re.compile(r"^Invalid value (?P<value>.+)$")
_NULL_ONLY = re.compile(r"^Expected `null`, got")


def body_error(text: str) -> ValidationError:
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
        return UnsupportedFeatureError(f"{field['name']!r} cannot be translated for Anthropic", field=where)
    if tag := _TAG.match(reason):
        return UnsupportedFeatureError(f"{tag['value']} is not supported for Anthropic", field=path)
    if _NULL_ONLY.match(reason):
        return UnsupportedFeatureError(
            "this field has no Anthropic equivalent (only null is accepted)", field=path
        )
    return ValidationError(reason, field=path)


def _given(value: float | None) -> float | UnsetType:
    return UNSET if value is None else value


def _system(texts: list[str]) -> str | list[TextBlock] | UnsetType:
    if not texts:
        return UNSET
    return texts[0] if len(texts) == 1 else [TextBlock(text=t) for t in texts]


def _conversation(messages: Sequence[_AnyMessage]) -> tuple[list[str], list[Turn]]:
    """System texts, and the other messages as alternating turns (same-role neighbours merged).

    Runs for every chat request twice (checked at submit, translated into the spool), so error paths
    (``body.messages[i]...``) are only spelled out when an error is raised."""
    system: list[str] = []
    turns: list[tuple[Role, list[Block]]] = []
    for i, message in enumerate(messages):
        if isinstance(message, _SystemMessage):
            system += _texts(message.content)
            continue
        role, blocks = _turn(message, i)
        if not blocks:
            raise ValidationError(
                "Anthropic needs non-blank content in every message", field=f"body.messages[{i}].content"
            )
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    if not turns:
        raise ValidationError("at least one user or assistant message is needed", field="body.messages")
    role, blocks = turns[-1]
    if role == "assistant" and isinstance(blocks[-1], TextBlock):
        blocks[-1] = TextBlock(text=blocks[-1].text.rstrip())
    return system, [Turn(role=role, content=_collapse(blocks)) for role, blocks in turns]


def _collapse(blocks: list[Block]) -> str | list[Block]:
    """A turn holding one text block is sent as a plain string, as people write it."""
    return blocks[0].text if len(blocks) == 1 and isinstance(blocks[0], TextBlock) else blocks


def _turn(message: _AnyMessage, i: int) -> tuple[Role, list[Block]]:
    if isinstance(message, _UserMessage):
        return "user", _content_blocks(message.content, i)
    if isinstance(message, _AssistantMessage):
        blocks: list[Block] = [TextBlock(text=text) for text in _texts(message.content)]
        blocks += [
            _tool_use(call, f"body.messages[{i}].tool_calls[{j}]") for j, call in enumerate(message.tool_calls or ())
        ]
        return "assistant", blocks
    assert isinstance(message, _ToolMessage)
    texts = _texts(message.content)
    content: str | list[TextBlock] | UnsetType = UNSET
    if texts:
        content = texts[0] if isinstance(message.content, str) else [TextBlock(text=text) for text in texts]
    tool_use_id = _tool_id(message.tool_call_id, f"body.messages[{i}].tool_call_id")
    return "user", [ToolResultBlock(tool_use_id=tool_use_id, content=content)]


def _texts(content: str | Sequence[_TextPart] | None) -> list[str]:
    """The non-blank texts of a content (Claude rejects blank text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if _non_blank(content) else []
    return [part.text for part in content if _non_blank(part.text)]


def _non_blank(text: str) -> bool:
    """``text.strip() != ""`` without building the stripped copy (the same white space as ``str.strip``)."""
    return bool(text) and not text.isspace()


def _content_blocks(content: str | Sequence[_TextPart | _ImagePart], i: int) -> list[Block]:
    if isinstance(content, str):
        return [TextBlock(text=text) for text in _texts(content)]
    blocks: list[Block] = []
    for j, part in enumerate(content):
        if isinstance(part, _ImagePart):
            blocks.append(_image(part.image_url.url, f"body.messages[{i}].content[{j}].image_url.url"))
        elif _non_blank(part.text):
            blocks.append(TextBlock(text=part.text))
    return blocks


def _image(url: str, at: str) -> ImageBlock:
    if url.startswith(("http://", "https://")):
        return ImageBlock(source=UrlSource(url=url))
    if not url.startswith("data:"):
        raise UnsupportedFeatureError("images must be http(s) URLs or base64 data URLs", field=at)
    header, comma, data = url[len("data:") :].partition(",")
    media_type, *options = header.split(";")
    if not comma or "base64" not in options:
        raise UnsupportedFeatureError("only base64 data URLs can be sent to Anthropic", field=at)
    if media_type not in IMAGE_MEDIA_TYPES:
        allowed = ", ".join(sorted(IMAGE_MEDIA_TYPES))
        raise UnsupportedFeatureError(f"image type {media_type!r} is not supported (use {allowed})", field=at)
    return ImageBlock(source=Base64Source(media_type=media_type, data=data))


def _tool_id(value: str, at: str) -> str:
    if not _TOOL_ID.match(value):
        raise UnsupportedFeatureError("Anthropic tool ids must match ^[a-zA-Z0-9_-]+$", field=at)
    return value


def _tool_use(call: _ToolCall, at: str) -> ToolUseBlock:
    try:
        arguments = msgspec.json.decode(call.function.arguments or "{}")
    except msgspec.DecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ValidationError("arguments must be a JSON object", field=f"{at}.function.arguments")
    return ToolUseBlock(id=_tool_id(call.id, f"{at}.id"), name=call.function.name, input=arguments)


def _tools(chat: _ChatBody) -> tuple[list[ToolDef], ToolChoice | None]:
    """Tools and tool_choice, with the json_schema tool folded in and parallel calls applied."""
    if not chat.tools and chat.tool_choice is None and not isinstance(chat.response_format, _JsonSchemaFormat):
        return [], None  # most requests: nothing to build
    tools = [
        ToolDef(
            name=tool.function.name,
            description=tool.function.description or UNSET,
            input_schema=tool.function.parameters or _EMPTY_SCHEMA,
            strict=UNSET if tool.function.strict is None else tool.function.strict,
        )
        for tool in chat.tools or ()
    ]
    choice = _tool_choice(chat.tool_choice, tools)
    if isinstance(chat.response_format, _JsonSchemaFormat):
        choice = _json_choice(choice, tools)
        tools = [*tools, _json_tool(chat.response_format.json_schema, tools)]
    if chat.parallel_tool_calls is False and tools:
        choice = choice or ToolChoice(type="auto")
        if choice.type != "none":
            choice.disable_parallel_tool_use = True
    return tools, choice


def _tool_choice(value: str | _NamedToolChoice | None, tools: list[ToolDef]) -> ToolChoice | None:
    if value is None or (not tools and value in ("auto", "none")):
        return None  # OpenAI ignores them without tools; Claude would reject them
    if not tools:
        raise ValidationError("tool_choice needs tools", field="body.tool_choice")
    if value == "auto":
        return ToolChoice(type="auto")
    if value == "none":
        return ToolChoice(type="none")
    if value == "required":
        return ToolChoice(type="any")
    assert isinstance(value, _NamedToolChoice)
    if value.function.name not in {tool.name for tool in tools}:
        raise ValidationError(
            "tool_choice names a tool that is not in tools", field="body.tool_choice.function.name"
        )
    return ToolChoice(type="tool", name=value.function.name)


def _json_choice(choice: ToolChoice | None, tools: list[ToolDef]) -> ToolChoice:
    """How to force the json_schema answer without taking the request's own tools away."""
    if choice is None or choice.type == "auto":
        return ToolChoice(type="any") if tools else ToolChoice(type="tool", name=JSON_RESPONSE_TOOL)
    if choice.type == "none":
        return ToolChoice(type="tool", name=JSON_RESPONSE_TOOL)
    if choice.type == "any":
        raise UnsupportedFeatureError(
            "tool_choice 'required' with response_format json_schema cannot be expressed for Anthropic",
            field="body.tool_choice",
        )
    return choice  # a named tool: OpenAI calls it and the schema does not apply to this turn either


def _json_tool(spec: _JsonSchema, tools: list[ToolDef]) -> ToolDef:
    if any(tool.name == JSON_RESPONSE_TOOL for tool in tools):
        raise UnsupportedFeatureError(
            f"the tool name {JSON_RESPONSE_TOOL!r} is reserved for response_format json_schema",
            field="body.tools",
        )
    if spec.schema.get("type") != "object":
        raise UnsupportedFeatureError(
            "Anthropic needs an object schema (it becomes a tool's input)",
            field="body.response_format.json_schema.schema",
        )
    description = f"Give your final answer by calling this tool; its input is the '{spec.name}' JSON object."
    return ToolDef(
        name=JSON_RESPONSE_TOOL,
        description=f"{description} {spec.description}" if spec.description else description,
        input_schema=spec.schema,
        strict=UNSET if spec.strict is None else spec.strict,
    )


# --- Anthropic Message -> OpenAI chat.completion ---------------------------------------------------------


class AnthropicUsage(msgspec.Struct):
    """A Message's ``usage``. Claude counts cache reads and writes apart from ``input_tokens``."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None

    @property
    def prompt_tokens(self) -> int:
        """All input tokens, cached or not, as OpenAI's ``prompt_tokens`` counts them."""
        return (
            self.input_tokens + (self.cache_read_input_tokens or 0) + (self.cache_creation_input_tokens or 0)
        )

    def normalise(self) -> Usage:
        return Usage(
            input_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            cached_input_tokens=self.cache_read_input_tokens or 0,
        )


class _OutputBlock(msgspec.Struct):
    """Any content block; only text and tool_use ones have a chat completion equivalent."""

    type: str
    text: str = ""
    id: str = ""
    name: str = ""
    input: Any = None


class _AnthropicMessage(msgspec.Struct):
    id: str
    model: str
    content: list[_OutputBlock]
    stop_reason: str | None = None
    usage: AnthropicUsage = msgspec.field(default_factory=AnthropicUsage)


class _FunctionOut(msgspec.Struct):
    name: str
    arguments: str


class _ToolCallOut(msgspec.Struct):
    id: str
    function: _FunctionOut
    type: str = "function"


class _ChatMessageOut(msgspec.Struct):
    content: str | None
    role: str = "assistant"
    refusal: None = None
    tool_calls: list[_ToolCallOut] | UnsetType = UNSET


class _ChoiceOut(msgspec.Struct):
    message: _ChatMessageOut
    finish_reason: str
    index: int = 0
    logprobs: None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int


class _UsageOut(msgspec.Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: _PromptDetails


class _ChatCompletionOut(msgspec.Struct):
    id: str
    model: str
    created: int
    choices: list[_ChoiceOut]
    usage: _UsageOut
    object: str = "chat.completion"


_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def message_to_chat_completion(message: Mapping[str, Any], *, created: int = 0) -> dict[str, Any]:
    """An Anthropic Message as an OpenAI ``chat.completion`` body (for OpenAI-format exports).

    Text blocks are joined into ``content``; ``tool_use`` blocks become ``tool_calls``, except the
    :data:`JSON_RESPONSE_TOOL` one, whose input becomes ``content`` as a JSON string (finish_reason ``stop``
    unless other tools were called), as OpenAI returns a json_schema answer. ``prompt_tokens`` counts cache
    reads and writes, ``prompt_tokens_details.cached_tokens`` the reads. A Message has no timestamp: pass
    ``created`` (Unix seconds, e.g. when the batch ended).
    """
    try:
        parsed = msgspec.convert(dict(message), _AnthropicMessage)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"not an Anthropic Message: {exc}", field="message") from None
    text = "".join(block.text for block in parsed.content if block.type == "text")
    answers = [b for b in parsed.content if b.type == "tool_use" and b.name == JSON_RESPONSE_TOOL]
    calls = [
        _ToolCallOut(
            id=b.id, function=_FunctionOut(name=b.name, arguments=msgspec.json.encode(b.input).decode())
        )
        for b in parsed.content
        if b.type == "tool_use" and b.name != JSON_RESPONSE_TOOL
    ]
    content = msgspec.json.encode(answers[0].input).decode() if answers else text or None
    finish = _FINISH_REASONS.get(parsed.stop_reason or "", "stop")
    if finish == "tool_calls" and not calls:
        finish = "stop"
    usage = parsed.usage
    completion = _ChatCompletionOut(
        id=parsed.id,
        model=parsed.model,
        created=created,
        choices=[
            _ChoiceOut(
                message=_ChatMessageOut(content=content, tool_calls=calls or UNSET), finish_reason=finish
            )
        ],
        usage=_UsageOut(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.output_tokens,
            total_tokens=usage.prompt_tokens + usage.output_tokens,
            prompt_tokens_details=_PromptDetails(cached_tokens=usage.cache_read_input_tokens or 0),
        ),
    )
    body: dict[str, Any] = msgspec.to_builtins(completion)
    return body
