"""Stage 1 trainer: the dVAE *image* tokenizer (not the text tokenizer).

    python train_tokenizer.py --data data/shapes-train --output_dir runs/tok
    accelerate launch --multi_gpu --num_processes 2 train_tokenizer.py ...   # several processes

(the command line is `minidalle.cli.train`; `train` here is the library entry point.)

Writes OUTPUT_DIR/log.jsonl (one JSON object per logged step),
OUTPUT_DIR/checkpoints/step-N (resumable with --resume_from_checkpoint latest),
OUTPUT_DIR/samples/recon-step-N.png (originals above reconstructions) and the
finished tokenizer in OUTPUT_DIR/image_tokenizer/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import CaptionedImages, DataArguments, load_captioned_dataset, load_image_tensor
from ..data.loading import seeded_holdout
from ..errors import UserError
from ..image_tokenizers import PRESETS, QUANTIZERS, DiscreteVAE, DVAEConfig, tokenizer_loss
from ..images import save_image_grid
from ..metrics import codebook_stats, psnr
from ..options import arg
from . import runtime, schedules
from .checkpoints import restore_state, save_checkpoint
from .loop import TrainPart, train_loader, train_loop
from .runtime import TrainingArguments

logger = logging.getLogger("minidalle")

PRELOAD_LIMIT_BYTES = 2 * 1024**3
COLLAPSE_USAGE = 0.10


@dataclass
class TokenizerArguments:
    """The image tokenizer's shape and its stage-1 schedules (unset fields come from --preset)."""

    quantizer: str = arg(
        "gumbel", help=f"The quantizer: {' or '.join(QUANTIZERS)} (gumbel: DALL-E's dVAE; vq: VQ-VAE)."
    )
    num_codes: int = arg(0, help="Codebook size K (0: the preset's).", minimum=0)
    codebook_dim: int = arg(0, help="Dimension of each codebook vector (0: the preset's).", minimum=0)
    widths: str = arg(
        "", help="Comma-separated channel widths, one per down-sampling, e.g. 32,64,128 (grid = resolution / 2**n)."
    )
    res_blocks: int = arg(-1, help="Residual blocks per level (-1: the preset's).", minimum=-1)
    recon_loss: str = arg("mse", help="mse, or logit_laplace (the DALL-E paper's, eps = 0.1).")
    straight_through: bool = arg(False, help="gumbel: hard one-hot forward with a soft gradient.")
    kl_weight: float = arg(
        0.05,
        help="beta: weight of KL(q||uniform) (gumbel) or of the commitment loss (vq); per pixel value, as the "
        "paper's beta/192.",
        minimum=0,
    )
    kl_warmup_steps: int = arg(0, help="beta rises linearly from 0 over this many steps.", minimum=0)
    temperature_start: float = arg(1.0, help="Gumbel-Softmax temperature at step 0.", minimum=0.0001)
    temperature_end: float = arg(1 / 16, help="Temperature at the end of the anneal (DALL-E: 1/16).", minimum=0.0001)
    temperature_steps: int = arg(0, help="Anneal steps (0: 80%% of --max_steps).", minimum=0)
    temperature_schedule: str = arg("exp", help="exp or cosine.")
    vq_ema: bool = arg(False, help="vq: EMA codebook updates instead of the codebook loss.")
    vq_restart_dead: bool = arg(False, help="vq: re-seed dead codes from encoder outputs.")
    init_from: str = arg(
        "", help="Start from a saved image tokenizer (its config replaces --preset and the shape flags)."
    )
    train_decoder_only: bool = arg(
        False,
        help="Freeze the encoder and train the decoder on decode(argmax codes), the inference "
        "path; the codes, and any prior trained on them, stay valid.",
    )
    eval_data: str = arg("", help="A separate set for held-out PSNR (default: --eval_examples held out of --data).")
    eval_split: str = arg(
        "", help="The split to evaluate on: of --eval_data, or of --data itself when --eval_data is not given."
    )
    eval_examples: int = arg(
        256, help="Without --eval_data/--eval_split: examples held out of --data (a seeded shuffle).", minimum=0
    )

    def model_config(self, preset: str, resolution: int) -> DVAEConfig:
        if preset not in PRESETS:
            raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        values = dict(PRESETS[preset], image_size=resolution, quantizer=self.quantizer, recon_loss=self.recon_loss)
        values.update(straight_through=self.straight_through, vq_ema=self.vq_ema, vq_restart_dead=self.vq_restart_dead)
        if self.num_codes:
            values["num_codes"] = self.num_codes
        if self.codebook_dim:
            values["codebook_dim"] = self.codebook_dim
        if self.widths:
            try:
                values["widths"] = [int(w) for w in self.widths.split(",")]
            except ValueError:
                raise UserError(f"--widths must be comma-separated integers, got {self.widths!r}") from None
        if self.res_blocks >= 0:
            values["res_blocks"] = self.res_blocks
        return DVAEConfig(**values)


def _image_source(data_args: DataArguments, ds, progress: bool, seed: int):
    """A torch dataset of images: preloaded uint8 when it fits in memory, else decoded per item."""
    r = data_args.resolution
    if not data_args.random_crop and len(ds) * 3 * r * r <= PRELOAD_LIMIT_BYTES:
        return torch.utils.data.TensorDataset(load_image_tensor(ds, data_args, progress=progress))
    return CaptionedImages(ds, data_args, with_captions=False, seed=seed)


def _images(batch) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["pixel_values"]
    images = batch[0]
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


@torch.no_grad()
def evaluate(model: DiscreteVAE, images: torch.Tensor, batch_size: int = 128) -> dict:
    """Held-out PSNR of the argmax-code round trip, and codebook use, on `images` (N, 3, H, W) in [0, 1]."""
    model.eval()
    se, codes = [], []
    for chunk in images.split(batch_size):
        c = model.encode(chunk)
        se.append((model.decode(c) - chunk).pow(2).flatten(1).mean(1))
        codes.append(c.flatten())
    model.train()
    stats = codebook_stats(torch.bincount(torch.cat(codes), minlength=model.num_codes))
    mse = torch.cat(se)
    return {
        "eval_psnr": psnr(mse.mean()),
        "eval_psnr_per_image": psnr(mse).mean().item(),
        **{f"eval_{k}": v for k, v in stats.items()},
    }


def train(
    data_args: DataArguments, args: TrainingArguments, tok_args: TokenizerArguments, explicit: set[str] | None = None
) -> Path:
    """Train in `args.output_dir` (see `run_folder` for new, resumed and overwritten runs). `explicit` names the
    flags given on the command line: on resume, the others take the run's saved values (None: all were given)."""
    sections, accelerator, out_dir = runtime.start_run(
        {"data": data_args, "training": args, "tokenizer": tok_args}, explicit
    )
    data_args, args, tok_args = sections["data"], sections["training"], sections["tokenizer"]
    is_main = accelerator.is_main_process
    if tok_args.init_from:
        start = DiscreteVAE.from_pretrained(tok_args.init_from).train()
        config = start.config
        if config.image_size != data_args.resolution:
            raise UserError(
                f"--init_from {tok_args.init_from} works on {config.image_size}px images; "
                f"set --resolution {config.image_size}"
            )
    else:
        start, config = None, tok_args.model_config(args.preset, data_args.resolution)

    # ---- data: validated before any step
    ds = load_captioned_dataset(data_args, require_captions=False)
    if tok_args.eval_data or tok_args.eval_split:
        eval_args = dataclasses.replace(
            data_args,
            data=tok_args.eval_data or data_args.data,
            split=tok_args.eval_split or data_args.split,
            max_examples=0,
        )
        eval_ds, holdout = (
            load_captioned_dataset(eval_args, require_captions=False),
            {"data": eval_args.data, "split": eval_args.split},
        )
    else:
        n_eval = min(tok_args.eval_examples, len(ds) // 10)
        indices = seeded_holdout(len(ds), n_eval, args.seed)
        eval_ds = ds.select(indices) if n_eval else None
        ds = ds.select(sorted(set(range(len(ds))) - set(indices)))
        holdout = {"seed": args.seed, "indices": indices}
    train_set = _image_source(data_args, ds, progress=is_main, seed=args.seed)
    eval_images = load_image_tensor(eval_ds, data_args, progress=False).float() / 255 if eval_ds is not None else None
    loader = train_loader(train_set, args)

    model = (start or DiscreteVAE(config)).to(memory_format=torch.channels_last)  # faster convolutions (oneDNN, cuDNN)
    if tok_args.train_decoder_only:
        model.encoder.requires_grad_(False)
    runtime.check_free_space(args, model)
    optimizer = runtime.build_optimizer(model, args)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    runtime.maybe_compile(accelerator, model, args)
    state = restore_state(accelerator, args)
    if is_main:
        (out_dir / "train_config.json").write_text(
            json.dumps(
                {
                    "data": asdict(data_args),
                    "training": asdict(args),
                    "tokenizer": asdict(tok_args),
                    "model": asdict(config),
                    "holdout": holdout,
                },
                indent=2,
            )
        )
        accelerator.init_trackers(
            "minidalle-image-tokenizer",
            config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))},
        )
        n_params = sum(p.numel() for p in model.parameters())
        logger.info(
            "image tokenizer: %s, %d params, %d codes on a %dx%d grid; %d training images, %d processes",
            config.quantizer,
            n_params,
            config.num_codes,
            config.grid_size,
            config.grid_size,
            len(ds),
            accelerator.num_processes,
        )

    tau_steps = tok_args.temperature_steps or int(0.8 * args.max_steps)
    raw_model = accelerator.unwrap_model(model)
    preview = (eval_images if eval_images is not None else _images(next(iter(loader))).cpu())[:8]
    alarms = 0

    def schedules_at(step: int) -> tuple[float, float]:
        tau = schedules.temperature(
            step, tok_args.temperature_start, tok_args.temperature_end, tau_steps, tok_args.temperature_schedule
        )
        return tau, schedules.kl_weight(step, tok_args.kl_weight, tok_args.kl_warmup_steps)

    def step_fn(batch, step: int):
        tau, beta = schedules_at(step)
        images = _images(batch).contiguous(memory_format=torch.channels_last)
        out = model(images, temperature=tau, decoder_only=tok_args.train_decoder_only)
        objective = tokenizer_loss(raw_model, out, images, kl_weight=beta)
        histogram = torch.bincount(out.codes.flatten(), minlength=config.num_codes).float()
        return objective.loss, {
            "recon": objective.recon_loss,
            **objective.terms,
            "mse": out.mse,
            "code_histogram": histogram,
        }

    def on_log(step: int, means: dict) -> dict:
        nonlocal alarms
        tau, beta = schedules_at(step - 1)
        stats = codebook_stats(means["code_histogram"])
        if stats["codebook_usage"] < COLLAPSE_USAGE and is_main:
            if alarms % 10 == 0:  # say it, but not at every log line
                logger.warning(
                    "codebook collapse alarm at step %d: only %.1f%% of %d codes used (%d dead)",
                    step,
                    100 * stats["codebook_usage"],
                    config.num_codes,
                    stats["dead_codes"],
                )
            alarms += 1
        return {"psnr": psnr(means["mse"]), "temperature": tau, "kl_weight": beta, **stats}

    def on_step(step: int) -> None:
        if is_main and args.image_steps and (step % args.image_steps == 0 or step == args.max_steps):
            _save_preview(raw_model, preview, out_dir / "samples" / f"recon-step-{step:07d}.png")

    train_loop(
        accelerator,
        args,
        [TrainPart(model, optimizer)],
        loader,
        state,
        step_fn,
        on_log,
        on_step,
        desc="image tokenizer",
    )

    save_checkpoint(accelerator, args, state.step)
    runtime.write_run_summary(accelerator, args, model, state.step)
    final = out_dir / "image_tokenizer"
    if is_main:
        raw_model.save_pretrained(final)
        if eval_images is not None:
            result = {"step": state.step, **evaluate(raw_model, eval_images.to(accelerator.device))}
            (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
            accelerator.log({k: v for k, v in result.items() if k != "step"}, step=state.step)
            logger.info(
                "held-out PSNR %.2f dB, codebook usage %.1f%% (%d images)",
                result["eval_psnr"],
                100 * result["eval_codebook_usage"],
                len(eval_images),
            )
        logger.info("saved the image tokenizer to %s", final)
    runtime.end_run(accelerator)
    return final


@torch.no_grad()
def _save_preview(model: DiscreteVAE, images: torch.Tensor, path: Path) -> None:
    model.eval()
    recon = model.reconstruct(images.to(next(model.parameters()).device)).cpu()
    model.train()
    save_image_grid([images, recon], path)
