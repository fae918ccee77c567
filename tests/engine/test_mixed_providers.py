"""One job, many providers: each request's model picks its provider, shards are cut per provider, and every
result comes back under the user's custom_id, billed once, in one results file."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from asyncbatch import BatchManager, JobStatus
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.export import write_results
from asyncbatch.providers.openai import OpenAIProvider
from tests.helpers import API_KEY, chat_line, verify_exactly_once

MODELS = {  # as users write them (LiteLLM's provider/model names, and a bare claude-* name)
    "openai": "gpt-5.4-mini",
    "anthropic": "claude-haiku-4-5",
    "gemini": "gemini/gemini-2.5-flash",
    "mistral": "mistral/mistral-small-latest",
}


async def test_a_job_spanning_openai_anthropic_gemini_and_mistral(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    lines = [chat_line(f"{name}-{i}", f"question {i} for {name}", model=model, max_tokens=20)
             for name, model in MODELS.items() for i in range(25)]
    lines.append({"custom_id": "embed-0", "method": "POST", "url": "/v1/embeddings",
                  "body": {"model": "text-embedding-3-small", "input": "one job, any endpoint"}})
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(fail_rate=0.1, seed=7), data_dir=tmp_path / "emu") as emu:
        for name, url in (("ANTHROPIC", emu.anthropic_base_url), ("GEMINI", emu.gemini_base_url),
                          ("MISTRAL", emu.mistral_base_url)):
            monkeypatch.setenv(f"{name}_BASE_URL", url)
            monkeypatch.setenv(f"{name}_API_KEY", API_KEY)
        openai = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db, provider=openai, poll_interval=0.02, max_poll_interval=0.1) as bm:
            job = await bm.submit(lines, max_attempts=5)
            assert sorted(job.routes) == ["anthropic", "gemini", "mistral", "openai"]
            assert job.routes["gemini"].name == "gemini" and job.routes["openai"].base_url == emu.openai_base_url
            job = await bm.wait(job.id)
            results = {r.custom_id: r async for r in bm.results(job.id)}
            shards = await bm.shards(job.id)
            await write_results(bm, job.id, tmp_path / "out.jsonl", fmt="openai")
        created = emu.ledger.batches_created()
        verify_exactly_once(db, emu.ledger, job.id, expect_all_succeeded=True)
    assert job.status is JobStatus.DONE and job.counts.completed == len(lines)
    assert {r.provider for r in results.values()} == {"openai", "anthropic", "gemini", "mistral"}
    assert all(results[f"{name}-0"].provider == name for name in MODELS)
    assert "question 3 for gemini" in (results["gemini-3"].text or "")
    first_round = [s for s in shards if s.attempt == 1]
    assert Counter(s.route for s in first_round) == {"openai": 2, "anthropic": 1, "gemini": 1, "mistral": 1}
    assert {b.provider for b in created} == {"openai", "anthropic", "gemini", "mistral"}
    # the prefix was taken off: each provider was sent (and answered for) its own model name
    assert {name: results[f"{name}-0"].model for name in MODELS} == {
        "openai": "gpt-5.4-mini", "anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash",
        "mistral": "mistral-small-latest"}
    assert sum(r.attempt > 1 for r in results.values()) >= 5  # failed ones were sent again, per provider
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert len(out) == len(lines) and all(o["response"]["status_code"] == 200 for o in out)
    bodies = {o["custom_id"]: o["response"]["body"] for o in out}
    assert all(bodies[f"{name}-1"]["object"] == "chat.completion" for name in MODELS)  # one format for all
    assert bodies["embed-0"]["object"] == "list"
