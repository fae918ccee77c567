"""Provider adapters: one request format in, any provider's batch API out.

``create_provider(name, ...)`` builds one by name, which is how a job found in the store gets its provider
back after a restart (the store records the name and base URL, never the key: that comes from the
environment). Adapters are imported lazily to keep the command line fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import BatchError, Provider, RemoteBatch, ResultLine, ShardLimits

_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "openai": ("asyncbatch.providers.openai", "OpenAIProvider", {}),
    "azure": ("asyncbatch.providers.openai", "AzureOpenAIProvider", {}),
    "anthropic": ("asyncbatch.providers.anthropic", "AnthropicProvider", {}),
}

PROVIDER_NAMES = tuple(_REGISTRY)


def create_provider(name: str, *, base_url: str | None = None, api_key: str | None = None, **options: Any) -> Provider:
    """A provider by name; the key comes from ``api_key`` or the provider's usual environment variable."""
    try:
        module_name, class_name, defaults = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}; known: {', '.join(PROVIDER_NAMES)}") from None
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: Provider = cls(api_key=api_key, base_url=base_url, **{**defaults, **options})
    return provider


__all__ = ["PROVIDER_NAMES", "BatchError", "Provider", "RemoteBatch", "ResultLine", "ShardLimits", "create_provider"]
