"""The worker side of a search on a Ray cluster (see :mod:`.ray_search`).

One Ray task per worker slot runs the search's own trial loop (:func:`.budget._run_trials`)
against the shared Optuna study, at the recipe's thread count, exactly as a second
``modelopt optimize`` process on another machine would; it claims each trial with the Ray
node and slot it runs on (``trials.json`` says where each trial ran), writes no reports
(the driver does), and sends the artifacts of its contenders back to the driver as tar
archives with their SHA-256, which the driver checks before it loads them (and
:func:`modelopt_core.load_artifact` checks every file against the manifest's hashes).

The session travels as its pieces (the original artifact, example inputs, data, ``eval_fn``,
``task_loss``), pickled by Ray (cloudpickle), not rebuilt from the recipe on each node: a
recipe's ``[train]`` table and random example inputs would give every worker a different
original.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import modelopt_core as mo

from .errors import SearchError
from .trials import _Search

__all__ = ["DriverGone", "job_states", "pack_folder", "run_worker", "session_pieces",
           "unpack"]


def pack_folder(folder: Path) -> tuple[bytes, str]:
    """(a tar archive of ``folder``'s contents, its SHA-256)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(str(folder), arcname=".")
    blob = buf.getvalue()
    return blob, hashlib.sha256(blob).hexdigest()


def unpack(blob: bytes, sha256: str, dest: Path, what: str) -> Path:
    """Extract an archive of :func:`pack_folder` into ``dest`` once its SHA-256 matches the
    one sent with it; else :class:`SearchError` naming ``what`` (nothing is extracted)."""
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise SearchError(f"optimize --ray: {what} arrived damaged (SHA-256 {got[:12]}..., "
                          f"sent as {sha256[:12]}...); it is not used. Run the search again.")
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        tf.extractall(dest, filter="data")  # no links out, no absolute paths
    return dest


def session_pieces(session: mo.Session) -> dict[str, Any]:
    """What a worker needs to rebuild ``session`` for its trials: a torch original as it is
    (pickled), any other original saved and packed (its files may live only here)."""
    orig = session.original
    pieces: dict[str, Any] = {
        "example_inputs": session.example_inputs, "calibration_data": session.calibration_data,
        "train_data": session.train_data, "eval_fn": session.eval_fn,
        "task_loss": session.task_loss, "device": session.device}
    if orig.format == "torch":
        pieces["original"] = orig
    else:
        with tempfile.TemporaryDirectory(prefix="modelopt-ray-") as tmp:
            orig.save(Path(tmp) / "original", plugins=session.pm)
            pieces["original_tar"] = pack_folder(Path(tmp) / "original")
    return pieces


def _session(pieces: dict[str, Any], scratch: Path) -> mo.Session:
    orig = pieces.get("original")
    if orig is None:
        blob, sha = pieces["original_tar"]
        orig = mo.load_artifact(unpack(blob, sha, scratch / "original", "the original model"))
    return mo.Session(orig, pieces["example_inputs"],
                      calibration_data=pieces["calibration_data"],
                      train_data=pieces["train_data"], eval_fn=pieces["eval_fn"],
                      task_loss=pieces["task_loss"], device=pieces["device"], progress=False)


def job_states() -> dict[str, bool] | None:
    """{Ray job id (hex): whether it has ended} of every job the cluster's GCS knows (a job
    ends when its driver exits or dies), or None where this Ray cannot say."""
    try:
        import ray

        infos = ray._private.worker.global_worker.gcs_client.get_all_job_info()
        return {k.hex(): bool(v.is_dead) for k, v in infos.items()}
    except Exception:  # noqa: BLE001 - a private API of Ray: any change is "cannot tell"
        return None


class DriverGone(Exception):
    """The search's driver has ended: this worker (an orphan Ray has not stopped yet) claims
    no more trials (the resumed driver re-queues what it left running)."""


def _rerun_first(study: Any, job_id: str | None = None) -> None:
    """This worker's first trials: the re-queued copies of dead workers' trials (see
    :meth:`.ray_search.RayTrials._recover` and :func:`.study.recover_stale`: a killed
    worker's, or on resuming, a killed driver's). Optuna hands out waiting trials oldest
    first, and the copies are the newest: without this the budget could run out on the older
    queue and leave the dead worker's recipe unrun. With ``job_id`` (this worker's Ray job),
    no trial is claimed once that job has ended (:class:`DriverGone`): Ray stops a dead
    driver's workers, but not at once, and an orphan must not take a re-queued copy that the
    resumed driver's workers are to run. A new trial is created here too, and every trial
    taken is tagged with this worker (:func:`.study.claim_trial`'s records) at once: a
    worker killed between taking a trial and its objective's first line (Optuna's sampler
    runs in between) leaves no running trial that no recovery can place."""
    import optuna

    from . import study as st

    pop = study._pop_waiting_trial_id
    running = optuna.trial.TrialState.RUNNING
    storage = study._storage

    def take() -> int:
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)):
            if "requeued_from" in t.user_attrs:
                try:
                    if storage.set_trial_state_values(t._trial_id, state=running):
                        return t._trial_id
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
        tid = pop()
        return storage.create_new_trial(study._study_id) if tid is None else tid

    def first() -> int:
        if job_id is not None and (job_states() or {}).get(job_id):
            raise DriverGone(f"the search's driver (Ray job {job_id}) has ended")
        tid = take()
        if st.RAY in st.CLAIM_TAGS:
            storage.set_trial_user_attr(tid, st.RAY, st.CLAIM_TAGS[st.RAY])
        storage.set_trial_user_attr(tid, st.OWNER, st.owner_record(tid))
        return tid

    study._pop_waiting_trial_id = first


class _WorkerSearch(_Search):
    """The trial runner of a Ray worker: the driver writes the reports. ``best/`` is saved
    as a local worker saves it (a new best at once, under the host lock) when the worker
    runs on the driver's machine (``out``: its output folder), so a killed driver's best
    survives; elsewhere the driver saves it from the artifacts sent back."""

    def write(self, study: Any, rows: list[dict[str, Any]],
              notes: list[str] | None = None) -> Any:
        return None

    def save_best(self, study: Any, row: dict[str, Any],
                  recipe: dict[str, Any] | None = None) -> None:
        if self.shared_out:
            super().save_best(study, row, recipe)


def run_worker(pieces: dict[str, Any], spec: dict[str, Any], slot: str, trials: int | None,
               time_s: float | None) -> dict[str, Any]:
    """One worker slot: run up to ``trials`` trials (``time_s``: seconds before the last
    trial must end) of the study ``spec`` names; returns what it did and its contenders'
    artifacts, packed (see :func:`pack_folder`)."""
    import ray
    import torch

    from . import study as st
    from .budget import _Budget, _run_trials

    node = ray.get_runtime_context().get_node_id()
    job = ray.get_runtime_context().get_job_id()
    host = socket.gethostname()
    st.CLAIM_TAGS[st.RAY] = {"node_id": node, "host": host, "slot": slot, "pid": os.getpid(),
                             "job_id": job}
    torch.set_num_threads(int(spec["threads"] or 1))
    scratch = Path(tempfile.mkdtemp(prefix="modelopt-ray-worker-"))
    try:
        search = _WorkerSearch(_session(pieces, scratch), spec["targets"], spec["objective"],
                               spec["max_drop"], spec["space"], scratch,
                               spec["runtime_options"], spec["profiler_options"],
                               spec["threads"], spec["extra_profilers"])
        search.shared_out = bool(spec.get("out"))
        if spec.get("out"):  # the driver's output folder, on this machine
            search.out = Path(spec["out"])
        if spec.get("step_cache") and hasattr(search, "use_cache"):
            search.use_cache(spec["step_cache"])  # the driver's, where every node sees it
        try:
            study = st.open_study(spec["storage"], spec["study_name"], spec["seed"],
                                  ["maximize", "minimize"])
            _rerun_first(study, job)
            search.baseline = dict(study.user_attrs["baseline"])
            search.record("measure", float(study.user_attrs.get("baseline_s", 1.0)))
            t0 = time.perf_counter()
            search.set_budget(t0, time_s, 0.0)
            budget = _Budget(trials, time_s, t0)
            _run_trials(study, search, budget, time_s, t0)
        except st.storage_errors() as e:
            raise st.storage_error(spec["storage"], e) from e
        cache = getattr(search, "step_cache", None)
        packed = {}
        for n, art in search.artifacts.items():
            path = art.save(scratch / "out" / f"trial-{n}", plugins=search.s.pm)
            packed[n] = pack_folder(path)
        return {"slot": slot, "node_id": node, "host": host, "ran": budget.ran,
                "stopped_early": budget.stopped_early, "skipped": search.skipped,
                "lost": search.lost, "dropped": search.dropped,
                "dead_targets": search.dead_targets, "stop_reason": search.stop_reason,
                "cache": cache.stats() if cache is not None else None, "artifacts": packed}
    finally:
        st.CLAIM_TAGS.pop(st.RAY, None)
        shutil.rmtree(scratch, ignore_errors=True)
