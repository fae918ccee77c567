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
* Tool calls and results must pair up: each call answered by ``tool`` messages right after its assistant
  message, each ``tool`` message answering an open call of the one just before (Claude and OpenAI both
  reject anything else, each request on its own, when the batch runs).
* Shape rules Claude enforces and OpenAI does not: blank text parts are dropped, and a message left with no
  content is a ValidationError; a final assistant turn is a prefill (Claude continues it rather than writing
  a new turn) and loses its trailing whitespace, which Claude rejects; tool call ids must match
  ``^[a-zA-Z0-9_-]+$`` (OpenAI's ``call_...`` ids do); ``tool_choice`` auto/none without tools is ignored,
  required/named without tools (or naming an absent tool) is a ValidationError.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ..errors import UnsupportedFeatureError, ValidationError
from ..model import Usage
from .chat_input import (
    AnyMessage,
    AssistantMessage,
    ChatBody,
    ImagePart,
    JsonObjectFormat,
    JsonSchema,
    JsonSchemaFormat,
    NamedToolChoice,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolMessage,
    UserMessage,
    check_neutral,
    data_url,
    load_chat,
    non_blank,
)
from .chat_input import body_error as _body_error

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

PROVIDER = "Anthropic"
#: The tool that carries a ``response_format: json_schema`` answer; user tools may not use this name.
JSON_RESPONSE_TOOL = "json_response"
#: Appended to ``system`` for ``response_format: json_object``.
JSON_OBJECT_INSTRUCTION = "Respond only with a single valid JSON object, with no text before or after it."
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

PositiveInt = Annotated[int, Meta(ge=1)]


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
    chat = load_chat(body, PROVIDER)
    check_neutral(chat, PROVIDER)
    if chat.temperature is not None and chat.temperature > 1:
        raise UnsupportedFeatureError(
            "Anthropic's temperature range is 0-1; OpenAI's 1-2 has no equivalent", field="body.temperature"
        )
    system, messages = _conversation(chat.messages)
    if isinstance(chat.response_format, JsonObjectFormat):
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


def body_error(text: str) -> ValidationError:
    """msgspec's error about a chat body as our error (see :func:`.chat_input.body_error`)."""
    return _body_error(text, PROVIDER)


def _given(value: float | None) -> float | UnsetType:
    return UNSET if value is None else value


def _system(texts: list[str]) -> str | list[TextBlock] | UnsetType:
    if not texts:
        return UNSET
    return texts[0] if len(texts) == 1 else [TextBlock(text=t) for t in texts]


def _conversation(messages: Sequence[AnyMessage]) -> tuple[list[str], list[Turn]]:
    """System texts, and the other messages as alternating turns (same-role neighbours merged).

    Runs for every chat request twice (checked at submit, translated into the spool), so error paths
    (``body.messages[i]...``) are only spelled out when an error is raised."""
    system: list[str] = []
    turns: list[tuple[Role, list[Block]]] = []
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
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
    _check_tool_answers(messages)  # after the messages' own checks, which name a narrower field
    if not turns:
        raise ValidationError("at least one user or assistant message is needed", field="body.messages")
    role, blocks = turns[-1]
    if role == "assistant" and isinstance(blocks[-1], TextBlock):
        blocks[-1] = TextBlock(text=blocks[-1].text.rstrip())
    return system, [Turn(role=role, content=_collapse(blocks)) for role, blocks in turns]


def _check_tool_answers(messages: Sequence[AnyMessage]) -> None:
    """Tool calls and results must pair up as a conversation: every call of an assistant message answered by
    ``tool`` messages right after it (before any other user or assistant message, and before the end), every
    ``tool`` message answering an open call of the assistant message just before. Anthropic rejects anything
    else (a ``tool_result`` needs its ``tool_use`` in the previous turn, a ``tool_use`` its result in the next),
    hours later, request by request; OpenAI too. System messages may stand between (they go to ``system``)."""
    open_calls: dict[str, int] = {}  # id -> index of its call in the last assistant message, until answered
    opened_at = 0  # that assistant message's index
    for i, message in enumerate(messages):
        if isinstance(message, ToolMessage):
            if open_calls.pop(message.tool_call_id, None) is None:
                raise ValidationError(
                    f"tool result for {message.tool_call_id!r} answers no tool call of the assistant message "
                    "just before it", field=f"body.messages[{i}].tool_call_id",
                )
        elif not isinstance(message, SystemMessage):
            if open_calls:
                call_id, j = next(iter(open_calls.items()))
                raise ValidationError(
                    f"tool call {call_id!r} is not answered (by a tool message) before message {i}",
                    field=f"body.messages[{opened_at}].tool_calls[{j}].id",
                )
            if isinstance(message, AssistantMessage) and message.tool_calls:
                open_calls = {call.id: j for j, call in enumerate(message.tool_calls)}
                opened_at = i
                if len(open_calls) < len(message.tool_calls):
                    raise ValidationError("tool call ids must differ", field=f"body.messages[{i}].tool_calls")
    if open_calls:
        call_id, j = next(iter(open_calls.items()))
        raise ValidationError(
            f"tool call {call_id!r} is never answered (the conversation ends before its tool message)",
            field=f"body.messages[{opened_at}].tool_calls[{j}].id",
        )


def _collapse(blocks: list[Block]) -> str | list[Block]:
    """A turn holding one text block is sent as a plain string, as people write it."""
    return blocks[0].text if len(blocks) == 1 and isinstance(blocks[0], TextBlock) else blocks


def _turn(message: AnyMessage, i: int) -> tuple[Role, list[Block]]:
    if isinstance(message, UserMessage):
        return "user", _content_blocks(message.content, i)
    if isinstance(message, AssistantMessage):
        blocks: list[Block] = [TextBlock(text=text) for text in _texts(message.content)]
        blocks += [
            _tool_use(call, f"body.messages[{i}].tool_calls[{j}]") for j, call in enumerate(message.tool_calls or ())
        ]
        return "assistant", blocks
    assert isinstance(message, ToolMessage)
    texts = _texts(message.content)
    content: str | list[TextBlock] | UnsetType = UNSET
    if texts:
        content = texts[0] if isinstance(message.content, str) else [TextBlock(text=text) for text in texts]
    tool_use_id = _tool_id(message.tool_call_id, f"body.messages[{i}].tool_call_id")
    return "user", [ToolResultBlock(tool_use_id=tool_use_id, content=content)]


def _texts(content: str | Sequence[TextPart] | None) -> list[str]:
    """The non-blank texts of a content (Claude rejects blank text blocks)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if non_blank(content) else []
    return [part.text for part in content if non_blank(part.text)]


def _content_blocks(content: str | Sequence[TextPart | ImagePart], i: int) -> list[Block]:
    if isinstance(content, str):
        return [TextBlock(text=text) for text in _texts(content)]
    blocks: list[Block] = []
    for j, part in enumerate(content):
        if isinstance(part, ImagePart):
            blocks.append(_image(part.image_url.url, f"body.messages[{i}].content[{j}].image_url.url"))
        elif non_blank(part.text):
            blocks.append(TextBlock(text=part.text))
    return blocks


def _image(url: str, at: str) -> ImageBlock:
    inline = data_url(url, at, PROVIDER)
    if inline is None:
        return ImageBlock(source=UrlSource(url=url))
    media_type, data = inline
    if media_type not in IMAGE_MEDIA_TYPES:
        allowed = ", ".join(sorted(IMAGE_MEDIA_TYPES))
        raise UnsupportedFeatureError(f"image type {media_type!r} is not supported (use {allowed})", field=at)
    return ImageBlock(source=Base64Source(media_type=media_type, data=data))


def _tool_id(value: str, at: str) -> str:
    if not _TOOL_ID.match(value):
        raise UnsupportedFeatureError("Anthropic tool ids must match ^[a-zA-Z0-9_-]+$", field=at)
    return value


def _tool_use(call: ToolCall, at: str) -> ToolUseBlock:
    try:
        arguments = msgspec.json.decode(call.function.arguments or "{}")
    except msgspec.DecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ValidationError("arguments must be a JSON object", field=f"{at}.function.arguments")
    return ToolUseBlock(id=_tool_id(call.id, f"{at}.id"), name=call.function.name, input=arguments)


def _tools(chat: ChatBody) -> tuple[list[ToolDef], ToolChoice | None]:
    """Tools and tool_choice, with the json_schema tool folded in and parallel calls applied."""
    if not chat.tools and chat.tool_choice is None and not isinstance(chat.response_format, JsonSchemaFormat):
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
    if isinstance(chat.response_format, JsonSchemaFormat):
        choice = _json_choice(choice, tools)
        tools = [*tools, _json_tool(chat.response_format.json_schema, tools)]
    if chat.parallel_tool_calls is False and tools:
        choice = choice or ToolChoice(type="auto")
        if choice.type != "none":
            choice.disable_parallel_tool_use = True
    return tools, choice


def _tool_choice(value: str | NamedToolChoice | None, tools: list[ToolDef]) -> ToolChoice | None:
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
    assert isinstance(value, NamedToolChoice)
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


def _json_tool(spec: JsonSchema, tools: list[ToolDef]) -> ToolDef:
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
