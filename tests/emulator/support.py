"""Helpers for the emulator tests: input lines, uploads, and strict checks against the SDKs' models."""

from __future__ import annotations

import json
from typing import Any, TypeVar, cast

from anthropic.types.messages.batch_create_params import Request
from openai import AsyncOpenAI
from openai.types import FileObject
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


def chat_line(custom_id: str, text: str = "hello", *, model: str = "gpt-5.4-mini", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], **extra}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


def anthropic_item(custom_id: str, text: str = "Is 7 prime?", **params: Any) -> Request:
    """One ``{custom_id, params}`` request of a Message Batch (``params`` may break the rules on purpose)."""
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": text}]}
    return cast(Request, {"custom_id": custom_id, "params": {**body, **params}})


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


async def upload(client: AsyncOpenAI, lines: list[dict[str, Any]] | bytes, name: str = "input.jsonl") -> FileObject:
    data = lines if isinstance(lines, bytes) else jsonl(lines)
    return await client.files.create(file=(name, data), purpose="batch")


def conform(model: type[M], raw: bytes | str) -> M:
    """Validate raw JSON against an official SDK model in strict mode (the SDKs' own parsing is lenient)."""
    return model.model_validate_json(raw, strict=True)


def parse_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]
