"""Batches through the gateway with the official openai SDK: lifecycles on OpenAI and Anthropic upstreams, a
mixed file as one batch, cancel, paging, and the errors OpenAI answers (413, a bad line, an unknown id)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from asyncbatch.emulator import Emulator
from tests.gateway.conftest import Gateway, chat, embed, proxy_yaml, read_lines, running, upload, wait_for


async def test_a_full_lifecycle_on_an_openai_upstream(gateway: Gateway, emu: Emulator) -> None:
    client = gateway.client(await gateway.new_key(team_id="search"))
    file_id = await upload(client, [chat(f"req-{i}", f"question {i}") for i in range(25)])
    assert file_id.startswith("file-")
    info = await client.files.retrieve(file_id)
    assert info.purpose == "batch" and info.filename == "input.jsonl" and info.bytes > 0

    batch = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"project": "p1"})
    assert batch.id.startswith("batch_") and batch.status in ("validating", "in_progress", "finalizing")
    assert batch.metadata == {"project": "p1"} and batch.input_file_id == file_id

    done = await wait_for(client, batch.id)
    assert done.status == "completed", done
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (25, 25, 0)
    assert done.error_file_id is None and done.output_file_id is not None
    assert done.completed_at is not None and done.usage is not None and done.usage.input_tokens > 0
    lines = await read_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"req-{i}" for i in range(25))
    for line in lines:
        assert line["id"].startswith("batch_req_") and line["error"] is None
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"]["object"] == "chat.completion"
    output = await client.files.retrieve(done.output_file_id)
    served = (await client.files.content(done.output_file_id)).content
    assert output.purpose == "batch_output" and output.bytes == len(served)
    with pytest.raises(openai.ConflictError, match="Cannot cancel a batch with status 'completed'"):
        await client.batches.cancel(batch.id)
    (created,) = emu.ledger.batches_created()
    assert created.provider == "openai"
    # the client's ids carry nothing of the provider's
    assert all(created.id not in value for value in (done.id, done.output_file_id, *(x["id"] for x in lines)))


async def test_a_full_lifecycle_on_an_anthropic_upstream(gateway: Gateway, emu: Emulator) -> None:
    client = gateway.client(await gateway.new_key())
    file_id = await upload(client, [chat(f"c-{i}", f"poem {i}", model="claude-sonnet") for i in range(6)])
    batch = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    done = await wait_for(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 6 and done.output_file_id is not None
    (created,) = emu.ledger.batches_created()
    assert created.provider == "anthropic"
    lines = await read_lines(client, done.output_file_id)
    assert sorted(line["custom_id"] for line in lines) == [f"c-{i}" for i in range(6)]
    for line in lines:  # a Claude answer to a chat line is a chat.completion
        body = line["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]


async def test_a_mixed_file_of_two_providers_and_two_endpoints_is_one_batch_with_one_output_file(
    gateway: Gateway, emu: Emulator
) -> None:
    client = gateway.client(await gateway.new_key())
    lines: list[dict[str, Any]] = [chat("chat-1", "Hello"), embed("embed-1"), chat("claude-1", "Hi", "claude-sonnet"),
                                   embed("embed-2", "more text"), chat("chat-2", "Bye")]
    file_id = await upload(client, lines, "mixed_batch.jsonl")
    batch = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                        completion_window="24h")
    done = await wait_for(client, batch.id)
    assert done.status == "completed" and done.endpoint == "/v1/chat/completions"
    assert done.request_counts is not None and done.request_counts.completed == 5
    # three provider batches: OpenAI chat, OpenAI embeddings, Anthropic
    assert sorted(b.provider for b in emu.ledger.batches_created()) == ["anthropic", "openai", "openai"]
    assert done.output_file_id is not None
    by_id = {line["custom_id"]: line["response"]["body"] for line in await read_lines(client, done.output_file_id)}
    assert set(by_id) == {"chat-1", "embed-1", "claude-1", "embed-2", "chat-2"}
    assert by_id["embed-1"]["object"] == "list" and by_id["embed-1"]["data"][0]["embedding"]
    assert by_id["claude-1"]["object"] == by_id["chat-1"]["object"] == "chat.completion"


async def test_failures_go_to_the_error_file_after_their_retries(gateway: Gateway, emu: Emulator) -> None:
    client = gateway.client(await gateway.new_key())
    lines = [chat("ok-1"), chat("bad-1", "[[fail:400]]"), chat("flaky-1", "[[fail_attempts:1]]"), chat("ok-2")]
    batch = await client.batches.create(input_file_id=await upload(client, lines), endpoint="/v1/chat/completions",
                                        completion_window="24h")
    done = await wait_for(client, batch.id)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 1)
    assert done.output_file_id and done.error_file_id
    assert sorted(x["custom_id"] for x in await read_lines(client, done.output_file_id)) == ["flaky-1", "ok-1", "ok-2"]
    (error,) = await read_lines(client, done.error_file_id)
    assert error["custom_id"] == "bad-1" and error["response"]["status_code"] == 400


async def test_cancel(gateway: Gateway, emu: Emulator) -> None:
    emu.config.complete_after = 3600  # the batch stays in progress until cancelled
    client = gateway.client(await gateway.new_key())
    batch = await client.batches.create(input_file_id=await upload(client, [chat(f"r{i}") for i in range(4)]),
                                        endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(500):  # cancel a batch running upstream
        if emu.ledger.batches_created():
            break
        await anyio.sleep(0.02)
    cancelled = await client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled") and cancelled.cancelling_at is not None
    done = await wait_for(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None and done.request_counts.completed == 0
    assert done.output_file_id is None and done.error_file_id is not None
    assert {x["custom_id"] for x in await read_lines(client, done.error_file_id)} == {"r0", "r1", "r2", "r3"}
    assert (await client.batches.cancel(batch.id)).status == "cancelled"  # asking again changes nothing


async def test_a_creation_cut_off_by_a_kill_is_settled_at_restart(emu: Emulator, tmp_path: Path) -> None:
    """A batch left ``validating`` by a killed process: run if its job was stored, else failed (its client never
    got an answer and may have created it again: running it too would pay twice)."""
    config, db = tmp_path / "proxy.yaml", tmp_path / "gateway.db"
    config.write_text(proxy_yaml(emu))
    async with running(config, db) as gateway:
        key = await gateway.new_key(team_id="t")
        client = gateway.client(key)
        file_id = await upload(client, [chat("a"), chat("b")])
        stored = await client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                             completion_window="24h")
        await wait_for(client, stored.id)
    with sqlite3.connect(db) as conn:  # as a kill would have left them, an hour ago
        conn.execute("UPDATE gateway_batches SET status = 'validating', created_at = created_at - 3600, "
                     "output_file_id = NULL WHERE id = ?", (stored.id,))
        conn.execute("INSERT INTO gateway_batches (id, owner, key_token, input_file_id, endpoint, completion_window,"
                     " job_id, status, created_at) SELECT 'batch_lost', owner, key_token, input_file_id, endpoint,"
                     " completion_window, 'job_lost', 'validating', created_at FROM gateway_batches WHERE id = ?",
                     (stored.id,))
    async with running(config, db) as gateway:
        client = gateway.client(key)
        lost = await client.batches.retrieve("batch_lost")
        assert lost.status == "failed" and lost.errors and lost.errors.data
        assert lost.errors.data[0].code == "creation_interrupted"
        again = await client.batches.retrieve(stored.id)
        assert again.status == "completed" and again.request_counts and again.request_counts.completed == 2
    assert len(emu.ledger.batches_created()) == 1  # nothing ran twice
