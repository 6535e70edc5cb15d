"""The search's stopping rule (``_Budget``): recipes run, a spent space, and the time budget,
which stops before a trial that would likely overrun it (median duration of those run)."""

from __future__ import annotations

import datetime as dt
import time

from modelopt_search.optimize import _Budget


class Study:
    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


class Trial:
    def __init__(self, seconds: float, repeat: bool = False) -> None:
        start = dt.datetime(2026, 1, 1)
        self.datetime_start, self.datetime_complete = start, start + dt.timedelta(seconds=seconds)
        self.user_attrs = {"row": {"duplicate_of": 0} if repeat else {}}


def test_stops_after_the_recipes_run_not_counting_repeats():
    b, st = _Budget(2), Study()
    b(st, Trial(1))
    b(st, Trial(0, repeat=True))
    assert st.stopped == 0
    b(st, Trial(1))
    assert st.stopped == 1 and b.ran == 2 and b.stopped_early is None


def test_a_spent_space_stops_it():
    b, st = _Budget(3), Study()
    for _ in range(10):
        b(st, Trial(0, repeat=True))
    assert st.stopped == 1 and b.ran == 0


def test_stops_before_a_trial_that_would_overrun_the_time_budget():
    now = time.perf_counter()
    b, st = _Budget(None, time_s=100.0, t0=now - 50.0, reserve_s=10.0), Study()  # 40 s left
    b(st, Trial(30))
    assert st.stopped == 0  # 30 s trials fit in the 40 s left
    b(st, Trial(50))  # median now 40 s: hardly fits
    b(st, Trial(60))  # median 50 s > 40 s left
    assert st.stopped >= 1 and "before the time budget" in b.stopped_early
    assert "50 s" in b.stopped_early


def test_repeats_do_not_shape_the_expected_duration():
    now = time.perf_counter()
    b, st = _Budget(None, time_s=100.0, t0=now - 10.0), Study()
    b(st, Trial(5))
    for _ in range(3):
        b(st, Trial(500, repeat=True))  # reused measurements: no run time of their own
    assert st.stopped == 0 and b.durations == [5.0]
