"""Which provider runs a request: its model picks its route.

Model names are written as LiteLLM writes them. ``anthropic/claude-sonnet-4-5``, ``openai/gpt-4o-mini``,
``azure/...``, ``groq/...``, ``gemini/...``: the prefix names the provider and is taken off the model that is sent.
A bare name goes to Anthropic when it is a ``claude-*`` model and to the job's default provider otherwise. A
gateway adds aliases (a client's model name -> a provider, its model and where its key is).

A route is a name, stored with every request and shard; the job keeps the ``ProviderSpec`` of each route it
uses, so a restarted worker rebuilds the same providers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from ..model import ProviderSpec
from ..providers import PROVIDER_NAMES


class Route(NamedTuple):
    """``name`` is stored with the request; ``model`` replaces the body's model when it differs (None: keep)."""

    name: str
    spec: ProviderSpec
    model: str | None = None


class Router:
    """Maps a request's model to its route. ``default`` serves bare model names; ``aliases`` come first."""

    def __init__(
        self,
        default: ProviderSpec,
        *,
        aliases: Mapping[str, Route] | None = None,
        providers: Mapping[str, ProviderSpec] | None = None,
        known: frozenset[str] | None = None,
    ) -> None:
        self.default = Route(default.name, default)
        self.aliases = dict(aliases or {})
        self._providers = dict(providers or {})  # explicit specs for providers named by prefix
        self._known = known if known is not None else frozenset(PROVIDER_NAMES)

    def route(self, model: str | None) -> Route:
        if model is None:
            return self.default
        alias = self.aliases.get(model)
        if alias is not None:
            return alias
        prefix, sep, rest = model.partition("/")
        if sep and prefix in self._known and rest:
            return Route(prefix, self._spec(prefix), rest)
        if model.startswith("claude-") and self.default.spec.name != "anthropic":
            return Route("anthropic", self._spec("anthropic"))
        return self.default

    def _spec(self, name: str) -> ProviderSpec:
        """The job's default provider when it is the one named, else the named provider from the environment."""
        if name == self.default.spec.name:
            return self.default.spec
        return self._providers.get(name) or ProviderSpec(name=name)
