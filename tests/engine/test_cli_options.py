"""Options that cannot work are refused while the command line is parsed: exit 2, the option named, nothing
opened. The same bounds are plain functions (``asyncbatch.checks``) that the engine applies to its settings."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from asyncbatch import checks
from asyncbatch.cli import main
from asyncbatch.errors import ValidationError

REFUSED = [
    (("run", "--poll-interval", "0"), "--poll-interval", "greater than 0"),  # a busy loop
    (("run", "--poll-interval", "-1"), "--poll-interval", "greater than 0"),
    (("run", "--poll-interval", "nan"), "--poll-interval", "greater than 0"),
    (("run", "--poll-interval", "inf"), "--poll-interval", "greater than 0"),
    (("run", "--poll-interval", "fast"), "--poll-interval", "expected a number of seconds, got 'fast'"),
    (("run", "--max-poll-interval", "0"), "--max-poll-interval", "greater than 0"),
    (("run", "--poll-interval", "10", "--max-poll-interval", "5"), "--max-poll-interval", "not be below"),
    (("wait", "j", "--max-poll-interval", "1"), "--max-poll-interval", "not be below --poll-interval (5)"),
    (("run", "--lease-seconds", "0"), "--lease-seconds", "greater than 0"),  # every shard up for grabs at once
    (("run", "--lease-seconds", "-60"), "--lease-seconds", "greater than 0"),
    (("run", "--max-requests-per-batch", "-5"), "--max-requests-per-batch", "at least 1, got -5"),
    (("run", "--max-requests-per-batch", "0"), "--max-requests-per-batch", "at least 1"),
    (("run", "--max-requests-per-batch", "2.5"), "--max-requests-per-batch", "expected a whole number"),
    (("run", "--max-bytes-per-batch", "-1"), "--max-bytes-per-batch", "at least 1"),
    (("run", "--ingest-chunk", "0"), "--ingest-chunk", "at least 1"),
    (("watch", "j", "--interval", "0"), "--interval", "greater than 0"),
    (("submit", "in.jsonl", "--max-attempts", "0"), "--max-attempts", "from 1 to 50"),
    (("submit", "in.jsonl", "--max-attempts", "51"), "--max-attempts", "from 1 to 50"),
    (("demo", "--requests", "0"), "--requests", "at least 1"),
    (("watch", "j", "--webhook", "hooks.example.com/x"), "--webhook", "http:// or https://"),
    (("run", "--base-url", "http://user:KEY@127.0.0.1:9/v1"), "--base-url", "carries credentials"),  # a repoint
    (("worker", "--poll-interval", "0"), "--poll-interval", "greater than 0"),
    (("worker", "--poll-interval", "9", "--max-poll-interval", "3"), "--max-poll-interval", "not be below"),
    (("worker", "--max-jobs", "0"), "--max-jobs", "at least 1"),
    (("worker", "--max-requests-per-batch", "-1"), "--max-requests-per-batch", "at least 1"),
    (("worker", "--metrics-port", "70000"), "--metrics-port", "from 0 to 65535"),
]


@pytest.mark.parametrize(("args", "option", "reason"), REFUSED)
def test_bad_options_are_refused_at_parse_time_naming_the_option(
    args: tuple[str, ...], option: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "jobs.db"
    argv = [*args, "--db", str(db)] if args[0] != "demo" else list(args)
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {option}: " in error and reason in error, error
    assert "KEY" not in error and not db.exists()  # refused before anything was opened, the key not echoed


@pytest.mark.parametrize(
    "args",
    [("run", "--poll-interval", "0.01", "--max-poll-interval", "0.01"), ("run", "--lease-seconds", "0.5"),
     ("run", "--max-requests-per-batch", "1", "--max-bytes-per-batch", "1", "--ingest-chunk", "1"),
     ("submit", "in.jsonl", "--max-attempts", "50")],
)
def test_the_smallest_sensible_values_pass_parsing(args: tuple[str, ...], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--db", str(tmp_path / "missing.db")]) == 1  # parsed; then the store, input or key is missing
    err = capsys.readouterr().err
    assert err.startswith("asyncbatch: error: ") and "error: argument" not in err


def test_the_checks_are_reusable_and_name_the_setting() -> None:
    for value in (0, -1.5, math.nan, math.inf):
        with pytest.raises(ValidationError) as info:
            checks.positive(value, "poll_interval")
        assert info.value.field == "poll_interval"
    for value in (0, -5, 2.5, True, "3"):
        with pytest.raises(ValidationError):
            checks.whole_number(value, "max_requests_per_batch")  # type: ignore[arg-type]
    assert checks.whole_number(0, "max_retries", minimum=0) == 0
    for value in (0, 51):
        with pytest.raises(ValidationError, match="from 1 to 50"):
            checks.max_attempts(value)
    with pytest.raises(ValidationError) as info:
        checks.poll_intervals(5.0, 1.0)
    assert info.value.field == "max_poll_interval"
    checks.poll_intervals(1.0, 1.0)
    assert checks.non_negative(0.0, "base_delay") == 0.0


@pytest.mark.parametrize(("setting", "value"), [
    ("poll_interval", 0.0), ("lease_seconds", -1.0), ("ingest_chunk", 0), ("max_requests_per_batch", -5),
    ("max_bytes_per_batch", 0), ("give_up_after", math.nan), ("capacity_hold", -1.0),
])
def test_the_python_api_refuses_the_same_settings_naming_them(tmp_path: Path, setting: str, value: float) -> None:
    from asyncbatch import BatchManager

    with pytest.raises(ValidationError) as info:
        BatchManager(tmp_path / "jobs.db", **{setting: value})
    assert info.value.field == setting
