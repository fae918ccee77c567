"""The engine: runs the work in a store (planning and sharding, leases, shard runners, retry policy, routing).

``Engine(store).run(job_ids)`` drives jobs until they end; ``Engine(store).serve()`` drives every job of the store,
also those submitted later, until it is cancelled. ``BatchManager`` (the client side) hands work to it.
"""

from .config import EngineConfig
from .engine import Engine
from .pool import ProviderPool
from .retry import RetryStrategy, StepRetry, Verdict
from .routing import Route, Router

__all__ = ["Engine", "EngineConfig", "ProviderPool", "RetryStrategy", "Route", "Router", "StepRetry", "Verdict"]
