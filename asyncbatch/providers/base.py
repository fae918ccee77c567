"""The narrow interface between the engine and a provider's batch API.

A provider turns stored requests into its wire format, moves shards over HTTP and hands results back in
one normalised shape. It never touches the store; the manager never speaks HTTP. Swapping OpenAI for
Anthropic (or a test double) is swapping this object.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

# The values a provider hands over live with every other seam value in ``asyncbatch.model``; they stay
# importable from here, where provider implementations look for them.
from ..model import BatchError, RemoteBatch, Request, ResultLine, ShardInfo, ShardLimits

__all__ = ["BatchError", "Provider", "RemoteBatch", "ResultLine", "ShardLimits"]


@runtime_checkable
class Provider(Protocol):
    """What the engine needs from a provider. Implementations: OpenAIProvider, AnthropicProvider,
    GeminiProvider, MistralProvider.

    Optional members (read with ``getattr``; the built-in providers have them):

    * ``results_retention: float``: seconds the results of an ended batch stay downloadable (Mistral 24 h,
      Gemini 48 h, Anthropic 29 days, OpenAI 30 days), so that the engine can ingest them before they go.
    * ``check_job_options(completion_window, metadata)``: refuse job options the provider cannot take.
    * ``native_request(line, ...) -> Request``: a line of the provider's own batch format (Gemini's ``{"key",
      "request"}``) as a Request, for input readers that meet such lines.
    * ``listing() -> AsyncGenerator[list[RemoteBatch], None]``: the account's batches, newest first, a page at a
      time, from which the engine's poller reads the statuses of many batches in one call.
    * ``listing_is_whole: bool``: a listed batch carries all that a read of it does (its output files), so a
      batch seen ended on a page is not read again before its results are fetched.
    """

    name: str
    base_url: str
    limits: ShardLimits
    visibility_grace: float  # seconds during which a 404 on a just-created batch means "not visible yet"
    api_key_env: str  # the environment variable the key is read from (named by errors about a missing key)

    def check_key(self) -> None:
        """Raise ``AuthenticationError`` naming ``api_key_env`` when there is no key: at submit, not hours later."""

    def options(self) -> dict[str, Any]:
        """Settings that change what is sent (never the key), as JSON values: recorded with each job, so a
        restarted process rebuilds the same provider with ``create_provider(name, base_url=..., **options)``."""

    def check(self, request: Request) -> None:
        """Raise ValidationError (with ``field``) if this provider cannot run the request. No I/O."""

    def model_of(self, request: Request) -> str | None:
        """The model a request is for; requests are sharded so that one batch holds one model."""

    def wire_id(self, custom_id: str, rid: int, token: str) -> str:
        """The custom_id sent to the provider for request number ``rid`` of shard ``token``."""

    def encode_line(self, wire_id: str, url: str, body: bytes) -> bytes:
        """One input line (no newline) for the spool file; ``body`` is the stored request body JSON."""

    async def upload(self, shard: ShardInfo) -> str | None:
        """Upload the shard's spool file; return the provider's file id, or None for inline providers."""

    async def file_exists(self, file_id: str) -> bool:
        """Whether an uploaded input file is still there (a create refused for a gone file uploads again)."""

    async def create(self, shard: ShardInfo, file_id: str | None) -> RemoteBatch:
        """Create the provider batch. The shard's token must travel with it (metadata or ids)."""

    async def find(self, shard: ShardInfo, exclude: Collection[str] = ()) -> RemoteBatch | None:
        """After a crash in ``creating``: the batch created for this shard's token, if any.

        ``exclude`` holds batch ids already recorded for other shards: never return one of them. Set
        ``token`` on the result when the match is verified (metadata or ids carry the token). Return an
        unverified candidate (no ``token``) when a batch that may be this shard's cannot be checked yet:
        the engine then waits and asks again rather than create a second batch or adopt a stranger's.
        None means no batch can be this shard's.
        """

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        """Current state of one batch."""

    async def cancel(self, batch_id: str) -> RemoteBatch:
        """Ask the provider to cancel; results of requests already run stay available."""

    def results(self, batch: RemoteBatch, workdir: Path) -> AsyncGenerator[ResultLine, None]:
        """Stream the results of an ended batch, decoded line by line. ``workdir`` is a directory for a provider
        that needs files on the way; it may not exist yet (``jsonl.private_dir`` makes it owner-only). The
        engine closes the stream in the task that iterates it."""

    async def aclose(self) -> None:
        """Release connections."""
