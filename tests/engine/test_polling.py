"""The poller's estimate of when a batch will be done, from the counts each provider reports."""

from __future__ import annotations

import pytest

from asyncbatch.engine.polling import _time_left


@pytest.mark.parametrize(
    ("counts", "elapsed", "left"),
    [
        ({"total": 100, "completed": 20, "failed": 5}, 50.0, 150.0),  # OpenAI, Mistral: a quarter done in 50 s
        ({"processing": 30, "succeeded": 60, "errored": 10}, 70.0, 30.0),  # Anthropic: 70 of 100 ended
        ({"total": 100, "completed": 0, "failed": 0}, 50.0, None),  # nothing done yet: no pace to go by
        ({"total": 100, "completed": 100, "failed": 0}, 50.0, None),  # done
        ({"total": 100, "completed": 50}, 0.0, None),  # no time has passed
        ({}, 50.0, None),  # counts the poller cannot read
    ],
)
def test_time_left_follows_the_pace_of_the_counts(counts: dict[str, int], elapsed: float, left: float | None) -> None:
    assert _time_left(counts, elapsed) == left
