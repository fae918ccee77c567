"""What every HTTP provider shares: a lazily built ``HttpClient`` holding the key, its closing, and create
bodies streamed from a spool file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Self, TypeVar

import anyio

from ..checks import check_url
from ..errors import AuthenticationError, NotFoundError, ProviderError
from ..http import HttpClient, RetryPolicy
from ..model import RemoteBatch

T = TypeVar("T")


class HttpProvider:
    """Base of the providers that talk HTTP. The key is checked at the first network call, not at
    construction, so a provider can be built (say, to show a stored job's status) without one; it lives
    only in the client's headers and redaction list. A base URL carrying credentials is refused here, before
    any job records it (``check_url``)."""

    api_key_env: str = ""

    def __init__(
        self, *, base_url: str, api_key: str | None, retry: RetryPolicy | None, max_connections: int, timeout: float
    ) -> None:
        self.base_url = check_url(base_url, field="base_url")
        self._api_key = api_key or None
        self._retry = retry
        self._max_connections = max_connections
        self._timeout = timeout
        self._http: HttpClient | None = None

    def _auth_headers(self, api_key: str) -> dict[str, str]:
        raise NotImplementedError

    def _missing_key(self) -> str:
        return f"no API key: pass api_key= or set {self.api_key_env}"

    def check_key(self) -> None:
        if not self._api_key:
            raise AuthenticationError(self._missing_key())

    async def file_exists(self, file_id: str) -> bool:
        """True unless the provider's file path (``_file_path``) answers 404; a provider without files has none to
        lose."""
        path = self._file_path(file_id)
        if path is None:
            return True
        try:
            await self._client().request("GET", path)
        except NotFoundError:
            return False
        return True

    def _file_path(self, file_id: str) -> str | None:
        """Where an uploaded file is read (None: the provider uploads no files)."""
        return None

    def _client(self) -> HttpClient:
        if self._http is None:
            self.check_key()
            assert self._api_key is not None
            self._http = HttpClient(
                self.base_url,
                headers=self._auth_headers(self._api_key),
                secrets=[self._api_key],
                retry=self._retry,
                max_connections=self._max_connections,
                timeout=self._timeout,
                name=getattr(self, "name", ""),
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


#: Bytes per block read from the spool file while streaming a create body.
BODY_BLOCK = 1 << 20


async def spooled_array(spool: Path, head: bytes, tail: bytes) -> AsyncIterator[bytes]:
    """``head``, the spool file's lines as the items of a JSON array, then ``tail``: a block of bytes at a time.

    The spool holds one JSON object per line (compact JSON has no raw newline) and ends with a newline, so
    turning every newline but that last one into a comma makes the array: no line is split out or joined.
    ``head`` ends with the array's ``[``, ``tail`` starts with its ``]``.
    """
    yield head
    held = b""  # the last byte read so far: the final newline must not become a comma
    async with await anyio.open_file(spool, "rb") as source:
        while block := await source.read(BODY_BLOCK):
            data = held + block
            held = data[-1:]
            yield data[:-1].replace(b"\n", b",")
    yield held.rstrip(b"\n") + tail


def listed(items: Iterable[T], normalise: Callable[[T], RemoteBatch]) -> list[RemoteBatch]:
    """A page of an account's batch listing, normalised; a batch of a shape we do not know (another client's, in
    a state we cannot name) is left out rather than failing the page: the engine polls its own batches one by one
    when a listing does not show them."""
    page = []
    for item in items:
        try:
            page.append(normalise(item))
        except ProviderError:
            continue
    return page
