"""The run folder is the source of truth: a trainer never silently reuses or overwrites a run.

- A new or empty `--output_dir` starts a run. One that holds a run (its
  `train_config.json`, `log.jsonl` or `checkpoints/`) is refused, naming
  `--resume_from_checkpoint latest` and `--overwrite_output_dir`; a non-empty
  folder that is no run is refused too. `--overwrite_output_dir` removes the
  run's own files (`RUN_FILES`) and nothing else.
- On resume the saved configuration is the one used: a flag left out takes its
  saved value; a flag given with another value is an error listing every such
  flag, unless `--override_saved_config`. A longer `--max_steps` is allowed
  (and logged), and so are the flags that change no result (`RUN_CONTROL`).
- On resume, `log.jsonl` is cut back to the checkpoint's step, so no step is
  logged twice.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from .runtime import TrainingArguments

logger = logging.getLogger("minidalle")

CONFIG_NAME = "train_config.json"
LOG_NAME = "log.jsonl"
# everything a trainer writes into its output folder
RUN_FILES = (
    "checkpoints",
    LOG_NAME,
    CONFIG_NAME,
    "samples",
    "image_tokenizer",
    "pipeline",
    "text_tokenizer",
    "codes",
    "eval.json",
    "run_summary.json",
    "best",
)
# flags that may differ on resume: where things go and how often they are reported, not what is computed
RUN_CONTROL = {
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "override_saved_config",
    "logging_steps",
    "image_steps",
    "eval_steps",
    "checkpointing_steps",
    "checkpoints_total_limit",
    "report_to",
    "num_workers",
    "max_nonfinite_steps",
    "threads",
    # what the sample grids draw: not what is trained
    "sample_prompts",
    "guidance_scale",
    "temperature",
    "num_candidates",
}


def holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in (CONFIG_NAME, LOG_NAME, "checkpoints"))


def open_run_folder(
    args: TrainingArguments, sections: dict[str, Any], explicit: set[str] | None
) -> tuple[dict[str, Any], list[str]]:
    """Decide, before any work, whether this is a new run, a resume or an overwrite. Returns the argument
    dataclasses to run with (by section name, as in train_config.json: "data", "training", ...) and, for an
    overwrite, the earlier run's files to remove (`clear_earlier_run`, once the processes can agree).

    `explicit` names the flags the user gave (`None`: a library call, every value counts as given)."""
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: is a file, not a folder")
    nonempty = out.is_dir() and any(out.iterdir())
    if nonempty and not holds_a_run(out):
        raise UserError(
            f"--output_dir {out}: holds files that are not a minidalle run, so it is left untouched; "
            "choose a new or empty folder"
        )
    if nonempty and not args.resume_from_checkpoint:
        if not args.overwrite_output_dir:
            raise UserError(
                f"--output_dir {out} already holds a run{_progress(out)}; continue it with "
                "--resume_from_checkpoint latest, or start it over with --overwrite_output_dir"
            )
        return sections, [name for name in RUN_FILES if (out / name).exists()]
    if args.resume_from_checkpoint and (out / CONFIG_NAME).is_file():
        return _saved_configuration(out, sections, explicit), []
    return sections, []


def clear_earlier_run(accelerator, output_dir: str | Path, stale: list[str]) -> None:
    """`--overwrite_output_dir`: the main process removes the earlier run's own files; every process waits."""
    if stale and accelerator.is_main_process:
        for name in stale:
            path = Path(output_dir) / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        logger.info("--overwrite_output_dir: removed the earlier run's %s from %s", ", ".join(stale), output_dir)
    accelerator.wait_for_everyone()


def _progress(out: Path) -> str:
    try:
        saved = json.loads((out / CONFIG_NAME).read_text())["training"]["max_steps"]
        steps = [json.loads(line).get("step", 0) for line in (out / LOG_NAME).read_text().splitlines() if line.strip()]
        return f" (step {max(steps, default=0)} of {saved})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def _saved_configuration(out: Path, sections: dict[str, Any], explicit: set[str] | None) -> dict[str, Any]:
    try:
        saved = json.loads((out / CONFIG_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{out / CONFIG_NAME}: unreadable ({exc}); cannot resume this run") from None
    resolved, conflicts, override = {}, [], sections["training"].override_saved_config
    for name, given in sections.items():
        values = {}
        for f in dataclasses.fields(given):
            if f.name not in saved.get(name, {}):
                continue
            before, now = saved[name][f.name], getattr(given, f.name)
            if explicit is not None and f.name not in explicit:
                values[f.name] = before  # left out: the run's own value
            elif f.name == "mixed_precision" and now == "auto":
                values[f.name] = before  # `auto` was resolved when the run started; a resume keeps that choice
            elif now != before and f.name not in RUN_CONTROL:
                if f.name == "max_steps" and now > before:
                    logger.info("resuming with --max_steps %d instead of the saved %d", now, before)
                elif override:
                    logger.warning(
                        "--override_saved_config: --%s is %r (the run was started with %r)", f.name, now, before
                    )
                else:
                    conflicts.append(f"--{f.name} {now!r} (the run was started with {before!r})")
        resolved[name] = dataclasses.replace(given, **values)
    if conflicts:
        raise UserError(
            f"--output_dir {out}: resuming uses the run's saved configuration, but "
            f"{'; '.join(conflicts)}; leave these flags out, or pass --override_saved_config"
        )
    return resolved


def truncate_log(output_dir: str | Path, step: int) -> None:
    """Keep the lines of `log.jsonl` up to `step` (a resumed run logs the later steps again), atomically."""
    path = Path(output_dir) / LOG_NAME
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:  # a line cut by a kill
            continue
    tmp = path.with_name(LOG_NAME + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    tmp.replace(path)
