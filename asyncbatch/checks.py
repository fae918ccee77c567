"""Checks of values given at the edges (command-line options, constructor arguments, URLs), in one place.

Each check raises :class:`~asyncbatch.errors.ValidationError` naming the setting, so a bad value fails at once
and says what to fix, instead of failing late (a poll interval of 0 is a busy loop; a lease of 0 hands every
shard to the next worker at once). The command line wraps them as argparse types (exit 2, the option named);
the engine calls the same functions on its configuration.

URLs: a base URL or webhook URL may not carry credentials into the store, a log or a message. Base URLs with
credentials are refused (:func:`check_url`); what is shown of any URL goes through :func:`redact_url`.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlsplit

from .errors import ValidationError

__all__ = [
    "check_url",
    "max_attempts",
    "non_negative",
    "poll_intervals",
    "port",
    "positive",
    "redact_url",
    "shown_url",
    "url_secrets",
    "whole_number",
]

#: Query parameter names that carry a credential (compared lower-cased, ``-`` read as ``_``): Gemini's
#: ``key``, ``api_key``, Azure's ``subscription_key`` and SAS ``sig``, Azure Functions' ``code``, tokens...
_SECRET_PARAMS = frozenset({"key", "sig", "signature", "code", "auth", "authorization", "password", "pwd"})
_SECRET_PARTS = ("key", "token", "secret", "password", "credential")


# --- numbers -----------------------------------------------------------------------------------------------


def positive(value: float, name: str) -> float:
    """A finite number above 0 (an interval, a lease, a timeout)."""
    if not math.isfinite(value) or value <= 0:
        raise ValidationError(f"must be a number greater than 0, got {value!r}", field=name)
    return value


def non_negative(value: float, name: str) -> float:
    """A finite number of at least 0 (a delay that may be none)."""
    if not math.isfinite(value) or value < 0:
        raise ValidationError(f"must be a number of at least 0, got {value!r}", field=name)
    return value


def whole_number(value: int, name: str, *, minimum: int = 1) -> int:
    """A whole number of at least ``minimum`` (a count of requests, bytes, results or retries)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"must be a whole number of at least {minimum}, got {value!r}", field=name)
    return value


def max_attempts(value: int, name: str = "max_attempts") -> int:
    """Attempts per request: 1 to 50 (more only pays for the same failure again)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 50:
        raise ValidationError(f"must be a whole number from 1 to 50, got {value!r}", field=name)
    return value


def port(value: int, name: str) -> int:
    """A TCP port, 0 (any free one) to 65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValidationError(f"must be a port number from 0 to 65535, got {value!r}", field=name)
    return value


def poll_intervals(poll_interval: float, max_poll_interval: float) -> None:
    """Both positive, and the longest interval not below the shortest (the backoff runs from one to the other)."""
    positive(poll_interval, "poll_interval")
    positive(max_poll_interval, "max_poll_interval")
    if max_poll_interval < poll_interval:
        raise ValidationError(
            f"must not be below poll_interval ({poll_interval:g}), got {max_poll_interval:g}",
            field="max_poll_interval",
        )


# --- URLs --------------------------------------------------------------------------------------------------


def _secret_param(name: str) -> bool:
    name = name.lower().replace("-", "_")
    return name in _SECRET_PARAMS or any(part in name for part in _SECRET_PARTS)


def url_secrets(url: str) -> list[str]:
    """What in ``url`` is a credential: the user name and password, and the values of query parameters named
    like one (``key``, ``api_key``, ``token``, ``sig``...). Empty for a clean URL."""
    parts = urlsplit(url)
    found = [v for v in (parts.username, parts.password) if v]
    found += [value for name, value in parse_qsl(parts.query, keep_blank_values=True) if value and _secret_param(name)]
    return found


def shown_url(url: str) -> str:
    """``url`` in full when it carries no credential, else :func:`redact_url` of it (for a base URL recorded
    by a version that did not refuse them)."""
    return redact_url(url) if url_secrets(url) else url


def redact_url(url: str) -> str:
    """``url`` as it may be shown: scheme, host and port only. User info, path and query are left out
    (``/…`` marks a path): a webhook receiver's secret is often its path (Slack, Discord), a base URL's its
    query (``?key=``)."""
    parts = urlsplit(url)
    try:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # a malformed port: show nothing of the authority rather than guess
        host, port = "?", ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    userinfo = "***@" if "@" in parts.netloc else ""
    rest = "/…" if parts.path not in ("", "/") or parts.query else ""
    return f"{parts.scheme}://{userinfo}{host}{port}{rest}" if parts.scheme else "(not a URL)"


def check_url(url: str, *, field: str, credentials: bool = False) -> str:
    """``url`` if it is an http(s) URL that carries no credential; else a ValidationError naming ``field`` that
    shows the URL redacted. Keys belong in ``api_key=`` or the provider's environment variable: a base URL is
    stored with each job and shown by ``status`` and ``list``. ``credentials=True`` lets them through (a
    webhook receiver may need them; its URL is never stored, and only shown redacted)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValidationError(f"must be an http:// or https:// URL, got {redact_url(url)}", field=field)
    if not credentials and url_secrets(url):
        raise ValidationError(
            f"{redact_url(url)} carries credentials (user info or a key in the query); pass the key with "
            "api_key= or the provider's environment variable, never in a URL",
            field=field,
        )
    return url
