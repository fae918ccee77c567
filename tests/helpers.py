"""Helpers shared by the tests: request lines and JSONL files."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

API_KEY = "sk-test-0123456789abcdefSECRET"


def chat_line(custom_id: str, text: str = "hello", *, model: str = "gpt-5.4-mini", **body: Any) -> dict[str, Any]:
    """One OpenAI batch input line for /v1/chat/completions."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def write_jsonl(path: Path, lines: Iterable[Mapping[str, Any] | str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")
    return path
