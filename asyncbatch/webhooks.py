"""Tell other systems about a job: a callback in this process, or a signed webhook to a URL.

Webhooks are POSTed as the event's JSON (``{"type": "JobFinished", "job_id": ..., ...}``) and, when a
secret is given, signed the Standard Webhooks way that OpenAI's batch webhooks use: headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, the secret being ``whsec_<base64>`` or plain text. So a receiver can verify
them with the OpenAI SDK's ``client.webhooks.verify_signature`` or any Standard Webhooks library.

Delivery is retried a bounded number of times (:data:`WEBHOOK_RETRY`: 7 tries over about 25 s, the same
``webhook-id`` each time, so the receiver can drop duplicates); a delivery that still fails, or that the
receiver refuses (4xx), raises :class:`~asyncbatch.errors.WebhookError` and ends :func:`relay`. Going on would
leave a silent gap in what the receiver was told; stopping is safe, because a new watch starts from the job's
state in the store (a finished job's ``JobFinished`` is sent again). The URL may carry the receiver's
credentials (user info, a ``?code=``, a token in its path): it is never stored, and shown only redacted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Collection

import msgspec

from .checks import check_url, redact_url
from .errors import ProviderError, WebhookError
from .events import AnyEvent, JobFinished
from .http import HttpClient, RetryPolicy

EventCallback = Callable[[AnyEvent], Awaitable[None] | None]
#: Bounded: about 25 s of backoff (0.5 s doubling to 8 s), then the delivery has failed.
WEBHOOK_RETRY = RetryPolicy(max_retries=6, max_elapsed=60.0, max_retry_after=30.0, unreachable_tries=7)


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookSender:
    """POSTs events to one URL, with the HTTP layer's retries (``retry``, default :data:`WEBHOOK_RETRY`);
    ``events`` limits which types are sent.

    Neither the signing secret nor what the URL carries appears in reprs, logs or error messages.
    """

    def __init__(
        self,
        url: str,
        *,
        secret: str | None = None,
        events: Collection[str] | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = check_url(url, field="webhook", credentials=True)
        self.events = frozenset(events) if events is not None else None
        self._secret = secret
        self._http = HttpClient(url, headers={}, secrets=[secret] if secret else [], retry=retry or WEBHOOK_RETRY,
                                timeout=timeout)

    def __repr__(self) -> str:
        return f"WebhookSender({redact_url(self.url)!r}, signed={self._secret is not None})"

    def wants(self, event: AnyEvent) -> bool:
        return self.events is None or type(event).__name__ in self.events

    async def send(self, event: AnyEvent) -> None:
        """Deliver one event; a receiver that refuses it, or keeps failing through the retries, raises
        ``WebhookError`` (a ``ProviderError``)."""
        body = msgspec.json.encode(event)
        webhook_id = f"evt_{uuid.uuid4().hex}"
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": webhook_id,
                   "webhook-timestamp": str(timestamp)}
        if self._secret:
            headers["webhook-signature"] = sign(self._secret, webhook_id, timestamp, body)
        try:
            await self._http.request("POST", self.url, form=lambda: body, headers=headers)
        except ProviderError as exc:
            raise WebhookError(f"webhook delivery of {type(event).__name__} failed: {exc}", status=exc.status,
                               code=exc.code, type=exc.type, request_id=exc.request_id) from None

    async def aclose(self) -> None:
        await self._http.aclose()


async def relay(
    events: AsyncIterable[AnyEvent],
    *,
    callback: EventCallback | None = None,
    webhook: WebhookSender | None = None,
) -> JobFinished | None:
    """Hand every event of a stream (e.g. ``bm.watch(job_id)``) to ``callback`` (plain or async) and to
    ``webhook`` (both the stream and the sender are closed at the end); returns the final ``JobFinished`` (None
    if the stream ended without one). A failed delivery raises ``WebhookError`` and ends the relay.

    For a completion callback only, test for ``JobFinished`` in the callback or use ``events={"JobFinished"}``
    on the sender.
    """
    finished: JobFinished | None = None
    stream = aiter(events)
    try:
        async for event in stream:
            if callback is not None:
                outcome = callback(event)
                if inspect.isawaitable(outcome):
                    await outcome
            if webhook is not None and webhook.wants(event):
                await webhook.send(event)
            if isinstance(event, JobFinished):
                finished = event
    finally:
        if isinstance(stream, AsyncGenerator):  # closed here, in this task, not later by the garbage collector
            await stream.aclose()
        if webhook is not None:
            await webhook.aclose()
    return finished
