"""Who runs a trial of a search: the record a worker writes on each trial it takes (host,
boot, pid namespace, pid and its start time, and tags such as the Ray job), and whether that
process is gone (then its trial may be failed and re-queued: :func:`.study.recover_stale`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

__all__ = ["CLAIM_TAGS", "OWNER", "RAY", "boot_id", "claim_trial", "owner_is_dead",
           "owner_record", "worker_id"]


def worker_id() -> str:
    """``host:pid`` of this process (recorded on each trial it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


#: user attribute naming the process that runs a trial (see :func:`claim_trial`)
OWNER = "owner"
#: user attribute naming the Ray node and worker slot that runs a trial (see :mod:`.ray_worker`)
RAY = "ray"
#: what :func:`claim_trial` records besides: a Ray worker sets ``{RAY: {...}}`` here
CLAIM_TAGS: dict[str, Any] = {}


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def boot_id() -> str:
    """This machine's boot id ("" where unknown): with the hostname, it tells one boot of one
    machine from another."""
    return _read("/proc/sys/kernel/random/boot_id")


def _start_time(pid: int) -> str:
    """The start time of process ``pid`` (clock ticks since boot; "" where unknown): with the
    pid, it tells the process apart from a later one that reuses the pid."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def owner_record(trial_id: int) -> dict[str, Any]:
    """Who runs trial ``trial_id``: this host, boot, pid namespace, pid and its start time. The
    record names the trial it was written for, so a copy of it (Optuna's retry of a stale
    trial copies the user attributes) never makes another trial look owned."""
    return {"host": socket.gethostname(), "boot": boot_id(),
            "pidns": _pid_namespace(), "pid": os.getpid(), "start": _start_time(os.getpid()),
            "trial_id": int(trial_id)}


def claim_trial(trial: Any) -> None:
    """Record this process as the one running ``trial`` (the first thing a trial does)."""
    trial.set_user_attr(OWNER, owner_record(trial._trial_id))
    trial.set_user_attr("worker", worker_id())
    for k, v in CLAIM_TAGS.items():
        trial.set_user_attr(k, v)


def owner_is_dead(owner: Any, trial_id: int) -> bool:
    """True only when ``owner`` (a trial's :func:`owner_record`) was written for ``trial_id``
    by a process of this host, boot and pid namespace that is gone (or whose pid now belongs
    to a later process). Anything else (no record yet, a copied record, another machine or
    container) is not judged here: Optuna's heartbeat fails such a trial once it is stale."""
    if not isinstance(owner, dict) or owner.get("trial_id") != trial_id:
        return False
    pid = owner.get("pid")
    if (owner.get("host") != socket.gethostname() or not isinstance(pid, int)
            or isinstance(pid, bool) or pid <= 0
            or owner.get("boot") != boot_id()
            or owner.get("pidns") != _pid_namespace()):
        return False
    if pid == os.getpid():
        return False
    if not _alive(pid):
        return True
    start = owner.get("start")
    now = _start_time(pid)
    return bool(start and now and start != now)  # the pid was reused: its owner is gone


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError, OSError):
        return True  # cannot tell: not judged dead
    try:  # a zombie (killed child not yet reaped) is dead too
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True
