"""Which outcome one request line gets: forced by text markers, else drawn by a stable hash.

Markers anywhere in a request's JSON (prompt text, system prompt ...), checked first:

- ``[[fail:NNN]]``: the request fails with HTTP status NNN inside the batch (OpenAI: error file line with
  ``response.status_code`` NNN; Anthropic: ``errored`` result with the matching ``error.type``).
- ``[[expire]]``: the request never runs. OpenAI: the batch ends ``expired`` at its deadline and the line is
  in the error file with ``error.code: "batch_expired"``; Anthropic: an ``expired`` result.
- ``[[fail_attempts:K]]``: the request fails with a retryable HTTP 500 on its first K submissions, then
  succeeds. ``EmulatorConfig.fail_attempts`` does the same for every request.

Submissions are counted per *identity*: the custom_id for OpenAI; for Anthropic, Gemini and Mistral, where a
client sends a new provider-side id on each attempt, a stable hash of the request's ``params`` or body
(``anthropic_identity``, ``body_identity``), so a resubmitted request is recognised even under a new id
(identical requests share one identity).

Then ``expire_rate`` and ``fail_rate`` (status ``fail_status``) are drawn from a hash of ``seed``, identity
and submission number: reproducible run to run, but a retry draws again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from ..model import Outcome
from .config import EmulatorConfig

_FAIL = re.compile(rb"\[\[fail:(\d{3})\]\]")
_EXPIRE = b"[[expire]]"
_FAIL_ATTEMPTS = re.compile(rb"\[\[fail_attempts:(\d+)\]\]")


class Decision(msgspec.Struct, frozen=True):
    """The outcome chosen for one request; ``status`` and ``message`` describe an ERRORED one."""

    outcome: Outcome
    status: int | None = None
    message: str = ""
    param: str | None = None


SUCCESS = Decision(Outcome.SUCCEEDED)


def stable_uniform(seed: int, kind: str, identity: str, submission: int) -> float:
    """A number in [0, 1) that depends only on its arguments (not on PYTHONHASHSEED or run order)."""
    digest = hashlib.blake2b(f"{seed}\x00{kind}\x00{identity}\x00{submission}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2**64


def anthropic_identity(params: Mapping[str, Any]) -> str:
    """The identity an Anthropic request is counted by: a hash of its params in canonical JSON."""
    return _hashed("params", params)


def body_identity(body: Mapping[str, Any]) -> str:
    """The identity of a Gemini or Mistral request, whose keys are new on each attempt too: a hash of its body."""
    return _hashed("body", body)


def _hashed(kind: str, value: Mapping[str, Any]) -> str:
    canonical = msgspec.json.encode(value, order="sorted")
    return f"{kind}:" + hashlib.blake2b(canonical, digest_size=12).hexdigest()


MARKER = b"[["  # every marker starts so: a line without it has none


def draws_nothing(config: EmulatorConfig) -> bool:
    """No knob makes a request's outcome depend on chance or on its submission: with this and no ``MARKER`` in
    a line, its outcome is its endpoint's own check (``invalid``) or a success, and ``decide`` need not run."""
    return config.fail_attempts <= 0 and config.expire_rate <= 0 and config.fail_rate <= 0


def decide(
    raw: bytes,
    *,
    identity: str,
    submission: int,
    config: EmulatorConfig,
    invalid: Decision | None = None,
) -> Decision:
    """The outcome of one request line. ``invalid`` is the endpoint's own 400 for a bad body, if any.

    Runs once per request: a line without markers skips their searches, and a rate of 0 draws nothing."""
    marked = MARKER in raw
    if marked:
        forced = _FAIL.search(raw)
        if forced is not None:
            code = forced.group(1).decode()
            return Decision(Outcome.ERRORED, int(code), f"Emulated failure: the request carries [[fail:{code}]].")
        if _EXPIRE in raw:
            return Decision(Outcome.EXPIRED)
    if invalid is not None:
        return invalid
    attempts = _FAIL_ATTEMPTS.search(raw) if marked else None
    failing = int(attempts.group(1)) if attempts is not None else config.fail_attempts
    if submission <= failing:
        return Decision(
            Outcome.ERRORED, 500, f"Emulated transient failure: submission {submission} of {failing} failing."
        )
    if config.expire_rate > 0 and stable_uniform(config.seed, "expire", identity, submission) < config.expire_rate:
        return Decision(Outcome.EXPIRED)
    if config.fail_rate > 0 and stable_uniform(config.seed, "fail", identity, submission) < config.fail_rate:
        return Decision(Outcome.ERRORED, config.fail_status, "Emulated failure drawn from fail_rate.")
    return SUCCESS
