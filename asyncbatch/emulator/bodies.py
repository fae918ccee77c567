"""Deterministic, plausible response bodies, and the per-request checks a real endpoint would make.

Bodies are the providers' own schemas (checked against the official SDKs' models in the tests), handed out
encoded with the tokens they bill (``Body``): the chat completion and the Anthropic message, one per request of
nearly every batch, are filled into templates of their JSON; the rarer ones are built as dicts. Replies depend
only on the request, token counts on text length (about 4 chars a token).
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import msgspec

from ..model import Outcome
from .ids import random_hex, random_hex_bytes
from .outcomes import Decision


class Body(NamedTuple):
    """A success body as sent (JSON), and the tokens it bills."""

    raw: bytes
    input_tokens: int
    output_tokens: int


_encode = msgspec.json.encode
_NOT_TEXT = frozenset({"role", "type", "name", "id", "tool_call_id", "url", "detail", "media_type", "data",
                       "image_url", "file_id", "cache_control"})
_MODERATION_CATEGORIES = (
    "harassment", "harassment/threatening", "hate", "hate/threatening", "illicit", "illicit/violent",
    "self-harm", "self-harm/instructions", "self-harm/intent", "sexual", "sexual/minors", "violence",
    "violence/graphic",
)
_ANTHROPIC_NOT_IN_BATCH = ("speed", "store", "previous_thread_event_id", "cache_hint", "context_hint",
                           "research_preview_2026_02")


def texts(value: Any) -> Iterator[str]:
    """Every text string in a prompt structure (message contents, inputs), skipping roles, ids, images."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from texts(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in _NOT_TEXT:
                yield from texts(item)


def _texts_of(value: Any) -> list[str]:
    """``list(texts(value))``, without a generator per message in the common case: a list of messages whose
    only text is a string ``content`` (what nearly every chat request is), or a string (a system prompt)."""
    if type(value) is not list:
        return [value] if type(value) is str else list(texts(value))
    found: list[str] = []
    for item in value:
        content = item.get("content") if type(item) is dict else None
        if type(content) is str and len(item) == 2 and "role" in item:
            found.append(content)
        else:
            found.extend(texts(item))
    return found


def tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))


def _prompt(body: dict[str, Any], *keys: str) -> list[str]:
    if len(keys) == 1:
        return _texts_of(body.get(keys[0]))
    return [t for key in keys for t in _texts_of(body.get(key))]


def _answer(model: str, prompt: list[str], limit: Any) -> tuple[str, int, bool, int]:
    """(text, tokens, truncated, prompt tokens) of the emulated answer to ``prompt``; ``limit`` is the request's
    max-tokens value."""
    last = prompt[-1].strip() if prompt else ""
    snippet = last if len(last) <= 60 else last[:57] + "..."
    text = f"Emulated reply from {model} to: {snippet}"
    count = max(1, -(-len(text) // 4))
    used = max(1, -(-sum(map(len, prompt)) // 4))  # tokens("".join(prompt)), without joining
    if isinstance(limit, int) and 0 < limit < count:
        return text[: limit * 4], limit, True, used
    return text, count, False, used


def _rid(prefix: str, rid: bytes) -> str:
    return prefix + rid.decode()


# --- OpenAI ----------------------------------------------------------------------------------------------


def _invalid(message: str, param: str | None = None) -> Decision:
    return Decision(Outcome.ERRORED, 400, message, param)


_REQUIRED = {
    "/v1/chat/completions": "messages",
    "/v1/embeddings": "input",
    "/v1/completions": "prompt",
    "/v1/moderations": "input",
    "/v1/images/generations": "prompt",
    "/v1/images/edits": "prompt",
    "/v1/videos": "prompt",
}


def check_openai(url: str, body: dict[str, Any]) -> Decision | None:
    """The 400 a real endpoint would give this body, or None when it would run it."""
    if body.get("stream") is True:
        return _invalid("Streaming is not supported in the Batch API.", "stream")
    if not isinstance(body.get("model"), str):
        return _invalid("You must provide a model parameter.", "model")
    required = _REQUIRED.get(url)
    if required is not None and not body.get(required):
        return _invalid(f"Missing required parameter: '{required}'.", required)
    return None


# The body every chat request gets, filled in by bytes formatting: building it as nested dicts and encoding
# them was most of the emulator's time per request. The same fields, in the same order, as the API sends.
_CHAT = (
    b'{"id":"chatcmpl-%s","object":"chat.completion","created":%d,"model":%s,"choices":[{"index":0,'
    b'"message":{"role":"assistant","content":%s,"refusal":null,"annotations":[]},"logprobs":null,'
    b'"finish_reason":"%s"}],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,'
    b'"prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,'
    b'"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_%s"}'
)
_FINGERPRINTS: dict[str, bytes] = {}


def _fingerprint(model: str) -> bytes:
    """The ``system_fingerprint`` of a model's answers: the same for every answer of one model, as the API's
    is while a deployment lasts."""
    found = _FINGERPRINTS.get(model)
    if found is None:
        found = _FINGERPRINTS[model] = hashlib.blake2b(model.encode(), digest_size=5).hexdigest().encode()
    return found


def _chat(body: dict[str, Any], created: int, rid: bytes) -> Body:
    model = body["model"]
    prompt = _texts_of(body.get("messages"))
    text, out, cut, used = _answer(model, prompt, body.get("max_completion_tokens", body.get("max_tokens")))
    raw = _CHAT % (rid[:29], created, _encode(model), _encode(text), b"length" if cut else b"stop",
                   used, out, used + out, _fingerprint(model))
    return Body(raw, used, out)


def _vector(text: str, dims: int) -> list[float]:
    digest = hashlib.shake_256(text.encode()).digest(4 * dims)
    raw = [b / 255.0 - 0.5 for b in digest[:dims]]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def _embeddings(body: dict[str, Any], created: int, rid: bytes) -> dict[str, Any]:
    inputs = body["input"]
    items = [inputs] if isinstance(inputs, str) or (inputs and isinstance(inputs[0], int)) else list(inputs)
    dims = body.get("dimensions")
    dims = dims if isinstance(dims, int) else 8
    data = []
    for index, item in enumerate(items):
        vector = _vector(str(item), max(1, min(dims, 3072)))
        encoded: object = vector
        if body.get("encoding_format") == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    used = sum(tokens(str(item)) for item in items)
    return {"object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": used, "total_tokens": used}}


def _responses(body: dict[str, Any], created: int, rid: bytes) -> dict[str, Any]:
    model = body["model"]
    prompt = _prompt(body, "instructions", "input")
    text, out, cut, used = _answer(model, prompt, body.get("max_output_tokens"))
    return {
        "id": _rid("resp_", rid),
        "object": "response",
        "created_at": created,
        "status": "incomplete" if cut else "completed",
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "error": None,
        "model": model,
        "instructions": body.get("instructions"),
        "output": [{
            "type": "message",
            "id": "msg_" + random_hex(12),
            "status": "incomplete" if cut else "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "temperature": body.get("temperature", 1.0),
        "top_p": body.get("top_p", 1.0),
        "metadata": body.get("metadata") or {},
        "usage": {
            "input_tokens": used,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": used + out,
        },
    }


def _completions(body: dict[str, Any], created: int, rid: bytes) -> dict[str, Any]:
    model = body["model"]
    prompt = _prompt(body, "prompt")
    text, out, cut, used = _answer(model, prompt, body.get("max_tokens", 16))
    return {
        "id": _rid("cmpl-", rid),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": "length" if cut else "stop"}],
        "usage": {"prompt_tokens": used, "completion_tokens": out, "total_tokens": used + out},
    }


def _moderations(body: dict[str, Any], created: int, rid: bytes) -> dict[str, Any]:
    inputs = body["input"]
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    results = []
    for item in items:
        flagged = "[[flag]]" in "".join(texts(item))
        results.append({
            "flagged": flagged,
            "categories": {c: flagged and c == "violence" for c in _MODERATION_CATEGORIES},
            "category_scores": {c: 0.9 if flagged and c == "violence" else 0.0001 for c in _MODERATION_CATEGORIES},
            "category_applied_input_types": {c: ["text"] for c in _MODERATION_CATEGORIES},
        })
    return {"id": _rid("modr-", rid), "model": body["model"], "results": results}


def _images(body: dict[str, Any], created: int, rid: bytes) -> dict[str, Any]:
    # A 1x1 transparent PNG: enough for a client to decode, small enough to keep output files small.
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
    count = body.get("n")
    count = count if isinstance(count, int) else 1
    used = tokens(str(body.get("prompt", "")))
    return {"created": created, "data": [{"b64_json": png} for _ in range(count)],
            "usage": {"input_tokens": used, "output_tokens": 0, "total_tokens": used,
                      "input_tokens_details": {"text_tokens": used, "image_tokens": 0}}}


def _videos(body: dict[str, Any], created: int, rid: bytes) -> dict[str, Any]:
    return {"id": _rid("video_", rid), "object": "video", "model": body["model"], "status": "completed",
            "progress": 100, "created_at": created, "completed_at": created, "seconds": "4", "size": "720x1280"}


_OPENAI_BODIES: dict[str, Callable[[dict[str, Any], int, bytes], dict[str, Any] | Body]] = {
    "/v1/chat/completions": _chat,
    "/v1/embeddings": _embeddings,
    "/v1/responses": _responses,
    "/v1/completions": _completions,
    "/v1/moderations": _moderations,
    "/v1/images/generations": _images,
    "/v1/images/edits": _images,
    "/v1/videos": _videos,
}
OPENAI_ENDPOINTS = tuple(_OPENAI_BODIES)


def openai_body(url: str, body: dict[str, Any], rid: bytes) -> Body:
    """The success body of ``url`` for a request ``body`` that passed ``check_openai``, encoded; ``rid`` is the
    hex of its id (drawn with the ids of its result line: one draw per request)."""
    made = _OPENAI_BODIES[url](body, int(time.time()), rid)
    if isinstance(made, Body):
        return made
    usage = made.get("usage") or {}
    return Body(_encode(made), usage.get("prompt_tokens", usage.get("input_tokens", 0)),
                usage.get("completion_tokens", usage.get("output_tokens", 0)))


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """What a request enqueues against ``token_limit``: its prompt text, about 4 chars a token."""
    return tokens("".join(_prompt(body, "messages", "input", "prompt", "instructions")))


# --- Anthropic -------------------------------------------------------------------------------------------


def check_anthropic(params: dict[str, Any]) -> Decision | None:
    """The asynchronous 400 a real batch would report as ``errored`` for these params, if any.

    The synchronous checks (model, messages, max_tokens) were made at create.
    """
    if params.get("stream") is True:
        return _invalid("stream: streaming is not supported in Message Batches")
    for key in _ANTHROPIC_NOT_IN_BATCH:
        if key in params:
            return _invalid(f"{key}: not supported in Message Batches")
    for index, message in enumerate(params["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return _invalid(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if not message.get("content"):
            return _invalid(f"messages.{index}.content: messages must have non-empty content")
    temperature = params.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and 0 <= temperature <= 1):
        return _invalid("temperature: Input should be less than or equal to 1")
    return None


_MESSAGE = (
    b'{"id":"msg_01%s","type":"message","role":"assistant","model":%s,"content":[{"type":"text","text":%s,'
    b'"citations":null}],"stop_reason":"%s","stop_sequence":null,"usage":{"input_tokens":%d,"output_tokens":%d,'
    b'"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"service_tier":"batch"}}'
)


def anthropic_message(params: dict[str, Any]) -> Body:
    """A Message (``usage.service_tier: "batch"``) answering ``params``, encoded (see ``_CHAT``)."""
    model = params["model"]
    prompt = _prompt(params, "system", "messages")
    text, out, cut, used = _answer(model, prompt, params["max_tokens"])
    raw = _MESSAGE % (random_hex_bytes(11), _encode(model), _encode(text), b"max_tokens" if cut else b"end_turn",
                      used, out)
    return Body(raw, used, out)


# --- Gemini ----------------------------------------------------------------------------------------------


def _camel(obj: Any, name: str) -> Any:
    """A request field by its camelCase name or its snake_case one."""
    if not isinstance(obj, dict):
        return None
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name)
    return obj.get(name, obj.get(snake))


def check_gemini(request: dict[str, Any], *, embed: bool) -> Decision | None:
    """The error a real batch would report for this request, if any."""
    if embed:
        content = _camel(request, "content")
        if not isinstance(content, dict) or not content.get("parts"):
            return _invalid("* EmbedContentRequest.content: contents is not specified")
        return None
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        return _invalid("* GenerateContentRequest.contents: contents is not specified")
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or not content.get("parts"):
            return _invalid(f"* GenerateContentRequest.contents[{index}].parts: contents.parts must not be empty.")
        if content.get("role", "user") not in ("user", "model"):
            return _invalid(f"* GenerateContentRequest.contents[{index}].role: Please use a valid role: user, model.")
    return None


def gemini_response(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """A ``GenerateContentResponse`` answering ``request`` (one candidate per ``candidateCount``)."""
    prompt = [t for key in ("systemInstruction", "system_instruction", "contents") for t in texts(request.get(key))]
    config = _camel(request, "generationConfig") or {}
    text, out, cut, used = _answer(model, prompt, _camel(config, "maxOutputTokens"))
    count = _camel(config, "candidateCount")
    count = count if isinstance(count, int) and count > 0 else 1
    candidates = [{"content": {"parts": [{"text": text}], "role": "model"},
                   "finishReason": "MAX_TOKENS" if cut else "STOP", "index": i} for i in range(count)]
    return {
        "candidates": candidates,
        "usageMetadata": {"promptTokenCount": used, "candidatesTokenCount": out * count,
                          "totalTokenCount": used + out * count},
        "modelVersion": model,
        "responseId": secrets.token_urlsafe(16),
    }


def gemini_embedding(request: dict[str, Any]) -> dict[str, Any]:
    """An ``EmbedContentResponse`` for ``request``."""
    dims = _camel(request, "outputDimensionality")
    dims = dims if isinstance(dims, int) and dims > 0 else 8
    return {"embedding": {"values": _vector("".join(texts(_camel(request, "content"))), min(dims, 3072))}}
