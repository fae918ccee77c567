"""What a job cost, and what the same requests would have cost sent live.

Prices come from genai-prices (a maintained price library; none are written here). The usage of every
billed result (each successful attempt: failed attempts are not billed) is priced twice: at the library's
batch price for the model when it has one, else at its standard price less the providers' published batch
discount (``BATCH_DISCOUNT``), and at the standard ("live") price. A model the library does not know is
reported as unpriced, never as costing zero.

Pricing one result at a time costs ~0.1 ms in the library, too slow for a million results, so usage is
summed per model and price tier (prompts above a tier threshold, e.g. 200k tokens, are dearer per token)
and each group is priced once at its mean usage times its size, which is exact because prices are linear
within a tier. The mean's division leaves noise in the last of Decimal's 28 digits
(``0.0007440000000000000000000000001``), so amounts are rounded to the places that whole tokens at the
model's prices can have: a $0.15 per million tokens price prices a token to 8 places.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import msgspec

from .model import Outcome, Result
from .results import read_results

if TYPE_CHECKING:
    from .manager import BatchManager
    from .store.base import Store

BATCH_DISCOUNT = Decimal("0.5")
"""Batch rate as a share of the standard one (50%: OpenAI, Anthropic, Azure, Gemini, Groq, Mistral), used only
for models for which genai-prices has no batch price of its own."""

_BATCH_CONTEXT = {"processing": "batch"}
#: Our provider names that genai-prices spells otherwise (it lists Gemini models under Google).
PRICE_PROVIDERS = {"gemini": "google"}


class ModelCost(msgspec.Struct, kw_only=True):
    """Usage and cost of one model's billed results. Costs are None when the model is unpriced."""

    model: str
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    batch_cost: Decimal | None = None
    live_cost: Decimal | None = None
    price_source: str | None = None  # how the batch price was found, or why the model is unpriced

    @property
    def priced(self) -> bool:
        return self.batch_cost is not None


class CostReport(msgspec.Struct, kw_only=True):
    """A job's cost in USD: totals over priced models, and which requests could not be priced."""

    job_id: str
    provider: str
    models: list[ModelCost]
    batch_cost: Decimal
    live_cost: Decimal
    unpriced_requests: int
    prices: str  # the price library and its version
    currency: str = "USD"

    @property
    def savings(self) -> Decimal:
        return self.live_cost - self.batch_cost

    @property
    def unpriced_models(self) -> list[str]:
        return [m.model for m in self.models if not m.priced]

    def summary(self) -> str:
        """Human-readable lines: one per model, then the totals and the savings."""
        lines = [f"cost of job {self.job_id} ({self.provider}; prices: {self.prices})"]
        for m in self.models:
            tokens = f"{m.input_tokens} in ({m.cached_input_tokens} cached), {m.output_tokens} out"
            if m.batch_cost is not None and m.live_cost is not None:
                price = f"${_money(m.batch_cost)} (live ${_money(m.live_cost)}; {m.price_source})"
            else:
                price = f"UNPRICED ({m.price_source})"
            lines.append(f"  {m.model}: {m.requests} billed requests, {tokens}: {price}")
        share = f" ({self.savings / self.live_cost:.0%})" if self.live_cost else ""
        lines.append(f"  batch cost ${_money(self.batch_cost)}, live ${_money(self.live_cost)}, "
                     f"saved ${_money(self.savings)}{share}")
        if self.unpriced_requests:
            lines.append(f"  not included: {self.unpriced_requests} requests on unpriced models "
                         f"({', '.join(self.unpriced_models)})")
        return "\n".join(lines)


def _money(value: Decimal) -> str:
    """An amount as exact as the prices make it, without trailing zeros (never in exponent notation)."""
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


class _Group(msgspec.Struct):
    """Summed usage of the results of one model in one price tier."""

    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0

    def add(self, result: Result) -> None:
        assert result.usage is not None
        self.requests += 1
        self.input_tokens += result.usage.input_tokens
        self.cached_input_tokens += result.usage.cached_input_tokens
        self.output_tokens += result.usage.output_tokens

    def mean_usage(self) -> Any:
        """The library's Usage of the group's mean request (Decimal token counts are accepted)."""
        from genai_prices import Usage

        n = Decimal(self.requests)
        return Usage(input_tokens=self.input_tokens / n, cache_read_tokens=self.cached_input_tokens / n,
                     output_tokens=self.output_tokens / n)


def _find_model(model: str, provider: str) -> tuple[Any, str | None]:
    """genai-prices' entry for a model and the provider id to price it under; ``LookupError`` when unknown.

    A provider the library does not list (a compatible host) is matched by model name alone (provider None).
    """
    from genai_prices import data_snapshot

    snapshot = data_snapshot.get_snapshot()
    provider = PRICE_PROVIDERS.get(provider, provider)
    try:
        return snapshot.find_provider_model(model, None, provider, None)[1], provider
    except LookupError:
        return snapshot.find_provider_model(model, None, None, None)[1], None


def unknown_models(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (provider, model) pairs the price data does not know (a misspelled ``gpt-4o-minni``, a
    fine-tune), in first-seen order: their cost will be reported as unpriced, so say so at submit."""
    unknown: list[tuple[str, str]] = []
    for pair in dict.fromkeys(pairs):
        try:
            _find_model(pair[1], pair[0])
        except LookupError:
            unknown.append(pair)
    return unknown


def _places(prices: Any) -> int:
    """Decimal places of the exact cost of whole tokens at these per-million-token prices."""
    from genai_prices.types import TieredPrices

    values: list[Decimal] = []
    for key, value in vars(prices).items():
        if key.endswith("_mtok") and isinstance(value, TieredPrices):
            values += [value.base, *(tier.price for tier in value.tiers)]
        elif key.endswith("_mtok") and isinstance(value, Decimal):
            values.append(value)
    return 6 + max((max(0, -int(v.as_tuple().exponent)) for v in values), default=0)


def _rounded(amount: Decimal, places: int) -> Decimal:
    return amount.quantize(Decimal(1).scaleb(-places))


class _ModelPrices:
    """One model as genai-prices knows it: its tier thresholds, whether it has a batch price, and the decimal
    places of its exact costs."""

    def __init__(self, model: str, provider: str, when: datetime) -> None:
        from genai_prices.types import TieredPrices

        info, self.provider_id = _find_model(model, provider)
        self.model = model
        self.when = when
        self.has_batch_price = any(v.when == _BATCH_CONTEXT for v in info.price_variants or ())
        live, batch = info.get_prices(when), info.get_prices(when, _BATCH_CONTEXT)
        thresholds = {
            tier.start
            for prices in (live, batch)
            for value in vars(prices).values() if isinstance(value, TieredPrices)
            for tier in value.tiers
        }
        self.thresholds = sorted(thresholds)
        self.live_places = _places(live)
        discount_places = max(0, -int(BATCH_DISCOUNT.as_tuple().exponent))
        self.batch_places = _places(batch) if self.has_batch_price else self.live_places + discount_places

    def tier(self, input_tokens: int) -> int:
        """Index of the price tier of a request (the library applies a tier above its start)."""
        return bisect.bisect_left(self.thresholds, input_tokens)

    def cost(self, group: _Group) -> tuple[Decimal, Decimal]:
        """(batch, live) cost of a group of requests of one tier, exact to the prices' precision."""
        from genai_prices import calc_price

        usage = group.mean_usage()
        live = calc_price(usage, self.model, provider_id=self.provider_id, genai_request_timestamp=self.when)
        live_cost = live.total_price * group.requests
        if not self.has_batch_price:
            batch_cost = live_cost * BATCH_DISCOUNT
        else:
            batch = calc_price(usage, self.model, provider_id=self.provider_id, genai_request_timestamp=self.when,
                               price_context=_BATCH_CONTEXT)
            batch_cost = batch.total_price * group.requests
        return _rounded(batch_cost, self.batch_places), _rounded(live_cost, self.live_places)

    @property
    def source(self) -> str:
        return "batch price" if self.has_batch_price else f"standard price x {BATCH_DISCOUNT} batch discount"


class CostCounter:
    """Sums the billed results of a job as they stream past, then prices each (model, tier) group once."""

    def __init__(self, job_id: str, provider: str, *, when: datetime) -> None:
        self.job_id = job_id
        self.provider = provider
        self.when = when  # prices in force at that time
        self._known: dict[str, _ModelPrices | str] = {}  # model -> its prices, or why it is unpriced
        self._groups: dict[tuple[str, int], _Group] = {}
        # a model is priced with the provider of its first result (one model name, one provider, in practice)

    def add(self, result: Result) -> None:
        """Count one result (any attempt); only successful ones with usage are billed."""
        if result.outcome is not Outcome.SUCCEEDED or result.usage is None:
            return
        model = result.model or "unknown"
        prices = self._known.get(model)
        if prices is None:
            try:
                prices = self._known[model] = _ModelPrices(model, result.provider or self.provider, self.when)
            except LookupError:
                prices = self._known[model] = "not in genai-prices"
        tier = prices.tier(result.usage.input_tokens) if isinstance(prices, _ModelPrices) else 0
        self._groups.setdefault((model, tier), _Group()).add(result)

    def report(self) -> CostReport:
        from genai_prices import __version__ as prices_version

        models: dict[str, ModelCost] = {}
        for (model, _), group in sorted(self._groups.items()):
            prices = self._known[model]
            entry = models.setdefault(model, ModelCost(model=model))
            entry.requests += group.requests
            entry.input_tokens += group.input_tokens
            entry.cached_input_tokens += group.cached_input_tokens
            entry.output_tokens += group.output_tokens
            if isinstance(prices, str):
                entry.price_source = prices
                continue
            batch, live = prices.cost(group)
            entry.batch_cost = (entry.batch_cost or Decimal(0)) + batch
            entry.live_cost = (entry.live_cost or Decimal(0)) + live
            entry.price_source = prices.source
        priced = [m for m in models.values() if m.priced]
        return CostReport(
            job_id=self.job_id, provider=self.provider, models=list(models.values()),
            batch_cost=sum((m.batch_cost or Decimal(0) for m in priced), Decimal(0)),
            live_cost=sum((m.live_cost or Decimal(0) for m in priced), Decimal(0)),
            unpriced_requests=sum(m.requests for m in models.values() if not m.priced),
            prices=f"genai-prices {prices_version}",
        )


def token_prices(model: str, provider: str, *, when: datetime) -> tuple[Decimal, Decimal, Decimal] | None:
    """USD batch prices of one input, cached input and output token of a model (its base tier), or None when
    genai-prices does not know it: what the gateway books per request as results are ingested, where pricing
    each result through the library would cost too much time."""
    from genai_prices.types import TieredPrices

    try:
        info, _ = _find_model(model, provider)
    except LookupError:
        return None
    has_batch_price = any(v.when == _BATCH_CONTEXT for v in info.price_variants or ())
    prices = info.get_prices(when, _BATCH_CONTEXT) if has_batch_price else info.get_prices(when)
    factor = (Decimal(1) if has_batch_price else BATCH_DISCOUNT) / 1_000_000

    def per_token(value: Any) -> Decimal:
        base = value.base if isinstance(value, TieredPrices) else value
        return Decimal(base or 0) * factor

    cached = prices.cache_read_mtok if prices.cache_read_mtok is not None else prices.input_mtok
    return per_token(prices.input_mtok), per_token(cached), per_token(prices.output_mtok)


def price_results(job_id: str, provider: str, results: Iterable[Result], *, when: datetime) -> CostReport:
    """Price the billed results among ``results`` (every attempt of a job) at the prices in force ``when``."""
    counter = CostCounter(job_id, provider, when=when)
    for result in results:
        counter.add(result)
    return counter.report()


async def job_cost(store: Store | BatchManager, job_id: str) -> CostReport:
    """The cost report of a job from the store (or a manager's store), at the prices in force when the job was
    submitted.

    Every attempt is read from the store in pages and counted as it passes (memory stays flat); each result is
    priced with its own provider's prices (a job may span providers).
    """
    source: Store = store if not hasattr(store, "store") else store.store
    job = await source.get_job(job_id, with_counts=False)
    counter = CostCounter(job.id, job.provider, when=datetime.fromtimestamp(job.created_at, tz=UTC))
    async for result in read_results(source, job_id, all_attempts=True):
        counter.add(result)
    return counter.report()
