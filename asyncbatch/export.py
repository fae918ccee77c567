"""Results as OpenAI batch output JSONL, whatever the provider: one line per custom_id (or attempt)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from .jsonl import SpoolWriter
from .model import Result

if TYPE_CHECKING:
    from .manager import BatchManager

Format = Literal["native", "openai"]


class _Response(msgspec.Struct):
    status_code: int
    request_id: str | None
    body: Any


class _Error(msgspec.Struct):
    code: str
    message: str


class OutputLine(msgspec.Struct):
    """OpenAI's batch output line: ``response`` for anything that got an HTTP answer, else ``error``."""

    id: str
    custom_id: str
    response: _Response | None
    error: _Error | None


#: Providers whose native bodies differ from OpenAI's (Mistral's are OpenAI-shaped already).
TRANSLATED = frozenset({"anthropic", "gemini"})


def output_line(result: Result, *, fmt: Format = "native") -> OutputLine:
    body = result.body
    if fmt == "openai" and result.provider in TRANSLATED and isinstance(body, dict):
        body = _as_openai(result.provider, body, result.model)
    line_id = result.request_id or f"{result.batch_id or 'local'}-{result.custom_id}"
    if result.status_code is not None:
        response = _Response(status_code=result.status_code, request_id=result.request_id, body=body)
        return OutputLine(id=line_id, custom_id=result.custom_id, response=response, error=None)
    error = result.error
    return OutputLine(
        id=line_id, custom_id=result.custom_id, response=None,
        error=_Error(code=error.code if error else "unknown", message=error.message if error else ""),
    )


def _as_openai(provider: str, body: dict[str, Any], model: str | None) -> dict[str, Any]:
    """An Anthropic Message, or a Gemini response, as the OpenAI body it answers; other bodies (errors) as
    they are."""
    if provider == "anthropic" and body.get("type") == "message":
        from .providers.anthropic_translate import message_to_chat_completion

        return message_to_chat_completion(body)
    if provider == "gemini" and "candidates" in body:
        from .providers.gemini_translate import response_to_chat_completion

        return response_to_chat_completion(body)
    if provider == "gemini" and "embedding" in body:
        from .providers.gemini_translate import embed_response_to_openai

        return embed_response_to_openai(body, model=model or "")
    return body


async def write_results(
    manager: BatchManager,
    job_id: str,
    path: str | os.PathLike[str],
    *,
    fmt: Format = "native",
    all_attempts: bool = False,
) -> int:
    """Write the job's results to ``path`` (atomically, streamed); returns the number of lines.

    Bodies are spliced in as stored (no decode and re-encode) unless they are translated (Anthropic messages
    and Gemini responses as OpenAI chat completions or embeddings).
    """
    encoder = msgspec.json.Encoder()
    count = 0
    translate = fmt == "openai" and (await manager.status(job_id)).provider in TRANSLATED
    async with SpoolWriter(Path(path)) as writer:
        chunk: list[bytes] = []
        async for result in manager.results(job_id, all_attempts=all_attempts, raw_bodies=not translate):
            chunk.append(encoder.encode(output_line(result, fmt=fmt)))
            count += 1
            if len(chunk) >= 2000:
                await writer.write(chunk)
                chunk = []
        if chunk:
            await writer.write(chunk)
    return count
