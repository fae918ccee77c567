"""What a new user meets first on the command line: where results go, which store, what each command says."""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path

import pytest

from asyncbatch import BatchManager
from asyncbatch.emulator import EmulatorConfig, run_emulator
from asyncbatch.providers.openai import OpenAIProvider
from tests.engine.test_crash import cli, cli_env
from tests.helpers import API_KEY, chat_line


@pytest.fixture
async def finished_job(tmp_path: Path) -> tuple[Path, str]:
    """A store with one ended job of three requests (two chat, one embedding: mixed endpoints)."""
    db = tmp_path / "jobs.db"
    lines = [chat_line("a"), chat_line("b"),
             {"custom_id": "e", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "text-embedding-3-small", "input": "x"}}]
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db, provider=provider, poll_interval=0.02, max_poll_interval=0.1) as bm:
            job = await bm.wait((await bm.submit(lines)).id)
    return db, job.id


def custom_ids(text: str) -> list[str]:
    return sorted(json.loads(line)["custom_id"] for line in text.splitlines())


# --- where results go ------------------------------------------------------------------------------------


async def test_results_to_stdout_with_dash(finished_job: tuple[Path, str]) -> None:
    db, job_id = finished_job
    code, out, err = await cli("results", job_id, "--db", str(db), "-o", "-")
    assert code == 0, err
    assert custom_ids(out) == ["a", "b", "e"] and "wrote 3 results to standard output" in err


async def test_results_into_a_fifo_and_through_a_symlink_to_dev_null(
    finished_job: tuple[Path, str], tmp_path: Path
) -> None:
    """Written into, never renamed over: the FIFO's reader gets the lines and the FIFO and link stay."""
    db, job_id = finished_job
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    code, _, err = await cli("results", job_id, "--db", str(db), "-o", str(fifo))
    reader.join(timeout=30)
    assert code == 0, err
    assert custom_ids(received[0].decode()) == ["a", "b", "e"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and not (tmp_path / "pipe.tmp").exists()

    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    code, _, err = await cli("results", job_id, "--db", str(db), "-o", str(null))
    assert code == 0, err
    assert null.is_symlink() and os.readlink(null) == "/dev/null" and stat.S_ISCHR(os.stat("/dev/null").st_mode)


async def test_a_regular_file_is_still_replaced_atomically_and_owner_only(
    finished_job: tuple[Path, str], tmp_path: Path
) -> None:
    from asyncbatch.export import write_results

    db, job_id = finished_job
    target = tmp_path / "out" / "results.jsonl"
    target.parent.mkdir()
    target.write_text("old content that must go\n" * 100)
    target.chmod(0o644)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)
    async with BatchManager(db) as bm:
        assert await write_results(bm, job_id, link) == 3
    # the link still points at the file, which was replaced (a new inode), whole and owner-only
    assert link.is_symlink() and custom_ids(target.read_text()) == ["a", "b", "e"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600 and list(target.parent.iterdir()) == [target]


# --- which store -----------------------------------------------------------------------------------------


async def test_the_store_comes_from_asyncbatch_db_when_db_is_not_given(
    finished_job: tuple[Path, str], tmp_path: Path
) -> None:
    db, job_id = finished_job
    env = cli_env(ASYNCBATCH_DB=str(db))
    for command in (("status", job_id), ("list",), ("cost", job_id), ("watch", job_id)):
        code, out, err = await cli(*command, env=env)
        assert code == 0 and job_id in out, (command, err)
    code, out, err = await cli("results", job_id, "-o", "-", env=env)
    assert code == 0 and custom_ids(out) == ["a", "b", "e"], err
    code, _, err = await cli("status", job_id, "--db", str(tmp_path / "other.db"), env=env)
    assert code != 0 and "no job store" in err  # --db wins over the variable

    code, _, err = await cli("status", job_id)  # neither
    assert code == 2 and "--db" in err and "ASYNCBATCH_DB" in err and len(err.strip().splitlines()) == 1


# --- what commands say -----------------------------------------------------------------------------------


async def test_status_explains_a_mixed_endpoint_job(finished_job: tuple[Path, str]) -> None:
    db, job_id = finished_job
    code, out, _ = await cli("status", job_id, "--db", str(db))
    assert code == 0 and "(openai, * = mixed endpoints): done" in out


async def test_run_with_nothing_to_do_and_results_of_an_unfinished_job_say_so(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    async with run_emulator(EmulatorConfig(), data_dir=tmp_path / "emu") as emu:
        provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
        async with BatchManager(db, provider=provider) as bm:
            job = await bm.submit([chat_line(f"r{i}") for i in range(4)])
        code, out, err = await cli("results", job.id, "--db", str(db), "-o", str(tmp_path / "out.jsonl"))
        assert code == 0 and (tmp_path / "out.jsonl").read_text() == ""
        assert "wrote 0 results" in err and "4 of 4 requests are still unfinished" in err

        code, out, err = await cli("run", "--db", str(db), "--poll-interval", "0.05")
        assert code == 0 and f"{job.id} done" in out
        code, out, err = await cli("run", "--db", str(db))
    assert code == 0 and out == "" and "nothing to run" in err


# --- logging ---------------------------------------------------------------------------------------------


async def test_vv_logs_our_debug_lines_without_the_libraries_or_any_prompt(tmp_path: Path) -> None:
    from asyncbatch.emulator.config import FaultSpec

    prompt = "the-secret-prompt-text"
    config = EmulatorConfig(faults={"batches_read": FaultSpec(rate_500=1.0, max_faults=1)})
    async with run_emulator(config, data_dir=tmp_path / "emu") as emu:
        logs = {}
        for flag in ("-vv", "-vvv"):
            db = tmp_path / f"{flag}.db"
            provider = OpenAIProvider(api_key=API_KEY, base_url=emu.openai_base_url)
            async with BatchManager(db, provider=provider) as bm:
                job = await bm.submit([chat_line("r", prompt)])
            emu.config.faults["batches_read"].max_faults = 1 if flag == "-vv" else 2
            code, out, logs[flag] = await cli(flag, "run", "--db", str(db), "--poll-interval", "0.05")
            assert code == 0 and f"{job.id} done" in out, logs[flag]
    quiet, loud = logs["-vv"], logs["-vvv"]
    assert "DEBUG asyncbatch.http: GET /batches" in quiet and "trying again in" in quiet and "INFO asyncbatch" in quiet
    assert "aiosqlite" not in quiet and prompt not in quiet
    assert "DEBUG aiosqlite" in loud  # -vvv lets the libraries speak (prompts included: the user asked)
