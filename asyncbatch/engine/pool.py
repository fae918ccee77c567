"""Providers built from the specs jobs record, once each, with keys resolved at the last moment.

A job stores where its providers are (``ProviderSpec``: name, base URL, options, the variable holding the key),
never a key. The pool turns a spec into a live provider: the caller's own instance when it matches, else one made
by name with the key from ``spec.key_env``, a gateway's resolver, or the provider's usual variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import msgspec

from ..model import ProviderSpec
from ..providers import create_provider
from ..providers.base import Provider

KeyResolver = Callable[[ProviderSpec], str | None]
"""Returns the key for a spec, or None to let the provider read its own environment variable."""


def spec_of(provider: Provider, key_env: str | None = None) -> ProviderSpec:
    """What rebuilds ``provider`` after a restart (its name, base URL and options; never its key)."""
    return ProviderSpec(name=provider.name, base_url=provider.base_url, options=provider.options(), key_env=key_env)


def env_key(spec: ProviderSpec) -> str | None:
    """The key in ``spec.key_env`` when the spec names a variable (a missing one is reported by the provider)."""
    return os.environ.get(spec.key_env) if spec.key_env else None


class ProviderPool:
    """One provider per spec for the life of an engine (their HTTP sessions are reused), closed together."""

    def __init__(self, *, keys: KeyResolver = env_key) -> None:
        self._keys = keys
        self._providers: dict[bytes, Provider] = {}
        self._retired: list[Provider] = []  # replaced, maybe still in use by a runner: closed with the pool

    def add(self, provider: Provider, spec: ProviderSpec | None = None) -> ProviderSpec:
        """Serve ``spec`` (default: the provider's own) with a provider the caller built (say, with a key given
        now), from now on; returns the spec."""
        spec = spec or spec_of(provider)
        old = self._providers.get(_key(spec))
        if old is not None and old is not provider:
            self._retired.append(old)
        self._providers[_key(spec)] = provider
        return spec

    def get(self, spec: ProviderSpec) -> Provider:
        key = _key(spec)
        provider = self._providers.get(key)
        if provider is None:
            provider = create_provider(spec.name, base_url=spec.base_url, api_key=self._keys(spec),
                                       key_env=spec.key_env, **spec.options)
            self._providers[key] = provider
        return provider

    async def aclose(self) -> None:
        providers = [*self._providers.values(), *self._retired]
        self._providers, self._retired = {}, []
        for provider in providers:
            await provider.aclose()


def _key(spec: ProviderSpec) -> bytes:
    return msgspec.json.encode([spec.name, spec.base_url, spec.options, spec.key_env], order="sorted")
