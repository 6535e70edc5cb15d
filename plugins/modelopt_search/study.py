"""The Optuna study behind a search: storage, resuming, trial rows (ranked in :mod:`.rows`).

Storage is an Optuna RDB URL (``sqlite:///out/study.db`` by default; ``postgresql://...`` or
``mysql://...`` let several machines share one study). Every trial carries its row (recipe,
figures, lineage) in its user attributes, so any worker can rebuild ``trials.json`` and the
report from the storage alone.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import SearchError
from .owner import (
    CLAIM_TAGS,
    OWNER,
    RAY,
    claim_trial,
    owner_is_dead,
    owner_record,
    worker_id,
)
from .rows import best_row, pareto_rows, ranked_rows, write_json

__all__ = ["CLAIM_TAGS", "OWNER", "RAY", "best_row", "claim_trial", "masked", "open_study",
           "owner_is_dead", "owner_record", "pareto_rows", "ranked_rows", "recover_stale",
           "storage_error", "storage_errors", "trial_rows", "worker_id", "write_json"]


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:
        raise SearchError("optimize needs optuna: pip install -e \".[search]\"") from e
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _sqlite_file(storage: str) -> Path | None:
    """The database file of a ``sqlite:///`` storage URL (None for other storages)."""
    if not storage.startswith("sqlite:"):
        return None
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
    except ImportError:
        return None
    try:
        db = make_url(storage).database
    except (ArgumentError, ValueError):
        return None
    return Path(db).resolve() if db and db != ":memory:" else None


def _sqlite_problem(path: Path) -> str | None:
    """Why the SQLite file ``path`` is unusable (``PRAGMA quick_check``), or None when it is
    fine, missing (a new study) or cannot be checked now (locked by a writer)."""
    import sqlite3

    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
    except OSError:
        return None
    con = None
    try:
        con = sqlite3.connect(str(path), timeout=60)
        rows = con.execute("PRAGMA quick_check").fetchall()
    except sqlite3.OperationalError:  # locked, unreadable: Optuna reports what it finds
        return None
    except sqlite3.DatabaseError as e:  # not a database, malformed
        return str(e)
    finally:
        if con is not None:
            con.close()
    if rows == [("ok",)]:
        return None
    return "; ".join(str(r[0]) for r in rows[:3]) or "PRAGMA quick_check failed"


def _corrupt(path: Path, why: str) -> SearchError:
    return SearchError(
        f"optimize: the study file {path} is corrupt ({why[:300]}); it cannot be resumed. "
        f"Start a new study in a new folder (--out NEW_FOLDER), or move {path.name} out of "
        "the way to start over in this one.")


def masked(storage: str) -> str:
    """``storage`` for a message: the password of an RDB URL shown as ``***``."""
    try:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        return make_url(storage).render_as_string(hide_password=True)
    except (ImportError, ArgumentError, ValueError):  # not a URL: no password to hide
        return storage


def storage_error(storage: str, e: BaseException) -> SearchError:
    """A :class:`SearchError` for an error of the study's storage: a corrupt SQLite file is
    named as such; anything else names the storage and the cause."""
    path = _sqlite_file(storage)
    if path is not None:
        why = _sqlite_problem(path)
        if why is not None:
            return _corrupt(path, why)
    cause = e.__cause__ or e
    return SearchError(f"optimize: the study storage {masked(storage)!r} failed ({type(cause).__name__}: "
                       f"{str(cause)[:300]}). Check that it is reachable and intact; a "
                       "damaged study cannot be resumed: start a new one with a new --out "
                       "folder (or --storage).")


def storage_errors() -> tuple[type[BaseException], ...]:
    optuna = _optuna()
    errs: list[type[BaseException]] = [optuna.exceptions.StorageInternalError]
    try:
        from sqlalchemy.exc import DatabaseError

        errs.append(DatabaseError)
    except ImportError:
        pass
    return tuple(errs)


def _retry_callback(optuna: Any) -> dict[str, Any]:
    """Optuna's heartbeat retry of a stale trial, less the dead process's owner record: the
    copy must not look owned by anyone until the worker that runs it claims it."""
    base = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    if base is None:  # old Optuna
        return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}

    class Retry(base):  # type: ignore[misc,valid-type]
        def __call__(self, study: Any, trial: Any) -> None:
            trial = copy.deepcopy(trial)
            trial.user_attrs = {k: v for k, v in trial.user_attrs.items()
                                if k not in (OWNER, "worker", RAY)}
            super().__call__(study, trial)

    return {"heartbeat_stale_trial_callback": Retry(max_retry=1)}


def open_study(storage: str, study_name: str, seed: int, directions: list[str]) -> Any:
    """Create or load (resume) the study; multi-objective TPE with the accuracy-budget
    constraint. Trials of dead workers on this host are failed and re-queued first. A corrupt
    SQLite study file, or a storage that fails, is a :class:`SearchError` naming it."""
    optuna = _optuna()
    kwargs: dict[str, Any] = {}
    db = _sqlite_file(storage)
    if db is not None:
        # two local workers on one file: wait for the lock instead of failing at once
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        why = _sqlite_problem(db)
        if why is not None:
            raise _corrupt(db, why)
    # multi-objective TPE; the accuracy budget is each trial's constraint
    # (trial.set_constraint), which the sampler reads
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6)
    cb = _retry_callback(optuna)
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
            if db is not None and _sqlite_problem(db) is not None:
                raise _corrupt(db, _sqlite_problem(db) or "") from e
            raise SearchError(f"optimize: cannot open storage {masked(storage)!r}: "
                              f"{str(e).replace(storage, masked(storage))[:400]}. Give an "
                              "Optuna RDB URL such as sqlite:///out/study.db or "
                              "postgresql://user:pass@host/db.") from e
    if db is not None:
        _serialize_claims(rdb, db.parent / f".{db.name}.claim.lock")
    try:
        study = None
        for _ in range(6):
            try:
                study = optuna.create_study(storage=rdb, study_name=study_name,
                                            sampler=sampler, directions=directions,
                                            load_if_exists=True)
                break
            except optuna.exceptions.DuplicatedStudyError:  # created meanwhile: load it
                time.sleep(0.2)
        if study is None:
            raise SearchError(f"optimize: study {study_name!r} in {masked(storage)} could not be "
                              "created or loaded (another worker kept creating it); run "
                              "again.")
        if list(study.directions) != [getattr(optuna.study.StudyDirection, d.upper())
                                      for d in directions]:
            raise SearchError(f"optimize: study {study_name!r} in {masked(storage)} optimizes "
                              f"{[d.name.lower() for d in study.directions]}, not "
                              f"{directions}; use another study_name or out_dir.")
        recover_stale(study, lock=_recovery_lock_path(storage, study_name))
    except storage_errors() as e:
        raise storage_error(storage, e) from e
    return study


def _serialize_claims(rdb: Any, lock: Path) -> None:
    """Make the WAITING -> RUNNING step of a trial atomic across the local workers of one
    SQLite study. SQLite has no row locks, so Optuna's pop of a queued trial (read WAITING,
    then write RUNNING) handed one trial to two workers at once (7-10 of 40 queued trials in
    a two-thread test); both ran it and the second died on "Cannot tell a COMPLETE trial".
    Under this per-file flock the second worker reads RUNNING and takes another trial."""
    optuna = _optuna()
    running = optuna.trial.TrialState.RUNNING
    set_state = rdb.set_trial_state_values

    def set_trial_state_values(trial_id: int, state: Any, values: Any = None) -> bool:
        if state == running:
            with _host_lock(lock):
                return set_state(trial_id, state, values)
        return set_state(trial_id, state, values)

    rdb.set_trial_state_values = set_trial_state_values


def _recovery_lock_path(storage: str, study_name: str) -> Path:
    """The file whose lock the workers of one host take turns under to recover a study:
    beside a SQLite study file, else in the temp folder (keyed by storage and study)."""
    import hashlib
    import tempfile

    db = _sqlite_file(storage)
    if db is not None:
        return db.parent / f".{db.name}.recover.lock"
    key = hashlib.sha256(f"{storage}\0{study_name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"modelopt-study-{key}.recover.lock"


@contextlib.contextmanager
def _host_lock(path: Path | None) -> Iterator[None]:
    """Hold ``path``'s exclusive flock (best effort: without flock or a writable folder, the
    recovery still only touches trials of dead owners; it may then re-queue one twice)."""
    try:
        import fcntl
    except ImportError:
        fcntl = None  # type: ignore[assignment]
    with contextlib.ExitStack() as stack:
        if path is not None and fcntl is not None:
            try:
                f = stack.enter_context(open(path, "a"))
                fcntl.flock(f, fcntl.LOCK_EX)
            except OSError:
                pass
        yield


def recover_stale(study: Any, lock: Path | None = None, dead: Any = None) -> list[int]:
    """Trials left RUNNING by a killed process of this host are marked failed and their recipe
    re-queued; returns their numbers. A trial counts as a dead worker's only when its owner
    record (:func:`claim_trial`) was written for that very trial by a process of this host
    that is gone: a live worker's trial, one not claimed yet, or one of another machine is
    never touched (Optuna's heartbeat fails those once stale); ``dead(trial)``, given, judges
    instead (a Ray worker the cluster reports dead). Workers of one host recover
    one at a time (under ``lock``), and a trial another worker finished meanwhile is left as
    it is, so each dead trial is re-queued once."""
    optuna = _optuna()
    stale = []
    with _host_lock(lock):
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        gone = [t for t in running if (dead(t) if dead else owner_is_dead(
            t.user_attrs.get(OWNER), t._trial_id))]
        if not gone:  # the usual case: the queue is not read
            return stale
        queued = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
        waiting = [_queued_params(t) for t in queued]
        for t in gone:
            try:
                if not study._storage.set_trial_state_values(
                        t._trial_id, optuna.trial.TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # finished meanwhile (its heartbeat check, another worker)
            params = _queued_params(t)  # as drawn, or (killed before its first draw) as queued
            at = waiting.index(params) if params in waiting else None
            if params and at is None:  # (its own failed copy must not count as queued)
                study.enqueue_trial(params, user_attrs={"requeued_from": t.number})
                waiting.append(params)
            elif params and at < len(queued) and "requeued_from" not in queued[at].user_attrs:
                # the same recipe queued already: that one is its copy, run first
                study._storage.set_trial_user_attr(queued[at]._trial_id, "requeued_from",
                                                   t.number)
            stale.append(t.number)
    return stale


def _queued_params(trial: Any) -> dict[str, Any]:
    """A trial's recipe: as drawn, else as enqueued (a queued trial's params are set only
    when it runs)."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params") or {})


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
        ray = t.user_attrs.get(RAY)
        if isinstance(ray, dict):  # where it ran: the Ray node (host/node id)
            row["node"] = f"{ray.get('host')}/{str(ray.get('node_id'))[:8]}"
        if t.state != optuna.trial.TrialState.COMPLETE:
            row["feasible"] = False
        if t.datetime_start and t.datetime_complete:
            row["trial_s"] = round((t.datetime_complete - t.datetime_start).total_seconds(), 2)
        rows.append(row)
    return rows
