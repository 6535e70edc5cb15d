"""Crash-safe replacement of an artifact folder: a lock per path, a two-rename swap that a crash
can always be recovered from, fsync before rename, and cleanup of what crashed saves left.

Layout in the parent folder of an artifact ``NAME`` while a save runs::

    .NAME.lock         flock()ed by the one save (or recovering load) of this path; removed after
    .NAME.tmp-XXXXXXXX the new artifact being written (complete once its manifest.json exists)
    .NAME.old-XXXXXXXX the previous artifact, only between the two renames of the swap

The swap is ``rename(NAME -> .old)`` then ``rename(.tmp -> NAME)``. A crash between the two leaves
NAME missing with a complete ``.old`` (and ``.tmp``); the next save or load of NAME, holding the
lock, renames the verified ``.old`` back (or, with none, a verified ``.tmp``). Every later save
deletes the stale ``.tmp-*``/``.old-*`` of its own NAME: none can belong to a live save, since a
live save holds the lock. A load does the same when it can take the lock at once
(:func:`clean_stale`), and leaves them alone while a save holds it.
``renameat2(RENAME_EXCHANGE)`` would close the window entirely but is Linux-only; with the lock
and the recovery the window is harmless on every POSIX system, so one portable code path is
used.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import ArtifactError, ArtifactWriteError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; saves of one path are not serialized there
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ArtifactWriteError",
    "clean_leftovers",
    "clean_stale",
    "file_mode",
    "fsync_dir",
    "fsync_files",
    "leftovers",
    "locked",
    "new_temp",
    "recover",
    "swap_in",
    "write_error",
    "write_text_atomic",
]

#: seconds a save waits for another save of the same path before giving up
LOCK_TIMEOUT_S = 600.0


def write_error(target: Path, e: BaseException, what: str = "cannot save the artifact") -> \
        ArtifactWriteError:
    """An :class:`ArtifactWriteError` for ``target`` from ``e`` (naming the errno if any)."""
    code = getattr(e, "errno", None)
    name = errno_mod.errorcode.get(code, "") if isinstance(code, int) else ""
    hint = {errno_mod.ENOSPC: "free disk space", errno_mod.EDQUOT: "free disk quota",
            errno_mod.EROFS: "save to a writable folder", errno_mod.EACCES: "save to a writable "
            "folder", errno_mod.EPERM: "save to a writable folder"}.get(code, "fix the cause")
    where = f" (errno {code} {name})" if name else ""
    err = ArtifactWriteError(
        f"{target}: {what}{where}: {type(e).__name__}: {e}. Nothing was lost: any previous "
        f"artifact at this path is unchanged and temporary files were removed; {hint} and "
        "save again.")
    err.errno = code
    err.path = str(target)
    return err


def _leftover_re(name: str) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(name)}\.(tmp|old)-[a-z0-9_]{{8}}")


def leftovers(target: Path) -> list[Path]:
    """The ``.NAME.tmp-*`` / ``.NAME.old-*`` folders of exactly this path, newest first."""
    pat = _leftover_re(target.name)
    found = []
    try:
        for p in target.parent.iterdir():
            if pat.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
                with contextlib.suppress(OSError):  # gone meanwhile: not a leftover
                    found.append((p.stat().st_mtime_ns, p))
    except OSError:
        return []
    return [p for _, p in sorted(found, reverse=True)]


def lock_path(target: Path) -> Path:
    """The lock file of ``target``: ``.NAME.lock`` next to it."""
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def locked(target: Path, timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``target`` (waits up to ``timeout`` s for another holder).

    The lock file is removed on release while still held; a waiter that then gets a lock on the
    removed file notices (its inode no longer is the path's) and retries, so two holders never
    overlap."""
    if fcntl is None:
        yield
        return
    timeout = LOCK_TIMEOUT_S if timeout is None else timeout
    lock = lock_path(target)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise write_error(target, e, f"cannot create the lock file {lock.name}") from e
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ArtifactError(
                            f"{target}: another process has been saving this artifact for over "
                            f"{timeout:.0f} s (it holds {lock}); wait for it to finish, or save "
                            "to another path.") from None
                    time.sleep(0.02)
            st = os.fstat(fd)
            try:
                cur = os.stat(lock)
                same = (cur.st_ino, cur.st_dev) == (st.st_ino, st.st_dev)
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the previous holder removed the file while we waited: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        os.close(fd)


def recover(target: Path, verify: Callable[[Path], object]) -> Path | None:
    """With the lock held and ``target`` missing: rename the newest verified ``.old-*`` (else
    ``.tmp-*``) folder of this path back to ``target``. Returns what was restored, or None."""
    if target.exists() or target.is_symlink():
        return None
    found = leftovers(target)
    for kind in ("old", "tmp"):
        for cand in (p for p in found if p.name.split(".")[-1].startswith(kind + "-")):
            try:
                verify(cand)
            except (ArtifactError, OSError):
                continue
            try:
                os.rename(cand, target)
            except OSError as e:
                raise write_error(target, e, f"cannot restore {cand.name} (left by a crashed "
                                  "save)") from e
            fsync_dir(target.parent)
            return cand
    return None


def clean_leftovers(target: Path) -> None:
    """Delete the stale temp folders of this path (lock held: no live save owns them)."""
    for p in leftovers(target):
        with contextlib.suppress(OSError):
            os.unlink(p / "manifest.json")  # never again a recovery candidate, even if cut short
        shutil.rmtree(p, ignore_errors=True)


def clean_stale(target: Path) -> list[Path]:
    """Delete the ``.NAME.tmp-*`` / ``.NAME.old-*`` folders that saves of ``target`` killed
    mid-way left, when ``target`` exists and no save of it is running: its lock is taken
    without waiting (a live save holds it the whole time its temp folder exists, and the
    kernel drops a killed holder's lock). Does nothing when the lock is held or cannot be taken
    (a read-only folder; no ``flock`` on this system). Returns the folders deleted."""
    if fcntl is None or not leftovers(target):
        return []
    try:
        with locked(target, timeout=0):
            if not target.is_dir():  # missing: a load restores it from these (recover)
                return []
            found = leftovers(target)
            clean_leftovers(target)
    except ArtifactError:  # a save of it is running (or the folder is read-only)
        return []
    return found


def new_temp(target: Path, kind: str = "tmp") -> Path:
    """A fresh, empty ``.NAME.<kind>-XXXXXXXX`` path next to ``target`` (created for "tmp")."""
    for _ in range(100):
        p = target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"
        if kind != "tmp":
            if not os.path.lexists(p):
                return p
            continue
        try:
            os.mkdir(p, 0o755)
            return p
        except FileExistsError:
            continue
    raise ArtifactError(f"{target.parent}: cannot find a free temporary name for {target.name}.")


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under the current umask (0644 for
    umask 022): libraries that write through private temp files (safetensors) leave 0600."""
    mask = os.umask(0o022)  # the umask can only be read by setting it
    os.umask(mask)
    return 0o666 & ~mask


def fsync_files(folder: Path) -> None:
    """Give every file under ``folder`` the usual mode and fsync it (reopened: libraries write
    files themselves), then the folders, so the content is on disk before the rename that
    publishes it."""
    mode = file_mode()
    for root, dirs, files in os.walk(folder):
        for f in files:
            fd = os.open(os.path.join(root, f), os.O_RDONLY)
            try:
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
        for d in dirs:
            fsync_dir(Path(root) / d)
    fsync_dir(folder)


def fsync_dir(path: Path) -> None:
    """fsync a folder's entry list (best effort: some file systems refuse it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def swap_in(tmp: Path, target: Path) -> None:
    """Publish the complete folder ``tmp`` at ``target`` (lock held). An existing ``target`` is
    moved aside to ``.NAME.old-*`` first and deleted once the new one is in place; if the second
    rename fails, the old one is put back."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        fsync_dir(target.parent)
        return
    old = new_temp(target, "old")
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)  # put the previous artifact back
        raise
    fsync_dir(target.parent)
    with contextlib.suppress(OSError):
        os.unlink(old / "manifest.json")
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file atomically: temp file next to it, the usual mode, fsync, rename."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())  # mkstemp makes 0600: give the usual mode
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
