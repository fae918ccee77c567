"""The LiteLLM-style helpers against the emulator over loopback, with a real store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from asyncbatch import AuthenticationError, JobStatus, ValidationError
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.litellm import _status
from asyncbatch.model import Job, RequestCounts
from asyncbatch.providers.base import BatchError
from tests.helpers import API_KEY, chat_line, write_jsonl


def wait_until_ended(helpers: Any, batch_id: str, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while (batch := helpers.batch_completion_retrieve(batch_id)).status not in helpers.TERMINAL_STATUSES:
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)
    return batch


def test_batch_completion_from_message_lists_to_results_file(helpers: Any, emu_thread: Any, tmp_path: Path) -> None:
    messages = [[{"role": "user", "content": f"say {i}"}] for i in range(6)]
    batch = helpers.batch_completion(model="gpt-5.4-mini", messages=messages, temperature=0.1, max_tokens=None,
                                     timeout=600, api_base=emu_thread.openai_base_url)
    # returned once the provider batch exists, as a LiteLLM user expects of a created batch
    assert batch.id.startswith("job_") and batch.status in ("in_progress", "finalizing", "completed")
    assert batch.request_counts["total"] == 6 and batch.provider == "openai"
    assert len(emu_thread.ledger.batches_created()) == 1 and batch.in_progress_at is not None

    batch = wait_until_ended(helpers, batch.id)
    counts = batch.request_counts
    assert batch.status == "completed" and counts["completed"] == 6 and counts.get("failed", 0) == 0
    assert counts.get("no-such-count", 0) == 0 and dict(counts)["total"] == 6
    assert batch.completed_at is not None and batch.created_at <= batch.completed_at and batch.errors is None
    assert batch.output_file_id == f"file-out-{batch.id}" and batch.error_file_id is None

    path = helpers.batch_completion_results(batch_id=batch.id, output_path=tmp_path / "results.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(line["custom_id"] for line in lines) == [f"request-{i:06d}" for i in range(6)]
    first = next(line for line in lines if line["custom_id"] == "request-000002")
    assert first["error"] is None and first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and "say 2" in body["choices"][0]["message"]["content"]
    sent = emu_thread.ledger.batches_created()
    assert len(sent) == 1 and sent[0].endpoint == "/v1/chat/completions"


def test_litellm_files_and_batches_workflow_runs_unchanged(
    helpers: Any, emu_thread: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code of LiteLLM's batch docs, with ``import asyncbatch as litellm`` as the only change."""
    import asyncbatch as litellm

    monkeypatch.setenv("OPENAI_BASE_URL", emu_thread.openai_base_url)
    source = write_jsonl(tmp_path / "batch.jsonl", [chat_line(f"req-{i}", f"hello {i}") for i in range(3)]
                         + [chat_line("broken", "[[fail:400]]")])

    file_obj = litellm.create_file(file=open(source, "rb"), purpose="batch", custom_llm_provider="openai")  # noqa: SIM115
    assert file_obj.id.startswith("file-") and file_obj.bytes == source.stat().st_size
    create_batch_response = litellm.create_batch(
        completion_window="24h", endpoint="/v1/chat/completions", input_file_id=file_obj.id,
        custom_llm_provider="openai", metadata={"key1": "value1", "key2": "value2"},
    )
    retrieved_batch = litellm.retrieve_batch(batch_id=create_batch_response.id, custom_llm_provider="openai")
    assert retrieved_batch.id == create_batch_response.id and retrieved_batch.input_file_id == file_obj.id
    batch = wait_until_ended(litellm.litellm, retrieved_batch.id)
    assert batch.status == "completed" and batch.metadata is not None and batch.metadata["key1"] == "value1"
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 1

    output = litellm.file_content(file_id=batch.output_file_id, custom_llm_provider="openai")
    assert sorted(json.loads(line)["custom_id"] for line in output.text.splitlines()) == ["req-0", "req-1", "req-2"]
    errors = litellm.file_content(file_id=batch.error_file_id).text.splitlines()
    failed = json.loads(errors[0])
    assert len(errors) == 1 and failed["custom_id"] == "broken" and failed["response"]["status_code"] == 400
    assert litellm.file_content(file_id=file_obj.id).content == source.read_bytes()

    listed = litellm.list_batches(custom_llm_provider="openai", limit=2)
    assert [b.id for b in listed.data] == [batch.id] and listed.has_more is False
    assert batch.model_dump()["request_counts"]["total"] == 4


def test_mixed_chat_and_embeddings_lines_just_work(helpers: Any, emu_thread: Any, tmp_path: Path) -> None:
    lines = [chat_line(f"c{i}") for i in range(3)]
    lines += [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "text-embedding-3-small", "input": f"text {i}"}} for i in range(2)]
    source = write_jsonl(tmp_path / "mixed.jsonl", lines)
    batch = helpers.batch_completion_create(input_file_path=source, endpoint="/v1/chat/completions",
                                            completion_window="24h", metadata={"kind": "mixed"},
                                            api_base=emu_thread.openai_base_url)
    batch = wait_until_ended(helpers, batch.id)
    assert batch.status == "completed" and batch.request_counts["completed"] == 5 and batch.endpoint == "*"
    assert sorted(b.endpoint for b in emu_thread.ledger.batches_created()) == [
        "/v1/chat/completions", "/v1/embeddings"]
    # a file whose lines all match the endpoint keeps it
    same = helpers.batch_completion_create(input_file_path=write_jsonl(tmp_path / "chat.jsonl", lines[:3]),
                                           endpoint="/v1/chat/completions", api_base=emu_thread.openai_base_url)
    assert same.endpoint == "/v1/chat/completions"
    assert wait_until_ended(helpers, same.id).status == "completed"


def test_provider_follows_the_model_name_or_the_explicit_argument(
    helpers: Any, emu_thread: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", emu_thread.anthropic_base_url)
    monkeypatch.setenv("OPENAI_BASE_URL", emu_thread.openai_base_url)
    chat = [[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]]
    claude = helpers.batch_completion(model="claude-haiku-4-5", messages=chat, max_tokens=50)
    prefixed = helpers.batch_completion(model="anthropic/claude-haiku-4-5", messages=chat, max_tokens=50)
    forced = helpers.batch_completion(model="gpt-5.4-mini", messages=chat, custom_llm_provider="openai")
    assert (claude.provider, prefixed.provider, forced.provider) == ("anthropic", "anthropic", "openai")
    claude = wait_until_ended(helpers, claude.id)
    assert claude.status == "completed" and claude.request_counts["completed"] == 1
    line = json.loads(helpers.file_content(claude.output_file_id).text)
    assert line["response"]["body"]["object"] == "chat.completion"  # Anthropic's reply in OpenAI's format
    assert helpers.provider_for_model("openai/gpt-5.4") == ("openai", "gpt-5.4")
    assert {wait_until_ended(helpers, b.id).status for b in (prefixed, forced)} == {"completed"}


def test_list_pages_newest_first(helpers: Any, emu_thread: Any) -> None:
    ids = [helpers.batch_completion(model="gpt-5.4-mini", messages=[[{"role": "user", "content": str(i)}]],
                                    api_base=emu_thread.openai_base_url).id for i in range(3)]
    page = helpers.batch_completion_list(limit=2)
    assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more and page.last_id == ids[1]
    rest = helpers.batch_completion_list(limit=2, after=page.last_id)
    assert [b.id for b in rest.data] == [ids[0]] and not rest.has_more
    assert {wait_until_ended(helpers, batch_id).status for batch_id in ids} == {"completed"}


def test_cancel_goes_through_cancelling_to_cancelled(helpers: Any, emu_thread: Any) -> None:
    emu_thread.config.complete_after = 30
    batch = helpers.batch_completion(model="gpt-5.4-mini", messages=[[{"role": "user", "content": "x"}]] * 4,
                                     api_base=emu_thread.openai_base_url)
    deadline = time.monotonic() + 10
    while not emu_thread.ledger.batches_created():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cancelled = helpers.cancel_batch(batch_id=batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    batch = wait_until_ended(helpers, batch.id)
    assert batch.status == "cancelled" and batch.request_counts["cancelled"] == 4 and batch.cancelled_at
    assert emu_thread.ledger.totals().billed == 0


def test_a_job_left_by_a_dead_process_is_resumed_by_retrieve(helpers: Any, emu_thread: Any) -> None:
    helpers.settings.drive = False  # "the process dies" right after submitting: nothing drives the job
    batch = helpers.batch_completion(model="gpt-5.4-mini", messages=[[{"role": "user", "content": "x"}]] * 3,
                                     api_base=emu_thread.openai_base_url)
    helpers.shutdown()
    assert helpers.batch_completion_retrieve(batch.id).status == "validating"
    assert not emu_thread.ledger.batches_created()
    helpers.settings.drive = True  # a new session: retrieving the batch resumes it
    assert wait_until_ended(helpers, batch.id).status == "completed"


def test_a_drive_that_fails_is_reported_by_the_call_that_waits_for_it_without_the_key(
    tmp_path: Path, helpers: Any
) -> None:
    from asyncbatch.emulator import EmulatorThread

    with EmulatorThread(EmulatorConfig(api_keys=["sk-the-right-one"]), data_dir=tmp_path / "emu") as emu:
        with pytest.raises(AuthenticationError) as caught:  # the batch could not be created: said at once
            helpers.batch_completion(model="gpt-5.4-mini", messages=[[{"role": "user", "content": "x"}]],
                                     api_base=emu.openai_base_url, api_key=API_KEY)
        assert not emu.ledger.batches_created()
        (stored,) = helpers.batch_completion_list().data  # kept, and resumable once the key is right
        assert stored.status == "validating"  # nothing reached the provider
    assert API_KEY not in str(caught.value) and "SECRET" not in repr(caught.value)


def test_invalid_input_is_refused_before_anything_is_stored(helpers: Any, emu_thread: Any, tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_line("a"), chat_line("a")])
    with pytest.raises(ValidationError, match="duplicate custom_id"):
        helpers.batch_completion_create(input_file_path=bad, api_base=emu_thread.openai_base_url)
    with pytest.raises(ValidationError):
        helpers.batch_completion(model="gpt-5.4-mini", messages=[[{"role": "user", "content": "x"}]],
                                 custom_ids=["one", "two"])
    assert helpers.batch_completion_list().data == []


def test_default_store_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from asyncbatch.litellm import default_db_path

    monkeypatch.delenv("ASYNCBATCH_DB", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_db_path() == tmp_path / "data" / "asyncbatch" / "jobs.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_db_path() == tmp_path / "home" / ".local" / "share" / "asyncbatch" / "jobs.db"
    monkeypatch.setenv("ASYNCBATCH_DB", str(tmp_path / "mine.db"))
    assert default_db_path() == tmp_path / "mine.db"


def test_status_words_follow_openai() -> None:
    def job(status: JobStatus, **counts: int) -> Job:
        return Job(id="j", provider="openai", base_url=None, endpoint="*", completion_window="24h", max_attempts=3,
                   metadata={}, status=status, created_at=0, updated_at=0, counts=RequestCounts(**counts))

    rejected = [BatchError(code="token_limit_exceeded", message="Enqueued token limit reached")]
    assert _status(job(JobStatus.OPEN, total=2, pending=2), RequestCounts(), []) == "validating"
    running = job(JobStatus.RUNNING, total=2, in_flight=1, completed=1)
    assert _status(running, running.counts, []) == "in_progress"
    finishing = job(JobStatus.RUNNING, total=2, completed=2)
    assert _status(finishing, finishing.counts, []) == "finalizing"
    running.cancel_requested = True
    assert _status(running, running.counts, []) == "cancelling"
    some_failed = job(JobStatus.DONE, total=2, completed=1, failed=1)
    assert _status(some_failed, some_failed.counts, []) == "completed"
    all_rejected = job(JobStatus.DONE, total=2, failed=2)
    assert _status(all_rejected, all_rejected.counts, rejected) == "failed"
    assert _status(job(JobStatus.CANCELLED), RequestCounts(), []) == "cancelled"


async def test_async_forms_inside_an_event_loop(helpers: Any, tmp_path: Path) -> None:
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        batch = await helpers.abatch_completion(model="gpt-5.4-mini", api_base=emu.openai_base_url,
                                                messages=[[{"role": "user", "content": f"q{i}"}] for i in range(4)])
        with anyio.fail_after(30):
            while True:  # the LiteLLM way: poll retrieve until the batch has ended
                batch = await helpers.aretrieve_batch(batch.id)
                if batch.status == "completed":
                    break
                await anyio.sleep(0.05)
        path = await helpers.abatch_completion_results(batch.id, tmp_path / "out.jsonl")
        report = await helpers.abatch_completion_cost(batch.id)
        listed = await helpers.alist_batches()
    assert len(path.read_text().splitlines()) == 4
    assert report.batch_cost > 0 and report.savings > 0 and not report.unpriced_models
    assert [b.id for b in listed.data] == [batch.id]
    assert helpers.abatch_completion.__name__ == "abatch_completion"
    assert helpers.batch_completion.__doc__.startswith("Blocking form of ``abatch_completion``")


def test_nothing_listening_at_the_base_url_is_said_within_seconds(helpers: Any) -> None:
    import socket

    from asyncbatch.errors import ConnectionFailedError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError, match="cannot reach") as caught:
        helpers.batch_completion(model="gpt-5.4-mini", messages=[[{"role": "user", "content": "x"}]],
                                 api_base=f"http://127.0.0.1:{port}/v1", api_key=API_KEY)
    assert time.monotonic() - started < 15 and "kept and tried again" in str(caught.value)
    (stored,) = helpers.batch_completion_list().data
    assert stored.status == "validating"  # nothing reached a provider; the job stays, resumable
