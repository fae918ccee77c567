"""asyncbatch: an async-first SDK for LLM provider batch APIs, with a durable SQLite job store."""

from typing import TYPE_CHECKING, Any

from .errors import (
    AsyncBatchError,
    AuthenticationError,
    BadRequestError,
    ConnectionFailedError,
    DuplicateCustomIdError,
    JobNotFoundError,
    JSONLError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    SchemaVersionError,
    StoreError,
    TransientError,
    UnsupportedFeatureError,
    ValidationError,
)
from .model import (
    BatchStatus,
    ErrorInfo,
    Job,
    JobStatus,
    Outcome,
    Request,
    RequestCounts,
    RequestState,
    Result,
    ShardPhase,
    Usage,
)

if TYPE_CHECKING:
    from .manager import BatchManager
    from .providers import create_provider
    from .providers.anthropic import AnthropicProvider
    from .providers.base import Provider, ShardLimits
    from .providers.openai import AzureOpenAIProvider, OpenAIProvider
    from .retry import RetryStrategy
    from .store import SQLiteStore

__version__ = "0.1.0"

# Heavy parts (aiohttp, aiosqlite) load on first use, so that `asyncbatch --help` stays fast.
_LAZY = {
    "BatchManager": "asyncbatch.manager",
    "create_provider": "asyncbatch.providers",
    "Provider": "asyncbatch.providers.base",
    "ShardLimits": "asyncbatch.providers.base",
    "OpenAIProvider": "asyncbatch.providers.openai",
    "AzureOpenAIProvider": "asyncbatch.providers.openai",
    "AnthropicProvider": "asyncbatch.providers.anthropic",
    "RetryStrategy": "asyncbatch.retry",
    "SQLiteStore": "asyncbatch.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'asyncbatch' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "AnthropicProvider",
    "AsyncBatchError",
    "AuthenticationError",
    "AzureOpenAIProvider",
    "BadRequestError",
    "BatchManager",
    "BatchStatus",
    "ConnectionFailedError",
    "DuplicateCustomIdError",
    "ErrorInfo",
    "JSONLError",
    "Job",
    "JobNotFoundError",
    "JobStatus",
    "NotFoundError",
    "OpenAIProvider",
    "Outcome",
    "Provider",
    "ProviderError",
    "RateLimitedError",
    "Request",
    "RequestCounts",
    "RequestState",
    "Result",
    "RetryStrategy",
    "SQLiteStore",
    "SchemaVersionError",
    "ShardLimits",
    "ShardPhase",
    "StoreError",
    "TransientError",
    "UnsupportedFeatureError",
    "Usage",
    "ValidationError",
    "__version__",
    "create_provider",
]
