"""A toy run with two optimizers for the training loop's tests: a generator and a discriminator on 2-D points.

    python tests/toy_two_optimizers.py OUTPUT_DIR [--max_steps 12] [--kill_at N] [--resume] [--batch_size 8]

It uses the loop exactly as a VQ-GAN trainer would: one loss whose gradient is each part's own
objective (the generator's term sees the discriminator's parameters detached, the discriminator's
term the generator's output detached), two `TrainPart`s with their own learning rates, checkpoints
every 3 steps. `--kill_at N` sends itself SIGKILL after step N (a real kill -9, mid-run). The final
weights of both models go to OUTPUT_DIR/final.safetensors.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from minidalle.training import (
    TrainingArguments,
    TrainPart,
    make_accelerator,
    restore_state,
    save_checkpoint,
    train_loader,
    train_loop,
)
from minidalle.training.runtime import build_optimizer, end_run, write_run_summary


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("output_dir")
    parser.add_argument("--max_steps", type=int, default=12)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--kill_at", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    opts = parser.parse_args(argv)
    args = TrainingArguments(
        output_dir=opts.output_dir,
        max_steps=opts.max_steps,
        batch_size=opts.batch_size,
        gradient_accumulation_steps=opts.gradient_accumulation_steps,
        learning_rate=1e-2,
        warmup_steps=2,
        logging_steps=1,
        checkpointing_steps=3,
        checkpoints_total_limit=2,
        mixed_precision="no",
        image_steps=0,
        resume_from_checkpoint="latest" if opts.resume else "",
    )
    accelerator = make_accelerator(args)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    discriminator = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))
    data = torch.utils.data.TensorDataset(torch.randn(96, 2) * 0.5 + torch.tensor([2.0, -1.0]), torch.randn(96, 4))
    loader = train_loader(data, args)
    g_opt, d_opt = build_optimizer(generator, args), build_optimizer(discriminator, args)
    generator, discriminator, g_opt, d_opt, loader = accelerator.prepare(generator, discriminator, g_opt, d_opt, loader)
    state = restore_state(accelerator, args)
    raw_discriminator = accelerator.unwrap_model(discriminator)

    def step_fn(batch, step: int):
        real, z = batch
        fake = generator(z)
        frozen = {k: v.detach() for k, v in raw_discriminator.named_parameters()}
        g_loss = F.softplus(-torch.func.functional_call(raw_discriminator, frozen, (fake,))).mean()
        scores = discriminator(torch.cat([real, fake.detach()]))
        d_loss = F.softplus(-scores[: len(real)]).mean() + F.softplus(scores[len(real) :]).mean()
        return g_loss + d_loss, {"g_loss": g_loss, "d_loss": d_loss}

    def on_step(step: int) -> None:
        if step == opts.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    parts = [TrainPart(generator, g_opt, "generator"), TrainPart(discriminator, d_opt, "discriminator", 5e-3)]
    train_loop(accelerator, args, parts, loader, state, step_fn, on_step=on_step, desc="toy")
    save_checkpoint(accelerator, args, state.step)
    summary = write_run_summary(accelerator, args, generator, state.step)
    in_sync = (
        summary["ranks_in_sync"] and write_run_summary(accelerator, args, discriminator, state.step)["ranks_in_sync"]
    )
    if accelerator.is_main_process:
        weights = {f"generator.{k}": v for k, v in accelerator.unwrap_model(generator).state_dict().items()}
        weights.update({f"discriminator.{k}": v for k, v in raw_discriminator.state_dict().items()})
        save_file(
            {k: v.contiguous() for k, v in weights.items()},
            str(Path(args.output_dir) / "final.safetensors"),
            metadata={"ranks_in_sync": str(in_sync), "num_processes": str(accelerator.num_processes)},
        )
    end_run(accelerator)


if __name__ == "__main__":
    main(sys.argv[1:])
