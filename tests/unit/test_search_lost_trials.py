"""A worker whose running trial another worker finished (judged stale, e.g. by Optuna's heartbeat
on another machine) loses that trial, notes it and goes on; when it keeps happening, a
SearchError says what to check (issue 23, item 9)."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")

from modelopt_search.errors import SearchError
from modelopt_search.optimize import MAX_LOST_TRIALS, _Budget, _run_trials


class _Study:
    def __init__(self, fails: int) -> None:
        self.fails, self.calls = fails, 0

    def optimize(self, *args, **kwargs) -> None:
        self.calls += 1
        if self.calls <= self.fails:
            raise optuna.exceptions.UpdateFinishedTrialError("Trial#3 has already finished")


class _Search:
    def __init__(self) -> None:
        self.lost: list[str] = []

    def after(self, study, trial) -> None:
        pass


def test_a_lost_trial_is_noted_and_the_search_goes_on():
    study, search = _Study(fails=1), _Search()
    _run_trials(study, search, _Budget(2), None, 0.0)
    assert study.calls == 2 and len(search.lost) == 1
    assert "finished by another worker" in search.lost[0]


def test_trials_lost_again_and_again_are_an_error():
    study, search = _Study(fails=10), _Search()
    with pytest.raises(SearchError, match="clock"):
        _run_trials(study, search, _Budget(2), None, 0.0)
    assert study.calls == MAX_LOST_TRIALS
