"""Provider adapters: one request format in, any provider's batch API out.

``create_provider(name, ...)`` builds one by name, which is how a job found in the store gets its provider
back after a restart (the store records the name and base URL, never the key: that comes from the
provider's own environment variable, never another provider's). Adapters are imported lazily to keep the
command line fast.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, NamedTuple

from ..errors import UnknownProviderError
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


_REGISTRY: dict[str, _Entry] = {
    "openai": _Entry("asyncbatch.providers.openai", "OpenAIProvider", {}),
    "azure": _Entry("asyncbatch.providers.openai", "AzureOpenAIProvider", {}),
    "anthropic": _Entry("asyncbatch.providers.anthropic", "AnthropicProvider", {}),
    # OpenAI-protocol hosts: their key and base-URL variables are the class's HOSTS entry for their name
    "groq": _Entry("asyncbatch.providers.openai", "OpenAIProvider", _GROQ),
    "together": _Entry("asyncbatch.providers.openai", "OpenAIProvider", _TOGETHER),
    "gemini": _Entry("asyncbatch.providers.gemini", "GeminiProvider", {}),
    "mistral": _Entry("asyncbatch.providers.mistral", "MistralProvider", {}),
}

PROVIDER_NAMES = tuple(_REGISTRY)


def create_provider(
    name: str, *, base_url: str | None = None, api_key: str | None = None, key_env: str | None = None, **options: Any
) -> Provider:
    """A provider by name; the key comes from ``api_key``, else the variable ``key_env`` when one is named (the
    job recorded it), else that provider's own environment variable, never another provider's."""
    try:
        entry = _REGISTRY[name]
    except KeyError:
        raise UnknownProviderError(f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}",
                                   field="provider") from None
    if key_env is not None:
        api_key = api_key or os.environ.get(key_env)
    merged = {**entry.defaults, **options}
    if isinstance(merged.get("limits"), dict):  # as recorded with a job
        merged["limits"] = ShardLimits(**merged["limits"])
    cls = getattr(importlib.import_module(entry.module), entry.cls)
    provider: Provider = cls(api_key=api_key, base_url=base_url, **merged)
    if key_env is not None:
        provider.api_key_env = key_env  # what a missing-key error names
    return provider


__all__ = ["PROVIDER_NAMES", "BatchError", "Provider", "RemoteBatch", "ResultLine", "ShardLimits", "create_provider"]
