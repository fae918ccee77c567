"""Kept for code that imports ``asyncbatch.retry``: the retry policy lives in ``asyncbatch.engine.retry``."""

from .engine.retry import RetryStrategy, Verdict

__all__ = ["RetryStrategy", "Verdict"]
