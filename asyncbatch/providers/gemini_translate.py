"""OpenAI chat completion and embeddings bodies -> Gemini ``GenerateContentRequest`` / ``EmbedContentRequest``,
and Gemini responses -> OpenAI ``chat.completion`` / embeddings bodies.

As for Anthropic (:mod:`.anthropic_translate`), a request either keeps its meaning on Gemini or is refused
before anything is stored, naming the field. The rules:

* ``system`` / ``developer`` messages (all of them, in order) -> ``systemInstruction``; ``user`` -> role
  ``user``, ``assistant`` -> role ``model``; consecutive turns of one role are merged (Gemini wants the
  function responses answering one turn's calls in one turn).
* Content: text parts -> ``text`` (empty strings dropped; a message left with nothing is a ValidationError);
  images as base64 data URLs -> ``inlineData``. Image URLs are refused: a Gemini request reaches files
  through the Files API, not arbitrary URLs. ``detail`` is dropped (no such knob).
* Tools: ``tools`` -> one ``functionDeclarations`` tool (``parameters`` converted, see schemas below);
  ``tool_choice`` auto/none/required/named -> ``toolConfig.functionCallingConfig`` mode AUTO/NONE/ANY/ANY with
  ``allowedFunctionNames``; assistant ``tool_calls`` -> ``functionCall`` parts (``id``, ``name``, ``args``);
  ``tool`` messages -> ``functionResponse`` parts (``id``, the called function's ``name``, ``response:
  {"output": <content text>}`` as the SDK documents). ``parallel_tool_calls: false`` has no Gemini knob and is
  refused.
* ``response_format``: ``json_object`` -> ``responseMimeType: application/json``; ``json_schema`` -> that and
  ``responseSchema``. We chose ``responseSchema`` (the OpenAPI subset) over ``responseJsonSchema``: the latter
  is reported to give degenerate JSON on ``batchGenerateContent``. JSON Schemas are converted: type names in
  capitals, ``["t", "null"]`` -> ``type`` + ``nullable``, ``additionalProperties: false`` and ``strict``
  dropped (Gemini emits only declared properties), ``propertyOrdering`` added in the schema's order (as the SDK
  does), any keyword Gemini's Schema lacks (``$ref``, ``oneOf``...) refused with its path.
* ``temperature`` (0-2), ``top_p``, ``stop`` -> ``stopSequences``, ``max_completion_tokens`` (else
  ``max_tokens``) -> ``maxOutputTokens``, ``n`` -> ``candidateCount``, ``seed``, ``presence_penalty``,
  ``frequency_penalty`` go into ``generationConfig``.
* Accepted only with their neutral value: ``stream``, ``logprobs``, ``top_logprobs``, ``logit_bias``,
  ``modalities``; accepted only as null as for Anthropic (``audio``, ``reasoning_effort``...); dropped because
  they change neither input nor sampling: ``user``, ``safety_identifier``, ``store``, ``metadata``,
  ``service_tier``, prompt-cache keys, ``stream_options``, ``prediction``.
* Embeddings: one input (a string, or a list of one string) -> ``content``, ``dimensions`` ->
  ``outputDimensionality``; ``encoding_format`` other than float is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from ..errors import UnsupportedFeatureError, ValidationError
from ..model import Usage
from .chat_input import (
    AnyMessage,
    AssistantMessage,
    ChatBody,
    ImagePart,
    JsonObjectFormat,
    JsonSchemaFormat,
    NamedToolChoice,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
    check_neutral,
    data_url,
    load_chat,
)
from .chat_input import body_error as _body_error

__all__ = [
    "GeminiUsage",
    "GenerateContentRequest",
    "embed_response_to_openai",
    "response_to_chat_completion",
    "to_embed_request",
    "to_generate_request",
    "translate_chat",
    "translate_embedding",
]

PROVIDER = "Gemini"
#: Fields of ChatBody that Gemini carries, though other translations take only their neutral value.
_CARRIED = frozenset({"n", "frequency_penalty", "presence_penalty"})
#: Gemini Schema keywords a JSON Schema may use as they are (besides type, properties, items, anyOf).
_SCHEMA_KEYS = frozenset({
    "format", "description", "nullable", "enum", "required", "minItems", "maxItems", "minimum", "maximum",
    "minLength", "maxLength", "pattern", "title", "propertyOrdering", "default", "minProperties",
    "maxProperties", "example",
})
_SCHEMA_DROPPED = frozenset({"strict", "$schema"})
_SCHEMA_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})


# --- Gemini request (output of the translation) ----------------------------------------------------------


class Blob(msgspec.Struct, rename="camel"):
    mime_type: str
    data: str


class FunctionCall(msgspec.Struct, omit_defaults=True):
    name: str
    args: dict[str, Any]
    id: str | UnsetType = UNSET


class FunctionResponse(msgspec.Struct, omit_defaults=True):
    name: str
    response: dict[str, Any]
    id: str | UnsetType = UNSET


class Part(msgspec.Struct, rename="camel", omit_defaults=True):
    text: str | UnsetType = UNSET
    inline_data: Blob | UnsetType = UNSET
    function_call: FunctionCall | UnsetType = UNSET
    function_response: FunctionResponse | UnsetType = UNSET


class Content(msgspec.Struct, omit_defaults=True):
    parts: list[Part]
    role: str | UnsetType = UNSET


class FunctionDeclaration(msgspec.Struct, omit_defaults=True):
    name: str
    description: str | UnsetType = UNSET
    parameters: dict[str, Any] | UnsetType = UNSET


class Tool(msgspec.Struct, rename="camel"):
    function_declarations: list[FunctionDeclaration]


class FunctionCallingConfig(msgspec.Struct, rename="camel", omit_defaults=True):
    mode: str
    allowed_function_names: list[str] | UnsetType = UNSET


class ToolConfig(msgspec.Struct, rename="camel"):
    function_calling_config: FunctionCallingConfig


class GenerationConfig(msgspec.Struct, rename="camel", omit_defaults=True):
    temperature: float | UnsetType = UNSET
    top_p: float | UnsetType = UNSET
    max_output_tokens: int | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    candidate_count: int | UnsetType = UNSET
    seed: int | UnsetType = UNSET
    presence_penalty: float | UnsetType = UNSET
    frequency_penalty: float | UnsetType = UNSET
    response_mime_type: str | UnsetType = UNSET
    response_schema: dict[str, Any] | UnsetType = UNSET


class GenerateContentRequest(msgspec.Struct, rename="camel", omit_defaults=True):
    """A REST ``GenerateContentRequest`` (camelCase, unset fields left out); the model is the batch's."""

    contents: list[Content]
    system_instruction: Content | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_config: ToolConfig | UnsetType = UNSET
    generation_config: GenerationConfig | UnsetType = UNSET


class EmbedContentRequest(msgspec.Struct, rename="camel", omit_defaults=True):
    content: Content
    output_dimensionality: int | UnsetType = UNSET


class _EmbeddingsBody(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    model: str
    input: str | list[str]
    dimensions: int | None = None
    encoding_format: str | None = None
    user: Any = None  # dropped


_embeddings_decoder = msgspec.json.Decoder(_EmbeddingsBody)


# --- chat -> GenerateContentRequest ----------------------------------------------------------------------


def to_generate_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion body as a Gemini ``GenerateContentRequest`` (plain JSON-ready dicts)."""
    request: dict[str, Any] = msgspec.to_builtins(translate_chat(body))
    return request


def translate_chat(body: Mapping[str, Any] | bytes) -> GenerateContentRequest:
    """Translate a chat body given as a mapping or as its JSON bytes."""
    chat = load_chat(body, PROVIDER)
    check_neutral(chat, PROVIDER, carried=_CARRIED)
    if chat.parallel_tool_calls is False and chat.tools:
        raise UnsupportedFeatureError("Gemini cannot be told to call one tool at a time",
                                      field="body.parallel_tool_calls")
    system, contents = _conversation(chat.messages)
    tools, tool_config = _tools(chat)
    return GenerateContentRequest(
        contents=contents,
        system_instruction=Content(parts=[Part(text=t) for t in system], role="user") if system else UNSET,
        tools=tools or UNSET,
        tool_config=tool_config or UNSET,
        generation_config=_generation_config(chat),
    )


def _given(value: Any) -> Any:
    return UNSET if value is None else value


def _generation_config(chat: ChatBody) -> GenerationConfig | UnsetType:
    stop = [chat.stop] if isinstance(chat.stop, str) else chat.stop
    response_format = chat.response_format
    mime: str | UnsetType = UNSET
    schema: dict[str, Any] | UnsetType = UNSET
    if isinstance(response_format, JsonObjectFormat | JsonSchemaFormat):
        mime = "application/json"
    if isinstance(response_format, JsonSchemaFormat):
        schema = gemini_schema(response_format.json_schema.schema, "body.response_format.json_schema.schema")
    config = GenerationConfig(
        temperature=_given(chat.temperature),
        top_p=_given(chat.top_p),
        max_output_tokens=_given(chat.max_completion_tokens or chat.max_tokens),
        stop_sequences=stop or UNSET,
        candidate_count=_given(chat.n),
        seed=chat.seed if isinstance(chat.seed, int) and not isinstance(chat.seed, bool) else UNSET,
        presence_penalty=_given(chat.presence_penalty),
        frequency_penalty=_given(chat.frequency_penalty),
        response_mime_type=mime,
        response_schema=schema,
    )
    return config if config != GenerationConfig() else UNSET


def _conversation(messages: Sequence[AnyMessage]) -> tuple[list[str], list[Content]]:
    """System texts, and the other messages as turns (same-role neighbours merged)."""
    system: list[str] = []
    turns: list[Content] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, for the function responses
    for i, message in enumerate(messages):
        if isinstance(message, SystemMessage):
            system += _texts(message.content)
            continue
        role, parts = _turn(message, i, call_names)
        if not parts:
            raise ValidationError("Gemini needs content in every message", field=f"body.messages[{i}].content")
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(Content(parts=parts, role=role))
    if not turns:
        raise ValidationError("at least one user or assistant message is needed", field="body.messages")
    return system, turns


def _texts(content: str | Sequence[TextPart] | None) -> list[str]:
    """The texts of a content; only empty strings are dropped (Gemini rejects an empty text part)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    return [part.text for part in content if part.text]


def _turn(message: AnyMessage, i: int, call_names: dict[str, str]) -> tuple[str, list[Part]]:
    if isinstance(message, UserMessage):
        if isinstance(message.content, str):
            return "user", [Part(text=t) for t in _texts(message.content)]
        parts: list[Part] = []
        for j, item in enumerate(message.content):
            if isinstance(item, ImagePart):
                parts.append(_image(item.image_url.url, f"body.messages[{i}].content[{j}].image_url.url"))
            elif item.text:
                parts.append(Part(text=item.text))
        return "user", parts
    if isinstance(message, AssistantMessage):
        parts = [Part(text=t) for t in _texts(message.content)]
        for j, call in enumerate(message.tool_calls or ()):
            at = f"body.messages[{i}].tool_calls[{j}].function.arguments"
            call_names[call.id] = call.function.name
            args = _arguments(call.function.arguments, at)
            parts.append(Part(function_call=FunctionCall(name=call.function.name, args=args, id=call.id)))
        return "model", parts
    assert isinstance(message, ToolMessage)
    name = call_names.get(message.tool_call_id)
    if name is None:
        raise ValidationError("no earlier assistant tool call has this id (Gemini needs the function's name)",
                              field=f"body.messages[{i}].tool_call_id")
    output = "".join(_texts(message.content))
    return "user", [Part(function_response=FunctionResponse(name=name, response={"output": output},
                                                            id=message.tool_call_id))]


def _arguments(text: str, at: str) -> dict[str, Any]:
    try:
        arguments = msgspec.json.decode(text or "{}")
    except msgspec.DecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise ValidationError("arguments must be a JSON object", field=at)
    return arguments


def _image(url: str, at: str) -> Part:
    inline = data_url(url, at, PROVIDER)
    if inline is None:
        raise UnsupportedFeatureError("Gemini batch requests take images as base64 data URLs, not URLs", field=at)
    return Part(inline_data=Blob(mime_type=inline[0], data=inline[1]))


def _tools(chat: ChatBody) -> tuple[list[Tool], ToolConfig | None]:
    declarations = [
        FunctionDeclaration(
            name=tool.function.name,
            description=_given(tool.function.description),
            parameters=gemini_schema(tool.function.parameters, f"body.tools[{i}].function.parameters")
            if tool.function.parameters else UNSET,
        )
        for i, tool in enumerate(chat.tools or ())
    ]
    choice = chat.tool_choice
    if choice is None or (not declarations and choice in ("auto", "none")):
        config = None  # OpenAI ignores them without tools
    elif not declarations:
        raise ValidationError("tool_choice needs tools", field="body.tool_choice")
    elif isinstance(choice, NamedToolChoice):
        if choice.function.name not in {d.name for d in declarations}:
            raise ValidationError("tool_choice names a tool that is not in tools",
                                  field="body.tool_choice.function.name")
        config = FunctionCallingConfig(mode="ANY", allowed_function_names=[choice.function.name])
    else:
        config = FunctionCallingConfig(mode={"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice])
    tools = [Tool(function_declarations=declarations)] if declarations else []
    return tools, ToolConfig(function_calling_config=config) if config else None


def gemini_schema(node: Any, at: str) -> dict[str, Any]:
    """A JSON Schema as Gemini's ``Schema`` (see the module docstring); refuses what it cannot carry."""
    if not isinstance(node, dict):
        raise ValidationError("a schema must be a JSON object", field=at)
    out: dict[str, Any] = {}
    for key, value in node.items():
        where = f"{at}.{key}"
        if key == "type":
            kinds = value if isinstance(value, list) else [value]
            named = [k for k in kinds if k != "null"]
            if len(named) != 1 or named[0] not in _SCHEMA_TYPES:
                raise UnsupportedFeatureError(f"type {value!r} cannot be expressed for Gemini (use anyOf)",
                                              field=where)
            out["type"] = named[0].upper()
            if "null" in kinds:
                out["nullable"] = True
        elif key == "properties":
            if not isinstance(value, dict):
                raise ValidationError("properties must be an object", field=where)
            out[key] = {name: gemini_schema(sub, f"{where}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = gemini_schema(value, where)
        elif key == "anyOf":
            if not isinstance(value, list):
                raise ValidationError("anyOf must be a list", field=where)
            out[key] = [gemini_schema(sub, f"{where}[{k}]") for k, sub in enumerate(value)]
        elif (key == "additionalProperties" and value is False) or key in _SCHEMA_DROPPED:
            continue
        elif key in _SCHEMA_KEYS:
            out[key] = value
        else:
            raise UnsupportedFeatureError(f"the JSON Schema keyword {key!r} has no Gemini equivalent", field=where)
    properties = out.get("properties")
    if properties and len(properties) > 1 and "propertyOrdering" not in out:
        out["propertyOrdering"] = list(properties)  # the schema's order, as the SDK asks for it
    return out


def body_error(text: str) -> ValidationError:
    """msgspec's error about a body as our error (see :func:`.chat_input.body_error`)."""
    return _body_error(text, PROVIDER)


# --- embeddings ------------------------------------------------------------------------------------------


def to_embed_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI embeddings body as a Gemini ``EmbedContentRequest`` (plain JSON-ready dicts)."""
    request: dict[str, Any] = msgspec.to_builtins(translate_embedding(body))
    return request


def translate_embedding(body: Mapping[str, Any] | bytes) -> EmbedContentRequest:
    try:
        parsed = _embeddings_decoder.decode(body) if isinstance(body, bytes) else msgspec.convert(
            dict(body), _EmbeddingsBody)
    except msgspec.ValidationError as exc:
        raise body_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"not valid JSON: {exc}", field="body") from None
    inputs = [parsed.input] if isinstance(parsed.input, str) else parsed.input
    if len(inputs) != 1:
        raise UnsupportedFeatureError("a Gemini batch embeds one input per request; send one line per input",
                                      field="body.input")
    if parsed.encoding_format not in (None, "float"):
        raise UnsupportedFeatureError("Gemini returns float embeddings only", field="body.encoding_format")
    return EmbedContentRequest(content=Content(parts=[Part(text=inputs[0])], role="user"),
                               output_dimensionality=_given(parsed.dimensions))


# --- Gemini responses -> OpenAI bodies --------------------------------------------------------------------


class GeminiUsage(msgspec.Struct, rename="camel", gc=False):
    """``usageMetadata``: thinking tokens are billed as output, as OpenAI counts reasoning tokens."""

    prompt_token_count: int = 0
    candidates_token_count: int = 0
    thoughts_token_count: int = 0
    cached_content_token_count: int = 0

    @property
    def output_tokens(self) -> int:
        return self.candidates_token_count + self.thoughts_token_count

    def normalise(self) -> Usage:
        return Usage(input_tokens=self.prompt_token_count, output_tokens=self.output_tokens,
                     cached_input_tokens=self.cached_content_token_count)


class _OutFunctionCall(msgspec.Struct):
    name: str = ""
    args: Any = None
    id: str | None = None


class _OutPart(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool = False
    function_call: _OutFunctionCall | None = None


class _OutContent(msgspec.Struct):
    parts: list[_OutPart] = msgspec.field(default_factory=list)


class _Candidate(msgspec.Struct, rename="camel"):
    content: _OutContent = msgspec.field(default_factory=_OutContent)
    finish_reason: str | None = None
    index: int = 0


class _GenerateContentResponse(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] = msgspec.field(default_factory=list)
    usage_metadata: GeminiUsage = msgspec.field(default_factory=GeminiUsage)
    model_version: str = ""
    response_id: str = ""


_FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def response_to_chat_completion(response: Mapping[str, Any], *, created: int = 0) -> dict[str, Any]:
    """A Gemini ``GenerateContentResponse`` as an OpenAI ``chat.completion`` body (one choice per candidate).

    Text parts (thoughts left out) are joined into ``content``; ``functionCall`` parts become ``tool_calls``
    (their id, else ``call_<candidate>_<n>``); usage counts thinking tokens as completion tokens.
    """
    try:
        parsed = msgspec.convert(dict(response), _GenerateContentResponse)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"not a Gemini GenerateContentResponse: {exc}", field="response") from None
    choices = []
    for number, candidate in enumerate(parsed.candidates):
        parts = candidate.content.parts
        text = "".join(p.text for p in parts if p.text is not None and not p.thought)
        calls = [
            {"id": p.function_call.id or f"call_{number}_{k}", "type": "function",
             "function": {"name": p.function_call.name,
                          "arguments": msgspec.json.encode(p.function_call.args or {}).decode()}}
            for k, p in enumerate(parts) if p.function_call is not None
        ]
        message: dict[str, Any] = {"role": "assistant", "content": text or None, "refusal": None}
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls else _FINISH_REASONS.get(candidate.finish_reason or "STOP", "stop")
        choices.append({"index": candidate.index, "message": message, "finish_reason": finish, "logprobs": None})
    usage = parsed.usage_metadata
    return {
        "id": parsed.response_id or "gemini-response",
        "object": "chat.completion",
        "created": created,
        "model": parsed.model_version,
        "choices": choices,
        "usage": {
            "prompt_tokens": usage.prompt_token_count,
            "completion_tokens": usage.output_tokens,
            "total_tokens": usage.prompt_token_count + usage.output_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_content_token_count},
            "completion_tokens_details": {"reasoning_tokens": usage.thoughts_token_count},
        },
    }


def embed_response_to_openai(response: Mapping[str, Any], *, model: str = "") -> dict[str, Any]:
    """A Gemini ``EmbedContentResponse`` (``{"embedding": {"values": [...]}}``) as an OpenAI embeddings body."""
    embedding = response.get("embedding")
    values = embedding.get("values") if isinstance(embedding, dict) else None
    if not isinstance(values, list):
        raise ValidationError("not a Gemini EmbedContentResponse", field="response.embedding.values")
    return {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": values}], "model": model,
            "usage": {"prompt_tokens": 0, "total_tokens": 0}}
