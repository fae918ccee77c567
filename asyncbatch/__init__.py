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
    QuotaExceededError,
    RateLimitedError,
    SchemaVersionError,
    StoreError,
    TransientError,
    UnsupportedFeatureError,
    ValidationError,
    WebhookError,
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
    from .cost import CostReport
    from .litellm import (
        abatch_completion,
        abatch_completion_cancel,
        abatch_completion_cost,
        abatch_completion_create,
        abatch_completion_list,
        abatch_completion_results,
        abatch_completion_retrieve,
        acancel_batch,
        acreate_batch,
        acreate_file,
        afile_content,
        alist_batches,
        aretrieve_batch,
        batch_completion,
        batch_completion_cancel,
        batch_completion_cost,
        batch_completion_create,
        batch_completion_list,
        batch_completion_results,
        batch_completion_retrieve,
        cancel_batch,
        configure,
        create_batch,
        create_file,
        file_content,
        list_batches,
        retrieve_batch,
    )
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
    "CostReport": "asyncbatch.cost",
    # LiteLLM-style helpers: code written for LiteLLM's batch API runs with `import asyncbatch as litellm`
    "abatch_completion": "asyncbatch.litellm",
    "abatch_completion_cancel": "asyncbatch.litellm",
    "abatch_completion_cost": "asyncbatch.litellm",
    "abatch_completion_create": "asyncbatch.litellm",
    "abatch_completion_list": "asyncbatch.litellm",
    "abatch_completion_results": "asyncbatch.litellm",
    "abatch_completion_retrieve": "asyncbatch.litellm",
    "acancel_batch": "asyncbatch.litellm",
    "acreate_batch": "asyncbatch.litellm",
    "acreate_file": "asyncbatch.litellm",
    "afile_content": "asyncbatch.litellm",
    "alist_batches": "asyncbatch.litellm",
    "aretrieve_batch": "asyncbatch.litellm",
    "batch_completion": "asyncbatch.litellm",
    "batch_completion_cancel": "asyncbatch.litellm",
    "batch_completion_cost": "asyncbatch.litellm",
    "batch_completion_create": "asyncbatch.litellm",
    "batch_completion_list": "asyncbatch.litellm",
    "batch_completion_results": "asyncbatch.litellm",
    "batch_completion_retrieve": "asyncbatch.litellm",
    "cancel_batch": "asyncbatch.litellm",
    "completion": "asyncbatch.litellm",
    "configure": "asyncbatch.litellm",
    "create_batch": "asyncbatch.litellm",
    "create_file": "asyncbatch.litellm",
    "file_content": "asyncbatch.litellm",
    "list_batches": "asyncbatch.litellm",
    "retrieve_batch": "asyncbatch.litellm",
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
    "CostReport",
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
    "QuotaExceededError",
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
    "WebhookError",
    "__version__",
    "abatch_completion",
    "abatch_completion_cancel",
    "abatch_completion_cost",
    "abatch_completion_create",
    "abatch_completion_list",
    "abatch_completion_results",
    "abatch_completion_retrieve",
    "acancel_batch",
    "acreate_batch",
    "acreate_file",
    "afile_content",
    "alist_batches",
    "aretrieve_batch",
    "batch_completion",
    "batch_completion_cancel",
    "batch_completion_cost",
    "batch_completion_create",
    "batch_completion_list",
    "batch_completion_results",
    "batch_completion_retrieve",
    "cancel_batch",
    "completion",
    "configure",
    "create_batch",
    "create_file",
    "create_provider",
    "file_content",
    "list_batches",
    "retrieve_batch",
]
