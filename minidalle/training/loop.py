"""The step-based training loop both trainers run (nanoGPT's shape, Accelerate's devices).

Schedules are pure functions of the optimizer step, checkpoints hold the step,
and resuming re-enters the same epoch at the same batch, so a resumed run
continues the interrupted one. A run trains one or more `TrainPart`s, each a
model with its own optimizer (a VQ-GAN: the autoencoder and its discriminator).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator

from ..errors import UserError
from .checkpoints import TrainState, checkpoint_dirs, save_checkpoint
from .runtime import TrainingArguments, end_run, set_learning_rate

logger = logging.getLogger("minidalle")


def train_loader(dataset, args: TrainingArguments) -> torch.utils.data.DataLoader:
    """The shuffled training DataLoader. It draws its seeds from its own generator, never from the global
    RNG: otherwise starting an iterator mid-epoch on resume would shift the global stream (Gumbel noise,
    caption dropout) and a resumed run would drift from an uninterrupted one."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )


def check_batch_fits(n_train: int, args: TrainingArguments, num_processes: int, held_out: int = 0) -> None:
    """Refuse, before any expensive step, a training set smaller than one batch (the loader drops the last,
    partial batch of each epoch, so such a set would give no batch at all); the message gives both numbers."""
    per_step = args.batch_size * num_processes
    if n_train >= per_step:
        return
    held = f" ({n_train + held_out} less {held_out} held out for validation)" if held_out else ""
    processes = f" x {num_processes} processes" if num_processes > 1 else ""
    raise UserError(
        f"the training set has {n_train} examples{held}, fewer than one batch (--batch_size {args.batch_size}"
        f"{processes}); lower --batch_size to {max(n_train // num_processes, 1)} or less, or add examples"
    )


def endless_batches(dataloader, accelerator: Accelerator, start_step: int) -> Iterator:
    """Batches forever, epoch after epoch; on resume, skip what `start_step` optimizer steps consumed.

    The prepared DataLoader uses a seedable sampler, so epoch e has the same
    order in every run; `skip_first_batches` re-enters it at the right batch.
    """
    per_step = accelerator.gradient_accumulation_steps
    batches_per_epoch = len(dataloader)
    if batches_per_epoch == 0:
        size = len(dataloader.dataset) if hasattr(dataloader, "dataset") else "too few"
        raise UserError(
            f"the training set has {size} examples, fewer than one batch (--batch_size {dataloader.batch_size}"
            f"{f' x {accelerator.num_processes} processes' if accelerator.num_processes > 1 else ''}); "
            "lower --batch_size"
        )
    epoch, skip = divmod(start_step * per_step, batches_per_epoch)
    while True:
        dataloader.set_epoch(epoch)
        if hasattr(dataloader.dataset, "set_epoch"):  # e.g. random crops that are a function of the epoch
            dataloader.dataset.set_epoch(epoch)
        source = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        yield from source
        epoch, skip = epoch + 1, 0


def append_log_row(output_dir: str | Path, step: int, figures: dict) -> None:
    """One JSON line `{"step": step, **figures}` appended to `OUTPUT_DIR/log.jsonl` (call on the main process)."""
    with open(Path(output_dir) / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, **figures}) + "\n")


def log_image(accelerator: Accelerator, name: str, path: str | Path, step: int) -> None:
    """Send a picture the run wrote (a PNG under OUTPUT_DIR/samples/) to every Accelerate tracker that takes
    images (TensorBoard, W&B, Aim, ClearML, SwanLab): the same picture as on disk, at its step. A tracker that
    cannot take one is skipped; one that fails is logged, never fatal to the run."""
    if not accelerator.is_main_process:
        return
    import numpy as np
    from PIL import Image

    for tracker in accelerator.trackers:
        if not callable(getattr(tracker, "log_images", None)):
            continue
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        try:
            if tracker.name == "tensorboard":  # SummaryWriter.add_images wants one array and its layout
                tracker.log_images({name: np.asarray(image)[None]}, step=step, dataformats="NHWC")
            else:
                tracker.log_images({name: [image]}, step=step)
        except Exception as exc:  # a tracker's own failure (network, API change) must not stop training
            logger.warning("tracker %s: could not log the image %s (%s)", tracker.name, path, exc)


class MetricsLog:
    """Appends one JSON object per logged step to `OUTPUT_DIR/log.jsonl` and to Accelerate trackers;
    `time` and `cpu_time` count seconds since this process started training (a resume starts again at 0)."""

    def __init__(self, accelerator: Accelerator, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.path = Path(output_dir) / "log.jsonl"
        self.start, self.start_cpu = time.time(), time.process_time()

    def log(self, step: int, metrics: dict) -> None:
        metrics = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
        if self.accelerator.is_main_process:
            # wall and CPU seconds (all threads of this process) since the run (or its resume) started
            clock = {
                "time": round(time.time() - self.start, 2),
                "cpu_time": round(time.process_time() - self.start_cpu, 2),
            }
            append_log_row(self.path.parent, step, {**clock, **metrics})
        self.accelerator.log(metrics, step=step)


def _add_into(sums: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    """sums[k] += values[k], on the device (no host sync)."""
    for key, value in values.items():
        sums[key] = sums[key] + value if key in sums else value


@dataclass
class TrainPart:
    """A model trained with its own optimizer. The peak learning rate defaults to `--learning_rate`;
    every part follows the same warm-up and cosine schedule of the step."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    name: str = "model"
    learning_rate: float | None = None


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM during training: the loop finishes its step, saves a checkpoint and stops.

    The first signal only sets a flag and restores the default handlers, so a second one stops at once
    (a checkpoint is written atomically, so even then none is left half-written). With several processes
    they agree, once per step, so that all stop after the same step."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal = signum
        for sig, handler in self._previous.items():  # the next signal acts at once
            signal.signal(sig, handler)

    def requested(self, accelerator: Accelerator) -> bool:
        if accelerator.num_processes == 1:
            return self.signal is not None
        flag = torch.tensor(float(self.signal is not None), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum") > 0)


def _clip(accelerator: Accelerator, parts: list[TrainPart], max_norm: float) -> list[torch.Tensor]:
    """Clip each part's gradient norm separately; returns the norms (all-reduced, so equal on every process).

    `accelerator.clip_grad_norm_` unscales every optimizer's gradients (fp16) on its first call, so the
    other parts are clipped directly: a second unscale would be an error."""
    first, *others = parts
    norms = [accelerator.clip_grad_norm_(first.model.parameters(), max_norm)]
    return norms + [torch.nn.utils.clip_grad_norm_(p.model.parameters(), max_norm) for p in others]


def train_loop(
    accelerator: Accelerator,
    args: TrainingArguments,
    parts: list[TrainPart],
    loader,
    state: TrainState,
    step_fn,
    on_log=None,
    on_step=None,
    desc: str = "training",
) -> None:
    """The step-based loop both trainers run, over one or more `TrainPart`s.

    `step_fn(batch, step) -> (loss, metrics)`: the forward pass. With several parts
    the loss is their sum, written so that each part's gradient is its own objective
    (a generator term uses the discriminator's parameters detached, the discriminator's
    term the generator's output detached): one backward pass serves every part. Each
    part is clipped on its own; a step whose gradients are non-finite in any part is
    skipped for all. `metrics` maps names to tensors averaged on the device over each
    logging window (no host sync inside a step). `on_log(step, means) -> dict` adds
    figures derived from the window means; `on_step(step)` runs after every optimizer
    step (pictures, evaluation) and ends the loop by returning True (early stopping: the
    same answer on every process). The learning rates are pure functions of the step.
    """
    from tqdm.auto import tqdm

    if len(parts) > 1 and accelerator.scaler is not None:
        # Accelerate's optimizer wrapper updates the fp16 grad scaler after every optimizer step
        raise UserError(
            "--mixed_precision fp16 trains one model only; use bf16 (or no) for a run with several optimizers"
        )
    models = [p.model for p in parts]
    bar = tqdm(
        total=args.max_steps, initial=state.step, disable=not accelerator.is_main_process, desc=desc, dynamic_ncols=True
    )
    for model in models:
        model.train()
    with StopRequest() as stop:
        _steps(accelerator, args, parts, loader, state, step_fn, on_log, on_step, bar, stop)
    bar.close()


def _steps(accelerator, args, parts, loader, state, step_fn, on_log, on_step, bar, stop: StopRequest) -> None:
    """`train_loop`'s body: the steps from `state.step` to `args.max_steps`, or to a stop request."""
    from .schedules import learning_rate

    models = [p.model for p in parts]
    max_norm = args.max_grad_norm if args.max_grad_norm > 0 else math.inf
    log = MetricsLog(accelerator, args.output_dir)
    window: dict[str, torch.Tensor] = {}  # sums over the good steps of the logging window
    pending: dict[str, torch.Tensor] = {}  # this step's micro-batches, added to the window once the step is good
    count = pending_count = skipped = bad_in_a_row = 0
    for batch in endless_batches(loader, accelerator, state.step):
        if state.step >= args.max_steps:
            break
        lrs = [
            learning_rate(
                state.step, p.learning_rate or args.learning_rate, args.warmup_steps, args.max_steps, args.min_lr_ratio
            )
            for p in parts
        ]
        with accelerator.accumulate(*models):
            with accelerator.autocast():
                loss, metrics = step_fn(batch, state.step)
            accelerator.backward(loss)
            finite = True
            if accelerator.sync_gradients:
                # The all-reduced gradient norms are the same on every process, so all of them agree on a skip;
                # a NaN/inf loss anywhere makes them non-finite. One host sync per optimizer step.
                finite = bool(torch.isfinite(torch.stack(_clip(accelerator, parts, max_norm))).all())
            for part, lr in zip(parts, lrs):
                set_learning_rate(part.optimizer, lr)
                if finite or accelerator.scaler is not None:
                    part.optimizer.step()  # fp16: the grad scaler skips an overflowing step itself and lowers its scale
                part.optimizer.zero_grad(set_to_none=True)
        _add_into(pending, {k: v.detach().float() for k, v in {"loss": loss, **metrics}.items()})
        pending_count += 1
        if not accelerator.sync_gradients:
            continue
        if finite:
            bad_in_a_row = 0
            _add_into(window, pending)
            count += pending_count
        else:
            # The step still counts (data position and schedules stay functions of the step, so a resume
            # is exact); only the update is dropped, with this step's metrics. Under fp16 an overflow with a
            # finite loss is the scaler settling its scale: counted, but it does not stop the run.
            skipped += 1
            if accelerator.scaler is None:
                bad_in_a_row += 1
            else:  # a collective check, so that every process counts alike
                loss_bad = accelerator.reduce((~torch.isfinite(pending["loss"])).float(), reduction="sum")
                bad_in_a_row = bad_in_a_row + 1 if bool(loss_bad > 0) else 0
            logger.warning(
                "step %d: non-finite loss or gradients, update skipped (%d in a row, %d in all)",
                state.step + 1,
                bad_in_a_row,
                skipped,
            )
            if bad_in_a_row >= args.max_nonfinite_steps:
                bar.close()
                kept = checkpoint_dirs(args.output_dir)
                where = (
                    f"the last good checkpoint is kept: {kept[-1]}" if kept else "no checkpoint had been written yet"
                )
                end_run(accelerator)
                raise UserError(
                    f"training stopped at step {state.step + 1}: {bad_in_a_row} steps in a row had a non-finite "
                    f"loss or gradients; {where} (try a lower --learning_rate or --mixed_precision no)"
                )
        pending, pending_count = {}, 0
        state.step += 1
        bar.update(1)
        if state.step % args.logging_steps == 0 or state.step == args.max_steps:
            figures = {}
            if count:
                means = {k: accelerator.reduce(v / count, reduction="mean") for k, v in window.items()}
                figures = {k: v.item() for k, v in means.items() if v.ndim == 0}
                if on_log is not None:
                    figures.update(on_log(state.step, means))
            figures["lr"] = lrs[0]
            figures.update({f"lr_{p.name}": lr for p, lr in zip(parts[1:], lrs[1:])})
            figures["skipped_steps"] = skipped
            log.log(state.step, figures)
            bar.set_postfix({k: f"{figures[k]:.4g}" for k in list(figures)[:3]})
            window, count = {}, 0
        if on_step is not None and on_step(state.step):  # early stopping: the trainer saves and exports
            break
        if args.checkpointing_steps and state.step % args.checkpointing_steps == 0 and state.step < args.max_steps:
            save_checkpoint(accelerator, args, state.step)
        if state.step < args.max_steps and stop.requested(accelerator):
            name = signal.Signals(stop.signal).name if stop.signal else "a signal on another process"
            saved = save_checkpoint(accelerator, args, state.step)
            logger.warning(
                "%s: stopped after step %d; saved %s; continue with --resume_from_checkpoint latest",
                name,
                state.step,
                saved,
            )
            bar.close()
            end_run(accelerator)
            raise KeyboardInterrupt
