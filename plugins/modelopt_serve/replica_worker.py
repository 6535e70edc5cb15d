"""A replica worker process of :class:`~modelopt_serve.replicas.ReplicaPool` (process mode): the
code the spawned child runs (module-level: the child imports it), and :class:`_Worker`, the
pool's handle on one such process and its end of the pipe."""

from __future__ import annotations

import os
import signal
from typing import Any

import modelopt_core as mo

from .errors import ReplicaCrashedError, ServeError

_WORKER: dict[str, Any] = {}


def _proc_init(path: str, backend: str, options: dict[str, Any], threads: int,
               model: Any = None) -> None:
    try:
        import torch

        from .replicas import load_runner

        torch.set_num_threads(threads)
        _WORKER["runner"] = load_runner(mo.load_artifact(path, model=model), backend, options)
    except Exception as e:  # noqa: BLE001 - reported by the first call (a failing initializer
        # would break the pool without saying why)
        _WORKER["error"] = ServeError(f"replica process {os.getpid()}: cannot load {path} on "
                                      f"{backend!r}: {type(e).__name__}: {e}")


def _proc_run(arrays: list[Any]) -> list[Any]:
    if "error" in _WORKER:
        raise _WORKER["error"]
    import torch

    outs = _WORKER["runner"].run_flat([torch.from_numpy(a) for a in arrays])
    return [o.detach().cpu().numpy() for o in outs]


def _proc_ping() -> int:
    if "error" in _WORKER:
        raise _WORKER["error"]
    return os.getpid()


def _proc_main(conn: Any, path: str, backend: str, options: dict[str, Any], threads: int,
               model: Any = None) -> None:
    """A worker process: load the runner, say ``("ready", pid)`` (or ``("error", exc)``), then
    answer each list of arrays with ``("ok", outputs)`` or ``("error", exc)`` until ``None`` or
    the pool's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops us
    _proc_init(path, backend, options, threads, model)
    try:
        conn.send(("ready", _proc_ping()))
    except ServeError as e:
        conn.send(("error", e))
        return
    while True:
        try:
            arrays = conn.recv()
        except (EOFError, OSError):  # the pool is gone
            return
        if arrays is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", _proc_run(arrays))
        except Exception as e:  # noqa: BLE001 - the caller's error
            reply = ("error", e)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as e:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", ServeError(f"replica process {os.getpid()}: "
                                           f"{type(e).__name__}: {e}")))


class _Worker:
    """One worker process and the pool's end of its pipe."""

    __slots__ = ("busy", "conn", "dead", "pid", "process")

    def __init__(self, process: Any, conn: Any) -> None:
        self.process, self.conn, self.pid = process, conn, process.pid
        self.dead = False
        self.busy = False  # a call holds it (and its pipe: closed by that call, not others)

    def handshake(self) -> None:
        """Wait until the worker has loaded the runner; raises its load error, or
        :class:`ReplicaCrashedError` when it died first."""
        from multiprocessing.connection import wait

        try:
            wait([self.conn, self.process.sentinel])
            kind, payload = self.conn.recv()
        except (EOFError, OSError):
            kind, payload = "died", None
        if kind == "error":
            raise payload
        if kind != "ready":
            raise ReplicaCrashedError(f"replica process {self.pid} died while loading the "
                                      f"runner (exit code {self.process.exitcode}).")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the worker to exit (it finishes the call it runs), kill it past ``timeout``."""
        try:
            self.conn.send(None)
        except (EOFError, OSError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()
