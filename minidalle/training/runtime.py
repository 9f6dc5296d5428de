"""The run's machinery: the flags both trainers share, the Accelerator for this machine (devices, processes,
mixed precision), the optimizer, and how a run ends (trackers closed, ranks checked, a summary written)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

from ..errors import UserError, require_cpu_compiler
from ..folders import writable_folder
from ..options import arg, check_bounds
from ..threads import use_threads
from .checkpoints import checkpoint_dirs
from .run_folder import clear_earlier_run, open_run_folder

logger = logging.getLogger("minidalle")


@dataclass
class TrainingArguments:
    """The flags both trainers share (the command-line contract)."""

    output_dir: str = arg("runs/run", help="Where checkpoints, logs, pictures and the final model go.")
    preset: str = arg("small", help="Model size: tiny (seconds, for smoke tests), small, base.")
    max_steps: int = arg(2000, help="Optimizer steps to train for (schedules are functions of the step).", minimum=1)
    batch_size: int = arg(64, help="Examples per process per micro-batch.", minimum=1)
    gradient_accumulation_steps: int = arg(1, help="Micro-batches per optimizer step.", minimum=1)
    learning_rate: float = arg(1e-3, help="Peak learning rate (after warm-up).", minimum=0)
    warmup_steps: int = arg(100, help="Linear learning-rate warm-up steps.", minimum=0)
    min_lr_ratio: float = arg(
        0.1, help="The cosine decay ends at this fraction of the peak learning rate.", minimum=0, maximum=1
    )
    weight_decay: float = arg(0.0, help="AdamW weight decay (applied to weights with >= 2 dims only).", minimum=0)
    max_grad_norm: float = arg(1.0, help="Clip the gradient norm to this (0: no clipping).", minimum=0)
    mixed_precision: str = arg(
        "auto",
        help="auto | no | bf16 | fp16 (fp16 needs a GPU). auto: bf16 where the hardware runs it natively "
        "(a bf16 GPU, or a CPU with AVX512-BF16/AMX), else fp32.",
    )
    seed: int = arg(0, help="Seed for weights, data order and sampling noise.")
    checkpointing_steps: int = arg(
        500, help="Save a resumable checkpoint every N steps (0: only at the end).", minimum=0
    )
    checkpoints_total_limit: int = arg(2, help="Keep only the newest N checkpoints.", minimum=1)
    resume_from_checkpoint: str = arg(
        "", help="'latest' or a checkpoint folder to continue from; the run's saved configuration is used."
    )
    overwrite_output_dir: bool = arg(
        False, help="Start over in an --output_dir that holds a run: its own files are removed first."
    )
    override_saved_config: bool = arg(
        False, help="On resume, use flags that differ from the run's saved configuration (they are logged)."
    )
    logging_steps: int = arg(25, help="Log metrics (log.jsonl, trackers) every N steps.", minimum=1)
    image_steps: int = arg(500, help="Write a picture of the model's progress every N steps (0: never).", minimum=0)
    report_to: str = arg(
        "", help="Accelerate trackers to log to (e.g. tensorboard, wandb); log.jsonl is always written."
    )
    num_workers: int = arg(0, help="DataLoader worker processes.", minimum=0)
    torch_compile: bool = arg(
        False,
        help="Compile the model's forward with torch.compile (inductor), in place: checkpoints keep the same "
        "keys and resume either way; random draws (Gumbel noise) come from inductor's own stream, so a compiled run "
        "is not step-for-step the eager one. Compilation takes a while first; see the README for when it pays.",
    )
    threads: int = arg(
        0,
        help="CPU threads for torch (0: torch's default, one per core); on a machine another process keeps busy, "
        "1 can be several times faster (see the README).",
        minimum=0,
    )
    max_nonfinite_steps: int = arg(
        10,
        help="A step whose loss or gradients are NaN/inf is skipped (counted in the log as skipped_steps); "
        "after this many in a row the run stops, keeping its last checkpoint.",
        minimum=1,
    )


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
        logger.warning(
            "--mixed_precision bf16: this %s has no native bf16, so it is emulated and far slower than "
            "fp32 (use --mixed_precision auto or no)",
            "CPU" if cpu else "GPU",
        )
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


def start_run(sections: dict, explicit: set[str] | None) -> tuple[dict, Accelerator, Path]:
    """The prologue both trainers share, before any work: every bound checked, the run folder opened (new,
    resumed with its saved configuration, or overwritten: `run_folder`), torch's threads set (`--threads`, with a
    log line saying the count), the Accelerator made and the output
    folder proved writable. `sections` holds the argument dataclasses by train_config.json's names
    ("data", "training", and the trainer's own); returns them as resolved, the Accelerator and the folder."""
    for arguments in sections.values():
        check_bounds(arguments)
    sections, stale = open_run_folder(sections["training"], sections, explicit)
    threads = use_threads(sections["training"].threads)  # before any work
    accelerator = make_accelerator(sections["training"])
    logger.info("%s, %d process(es)", threads, accelerator.num_processes)
    out_dir = writable_folder(sections["training"].output_dir, "--output_dir")
    clear_earlier_run(accelerator, out_dir, stale)
    return sections, accelerator, out_dir


def maybe_compile(accelerator: Accelerator, model: torch.nn.Module, args: TrainingArguments) -> None:
    """`--torch_compile`: compile the model's forward in place (`nn.Module.compile`), after `prepare`.

    In place rather than Accelerate's `dynamo_backend`, which wraps the model: the wrapper
    prefixes every state-dict key with `_orig_mod.`, so checkpoints of compiled and eager
    runs could not resume each other."""
    if args.torch_compile:
        if accelerator.device.type == "cpu":
            require_cpu_compiler("--torch_compile")
        accelerator.unwrap_model(model).compile()


def check_free_space(args: TrainingArguments, model: torch.nn.Module) -> None:
    """Refuse to start when the output folder's disk cannot hold the checkpoints this run will still write
    (weights + two AdamW moments each, plus the final model), rather than failing at the first save."""
    per_checkpoint = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    keep = max(args.checkpoints_total_limit, 1)
    new_checkpoints = max(keep - len(checkpoint_dirs(args.output_dir)), 1)  # old ones are replaced, not added to
    needed = per_checkpoint * (new_checkpoints + 1) + (1 << 20)
    free = shutil.disk_usage(args.output_dir).free
    if free < needed:
        raise UserError(
            f"--output_dir {args.output_dir}: only {free / 2**20:.1f} MiB free, but this run's checkpoints "
            f"need about {needed / 2**20:.1f} MiB; free some space or choose another folder"
        )


def build_optimizer(
    model: torch.nn.Module, args: TrainingArguments, betas: tuple[float, float] = (0.9, 0.99)
) -> torch.optim.Optimizer:
    """AdamW; weight decay only on >= 2-D weights (not biases, norms or 1-D scales)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    fused = torch.cuda.is_available()
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=betas, fused=fused, foreach=not fused)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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


def write_run_summary(
    accelerator: Accelerator, args: TrainingArguments, model: torch.nn.Module, step: int, extra: dict | None = None
) -> dict:
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
