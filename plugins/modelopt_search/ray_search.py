"""A search on a Ray cluster (``modelopt optimize --ray [ADDRESS]``,
``Session.optimize(..., executor="ray")``): the driver measures the baseline, then starts one
Ray task per worker slot (``threads`` CPUs each; each node gets as many slots as its CPUs
hold, each slot's task placed on its node); each runs the search's trial loop against the shared Optuna study
(:mod:`.ray_worker`), as several ``modelopt optimize`` processes sharing one RDB study do.
The driver follows the study (one line per finished trial, the reports rewritten), puts a
dead worker's running trial back in the queue and starts a worker for the rest of its share,
then checks and loads the contenders' artifacts the workers send back; the end's
side-by-side re-timing (:func:`.confirm.confirm`) runs on the driver's machine alone.

A SQLite study is shared only by the processes of one machine (its claims are serialized by
a host lock), so with a cluster of several machines the study must be an RDB every node
reaches (``--storage postgresql://...``): :func:`.ray_cluster.check_storage` refuses otherwise.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modelopt_core as mo

from .errors import SearchError
from .ray_cluster import RayCluster
from .study import RAY, recover_stale, trial_rows

if TYPE_CHECKING:
    from .budget import _Budget
    from .trials import _Search

__all__ = ["RayTrials"]

#: a worker slot whose worker died is started again (for the rest of its trials) this often
MAX_RESTARTS = 2
#: the driver rewrites trials.json and the reports at most this often while workers run
WRITE_EVERY_S = 5.0

_log = logging.getLogger("modelopt_search.optimize")


def _shares(trials: int | None, slots: int) -> list[int | None]:
    if trials is None:
        return [None] * slots
    return [trials // slots + (i < trials % slots) for i in range(slots)]


class RayTrials:
    """The trials of one search on ``cluster``: see the module docstring."""

    def __init__(self, cluster: RayCluster, search: _Search, study: Any,
                 spec: dict[str, Any], workers: int | None) -> None:
        self.cluster, self.search, self.study, self.spec = cluster, search, study, spec
        self.ray = cluster.ray
        self.cpus = int(search.threads or 1)
        self.slots = cluster.slots(self.cpus, workers)
        self.results: list[dict[str, Any]] = []
        self.seen: set[int] = {r["trial"] for r in trial_rows(study)}
        self.restarts: dict[str, int] = {}
        self.notes: list[str] = []
        self.job_id = self.ray.get_runtime_context().get_job_id()

    def run(self, budget: _Budget, time_s: float | None, t0: float) -> None:
        """Run the trials on the workers until each has run its share of ``budget.trials``
        (or ``time_s`` from ``t0`` is spent), then load their contenders' artifacts."""
        try:
            pieces = self.ray.put(_pieces(self.search.s))
        except Exception as e:  # any pickling failure: said, typed
            raise SearchError(f"optimize --ray: the session cannot be sent to the Ray workers "
                              f"({type(e).__name__}: {str(e)[:300]}); its model, data, "
                              "eval_fn and task_loss must pickle (cloudpickle): no open files, "
                              "locks or sockets in eval_fn's closure.") from e
        pending: dict[Any, tuple[str, int | None]] = {}
        self.recover_ended_drivers()  # before any worker claims: the copies are run first
        try:
            for i, (node, n) in enumerate(zip(self.slots, _shares(budget.trials,
                                                                 len(self.slots)))):
                if n != 0:
                    ref = self._launch(pieces, node, f"w{i}-{uuid.uuid4().hex[:6]}", n, time_s,
                                       t0)
                    pending[ref] = (f"w{i}", n)
            self._wait(pending, pieces, time_s, t0)
        finally:
            for ref in pending:  # left by an error: stopped
                self.ray.cancel(ref, force=True)
        self._merge(budget)
        self._load_artifacts()

    def _launch(self, pieces: Any, node: str | None, slot: str, share: int | None,
                time_s: float | None, t0: float) -> Any:
        """Start worker ``slot`` on ``node`` (soft: elsewhere if that node is gone; None:
        wherever CPUs are free, spread)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from .ray_worker import run_worker

        left = None if time_s is None else max(time_s - (time.perf_counter() - t0), 0.0)
        task = self.ray.remote(num_cpus=self.cpus, max_retries=0)(run_worker)
        strategy = "SPREAD" if node is None else NodeAffinitySchedulingStrategy(node, soft=True)
        return task.options(scheduling_strategy=strategy).remote(
            pieces, self.spec, slot, share, left)

    def _wait(self, pending: dict[Any, tuple[str, int | None]], pieces: Any,
              time_s: float | None, t0: float) -> None:
        """Follow the workers until all are done; a dead one's trial is re-queued and a new
        worker runs the rest of its share (at most MAX_RESTARTS times per slot)."""
        ray = self.ray
        written = time.perf_counter()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            self.recover_ended_drivers()
            self._progress()
            if time.perf_counter() - written > WRITE_EVERY_S:
                with self.search.lock():
                    self.search.write(self.study, trial_rows(self.study))
                written = time.perf_counter()
            for ref in done:
                name, share = pending.pop(ref)
                try:
                    self.results.append(ray.get(ref))
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, mo.ModeloptError):
                        raise type(cause)(str(cause)) from e
                    raise SearchError(f"optimize --ray: worker {name} failed: "
                                      f"{str(e)[:600]}") from e
                except ray.exceptions.RayError as e:  # the worker or its node died
                    left = self._recover(name, share, e)
                    if left is None or left > 0:
                        slot = f"{name}-r{self.restarts[name]}-{uuid.uuid4().hex[:6]}"
                        pending[self._launch(pieces, None, slot, left, time_s, t0)] = \
                            (name, left)
        self._progress()

    def recover_ended_drivers(self) -> list[int]:
        """Trials left running by the workers of a Ray driver that has ended (a killed
        ``modelopt optimize --ray``: its job is dead in the cluster's GCS) are failed and
        re-queued, wherever those workers ran and whether or not Ray has stopped them yet
        (an orphan claims no new trial, see :func:`.ray_worker._rerun_first`, and its late
        result of a failed trial is refused by the study). A trial of a driver still running
        (another search sharing the study) is never touched; one whose driver ends later is
        caught by a later call (the driver calls this each second while its workers run)."""
        from .ray_worker import job_states

        states = job_states()
        if not states:
            return []

        def dead(t: Any) -> bool:
            job = (t.user_attrs.get(RAY) or {}).get("job_id")
            return job is not None and job != self.job_id and states.get(job) is True

        got = recover_stale(self.study, dead=dead)
        if got:
            said = (f"trial(s) {got} were left running by the workers of a Ray driver that "
                    "has ended (a killed or crashed `modelopt optimize --ray`); failed and "
                    "re-queued, run first")
            _log.warning("optimize: %s", said)
            self.notes.append(said)
        return got

    def _recover(self, name: str, share: int | None, e: BaseException) -> int | None:
        """The running trials of dead worker ``name`` failed and re-queued (the workers run
        such copies first); the trials left of its share. A slot that keeps dying:
        SearchError."""
        n = self.restarts[name] = self.restarts.get(name, 0) + 1
        tags = ((t, t.user_attrs.get(RAY) or {}) for t in self.study.get_trials(deepcopy=False))
        mine = [t for t, tag in tags if str(tag.get("slot", "")).split("-")[0] == name
                and tag.get("job_id") in (None, self.job_id)]
        ids = {t._trial_id for t in mine}
        requeued = recover_stale(self.study, dead=lambda t: t._trial_id in ids)
        # a live worker on this host may have failed and re-queued them first (its own
        # recovery when it claims a trial): those count as re-queued too
        numbers = {t.number for t in mine}
        requeued = sorted(set(requeued) | {
            t.user_attrs["requeued_from"] for t in self.study.get_trials(deepcopy=False)
            if t.user_attrs.get("requeued_from") in numbers})
        said = (f"Ray worker {name} died ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
                + (f"; its running trial(s) {requeued} re-queued" if requeued else ""))
        _log.warning("optimize: %s", said)
        self.notes.append(said)
        if n > MAX_RESTARTS:
            raise SearchError(f"optimize --ray: worker slot {name} died {n} times; last: "
                              f"{type(e).__name__}: {str(e)[:300]}. Check the cluster's nodes "
                              "(memory, `ray status`), then run the same command again to "
                              "resume the study.") from e
        if share is None:
            return None
        # a trial a dead process left running, failed by a recovery (here, or a worker's
        # when it opened the study) and re-queued, is not one it ran
        recovered = set(requeued) | {t.user_attrs.get("requeued_from")
                                     for t in self.study.get_trials(deepcopy=False)}
        ran = sum(1 for t in mine if t.state.is_finished() and t.number not in recovered
                  and "duplicate_of" not in (t.user_attrs.get("row") or {}))
        return max(share - ran, 1 if requeued else 0)

    def _progress(self) -> None:
        """One line per trial finished since the last call (where it ran, its outcome)."""
        from .optimize import _UNITS, _outcome
        from .study import _optuna

        log = logging.getLogger("modelopt.progress")  # shown by the modelopt command
        done = _optuna().trial.TrialState
        for t in self.study.get_trials(deepcopy=False, states=(
                done.COMPLETE, done.PRUNED, done.FAIL)):
            if t.number in self.seen:
                continue
            self.seen.add(t.number)
            row = t.user_attrs.get("row") or {}
            ray = t.user_attrs.get(RAY) or {}
            where = f"{ray.get('host', '?')}/{str(ray.get('node_id', ''))[:8]}"
            log.info("trial %d (on %s): %s: %s", t.number, where, row.get("recipe", "?"),
                     _outcome(t, row, _UNITS.get(self.search.objective, "")))

    def _merge(self, budget: _Budget) -> None:
        """The workers' counts and notes, on the driver's search and budget."""
        s = self.search
        budget.ran = sum(r["ran"] for r in self.results)
        budget.stopped_early = next((r["stopped_early"] for r in self.results
                                     if r["stopped_early"]), None)
        for r in self.results:
            s.skipped += r["skipped"]
            s.lost += r["lost"]
            s.dropped += [d for d in r["dropped"] if d not in s.dropped]
            s.dead_targets.update(r["dead_targets"])
            s.stop_reason = s.stop_reason or r["stop_reason"]
        hosts = sorted({r["host"] for r in self.results})
        per_node: dict[str, int] = {}
        for row in trial_rows(self.study):
            if row.get("node"):
                per_node[row["node"]] = per_node.get(row["node"], 0) + 1
        s.notes.append(
            f"trials ran on a Ray cluster ({self.cluster.address or 'local'}): "
            + ", ".join(f"{k}: {v}" for k, v in sorted(per_node.items()))
            + f" ({len(hosts)} machine(s)); each trial's timing is its own node's, and the "
            f"side-by-side re-timing that picks the best ran on the driver's machine alone "
            f"({socket.gethostname()}): timings of different machines are not compared "
            "with each other")
        s.notes += self.notes
        caches = [r["cache"] for r in self.results if r.get("cache")]
        if caches:  # the driver's own cache note counts only what it did itself
            s.notes.append(f"step cache of the Ray workers: {sum(c['hits'] for c in caches)} "
                           f"step(s) loaded (cache hits), {sum(c['computed'] for c in caches)} "
                           f"computed ({len(caches)} worker(s))")

    def save_best(self) -> None:
        """``best/`` and ``best.json``: the best trial by its own timing, when a worker sent
        its artifact (as a local search saves it after each trial); the end's side-by-side
        re-timing on this machine may replace it."""
        from .rows import ranked_rows

        top = ranked_rows(trial_rows(self.study), "objective")
        if top and top[0]["trial"] in self.search.artifacts:
            with self.search.lock():
                self.search.save_best(self.study, top[0])
        elif top and top[0]["trial"] != _saved_trial(self.search.out):
            self.search.notes.append(
                f"the artifact of trial {top[0]['trial']} (the best by its own timing) is not "
                "here: the worker that ran it died before sending it (a killed driver or "
                "node); best/ holds the best whose artifact is here. Its recipe is in "
                "trials.json: run it again with `modelopt run`")

    def _load_artifacts(self) -> None:
        """The contenders' artifacts the workers sent, checked (archive SHA-256, then every
        file against the manifest) and loaded for the end's re-timing and ``best/``."""
        from .ray_worker import unpack

        s = self.search
        orig = s.s.original
        folder = s.out / ".ray-artifacts"
        for r in self.results:
            for n, (blob, sha) in r["artifacts"].items():
                path = unpack(blob, sha, folder / f"trial-{n}", f"the artifact of trial {n} "
                              f"(from {r['host']})")
                s.artifacts[int(n)] = mo.load_artifact(
                    path, model=orig.model if orig.format == "torch" else None, plugins=s.s.pm)


def _saved_trial(out: Path) -> int | None:
    import json

    try:
        return int(json.loads((out / "best.json").read_text())["trial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pieces(session: mo.Session) -> dict[str, Any]:
    from .ray_worker import session_pieces

    return session_pieces(session)
