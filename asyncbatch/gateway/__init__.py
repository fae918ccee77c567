"""The batch gateway (``asyncbatch proxy``): an OpenAI-compatible, multi-tenant ``/v1/files`` + ``/v1/batches``
server over asyncbatch's engine and store, configured like LiteLLM's proxy.

Clients keep the official ``openai`` SDK, pointed at the gateway with a virtual key. Each client batch is a
job: its lines are routed one by one by their ``body.model`` through the config's ``model_list`` (one batch may
span providers and endpoints), run by the engine through as many provider batches as needed, and read back as
one batch with one output file and one error file in OpenAI's format. Everything is in the store: a gateway
killed and restarted serves the same ids, and several gateways (and workers) can share one PostgreSQL store.

Modules: ``config`` (LiteLLM's YAML), ``keys`` (auth, tenants), ``ids`` (minted ids), ``files`` (uploads in,
contents out), ``objects`` (OpenAI's objects and errors), ``service`` (the operations), ``app`` (the routes),
``server`` (the command).
"""

from .config import ConfigError, ProxyConfig, load_config
from .server import run_proxy

__all__ = ["ConfigError", "ProxyConfig", "load_config", "run_proxy"]
