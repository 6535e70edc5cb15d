"""A real, throwaway PostgreSQL server for the search's RDB tests (imported by conftest.py).

``postgres_server`` (one per test session): ``initdb`` in a temp folder, ``pg_ctl start``
listening on 127.0.0.1 at a free port (and a unix socket in that folder), stopped and
removed at the end. ``postgres_url``: a fresh database on it per test, as an SQLAlchemy URL
(``postgresql+psycopg2://modelopt@127.0.0.1:PORT/DB``). PostgreSQL refuses to run as root,
so as root the server runs as the ``postgres`` user (Debian's package creates it), else as
``nobody``, through ``runuser``. Skipped, with the reason, only where the binaries (``.ci/run``
installs Debian's ``postgresql``) or the driver (``psycopg2``, the ``search`` extra) are
missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

USER = "modelopt"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    hits = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return hits[-1] if hits else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """``cmd`` run as a non-root user when this process is root (initdb refuses root)."""
    if os.geteuid() != 0:
        return cmd
    import pwd

    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return ["runuser", "-u", name, "--", *cmd]
    pytest.skip("running as root with neither a 'postgres' nor a 'nobody' user to run "
                "PostgreSQL as (initdb refuses root)")
    raise AssertionError  # (skip raises)


@pytest.fixture(scope="session")
def postgres_server():
    """(host, port) of a PostgreSQL server started for this test session; see the module."""
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl): .ci/run installs Debian's "
                    "postgresql package")
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver: pip install -e '.[search]'")
    root = Path(tempfile.mkdtemp(prefix="modelopt-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:  # the server's user owns its folder
        user = _as_server_user(["true"])[2]
        shutil.chown(root, user=user)
    port = _free_port()
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off "
               "-c max_connections=200")
    try:
        subprocess.run(_as_server_user([initdb, "-D", str(data), "-U", USER, "--auth=trust",
                                        "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, text=True, timeout=120)
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t",
                                        "60", "start", "-o", options]),
                       check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as e:
        text = log.read_text()[-2000:] if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start: {e.stderr[-2000:]}\n{text}") from e
    try:
        yield "127.0.0.1", port
    finally:
        subprocess.run(_as_server_user([pg_ctl, "-D", str(data), "-m", "immediate", "-w",
                                        "stop"]), check=False, capture_output=True,
                       timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server):
    """A new empty database on :func:`postgres_server`, as an SQLAlchemy/Optuna URL."""
    import psycopg2

    host, port = postgres_server
    name = f"t_{uuid.uuid4().hex[:12]}"
    con = psycopg2.connect(host=host, port=port, user=USER, dbname="postgres")
    con.autocommit = True
    try:
        con.cursor().execute(f"CREATE DATABASE {name}")
    finally:
        con.close()
    return f"postgresql+psycopg2://{USER}@{host}:{port}/{name}"
