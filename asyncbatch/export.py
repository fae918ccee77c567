"""Results as OpenAI batch output JSONL, whatever the provider: one line per custom_id (or attempt)."""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

import anyio
import msgspec

from .jsonl import SpoolWriter
from .model import Job, Result

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


def translated(job: Job) -> bool:
    """Whether some of the job's bodies are translated into OpenAI's (then they are decoded, not spliced)."""
    providers = {job.provider, *(spec.name for spec in job.routes.values())}  # a job may span providers
    return bool(providers & TRANSLATED)


STDOUT = "-"
"""The output path that means standard output (``asyncbatch results -o -``)."""


class LineWriter(Protocol):
    async def write(self, lines: list[bytes]) -> None: ...


class _DirectWriter:
    """Writes into a file that must not be replaced: standard output, a FIFO, a device, a terminal."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    async def write(self, lines: list[bytes]) -> None:
        await anyio.to_thread.run_sync(self._write, b"\n".join(lines) + b"\n")

    def _write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()


def _replaceable(path: str | os.PathLike[str]) -> Path | None:
    """The regular file to replace atomically for ``path`` (symlinks followed, so a link keeps pointing at
    the new file), or None when ``path`` is something to write into as it is.

    Renaming over ``/dev/stdout`` (as root) replaced the system's symlink with a regular file, and over a
    FIFO it would leave the reader waiting forever. A path that leads to an open descriptor (``/dev/stdout``,
    ``/dev/fd/N``, ``/proc/self/fd/N``) is written into even when the shell opened a file there: replacing
    that file would undo a ``>>``.
    """
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own bound on symlink hops
        if current.startswith(("/proc/", "/dev/fd/")):
            return None
        try:
            current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
        except OSError:  # not a symlink (or missing): the end of the chain
            break
    real = Path(os.path.realpath(current))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return real
    return real if stat.S_ISREG(mode) else None


@asynccontextmanager
async def open_output(path: str | os.PathLike[str]) -> AsyncIterator[LineWriter]:
    """A writer of JSONL lines to ``path``: ``"-"`` is standard output; a regular file (or a new one) is
    written owner-only beside itself and renamed into place when complete (a crash leaves no half file);
    anything else (a FIFO, a device, ``/dev/stdout``) is opened and written into, never replaced."""
    if os.fspath(path) == STDOUT:
        yield _DirectWriter(sys.stdout.buffer)
        return
    target = _replaceable(path)
    if target is not None:
        async with SpoolWriter(target) as spool:
            yield spool
        return
    # O_APPEND: through /dev/stdout a shell's `>> log` stays an append; a FIFO's open blocks until a reader comes
    fd = await anyio.to_thread.run_sync(os.open, path, os.O_WRONLY | os.O_APPEND)
    with os.fdopen(fd, "wb") as file:
        yield _DirectWriter(file)


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
    """Write the job's results to ``path`` (streamed; see :func:`open_output`: ``"-"`` is standard output, a
    regular file is replaced atomically); returns the number of lines.

    Bodies are spliced in as stored (no decode and re-encode) unless they are translated (Anthropic messages
    and Gemini responses as OpenAI chat completions or embeddings).
    """
    encoder = msgspec.json.Encoder()
    count = 0
    job = await manager.status(job_id)
    translate = fmt == "openai" and translated(job)
    async with open_output(path) as writer:
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
