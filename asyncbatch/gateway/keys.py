"""Who is calling: the master key, or a virtual key found by its hash, and what that caller may do.

Virtual keys are random (``sk-`` and 256 bits), so one SHA-256 is enough to store them: nobody can guess back a
key from its token, and a lookup costs one hash. The master key is compared in constant time and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from ..model import VirtualKey
from .config import ALL_MODELS

MASTER = "master"  # the master key's tenant, and the token its batches record (never a hash of the key itself:
# an admin may choose a guessable master key, and a hash of it in the store would give it away)


class Caller(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller: the tenant that owns what it makes, and the models it may use (None: all)."""

    owner: str
    token: str
    models: frozenset[str] | None
    max_budget: float | None = None
    is_master: bool = False

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


def token_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def owner_of(team_id: str | None, token: str) -> str:
    """Objects belong to the key's team, or to the key itself when it has none."""
    return f"team:{team_id}" if team_id else f"key:{token}"


def is_master(presented: str, master_key: str) -> bool:
    return hmac.compare_digest(presented.encode(), master_key.encode())


def master_caller() -> Caller:
    return Caller(owner=MASTER, token=MASTER, models=None, is_master=True)


def key_caller(key: VirtualKey) -> Caller:
    allowed = frozenset(key.models)
    return Caller(owner=key.owner, token=key.token,
                  models=None if not allowed or ALL_MODELS in allowed else allowed, max_budget=key.max_budget)


def new_key_record(
    key: str, *, team_id: str | None, models: Iterable[str], max_budget: float | None, metadata: Mapping[str, Any],
    now: float,
) -> VirtualKey:
    token = token_of(key)
    return VirtualKey(token=token, owner=owner_of(team_id, token), team_id=team_id, models=list(models),
                      max_budget=max_budget, metadata=dict(metadata), created_at=now)


def bearer(header: str | None) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (LiteLLM also takes the bare key)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    key = rest.strip() if scheme.lower() == "bearer" else header.strip()
    return key or None
