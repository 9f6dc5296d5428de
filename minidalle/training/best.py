"""The best model by a validation figure, and early stopping (diffusers' and transformers' `save_best` /
`early_stopping_patience`).

A trainer evaluates every `--eval_steps`, asks `BestModel.update` whether the figure improved (then it
saves the model it exports: the prior's `pipeline/`, the image tokenizer's `image_tokenizer/`) and stops
once `stop` says that `--early_stopping_patience` evaluations in a row brought no improvement. On resume
the record is replayed from `log.jsonl` (cut back to the checkpoint's step), so a resumed run keeps the
same best and the same patience count as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

logger = logging.getLogger("minidalle")

INFO_NAME = "training_info.json"  # written into the exported model's folder: which step it is, and why


@dataclass
class BestModel:
    metric: str  # the log.jsonl key compared, e.g. "val_image_nll"
    lower_is_better: bool = True
    patience: int = 0  # evaluations without improvement before stopping (0: never stop early)
    first_step: int = 1  # evaluations before this step are logged but never selected (e.g. before a GAN starts;
    # 0 makes the model a run started from, validated at step 0, a candidate: a fine-tune that only hurts ships it)
    best_step: int | None = None
    best: dict = field(default_factory=dict)  # the figures of the best evaluation
    since_best: int = 0

    def update(self, step: int, figures: dict) -> bool:
        """Record an evaluation; True when it is the best so far (the caller then saves its model)."""
        if step < self.first_step:
            return False
        value = figures[self.metric]
        before = self.best.get(self.metric)
        better = before is None or (value < before if self.lower_is_better else value > before)
        if better:
            self.best_step, self.best, self.since_best = step, dict(figures), 0
        else:
            self.since_best += 1
        return better

    @property
    def stop(self) -> bool:
        return bool(self.patience) and self.since_best >= self.patience

    def replay(self, output_dir: str | Path, up_to_step: int) -> None:
        """Rebuild the record from the evaluations in `OUTPUT_DIR/log.jsonl` (a resumed run)."""
        path = Path(output_dir) / "log.jsonl"
        if not path.is_file() or up_to_step == 0:
            return
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if self.metric in row and row.get("step", 0) <= up_to_step:  # update skips those before first_step
                self.update(row["step"], row)

    def info(self, last_step: int | None = None) -> dict:
        """What the exported folder's `training_info.json` says: its step and why it was chosen (and, once the
        run has ended, its last step)."""
        figures = {k: v for k, v in self.best.items() if k.startswith(("val_", "eval_"))}
        best = "lowest" if self.lower_is_better else "highest"
        info = {"step": self.best_step, "selected_by": f"the {best} {self.metric} (--save_best)", **figures}
        return info if last_step is None else {**info, "last_step": last_step}

    def kept_line(self, folder, step: int, best_figure: str, last_checkpoint, last_figure: str = "") -> str:
        """The log line saying which step's model `folder` holds (`best_figure`, e.g. "the best held-out PSNR
        (31.20 dB)") and where the last step's weights are."""
        if self.best_step == step:
            last = "the last step"
        else:
            figure = f", {last_figure}" if last_figure else ""
            last = f"the last step's ({step}{figure}) weights are in {last_checkpoint}"
        return f"{folder} is the step-{self.best_step} model, {best_figure}; {last}"

    def stopping_line(self, step: int) -> str:
        return (
            f"early stopping at step {step}: {self.metric} has not improved for {self.since_best} evaluations "
            f"(--early_stopping_patience {self.patience}); the best, {self.best[self.metric]:.4f}, was at step "
            f"{self.best_step}"
        )


def agree(accelerator, flag: bool) -> bool:
    """A decision the main process made (it alone evaluates), the same on every process."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(float(flag and accelerator.is_main_process), device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum") > 0)


def write_info(folder: str | Path, info: dict) -> None:
    """`training_info.json` beside a saved model's own files."""
    (Path(folder) / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
