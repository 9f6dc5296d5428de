"""Folders minidalle writes: the one writable-folder probe and the one atomic folder writer.

Every saved folder (a model, a pipeline, an encoded dataset, a training
checkpoint) is written into a hidden temporary sibling and swapped in with
renames, so a reader, or a run killed mid-save, never sees half a folder: at
every instant the target is either the old complete folder or the new one.
Standard library only, so any layer can use it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import UserError


def writable_folder(path: str | Path, what: str = "output folder") -> Path:
    """Create `path` (with its parents) and prove it is writable, before any work is done.

    `what` names the folder in the error (a flag such as `--output_dir`).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{what} {path}: not writable ({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def no_empty_folder_left(path: str | Path | None) -> Iterator[None]:
    """Around a command: if it fails, the folders it created on the way to `path` are removed while still empty.

    So bad input never leaves a half-made output folder behind; anything written into one is kept.
    """
    if not path:
        yield
        return
    path = Path(path).absolute()
    missing = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        yield
    except BaseException:
        for folder in missing:
            if not _remove_if_empty(folder):
                break
        raise


def _remove_if_empty(folder: Path) -> bool:
    """Remove `folder` if it holds nothing but empty folders (and write probes); True when it is gone."""
    if not folder.is_dir():
        return not folder.exists()
    for inner in sorted((p for p in folder.rglob("*")), key=lambda p: len(p.parts), reverse=True):
        if inner.is_file() and inner.name.startswith(".write-test-"):
            inner.unlink(missing_ok=True)
        elif inner.is_dir() and not any(inner.iterdir()):
            inner.rmdir()
    if any(folder.iterdir()):
        return False
    folder.rmdir()
    return True


def temporary_sibling(folder: str | Path) -> Path:
    """A new, empty, hidden folder beside `folder` (same file system, so a rename can swap it in)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))


def replace_folder(new: str | Path, folder: str | Path) -> Path:
    """Swap the complete folder `new` in at `folder`: the old one (if any) is renamed aside first and
    deleted only once `new` is in place."""
    new, folder = Path(new), Path(folder)
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / folder.name)
        os.replace(new, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, folder)
    return folder


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """`with atomic_folder(target) as tmp:` write into `tmp`; on success it replaces `target`.

    On an exception the temporary folder is removed and `target` is untouched.
    """
    tmp = temporary_sibling(folder)
    try:
        yield tmp
        replace_folder(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
