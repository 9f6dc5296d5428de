"""The Accelerate training-loop pieces both trainers share.

One step-based loop shape (nanoGPT's): schedules are pure functions of the
optimizer step, checkpoints hold the step, and resuming re-enters the same
epoch at the same batch, so a resumed run continues the interrupted one.
Devices, processes, mixed precision and gradient accumulation are Accelerate's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

from .args import UserError, arg, require_cpu_compiler

logger = logging.getLogger("minidalle")

CHECKPOINTS_DIR = "checkpoints"
STEP_RE = re.compile(r"^step-(\d+)$")


@dataclass
class TrainingArguments:
    """The flags both trainers share (the command-line contract)."""

    output_dir: str = arg("runs/run", help="Where checkpoints, logs, pictures and the final model go.")
    preset: str = arg("small", help="Model size: tiny (seconds, for smoke tests), small, base.")
    max_steps: int = arg(2000, help="Optimizer steps to train for (schedules are functions of the step).")
    batch_size: int = arg(64, help="Examples per process per micro-batch.")
    gradient_accumulation_steps: int = arg(1, help="Micro-batches per optimizer step.")
    learning_rate: float = arg(1e-3, help="Peak learning rate (after warm-up).")
    warmup_steps: int = arg(100, help="Linear learning-rate warm-up steps.")
    min_lr_ratio: float = arg(0.1, help="The cosine decay ends at this fraction of the peak learning rate.")
    weight_decay: float = arg(0.0, help="AdamW weight decay (applied to weights with >= 2 dims only).")
    max_grad_norm: float = arg(1.0, help="Clip the gradient norm to this (0: no clipping).")
    mixed_precision: str = arg(
        "auto", help="auto | no | bf16 | fp16 (fp16 needs a GPU). auto: bf16 where the hardware runs it natively "
        "(a bf16 GPU, or a CPU with AVX512-BF16/AMX, where it is ~1.6-2x faster), else fp32.")
    seed: int = arg(0, help="Seed for weights, data order and sampling noise.")
    checkpointing_steps: int = arg(500, help="Save a resumable checkpoint every N steps (0: only at the end).")
    checkpoints_total_limit: int = arg(2, help="Keep only the newest N checkpoints.")
    resume_from_checkpoint: str = arg("", help="'latest' or a checkpoint folder to continue from.")
    logging_steps: int = arg(25, help="Log metrics (log.jsonl, trackers) every N steps.")
    image_steps: int = arg(500, help="Write a picture of the model's progress every N steps (0: never).")
    report_to: str = arg("", help="Accelerate trackers to log to (e.g. tensorboard, wandb); log.jsonl is always written.")
    num_workers: int = arg(0, help="DataLoader worker processes.")
    torch_compile: bool = arg(
        False, help="Compile the model's forward with torch.compile (inductor), in place: checkpoints have the same "
        "keys and resume either way (random draws such as Gumbel noise come from inductor's own stream, so a compiled "
        "run is not step-for-step the eager one). Pays for the image tokenizer (see the README's Performance section), "
        "not for the prior, whose step is matmul-bound; 20-40 s of compilation first.")
    max_nonfinite_steps: int = arg(
        10, help="A step whose loss or gradients are NaN/inf is skipped (counted in the log as skipped_steps); "
        "after this many in a row the run stops, keeping its last checkpoint.")


class TrainState:
    """The step counter. It is saved in each checkpoint's `trainer_state.json` (not as a pickle), so
    that resuming unpickles nothing with `weights_only=False`."""

    def __init__(self, step: int = 0) -> None:
        self.step = step


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags from /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16(cpu: bool) -> bool:
    """Whether bf16 runs natively here. On a CPU without AVX512-BF16/AMX, PyTorch emulates bf16 matmuls
    and convolutions: measured ~100x slower than fp32 on an AVX2-only 2-core EPYC."""
    if not cpu:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):  # an unusual build: assume not
        return False
    flags = _cpu_flags()
    if flags is None or "avx512f" not in flags:  # not x86 (or unreadable): trust oneDNN
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16"})  # oneDNN also says yes for AVX512 without bf16 instructions


def resolve_mixed_precision(requested: str, cpu: bool) -> str:
    """`--mixed_precision` to what Accelerate gets: `auto` picks bf16 only where it is native."""
    if requested not in ("auto", "no", "bf16", "fp16"):
        raise UserError(f"--mixed_precision must be auto, no, bf16 or fp16, got {requested!r}")
    if cpu and requested == "fp16":
        raise UserError("--mixed_precision fp16 needs a GPU; use bf16 (or auto) on CPU")
    if requested == "auto":
        return "bf16" if native_bf16(cpu) else "no"
    if requested == "bf16" and not native_bf16(cpu):
        logger.warning("--mixed_precision bf16: this %s has no native bf16, so it is emulated and far slower than "
                       "fp32 (use --mixed_precision auto or no)", "CPU" if cpu else "GPU")
    return requested


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """An Accelerator for this machine: GPU(s) when present, else CPU (one or more processes)."""
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    args.mixed_precision = resolve_mixed_precision(args.mixed_precision, cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=[t for t in args.report_to.split(",") if t] or None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=args.output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        step_scheduler_with_optimizer=False,
    )
    set_seed(args.seed, device_specific=False)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    if not accelerator.is_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    return accelerator


def maybe_compile(accelerator: Accelerator, model: torch.nn.Module, args: TrainingArguments) -> None:
    """`--torch_compile`: compile the model's forward in place (`nn.Module.compile`), after `prepare`.

    In place rather than Accelerate's `dynamo_backend`, which wraps the model: the wrapper
    prefixes every state-dict key with `_orig_mod.`, so checkpoints of compiled and eager
    runs could not resume each other."""
    if args.torch_compile:
        if accelerator.device.type == "cpu":
            require_cpu_compiler("--torch_compile")
        accelerator.unwrap_model(model).compile()


def restore_state(accelerator: Accelerator, args: TrainingArguments) -> TrainState:
    """The step counter, and everything else (weights, optimizer, data position, RNG states) restored from
    `--resume_from_checkpoint` when one is given (call after `accelerator.prepare`)."""
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
    logger.info("resumed from %s at step %d", resume, step)
    return TrainState(step)


def check_output_dir(path: str | Path) -> Path:
    """Create the output folder and prove it is writable before any training step."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--output_dir {path}: not writable ({exc.strerror or exc})") from None
    return path


def check_free_space(args: TrainingArguments, model: torch.nn.Module) -> None:
    """Refuse to start when the output folder's disk cannot hold the checkpoints this run will still write
    (weights + two AdamW moments each, plus the final model), rather than failing at the first save."""
    per_checkpoint = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    keep = max(args.checkpoints_total_limit, 1)
    new_checkpoints = max(keep - len(checkpoint_dirs(args.output_dir)), 1)  # old ones are replaced, not added to
    needed = per_checkpoint * (new_checkpoints + 1) + (1 << 20)
    free = shutil.disk_usage(args.output_dir).free
    if free < needed:
        raise UserError(f"--output_dir {args.output_dir}: only {free / 2**20:.1f} MiB free, but this run's checkpoints "
                        f"need about {needed / 2**20:.1f} MiB; free some space or choose another folder")


def build_optimizer(model: torch.nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """AdamW; weight decay only on >= 2-D weights (not biases, norms or 1-D scales)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(0.9, 0.99), fused=fused, foreach=not fused)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# ------------------------------------------------------------------ checkpoints
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
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(args.output_dir)[: -max(args.checkpoints_total_limit, 1)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def train_loader(dataset, args: TrainingArguments) -> torch.utils.data.DataLoader:
    """The shuffled training DataLoader. It draws its seeds from its own generator, never from the global
    RNG: otherwise starting an iterator mid-epoch on resume would shift the global stream (Gumbel noise,
    caption dropout) and a resumed run would drift from an uninterrupted one."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )


def endless_batches(dataloader, accelerator: Accelerator, start_step: int) -> Iterator:
    """Batches forever, epoch after epoch; on resume, skip what `start_step` optimizer steps consumed.

    The prepared DataLoader uses a seedable sampler, so epoch e has the same
    order in every run; `skip_first_batches` re-enters it at the right batch.
    """
    per_step = accelerator.gradient_accumulation_steps
    batches_per_epoch = len(dataloader)
    if batches_per_epoch == 0:
        raise UserError("the dataset is smaller than one batch; lower --batch_size")
    epoch, skip = divmod(start_step * per_step, batches_per_epoch)
    while True:
        dataloader.set_epoch(epoch)
        source = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        yield from source
        epoch, skip = epoch + 1, 0


class MetricsLog:
    """Appends one JSON object per logged step to `OUTPUT_DIR/log.jsonl` and to Accelerate trackers."""

    def __init__(self, accelerator: Accelerator, output_dir: str | Path) -> None:
        self.accelerator = accelerator
        self.path = Path(output_dir) / "log.jsonl"
        self.start = time.time()

    def log(self, step: int, metrics: dict) -> None:
        metrics = {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v) for k, v in metrics.items()}
        if self.accelerator.is_main_process:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "time": round(time.time() - self.start, 2), **metrics}) + "\n")
        self.accelerator.log(metrics, step=step)


def save_image_grid(rows: list[torch.Tensor], path: str | Path) -> Path:
    """Save rows of images (each (N, 3, H, W) in [0, 1]) as one PNG grid, rows stacked vertically."""
    from PIL import Image

    grid = torch.cat([torch.cat(list(row.float().clamp(0, 1)), dim=2) for row in rows], dim=1)  # (3, R*H, N*W)
    array = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).cpu().numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def end_run(accelerator: Accelerator) -> None:
    """Close trackers and, with several processes, the process group, so that no process
    exits while a communication thread is still alive (gloo aborts at exit otherwise)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def ranks_in_sync(accelerator: Accelerator, model: torch.nn.Module) -> bool:
    """True when every process holds the same weights (a cheap checksum per tensor, gathered)."""
    with torch.no_grad():
        sums = torch.stack([p.detach().double().sum() for p in accelerator.unwrap_model(model).state_dict().values()])
    gathered = accelerator.gather(sums.to(accelerator.device)[None])  # (processes, tensors)
    return bool((gathered == gathered[0:1]).all())


def write_run_summary(accelerator: Accelerator, args: TrainingArguments, model: torch.nn.Module, step: int, extra: dict | None = None) -> dict:
    """Record how the run ended (`OUTPUT_DIR/run_summary.json`): step, processes, whether ranks agree."""
    summary = {
        "step": step,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "device": str(accelerator.device),
        "ranks_in_sync": ranks_in_sync(accelerator, model),
        **(extra or {}),
    }
    if not summary["ranks_in_sync"]:
        logger.error("the processes ended with different weights: the run is not trustworthy")
    if accelerator.is_main_process:
        (Path(args.output_dir) / "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _add_into(sums: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    """sums[k] += values[k], on the device (no host sync)."""
    for key, value in values.items():
        sums[key] = sums[key] + value if key in sums else value


def train_loop(
    accelerator: Accelerator,
    args: TrainingArguments,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    state: TrainState,
    step_fn,
    on_log=None,
    on_step=None,
    desc: str = "training",
) -> None:
    """The step-based loop both trainers run.

    `step_fn(batch, step) -> (loss, metrics)`: the forward pass; `metrics` maps
    names to tensors that are averaged on the device over each logging window
    (no host sync inside a step). `on_log(step, means) -> dict` adds figures
    derived from the window means; `on_step(step)` runs after every optimizer
    step (pictures, evaluation). The learning rate is a pure function of the step.
    """
    from tqdm.auto import tqdm

    from .schedules import learning_rate

    log = MetricsLog(accelerator, args.output_dir)
    window: dict[str, torch.Tensor] = {}  # sums over the good steps of the logging window
    pending: dict[str, torch.Tensor] = {}  # this step's micro-batches, added to the window once the step is good
    count = pending_count = skipped = bad_in_a_row = 0
    bar = tqdm(total=args.max_steps, initial=state.step, disable=not accelerator.is_main_process, desc=desc, dynamic_ncols=True)
    model.train()
    for batch in endless_batches(loader, accelerator, state.step):
        if state.step >= args.max_steps:
            break
        lr = learning_rate(state.step, args.learning_rate, args.warmup_steps, args.max_steps, args.min_lr_ratio)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, metrics = step_fn(batch, state.step)
            accelerator.backward(loss)
            finite = True
            if accelerator.sync_gradients:
                # The all-reduced gradient norm is the same on every process, so all of them agree on a skip;
                # a NaN/inf loss anywhere makes it non-finite. One host sync per optimizer step.
                norm = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm if args.max_grad_norm > 0 else math.inf)
                finite = bool(torch.isfinite(norm))
            set_learning_rate(optimizer, lr)
            if finite or accelerator.scaler is not None:
                optimizer.step()  # fp16: the grad scaler skips an overflowing step itself and lowers its scale
            optimizer.zero_grad(set_to_none=True)
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
            logger.warning("step %d: non-finite loss or gradients, update skipped (%d in a row, %d in all)",
                           state.step + 1, bad_in_a_row, skipped)
            if bad_in_a_row >= args.max_nonfinite_steps:
                bar.close()
                kept = checkpoint_dirs(args.output_dir)
                where = f"the last good checkpoint is kept: {kept[-1]}" if kept else "no checkpoint had been written yet"
                end_run(accelerator)
                raise UserError(f"training stopped at step {state.step + 1}: {bad_in_a_row} steps in a row had a non-finite "
                                f"loss or gradients; {where} (try a lower --learning_rate or --mixed_precision no)")
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
            figures["lr"] = lr
            figures["skipped_steps"] = skipped
            log.log(state.step, figures)
            bar.set_postfix({k: f"{figures[k]:.4g}" for k in list(figures)[:3]})
            window, count = {}, 0
        if on_step is not None:
            on_step(state.step)
        if args.checkpointing_steps and state.step % args.checkpointing_steps == 0 and state.step < args.max_steps:
            save_checkpoint(accelerator, args, state.step)
    bar.close()
