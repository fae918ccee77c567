"""Ids the gateway mints: OpenAI's prefixes, random, carrying nothing (no provider, model or tenant inside).

One opaque scheme for every object (files, batches, output files, result lines): an id is a key into the store
and nothing else, so none can be decoded, forged into another tenant's, or routed by.
"""

from __future__ import annotations

import hashlib
import secrets


def file_id() -> str:
    return "file-" + secrets.token_hex(12)


def batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


def job_id(batch: str) -> str:
    """The job that runs a batch, named from it so that a create retried after a crash finds the same job."""
    return "job_" + batch.removeprefix("batch_")


def line_id(batch: str, custom_id: str) -> str:
    """An output line's id (OpenAI's ``batch_req_...``): the same on every download, and free of the provider
    batch ids it came through."""
    return "batch_req_" + hashlib.sha256(f"{batch}\0{custom_id}".encode()).hexdigest()[:24]


def virtual_key() -> str:
    return "sk-" + secrets.token_urlsafe(32)
