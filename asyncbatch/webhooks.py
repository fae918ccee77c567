"""Tell other systems about a job: a callback in this process, or a signed webhook to a URL.

Webhooks are POSTed as the event's JSON (``{"type": "JobFinished", "job_id": ..., ...}``) and, when a
secret is given, signed the Standard Webhooks way that OpenAI's batch webhooks use: headers
``webhook-id``, ``webhook-timestamp`` and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, the secret being ``whsec_<base64>`` or plain text. So a receiver can verify
them with the OpenAI SDK's ``client.webhooks.verify_signature`` or any Standard Webhooks library.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import time
import uuid
from collections.abc import AsyncIterable, Awaitable, Callable, Collection

import msgspec

from .events import AnyEvent, JobFinished
from .http import HttpClient, RetryPolicy

EventCallback = Callable[[AnyEvent], Awaitable[None] | None]


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class WebhookSender:
    """POSTs events to one URL, with the HTTP layer's retries; ``events`` limits which types are sent.

    The secret never appears in reprs, logs or error messages (the HTTP layer redacts it).
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
        self.url = url
        self.events = frozenset(events) if events is not None else None
        self._secret = secret
        self._http = HttpClient(url, headers={}, secrets=[secret] if secret else [], retry=retry, timeout=timeout)

    def __repr__(self) -> str:
        return f"WebhookSender({self.url!r}, signed={self._secret is not None})"

    def wants(self, event: AnyEvent) -> bool:
        return self.events is None or type(event).__name__ in self.events

    async def send(self, event: AnyEvent) -> None:
        """Deliver one event; a receiver that keeps failing raises ``ProviderError`` after the retries."""
        body = msgspec.json.encode(event)
        webhook_id = f"evt_{uuid.uuid4().hex}"
        timestamp = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": webhook_id,
                   "webhook-timestamp": str(timestamp)}
        if self._secret:
            headers["webhook-signature"] = sign(self._secret, webhook_id, timestamp, body)
        await self._http.request("POST", self.url, form=lambda: body, headers=headers)

    async def aclose(self) -> None:
        await self._http.aclose()


async def relay(
    events: AsyncIterable[AnyEvent],
    *,
    callback: EventCallback | None = None,
    webhook: WebhookSender | None = None,
) -> JobFinished | None:
    """Hand every event of a stream (e.g. ``bm.watch(job_id)``) to ``callback`` (plain or async) and to
    ``webhook`` (closed at the end); returns the final ``JobFinished`` (None if the stream ended without one).

    For a completion callback only, test for ``JobFinished`` in the callback or use ``events={"JobFinished"}``
    on the sender.
    """
    finished: JobFinished | None = None
    try:
        async for event in events:
            if callback is not None:
                outcome = callback(event)
                if inspect.isawaitable(outcome):
                    await outcome
            if webhook is not None and webhook.wants(event):
                await webhook.send(event)
            if isinstance(event, JobFinished):
                finished = event
    finally:
        if webhook is not None:
            await webhook.aclose()
    return finished
