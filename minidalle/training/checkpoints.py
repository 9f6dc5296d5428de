"""Resumable checkpoints: `save_state` into a temporary folder renamed into place, the step in
`trainer_state.json` (JSON, not a pickle), `latest` = the newest complete one."""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import Accelerator
from accelerate.utils import set_seed

from ..errors import UserError
from ..folders import replace_folder
from .run_folder import truncate_log

if TYPE_CHECKING:
    from .runtime import TrainingArguments

logger = logging.getLogger("minidalle")

CHECKPOINTS_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d+)$")


class TrainState:
    """The step counter. It is saved in each checkpoint's `trainer_state.json` (not as a pickle), so
    that resuming unpickles nothing with `weights_only=False`."""

    def __init__(self, step: int = 0) -> None:
        self.step = step


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary folders of an interrupted save are ignored)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: str | Path, resume_from: str) -> Path | None:
    """`latest` -> newest complete checkpoint (None if there is none yet); a path -> that folder."""
    if not resume_from:
        return None
    if resume_from == "latest":
        found = checkpoint_dirs(output_dir)
        return found[-1] if found else None
    path = Path(resume_from)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"--resume_from_checkpoint {path}: not a checkpoint folder (no trainer_state.json)")
    return path


def save_checkpoint(accelerator: Accelerator, args: TrainingArguments, step: int) -> Path:
    """`save_state` into a temporary folder, then rename: a kill mid-save never leaves a partial `step-N`."""
    root = Path(args.output_dir) / CHECKPOINTS_DIR
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)  # before the barrier: every process writes its own files into it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "args": asdict(args)}, indent=2))
        replace_folder(tmp, final, lambda folder: (folder / "trainer_state.json").is_file(), "a checkpoint")
        for old in checkpoint_dirs(args.output_dir)[: -max(args.checkpoints_total_limit, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def restore_state(accelerator: Accelerator, args: TrainingArguments) -> TrainState:
    """The step counter, and everything else (weights, optimizer, data position, RNG states) restored from
    `--resume_from_checkpoint` when one is given (call after `accelerator.prepare`).

    Every process was seeded alike (`make_accelerator`), so that each built the same initial weights. From here on
    each process draws its own noise (dropout masks, Gumbel noise, caption dropout), as nanoGPT offsets its seed by
    the rank: process r > 0 reseeds with seed + r, and process 0 keeps the run's stream, so a one-process run is
    unchanged. The data order has its own generator; a resume loads each process's saved RNG state over this."""
    if accelerator.process_index > 0:
        set_seed(args.seed + accelerator.process_index)
    resume = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if resume is None:
        return TrainState()
    try:
        step = int(json.loads((resume / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"--resume_from_checkpoint {resume}: unreadable trainer_state.json ({exc})") from None
    if list(resume.glob("custom_checkpoint_*.pkl")):
        # written before the step moved to trainer_state.json: load everything but that pickle
        with tempfile.TemporaryDirectory(dir=resume.parent) as view:
            for item in resume.iterdir():
                if not item.name.startswith("custom_checkpoint_"):
                    (Path(view) / item.name).symlink_to(item.resolve())
            accelerator.load_state(view)
    else:
        accelerator.load_state(str(resume))
    if accelerator.is_main_process:
        truncate_log(args.output_dir, step)  # the steps after the checkpoint are logged again
    accelerator.wait_for_everyone()
    logger.info("resumed from %s at step %d", resume, step)
    return TrainState(step)
