"""The artifact folder on disk: manifest hashing, the checks before a save replaces a
folder, and the verification a load does before it reads anything (every file listed, every
hash matching, nothing outside the folder). Used by :mod:`modelopt_core.artifact`; imports
nothing of the core but the persistence and manifest helpers."""

from __future__ import annotations

import contextlib
import errno as errno_mod
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from . import persist
from .errors import ArtifactError, UnsafeArtifactError
from .manifest import check_manifest, read_json

MANIFEST = "manifest.json"


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a save target whose replacement would lose something (see ModelArtifact.save)."""
    try:
        cwd: Path | None = Path.cwd().resolve()
    except OSError:
        cwd = None
    if cwd is not None and (target == cwd or target in cwd.parents):
        raise ArtifactError(
            f"{target}: refusing to save onto the working folder or a parent of it (saving "
            "replaces the whole folder). Save into a new sub-folder, e.g. save('out/model').")
    if not os.path.lexists(target):
        return
    if not target.is_dir():
        raise ArtifactError(f"{target}: exists and is not a folder; an artifact is saved as a "
                            "folder. Choose another path (nothing was changed).")
    try:
        entries = sorted(os.listdir(target))
    except OSError as e:
        raise persist.write_error(target, e, "cannot read the existing folder") from e
    if not entries:
        return
    problem = ""
    try:
        m = read_json(target / MANIFEST, "manifest")
        if not (isinstance(m, dict) and "modelopt_manifest" in m
                and isinstance(m.get("files"), dict)):
            problem = f"its {MANIFEST} is not a modelopt manifest"
        else:
            extra = unlisted(target, set(m["files"]))
            if extra:
                problem = f"it holds files its manifest does not list: {extra[:5]}"
    except ArtifactError:
        problem = (f"it is not a modelopt artifact (no valid {MANIFEST}; it holds "
                   f"{entries[:5]}{' ...' if len(entries) > 5 else ''})")
    if problem:
        raise ArtifactError(
            f"{target}: {problem}; refusing to replace it, which would delete it. Choose "
            "another path, or empty the folder yourself (nothing was changed).")
    if not overwrite:
        raise ArtifactError(f"{target}: already holds a modelopt artifact and overwrite=False; "
                            "pass overwrite=True to replace it, or choose another path.")


def unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Entries under ``folder`` (relative, ``/``-separated) that are neither ``manifest.json``
    nor a listed file nor a folder holding one."""
    dirs_ok = {"/".join(f.split("/")[:i]) for f in listed for i in range(1, f.count("/") + 1)}
    out = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for d in list(dirs):
            r = (rel / d).as_posix()
            if r not in dirs_ok or os.path.islink(os.path.join(root, d)):
                out.append(r + "/")
                dirs.remove(d)
        out += [r for r in ((rel / f).as_posix() for f in files)
                if r not in listed and r != MANIFEST]
    return sorted(out)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def jsonable(v: Any) -> Any:
    try:
        json.dumps(v)
        return v
    except TypeError:
        if isinstance(v, dict):
            return {str(k): jsonable(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [jsonable(x) for x in v]
        return repr(v)


def write_json(path: Path, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def clean_crashed_saves(p: Path) -> None:
    """Remove what saves of ``p`` killed mid-way left beside it (``.NAME.tmp-*`` /
    ``.NAME.old-*``), but only while no save of ``p`` runs: a live save holds the path's lock
    from before it creates its temp folder until after the swap, so with the lock free every
    such folder is a dead writer's. Never waits for the lock, never fails a load."""
    try:
        persist.clean_stale(p.resolve())
    except (ArtifactError, OSError):
        pass


def recover_for_load(p: Path) -> None:
    """``p`` is missing: wait for a save of it in progress, or restore the artifact a crashed
    save left beside it; ArtifactError when there is nothing."""
    target = p.resolve()
    if persist.leftovers(target) or persist.lock_path(target).exists():
        # a read-only folder cannot be locked or repaired: reported below
        with contextlib.suppress(ArtifactError), persist.locked(target):
            persist.recover(target, verify_folder)
    if not p.exists():
        left = [x.name for x in persist.leftovers(target)]
        hint = (f" Interrupted saves of it left {left[:3]} in {target.parent}, none of them a "
                "complete artifact (or the folder is read-only)." if left else "")
        raise ArtifactError(f"{p}: no such file or folder.{hint}")


def verify_folder(p: Path) -> dict[str, Any]:
    """The checked manifest of artifact folder ``p`` after verifying that every file in the
    folder is listed and every listed file matches its SHA-256."""
    mpath = p / MANIFEST
    manifest = check_manifest(read_json(mpath, "manifest"), mpath)
    files = manifest["files"]
    extra = unlisted(p, set(files))
    if extra:
        raise ArtifactError(
            f"{p}: {extra[:5]} {'is' if len(extra) == 1 else 'are'} not listed in {MANIFEST}, so "
            "cannot be verified; refused (nothing unverified is loaded). Remove what you added "
            "to the folder, or re-save the artifact.")
    for name, info in files.items():
        try:
            fp = inside(p, name)
            if not fp.is_file():
                raise ArtifactError(f"{fp}: listed in the manifest but missing.")
            digest = sha256_file(fp)
        except OSError as e:  # a name too long, a loop, no permission...
            raise entry_error(mpath, name, e) from e
        if digest != info["sha256"]:
            raise ArtifactError(
                f"{fp}: SHA-256 mismatch (manifest {info['sha256'][:12]}..., file "
                f"{digest[:12]}...): the file was changed or truncated; re-save the artifact.")
    return manifest


def short_name(name: str) -> str:
    """``name`` for a message: a very long one shortened, with its length."""
    if len(name) <= 120:
        return repr(name)
    return f"{name[:60]!r}...{name[-20:]!r} ({len(name)} characters)"


def errno_text(e: OSError) -> str:
    code = e.errno if isinstance(e.errno, int) else None
    name = errno_mod.errorcode.get(code, "") if code is not None else ""
    return f"{name or type(e).__name__}: {e.strerror or e}"


def entry_error(mpath: Path, name: str, e: OSError) -> ArtifactError:
    """ArtifactError for a manifest file entry the file system refuses to access."""
    hint = {errno_mod.ENAMETOOLONG: "the name is longer than this file system allows",
            errno_mod.ELOOP: "it goes through a symbolic link loop",
            errno_mod.EACCES: "permission denied", errno_mod.EPERM: "permission denied"}.get(
        e.errno if isinstance(e.errno, int) else -1, "the file system refused it")
    return ArtifactError(
        f"{mpath}: file entry {short_name(name)} cannot be accessed: {hint} "
        f"({errno_text(e)}). The manifest does not describe files modelopt wrote here; "
        "re-save the artifact (or fix the folder's permissions).")


def probe(p: Path) -> tuple[bool, bool]:
    """(exists, is a file) of the path given to :func:`load_artifact`; an OS error (name too
    long, a symlink loop...) is an ArtifactError naming the path."""
    try:
        return p.exists(), p.is_file()
    except OSError as e:
        raise ArtifactError(f"{short_name(str(p))}: cannot be accessed ({errno_text(e)}); "
                            "give the path of an artifact folder.") from e


def inside(root: Path, rel: str) -> Path:
    try:
        fp = (root / rel).resolve()
    except (OSError, RuntimeError) as e:  # a symlink loop
        raise UnsafeArtifactError(f"{root}: file entry {rel!r} cannot be resolved ({e}).") from e
    if root.resolve() not in fp.parents:
        raise UnsafeArtifactError(f"{root}: file entry {rel!r} points outside the artifact folder.")
    return fp
