"""What the gateway does, route by route, over a ``BatchManager`` and the store's gateway tables.

A client batch is a job: created from an uploaded file once every line's model is one of the config's and one
the caller's key may use (else the batch is ``failed`` with the lines named, and nothing is stored or sent), run
by the engine (in this process or in ``asyncbatch worker`` processes on the same store), and read back through
the job. When the job ends, the batch's counts and its output and error files are fixed in one transaction.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import anyio
import msgspec

from ..cost import token_prices
from ..errors import AsyncBatchError, DuplicateCustomIdError, JSONLError, ProviderError, ValidationError
from ..manager import BatchManager
from ..model import BatchError, GatewayBatch, GatewayFile, Job, JobStatus, RoutePrice, VirtualKey
from ..providers.openai import OPENAI_ENDPOINTS
from ..validation import check_metadata
from . import ids
from .config import ALL_MODELS, ProxyConfig
from .files import Backend, measure_outputs, output_lines
from .keys import Caller, is_master, key_caller, master_caller, token_of
from .objects import ApiError, CreateBatchBody, batch_object, not_found

log = logging.getLogger("asyncbatch.gateway")

MAX_LINE_ERRORS = 10  # lines named in a failed batch's errors, as OpenAI does
STALE_UPLOAD = 3600.0  # an upload unfinished for this long was cut off (its process killed)
STALE_CREATE = 600.0  # a batch still being created this long after it began was cut off
COMPLETION_WINDOWS = ("24h",)


class _ModelHead(msgspec.Struct):
    model: Any = None


class _LineHead(msgspec.Struct):
    custom_id: Any = None
    body: _ModelHead | None = None


_line_head = msgspec.json.Decoder(_LineHead)


class Gateway:
    """The gateway's operations for one process; every piece of state is in ``manager.store``."""

    def __init__(self, manager: BatchManager, config: ProxyConfig) -> None:
        self.manager = manager
        self.config = config
        self.store = cast(Backend, manager.store)
        self.master = master_caller()
        self.workdir = Path(manager.spool_dir) / "gateway"
        self.stale_create = STALE_CREATE

    async def prepare(self) -> None:
        """Before serving: this config's prices, and what a killed process left half-done cleaned up (uploads
        never finished, batches whose creation was cut off)."""
        await self.store.set_prices(self._prices())
        await self.store.drop_uploads(before=time.time() - STALE_UPLOAD)
        for batch in await self.store.validating_batches():
            await self._cut_off(batch)

    async def _cut_off(self, batch: GatewayBatch) -> GatewayBatch:
        """A batch still ``validating`` long after it was created: its creation was cut off (the process that
        made it was killed). If its job was stored, the job runs (it may have started already): the batch is
        submitted. If not, nothing was stored or sent, and the client, who never got an answer, may have
        created it again: running it now would pay twice, so it fails, saying so."""
        if batch.status != "validating" or time.time() - batch.created_at < self.stale_create:
            return batch
        try:
            await self.store.get_job(batch.job_id, with_counts=False)
        except KeyError:
            await self.store.batch_failed(batch.id, [BatchError(code="creation_interrupted", message=(
                "the gateway stopped while this batch was being created; nothing was sent: create it again"))],
                time.time())
        else:
            await self.store.batch_submitted(batch.id)
        found = await self.store.get_batch(batch.id, batch.owner)
        assert found is not None
        return found

    def _prices(self) -> list[RoutePrice]:
        now = datetime.now(UTC)
        prices = []
        for name, entry in self.config.models.items():
            found = token_prices(entry.model, entry.provider, when=now)
            if found is None:
                log.warning("model %s (%s/%s) is unknown to genai-prices: its batches are not counted against "
                            "budgets", name, entry.provider, entry.model)
                continue
            prices.append(RoutePrice(route=name, input=float(found[0]), cached_input=float(found[1]),
                                     output=float(found[2])))
        return prices

    # --- callers -------------------------------------------------------------------------------------------

    async def caller(self, key: str | None) -> Caller:
        if key is None:
            raise ApiError(401, "You didn't provide an API key. Provide it in the Authorization header as "
                           "'Authorization: Bearer YOUR_KEY'.", code="invalid_api_key")
        if is_master(key, self.config.master_key):
            return self.master
        record = await self.store.get_key(token_of(key))
        if record is None:
            raise ApiError(401, "Incorrect API key provided. The key is unknown to this gateway, or was deleted.",
                           code="invalid_api_key")
        return key_caller(record)

    def models_for(self, caller: Caller) -> list[str]:
        return [name for name in self.config.models if caller.may_use(name)]

    # --- files ---------------------------------------------------------------------------------------------

    async def file(self, caller: Caller, file_id: str) -> GatewayFile:
        found = await self.store.get_file(file_id, caller.owner)
        if found is None:
            raise not_found("file", file_id)
        return found

    async def content(self, caller: Caller, file_id: str) -> tuple[GatewayFile, AsyncIterator[bytes]]:
        file = await self.file(caller, file_id)
        if file.kind == "upload":
            return file, self.store.file_chunks(file.id)
        assert file.batch_id is not None
        batch = await self.store.get_batch(file.batch_id, caller.owner)
        if batch is None:
            raise not_found("file", file_id)
        job = await self.store.get_job(batch.job_id, with_counts=False)
        return file, output_lines(self.store, batch, job, file.kind)

    # --- batches -------------------------------------------------------------------------------------------

    async def create_batch(self, caller: Caller, body: CreateBatchBody) -> GatewayBatch:
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(getattr(body, name), str):
                raise ApiError(400, f"Missing required parameter: '{name}'.", param=name)
        endpoint, window = str(body.endpoint), str(body.completion_window)
        if endpoint not in OPENAI_ENDPOINTS:
            raise ApiError(400, f"Invalid value for 'endpoint': {endpoint!r}. Supported values are: "
                           f"{', '.join(OPENAI_ENDPOINTS)}.", param="endpoint")
        if window not in COMPLETION_WINDOWS:
            raise ApiError(400, f"Invalid value for 'completion_window': {window!r}. Supported values are: "
                           f"{', '.join(COMPLETION_WINDOWS)}.", param="completion_window")
        metadata = self._metadata(body.metadata)
        source = await self.store.get_file(str(body.input_file_id), caller.owner)
        if source is None:
            raise not_found("file", str(body.input_file_id), param="input_file_id")
        if source.kind != "upload":
            raise ApiError(400, f"File {source.id} is a batch's output, not a batch input file.",
                           param="input_file_id")
        await self._check_budget(caller)
        batch_id = ids.batch_id()
        batch = GatewayBatch(id=batch_id, owner=caller.owner, key_token=caller.token, input_file_id=source.id,
                             endpoint=endpoint, completion_window=window, metadata=metadata,
                             job_id=ids.job_id(batch_id), status="validating", created_at=time.time())
        await self.store.add_batch(batch)
        await self._submit(batch, caller)
        return await self.batch(caller, batch.id)

    @staticmethod
    def _metadata(value: object) -> dict[str, str] | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ApiError(400, "Invalid type for 'metadata': expected an object.", param="metadata")
        try:
            return check_metadata(value)
        except ValidationError as exc:
            raise ApiError(400, f"Invalid 'metadata': {exc.reason}", param=exc.field or "metadata") from None

    async def _check_budget(self, caller: Caller) -> None:
        if caller.max_budget is None:
            return
        spent = (await self.store.key_usage(caller.token)).cost
        if spent >= caller.max_budget:
            raise ApiError(429, f"Budget has been exceeded: this key has spent ${spent:.6f} of its max_budget of "
                           f"${caller.max_budget:g} on batches.", type="budget_exceeded", code="budget_exceeded")

    async def _submit(self, batch: GatewayBatch, caller: Caller) -> None:
        """Check every line's model and store the batch's job; or fail the batch naming the lines."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.workdir, prefix=f"{batch.id}-", suffix=".jsonl")
        os.close(fd)
        path = Path(name)
        try:
            errors, models = await self._copy_checked(batch, caller, path)
            if not errors:
                errors = self._missing_keys(models)
            if errors:
                await self.store.batch_failed(batch.id, errors, time.time())
                return
            try:
                await self.manager.submit(
                    path, endpoint=None, completion_window=batch.completion_window, metadata=batch.metadata,
                    job_id=batch.job_id, owner=batch.owner, check_keys=False,
                    provider=next(iter(self.config.models.values())).provider,
                    warn=lambda message: log.info("batch %s: %s", batch.id, message),  # its client cannot act on it
                )
            except ValidationError as exc:
                await self.store.batch_failed(batch.id, [BatchError(
                    code=_error_code(exc), message=exc.reason, line=exc.line, param=_param(exc.field))], time.time())
                return
            await self.store.batch_submitted(batch.id)
        finally:
            path.unlink(missing_ok=True)

    async def _copy_checked(self, batch: GatewayBatch, caller: Caller, path: Path) -> tuple[list[BatchError], set[str]]:
        """Write the input file from the store to ``path`` (what ``submit`` reads), checking every line's model
        on the way; returns the line errors (at most ``MAX_LINE_ERRORS``) and the models used."""
        errors: list[BatchError] = []
        models: set[str] = set()
        number = 0
        rest = b""
        async with await anyio.open_file(path, "wb") as out:
            async for chunk in self.store.file_chunks(batch.input_file_id):
                await out.write(chunk)
                data = rest + chunk
                lines = data.split(b"\n")
                rest = lines.pop()
                for raw in lines:
                    number += 1
                    self._check_line(number, raw, caller, errors, models)
            if rest:
                self._check_line(number + 1, rest, caller, errors, models)
        return errors[:MAX_LINE_ERRORS], models

    def _check_line(self, number: int, raw: bytes, caller: Caller, errors: list[BatchError], models: set[str]) -> None:
        if len(errors) >= MAX_LINE_ERRORS or not raw.strip():
            return
        try:
            head = _line_head.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return  # the line's shape is for submit to report, with the same line number
        model = head.body.model if head.body is not None else None
        if not isinstance(model, str) or model not in self.config.models:
            errors.append(BatchError(code="model_not_found", line=number, param="body.model", message=(
                f"The model {model!r} is not served by this gateway (its models: {', '.join(self.config.models)})."
            )))
        elif not caller.may_use(model):
            errors.append(BatchError(code="model_not_allowed", line=number, param="body.model",
                                     message=f"This key may not use the model {model!r}."))
        else:
            models.add(model)

    def _missing_keys(self, models: set[str]) -> list[BatchError]:
        """A model whose provider key the gateway lacks would fail at the provider: say so now instead."""
        errors = []
        for model in sorted(models):
            try:
                self.manager.pool.get(self.config.models[model].route.spec).check_key()
            except ProviderError:
                errors.append(BatchError(code="model_unavailable", param="body.model", message=(
                    f"The gateway has no provider key for the model {model!r}; ask its operator.")))
        return errors

    async def batch(self, caller: Caller, batch_id: str) -> GatewayBatch:
        found = await self.store.get_batch(batch_id, caller.owner)
        if found is None:
            raise not_found("batch", batch_id, param="batch_id")
        return found

    async def view(self, batch: GatewayBatch) -> Any:
        """The Batch object: read from the job while it runs; once the job ended, fixed with its files."""
        job: Job | None = None
        batch = await self._cut_off(batch)
        if batch.status == "submitted":
            job = await self.store.get_job(batch.job_id)
            if job.status.is_terminal:
                batch = await self._end(batch, job)
        usage = await self.store.batch_usage(batch.id)
        return batch_object(batch, job, usage)

    async def _end(self, batch: GatewayBatch, job: Job) -> GatewayBatch:
        """Fix the batch's counts and make its output and error files (each only when it has lines), once."""
        sizes = await measure_outputs(self.store, batch, job)
        now = time.time()
        files = [
            GatewayFile(id=ids.file_id(), owner=batch.owner, purpose="batch_output",
                        filename=f"{batch.id}_{kind}.jsonl", created_at=now, bytes=size, lines=lines,
                        batch_id=batch.id, kind=kind)
            for kind, (lines, size) in sizes.items() if lines
        ]
        by_kind = {f.kind: f.id for f in files}
        counts = job.counts
        ended = msgspec.structs.replace(
            batch, status="cancelled" if job.status is JobStatus.CANCELLED else "completed", ended_at=now,
            output_file_id=by_kind.get("output"), error_file_id=by_kind.get("error"), total=counts.total,
            completed=counts.completed, failed=counts.failed + counts.cancelled,
        )
        if await self.store.batch_ended(ended, files):
            return ended
        again = await self.store.get_batch(batch.id, batch.owner)  # another process ended it first
        assert again is not None
        return again

    async def list_batches(self, caller: Caller, *, after: str | None, limit: int) -> tuple[list[Any], bool]:
        if after is not None and await self.store.get_batch(after, caller.owner) is None:
            raise ApiError(400, f"Invalid value for 'after': no batch with id {after!r}.", param="after")
        found = await self.store.list_batches(caller.owner, after=after, limit=limit + 1)
        return [await self.view(batch) for batch in found[:limit]], len(found) > limit

    async def cancel(self, caller: Caller, batch_id: str) -> Any:
        batch = await self.batch(caller, batch_id)
        job = await self.store.get_job(batch.job_id) if batch.status == "submitted" else None
        if job is None or job.status.is_terminal:
            status = (await self.view(batch)).status
            if status in ("cancelling", "cancelled"):
                return await self.view(batch)
            raise ApiError(409, f"Cannot cancel a batch with status '{status}'.")
        await self.store.batch_cancelling(batch.id, time.time())
        try:
            await self.manager.cancel(batch.job_id)
        except AsyncBatchError as exc:  # the cancel is recorded; the engine asks the providers again
            log.warning("batch %s: cancel: %s", batch.id, exc)
        return await self.view(await self.batch(caller, batch_id))

    # --- keys (master key only) ----------------------------------------------------------------------------

    def check_models(self, models: list[str]) -> None:
        unknown = [m for m in models if m not in self.config.models and m != ALL_MODELS]
        if unknown:
            raise ApiError(400, f"Unknown models {unknown}: a key may only be given models of the config "
                           f"({', '.join(self.config.models)}).", param="models")

    async def key_info(self, key: VirtualKey) -> dict[str, Any]:
        usage = await self.store.key_usage(key.token)
        return {"token": key.token, "team_id": key.team_id, "models": key.models, "max_budget": key.max_budget,
                "spend": usage.cost, "metadata": key.metadata, "created_at": key.created_at}


def _error_code(exc: ValidationError) -> str:
    if isinstance(exc, DuplicateCustomIdError):
        return "duplicate_custom_id"
    if isinstance(exc, JSONLError):
        return "invalid_json_line"
    return "invalid_request"


def _param(field: str | None) -> str | None:
    if field is None or field in ("custom_id", "method", "url") or field.startswith("body"):
        return field
    return f"body.{field}"
