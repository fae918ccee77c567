"""The command line as users run it: real subprocesses, a real store file, the emulator over loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from asyncbatch.emulator import EmulatorConfig, run_emulator
from tests.engine.test_crash import cli, cli_env
from tests.helpers import API_KEY, chat_line, write_jsonl

FAST = ("--poll-interval", "0.05", "--max-poll-interval", "0.2")


async def test_submit_run_status_list_results(tmp_path: Path, db_url: str) -> None:
    db = db_url
    lines = [chat_line(f"r{i}") for i in range(6)] + [chat_line("bad", "[[fail:400]]")]
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    async with run_emulator(EmulatorConfig(complete_after=0.2), data_dir=tmp_path / "emu") as emu:
        code, out, err = await cli("submit", str(path), "--db", str(db), "--base-url", emu.openai_base_url,
                                   "--endpoint", "/v1/chat/completions", "--metadata", "team=search", "run=7",
                                   "--max-attempts", "2")
        assert code == 0, err
        job_id = out.strip().splitlines()[-1]
        assert job_id.startswith("job_")
        assert emu.ledger.totals().files == 0  # submit stores and validates; it sends nothing

        code, out, err = await cli("status", job_id, "--db", str(db), "--json")
        status = json.loads(out)
        assert code == 0 and status["status"] == "open" and status["counts"]["total"] == 7
        assert status["metadata"] == {"team": "search", "run": "7"} and status["max_attempts"] == 2

        code, out, err = await cli("run", "--db", str(db), *FAST)
        assert code == 0, err
        assert f"{job_id} done: 6 succeeded, 1 failed" in out
        assert emu.ledger.batches_created()[0].metadata is not None
        assert emu.ledger.batches_created()[0].metadata["team"] == "search"

        code, out, _ = await cli("status", job_id, "--db", str(db))
        assert code == 0 and "done" in out and "6 succeeded, 1 failed" in out
        code, out, _ = await cli("list", "--db", str(db))
        assert code == 0 and job_id in out and "6/7 succeeded" in out

        code, _, err = await cli("results", job_id, "--db", str(db), "-o", str(tmp_path / "out.jsonl"))
        assert code == 0, err
        lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(line["custom_id"] for line in lines) == sorted([f"r{i}" for i in range(6)] + ["bad"])
        assert all(set(line) == {"id", "custom_id", "response", "error"} for line in lines)
        bad = next(line for line in lines if line["custom_id"] == "bad")
        assert bad["response"]["status_code"] == 400


async def test_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat_line("a"), '{"custom_id": "b", "body": ', chat_line("c")])
    cases = [
        (("status", "job_x", "--db", str(tmp_path / "missing.db")), "no job store"),
        (("submit", str(bad), "--db", str(db)), "line 2"),
        (("submit", str(tmp_path / "nope.jsonl"), "--db", str(db)), "no such file"),
        (("status", "job_unknown", "--db", str(db)), "no job 'job_unknown'"),
        (("submit", str(bad), "--db", str(db), "--metadata", "novalue"), "KEY=VALUE"),
    ]
    for args, expected in cases:
        code, _, err = await cli(*args)
        assert code != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, (args, err)


async def test_cancel_from_the_command_line(tmp_path: Path, db_url: str) -> None:
    db = db_url
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(4)])
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        _, out, _ = await cli("submit", str(path), "--db", str(db), "--base-url", emu.openai_base_url)
        job_id = out.strip().splitlines()[-1]
        code, out, err = await cli("cancel", job_id, "--db", str(db))
        assert code == 0, err
        code, out, _ = await cli("run", "--db", str(db), *FAST)
        assert code == 0
        code, out, _ = await cli("status", job_id, "--db", str(db), "--json")
        status = json.loads(out)
        assert status["status"] == "cancelled" and status["counts"]["cancelled"] == 4
        assert emu.ledger.totals().batches == 0


async def test_help_lists_the_commands() -> None:
    import anyio

    proc = await anyio.run_process([sys.executable, "-m", "asyncbatch", "--help"], env=cli_env())
    text = proc.stdout.decode()
    for command in ("submit", "run", "status", "list", "cancel", "results", "emulator", "demo"):
        assert command in text
    assert API_KEY not in text


async def test_wait_drives_one_job_and_leaves_the_others(tmp_path: Path, db_url: str) -> None:
    db = db_url
    path = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}") for i in range(3)])
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        ids = []
        for _ in range(2):
            _, out, _ = await cli("submit", str(path), "--db", str(db), "--base-url", emu.openai_base_url)
            ids.append(out.strip().splitlines()[-1])
        code, out, err = await cli("wait", ids[1], "--db", str(db), *FAST)
        assert code == 0 and f"{ids[1]} done: 3 succeeded" in out, err
        statuses = [json.loads((await cli("status", i, "--db", str(db), "--json"))[1])["status"] for i in ids]
        assert statuses == ["open", "done"]


async def test_run_v_tells_the_story_of_each_batch_and_no_library_noise(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    lines = [chat_line(f"r{i}") for i in range(4)] + [chat_line("again", "[[fail_attempts:1]]")]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        code, out, err = await cli("submit", str(write_jsonl(tmp_path / "in.jsonl", lines)), "--db", str(db),
                                   "--base-url", emu.openai_base_url)
        job_id = out.split()[-1]
        code, out, err = await cli("-v", "run", "--db", str(db), *FAST)
    assert code == 0, err
    story = [line for line in err.splitlines() if f"job {job_id}" in line]
    assert any("created for shard" in line and "(5 requests, attempt 1)" in line for line in story), err
    assert any(" completed" in line for line in story)
    assert any("results of batch" in line and "4 succeeded, 0 failed, 1 to send again" in line for line in story)
    assert any("1 requests sent again" in line and "attempt 2" in line for line in story)
    assert any(f"job {job_id} done: 5 succeeded" in line for line in story)
    assert "aiosqlite" not in err and "DEBUG" not in err
