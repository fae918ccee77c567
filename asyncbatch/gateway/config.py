"""The gateway's config, in LiteLLM's proxy format, so that existing ``proxy.yaml`` files work.

Only what the batch gateway uses is read: ``model_list`` (``model_name`` -> ``litellm_params.model``,
``api_base``, ``api_key``) and ``general_settings`` (``master_key``, ``max_batch_file_size_mb``). Anything else
is ignored with one warning line; a config that cannot work is one ``ConfigError`` naming the key, at start.

A value written ``os.environ/NAME`` is read from the environment. An API key given that way stays a variable
name in the jobs the gateway stores (``ProviderSpec.key_env``); a literal key never goes into the store: its
route's spec names it ``proxy:<model_name>``, and ``ProxyConfig.keys`` resolves that name from the config held
in memory (the gateway's and ``asyncbatch worker --config``'s key resolver).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from ..engine.pool import env_key
from ..engine.routing import Route, Router
from ..errors import ValidationError
from ..model import ProviderSpec
from ..providers import PROVIDER_NAMES

ENV_PREFIX = "os.environ/"
LITERAL_KEY_PREFIX = "proxy:"  # the key_env of a route whose key is written in the config
DEFAULT_MAX_FILE_MB = 200.0  # OpenAI's own limit on a batch input file
#: LiteLLM's provider prefixes that asyncbatch spells otherwise.
PROVIDER_ALIASES = {"together_ai": "together"}
#: A key's ``models`` entry that allows every model, as in LiteLLM.
ALL_MODELS = "all-proxy-models"

_KNOWN = {
    "": {"model_list", "general_settings"},
    "model_list[]": {"model_name", "litellm_params"},
    "litellm_params": {"model", "api_base", "api_key"},
    "general_settings": {"master_key", "max_batch_file_size_mb"},
}


class ConfigError(ValidationError):
    """The gateway's config cannot work; the message names the file and the key."""


class ModelEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One ``model_list`` entry: what clients call the model, and the route that serves it."""

    model_name: str
    provider: str
    model: str  # the provider's model name, as sent
    route: Route


class ProxyConfig(msgspec.Struct, kw_only=True):
    """A loaded config. ``ignored`` lists the keys it did not use (for the one warning line)."""

    path: str
    models: dict[str, ModelEntry]
    master_key: str
    max_file_bytes: int
    ignored: list[str] = msgspec.field(default_factory=list)
    literal_keys: dict[str, str] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:  # keys never shown
        return f"ProxyConfig({self.path!r}, models={sorted(self.models)})"

    def router(self) -> Router:
        """Routes by the config's model names only (the first entry serves as the router's default)."""
        first = next(iter(self.models.values()))
        return Router(first.route.spec, aliases={name: e.route for name, e in self.models.items()},
                      known=frozenset())

    @property
    def keys(self) -> Callable[[ProviderSpec], str | None]:
        """The key resolver of the config's routes: literal keys from memory, the others from the environment."""
        literal = self.literal_keys

        def resolve(spec: ProviderSpec) -> str | None:
            if spec.key_env is not None and spec.key_env in literal:
                return literal[spec.key_env]
            return env_key(spec)

        return resolve


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> ProxyConfig:
    """Read and check ``proxy.yaml``; ``ConfigError`` names what is wrong."""
    env = os.environ if environ is None else environ
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the gateway config {name}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name} is not valid YAML: {_yaml_problem(exc)}") from None
    return _Reader(name, env).config(data)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message in one line: what is wrong, and where."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


class _Reader:
    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.ignored: list[str] = []
        self.literal_keys: dict[str, str] = {}

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {message}", field=key)

    def mapping(self, value: object, key: str, known: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping, got {type(value).__name__}")
        for extra in sorted(set(value) - _KNOWN[known], key=str):
            self.ignored.append(f"{key}.{extra}" if key else str(extra))
        return value

    def string(self, parent: Mapping[str, Any], name: str, key: str, *, required: bool = True) -> str | None:
        value = parent.get(name)
        if value is None:
            if required:
                raise self.fail(f"{key}.{name}", "missing")
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{key}.{name}", f"expected a non-empty string, got {value!r}")
        return value

    def resolve(self, value: str, key: str) -> str:
        """``os.environ/NAME`` read from the environment (a missing variable is an error naming both)."""
        if not value.startswith(ENV_PREFIX):
            return value
        var = value[len(ENV_PREFIX):]
        found = self.env.get(var)
        if not found:
            raise self.fail(key, f"environment variable {var} is not set")
        return found

    def config(self, data: object) -> ProxyConfig:
        top = self.mapping(data if data is not None else {}, "", "")
        entries = top.get("model_list")
        if not isinstance(entries, list) or not entries:
            raise self.fail("model_list", "expected a non-empty list of models")
        models: dict[str, ModelEntry] = {}
        for index, raw in enumerate(entries):
            entry = self.entry(raw, f"model_list[{index}]")
            if entry.model_name in models:
                raise self.fail(f"model_list[{index}].model_name",
                                f"{entry.model_name!r} is listed twice (one route per model name)")
            models[entry.model_name] = entry
        settings = self.mapping(top.get("general_settings") or {}, "general_settings", "general_settings")
        master = self.string(settings, "master_key", "general_settings")
        assert master is not None
        max_mb = settings.get("max_batch_file_size_mb", DEFAULT_MAX_FILE_MB)
        if isinstance(max_mb, bool) or not isinstance(max_mb, int | float) or max_mb <= 0:
            raise self.fail("general_settings.max_batch_file_size_mb", f"expected a number above 0, got {max_mb!r}")
        return ProxyConfig(
            path=self.path, models=models, master_key=self.resolve(master, "general_settings.master_key"),
            max_file_bytes=int(max_mb * 1024 * 1024), ignored=self.ignored, literal_keys=self.literal_keys,
        )

    def entry(self, raw: object, key: str) -> ModelEntry:
        entry = self.mapping(raw, key, "model_list[]")
        model_name = self.string(entry, "model_name", key)
        params = self.mapping(entry.get("litellm_params"), f"{key}.litellm_params", "litellm_params")
        where = f"{key}.litellm_params"
        target = self.string(params, "model", where)
        assert model_name is not None and target is not None
        prefix, sep, rest = target.partition("/")
        if sep:
            provider = PROVIDER_ALIASES.get(prefix, prefix)
            if provider not in PROVIDER_NAMES or not rest:
                raise self.fail(f"{where}.model", f"{target!r}: unknown provider {prefix!r} (known: "
                                f"{', '.join(PROVIDER_NAMES)})")
            model = rest
        else:  # LiteLLM's bare names: Claude models on Anthropic, the rest on OpenAI
            provider, model = ("anthropic" if target.startswith("claude-") else "openai"), target
        base = self.string(params, "api_base", where, required=False)
        api_key = self.string(params, "api_key", where, required=False)
        key_env: str | None = None
        if api_key is not None and api_key.startswith(ENV_PREFIX):
            self.resolve(api_key, f"{where}.api_key")  # a missing variable is found now, not at the first batch
            key_env = api_key[len(ENV_PREFIX):]
        elif api_key is not None:
            key_env = LITERAL_KEY_PREFIX + model_name
            self.literal_keys[key_env] = api_key
        spec = ProviderSpec(name=provider, base_url=self.resolve(base, f"{where}.api_base") if base else None,
                            key_env=key_env)
        return ModelEntry(model_name=model_name, provider=provider, model=model,
                          route=Route(model_name, spec, model))
