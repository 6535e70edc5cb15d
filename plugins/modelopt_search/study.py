"""The Optuna study behind a search: storage, resuming, trial rows, Pareto front, best.

Storage is an Optuna RDB URL (``sqlite:///out/study.db`` by default; ``postgresql://...`` or
``mysql://...`` let several machines share one study). Every trial carries its row (recipe,
figures, lineage) in its user attributes, so any worker can rebuild ``trials.json`` and the
report from the storage alone.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from .errors import SearchError

__all__ = [
    "best_row",
    "open_study",
    "pareto_rows",
    "ranked_rows",
    "recover_stale",
    "trial_rows",
    "write_json",
]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise SearchError("optimize needs optuna: pip install -e \".[search]\"") from e
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def worker_id() -> str:
    """``host:pid`` of this process (recorded on each trial it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def open_study(storage: str, study_name: str, seed: int, directions: list[str]) -> Any:
    """Create or load (resume) the study; multi-objective TPE with the accuracy-budget
    constraint. Trials of dead workers on this host are failed and re-queued first."""
    optuna = _optuna()
    kwargs: dict[str, Any] = {}
    if storage.startswith("sqlite:"):
        # two local workers on one file: wait for the lock instead of failing at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    # multi-objective TPE; the accuracy budget is each trial's constraint
    # (trial.set_constraint), which the sampler reads
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6)
    retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    cb = ({"heartbeat_stale_trial_callback": retry(max_retry=1)} if retry else
          {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)})
    for attempt in range(6):  # workers starting together race to create the tables
        try:
            rdb = optuna.storages.RDBStorage(storage, heartbeat_interval=30, grace_period=120,
                                             **cb, **kwargs)
            break
        except Exception as e:
            # the tables or the alembic version row created by the other worker meanwhile
            if attempt < 5 and any(m in str(e) for m in ("already exists", "UNIQUE constraint",
                                                         "database is locked")):
                time.sleep(0.5 + attempt)
                continue
            raise SearchError(f"optimize: cannot open storage {storage!r}: {e}. Give an "
                              "Optuna RDB URL such as sqlite:///out/study.db or "
                              "postgresql://user:pass@host/db.") from e
    for attempt in range(6):
        try:
            study = optuna.create_study(storage=rdb, study_name=study_name, sampler=sampler,
                                        directions=directions, load_if_exists=True)
            break
        except optuna.exceptions.DuplicatedStudyError:  # created meanwhile: load it
            time.sleep(0.2)
    if list(study.directions) != [getattr(optuna.study.StudyDirection, d.upper())
                                  for d in directions]:
        raise SearchError(f"optimize: study {study_name!r} in {storage} optimizes "
                          f"{[d.name.lower() for d in study.directions]}, not {directions}; "
                          "use another study_name or out_dir.")
    recover_stale(study)
    return study


def recover_stale(study: Any) -> list[int]:
    """Trials left RUNNING by a killed process on this host (its pid is gone) are marked
    failed and their recipe re-queued; returns their numbers. Trials of other hosts are left
    to Optuna's heartbeat (failed after its grace period)."""
    optuna = _optuna()
    host = socket.gethostname()
    stale = []
    waiting = [t.params for t in study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.WAITING,))]
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        who = str(t.user_attrs.get("worker", ""))
        h, _, pid = who.rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)):
            continue
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        if t.params and dict(t.params) not in waiting:  # (its own failed copy must not
            study.enqueue_trial(dict(t.params),             # count as "exists")
                                user_attrs={"requeued_from": t.number})
            waiting.append(dict(t.params))
        stale.append(t.number)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed child not yet reaped) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One plain-data row per finished trial (complete, pruned or failed), oldest first."""
    optuna = _optuna()
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)
    rows = []
    for t in study.get_trials(deepcopy=False, states=done):
        row = dict(t.user_attrs.get("row") or {})
        row.setdefault("step", f"trial {t.number}")
        row["trial"] = t.number
        row["state"] = t.state.name.lower()
        if t.state != optuna.trial.TrialState.COMPLETE:
            row["feasible"] = False
        if t.datetime_start and t.datetime_complete:
            row["trial_s"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
        rows.append(row)
    return rows


def _feasible(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Complete, feasible rows with ``key`` and accuracy; a repeat of an earlier trial's
    recipe (``duplicate_of``) is that trial's copy, not a candidate of its own."""
    return [r for r in rows if r.get("state") == "complete" and r.get("feasible")
            and "duplicate_of" not in r
            and isinstance(r.get(key), (int, float)) and isinstance(r.get("accuracy"),
                                                                       (int, float))]


def ranked_rows(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The feasible trials, lowest objective ``key`` first (ties: higher accuracy)."""
    return sorted(_feasible(rows, key), key=lambda r: (r[key], -r["accuracy"], r["trial"]))


def best_row(rows: list[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The feasible trial with the lowest objective ``key`` (ties: higher accuracy)."""
    ranked = ranked_rows(rows, key)
    return ranked[0] if ranked else None


def pareto_rows(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Feasible trials not dominated on (accuracy up, every key in ``keys`` down)."""
    ok = [r for r in _feasible(rows, keys[0]) if all(isinstance(r.get(k), (int, float))
                                                      for k in keys)]

    def vec(r: dict[str, Any]) -> tuple[float, ...]:
        return (-r["accuracy"], *(r[k] for k in keys))

    front = [r for r in ok if not any(
        all(a <= b for a, b in zip(vec(o), vec(r))) and vec(o) != vec(r) for o in ok)]
    return sorted(front, key=lambda r: vec(r)[1])


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    from modelopt_core.persist import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str))
