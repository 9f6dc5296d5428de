"""Folders minidalle writes: the one writable-folder probe, the one atomic folder writer, and ownership.

Every saved folder (a model, a pipeline, an encoded dataset, a training
checkpoint) is written into a hidden temporary sibling and swapped in with
renames, so a reader, or a run killed mid-save, never sees half a folder: at
every instant the target is either the old complete folder or the new one.

Nothing is lost: a folder is replaced only when minidalle wrote it, as the same
kind of thing (`is_ours`: its config.json's kind, model_index.json,
codes_info.json); an output folder of files (samples, reconstructions, exports)
carries a `.minidalle-output.json` marker, and a re-run removes only the files
that its kind writes. Anything else stops the command before any work, naming
the folder. Standard library only, so any layer can use it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from .errors import UserError

logger = logging.getLogger("minidalle")

OUTPUT_MARKER = ".minidalle-output.json"


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
    """Remove `folder` if it holds nothing but empty folders (and write probes, output markers); True when gone."""
    if not folder.is_dir():
        return not folder.exists()
    for inner in sorted((p for p in folder.rglob("*")), key=lambda p: len(p.parts), reverse=True):
        if inner.is_file() and (inner.name.startswith(".write-test-") or inner.name == OUTPUT_MARKER):
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


def check_replaceable(folder: str | Path, is_ours: Callable[[Path], bool], what: str) -> None:
    """Stop, naming `folder`, unless it is missing, empty, or holds `what` (e.g. "a pipeline") minidalle wrote."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder for {what}")
    if folder.is_dir() and any(folder.iterdir()) and not is_ours(folder):
        raise UserError(
            f"{folder}: exists and does not hold {what} written by minidalle, so it is left untouched; "
            "choose a new or empty folder"
        )


def check_apart(out: str | Path, data: str | Path, out_flag: str = "--out", data_flag: str = "--data") -> None:
    """Refuse an output folder equal to, inside or above the input data folder (it would overwrite the data)."""
    out, data = Path(out).resolve(), Path(data).resolve()
    if out == data or data in out.parents or out in data.parents:
        where = "is" if out == data else ("is inside" if data in out.parents else "contains")
        raise UserError(f"{out_flag} {out} {where} {data_flag} {data}: write the output somewhere else")


def replace_folder(
    new: str | Path, folder: str | Path, is_ours: Callable[[Path], bool] | None = None, what: str = "folder"
) -> Path:
    """Swap the complete folder `new` in at `folder`: the old one (if any) is renamed aside first and
    deleted only once `new` is in place. An old folder that is not ours (`check_replaceable`) is an error."""
    new, folder = Path(new), Path(folder)
    if is_ours is not None:
        check_replaceable(folder, is_ours, what)
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
        os.replace(folder, old / folder.name)
        os.replace(new, folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, folder)
    return folder


@contextlib.contextmanager
def atomic_folder(folder: str | Path, is_ours: Callable[[Path], bool], what: str) -> Iterator[Path]:
    """`with atomic_folder(target, is_ours, what) as tmp:` write into `tmp`; on success it replaces `target`.

    A `target` that holds anything but a `what` minidalle wrote is refused before anything is written.
    On an exception the temporary folder is removed and `target` is untouched.
    """
    check_replaceable(folder, is_ours, what)
    tmp = temporary_sibling(folder)
    try:
        yield tmp
        replace_folder(tmp, folder, is_ours, what)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ output folders of files


def claim_output_folder(out: str | Path, kind: str, own_files: str, flag: str = "--out") -> Path:
    """Make `out` ready for a command that writes files of `kind` into it (samples, an export, ...).

    A new or empty folder is created and marked as ours. A folder this command wrote before (its
    marker names `kind`) loses the files it wrote then (relative paths matching the regular
    expression `own_files`) and nothing else. Any other non-empty folder stops the command, naming it.
    """
    out = Path(out)
    marker = out / OUTPUT_MARKER
    if out.exists() and not out.is_dir():
        raise UserError(f"{flag} {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        found = _marker_kind(marker)
        if found != kind:
            held = (
                f"holds a minidalle {found} output, not {kind}"
                if found
                else f"holds files minidalle did not write (no {OUTPUT_MARKER}; an output of minidalle before 2026-12 "
                "has none: remove it yourself to write there again)"
            )
            raise UserError(f"{flag} {out}: {held}, so it is left untouched; choose a new or empty folder")
        pattern = re.compile(own_files)
        stale = [p for p in out.rglob("*") if p.is_file() and pattern.fullmatch(p.relative_to(out).as_posix())]
        for path in stale:
            path.unlink()
        if stale:
            logger.info("%s %s: removed %d file(s) of the earlier %s output", flag, out, len(stale), kind)
    writable_folder(out, flag)
    marker.write_text(json.dumps({"kind": kind, "writer": "minidalle"}) + "\n")
    return out


def _marker_kind(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
