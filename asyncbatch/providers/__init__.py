"""Provider adapters: one request format in, any provider's batch API out.

``create_provider(name, ...)`` builds one by name, which is how a job found in the store gets its provider
back after a restart (the store records the name and base URL, never the key: that comes from the
environment). Adapters are imported lazily to keep the command line fast.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, NamedTuple

from .base import BatchError, Provider, RemoteBatch, ResultLine, ShardLimits

_GROQ = {
    "name": "groq",
    "completion_windows": ("24h", "48h", "72h", "7d"),
    "endpoints": ("/v1/chat/completions", "/v1/audio/transcriptions", "/v1/audio/translations"),
}
_TOGETHER = {
    "name": "together",
    "file_purpose": "batch-api",
    "endpoints": ("/v1/chat/completions", "/v1/completions"),
    "limits": ShardLimits(max_requests=50_000, max_bytes=98 * 1024 * 1024),
}


class _Entry(NamedTuple):
    module: str
    cls: str
    defaults: dict[str, Any]
    base_url: str | None = None  # default base URL (before the environment is asked)
    key_env: str | None = None  # environment variable of the key, where it is not the class's own


_REGISTRY: dict[str, _Entry] = {
    "openai": _Entry("asyncbatch.providers.openai", "OpenAIProvider", {}),
    "azure": _Entry("asyncbatch.providers.openai", "AzureOpenAIProvider", {}),
    "anthropic": _Entry("asyncbatch.providers.anthropic", "AnthropicProvider", {}),
    "gemini": _Entry("asyncbatch.providers.gemini", "GeminiProvider", {}),
    "mistral": _Entry("asyncbatch.providers.mistral", "MistralProvider", {}),
    "groq": _Entry("asyncbatch.providers.openai", "OpenAIProvider", _GROQ, "https://api.groq.com/openai/v1",
                   "GROQ_API_KEY"),
    "together": _Entry("asyncbatch.providers.openai", "OpenAIProvider", _TOGETHER, "https://api.together.xyz/v1",
                       "TOGETHER_API_KEY"),
}

PROVIDER_NAMES = tuple(_REGISTRY)


def create_provider(name: str, *, base_url: str | None = None, api_key: str | None = None, **options: Any) -> Provider:
    """A provider by name; the key comes from ``api_key`` or the provider's usual environment variable."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}") from None
    if entry.key_env is not None:
        api_key = api_key or os.environ.get(entry.key_env)
    merged = {**entry.defaults, **options}
    if isinstance(merged.get("limits"), dict):  # as recorded with a job
        merged["limits"] = ShardLimits(**merged["limits"])
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    provider: Provider = cls(api_key=api_key, base_url=base_url or entry.base_url, **merged)
    return provider


__all__ = ["PROVIDER_NAMES", "BatchError", "Provider", "RemoteBatch", "ResultLine", "ShardLimits", "create_provider"]
