"""A ``modelopt serve`` subprocess for the serving tests that must watch the server as an
operator does: its own process (resident memory), its stderr (log lines, tracebacks), its
/metrics, over loopback sockets."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["ServeProcess", "free_port", "metric_values", "onnx_mlp", "raw_exchange"]


def onnx_mlp(folder: Path) -> Path:
    """The serving tests' tiny MLP (``helpers.tiny_mlp``) exported to ONNX and saved as
    ``folder/mlp``; returns the artifact's path."""
    import torch
    from helpers import tiny_mlp

    import modelopt_core as mo

    s = mo.Session(tiny_mlp(), (torch.randn(1, 8),), progress=False)
    s.export("onnx")
    return s.current.save(folder / "mlp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_values(text: str, variant: str | None = None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a Prometheus exposition, without the
    ``variant`` label: summed over the variants, or only ``variant``'s samples (and those
    that carry no variant, like ``process_*``) when it is given."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, tuple], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            labels = dict(s.labels)
            v = labels.pop("variant", None)
            if variant is not None and v is not None and v != variant:
                continue
            key = (s.name, tuple(sorted(labels.items())))
            out[key] = out.get(key, 0.0) + s.value
    return out


def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_until_closed(s)


def read_until_closed(s: socket.socket) -> bytes:
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return got
        got += chunk


class ServeProcess:
    """``python -m modelopt_core serve ARTIFACT --port P *args`` until :meth:`stop` (SIGTERM,
    which must exit 0). ``url``, ``port``, ``pid``; :meth:`memory_mb` reads the server's
    ``/proc/PID/status``; :meth:`log` is its stderr so far."""

    def __init__(self, artifact: Path, *args: str, ready_timeout_s: float = 120.0) -> None:
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._err = tempfile.TemporaryFile(mode="w+")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelopt_core", "serve", str(artifact), "--port",
             str(self.port), *args], stdout=subprocess.DEVNULL, stderr=self._err, env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modelopt serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"modelopt serve did not become ready:\n{self.log()}")
            time.sleep(0.1)

    def memory_mb(self) -> dict[str, float]:
        """``VmRSS`` (resident now) and ``VmHWM`` (peak resident) of the server, in MB."""
        fields = dict(line.split(":", 1) for line in
                      Path(f"/proc/{self.pid}/status").read_text().splitlines() if ":" in line)
        return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}

    def metrics(self) -> dict[tuple[str, tuple], float]:
        import httpx

        return metric_values(httpx.get(f"{self.url}/metrics").text)

    def log(self) -> str:
        self._err.flush()
        self._err.seek(0)
        return self._err.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
