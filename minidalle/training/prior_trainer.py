"""Stage 2 trainer: the prior p(image codes | caption), from scratch or fine-tuned.

    python train_prior.py --data data/shapes-train --image_tokenizer runs/tok/image_tokenizer --output_dir runs/prior
    python train_prior.py --data my-images --init_from runs/prior/pipeline --learning_rate 1e-4 --freeze_blocks 2 ...

(the command line is `minidalle.cli.train`; `train` here is the library entry point.)

Images are encoded once into codes (cached beside the data, keyed by the
image tokenizer's content hash; `--codes DIR` names a cache explicitly), the
text tokenizer is trained on the captions unless one is given, and a finished
run writes a complete pipeline folder to OUTPUT_DIR/pipeline/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import DataArguments
from ..data.loading import data_fingerprint, seeded_holdout
from ..errors import UserError
from ..image_tokenizers import ImageTokenizer, load_image_tokenizer
from ..images import save_image_grid
from ..metrics import bits_per_dim
from ..options import arg
from ..pipeline.io import check_compatible, load_pipeline_parts, save_pipeline
from ..prior import PRESETS, Prior, PriorConfig, sample_codes
from ..text import encode_captions, load_text_tokenizer, token_lengths, train_text_tokenizer
from . import runtime
from .checkpoints import restore_state, save_checkpoint
from .encode import encode_to_disk, load_codes
from .loop import TrainPart, train_loader, train_loop
from .runtime import TrainingArguments

logger = logging.getLogger("minidalle")


@dataclass
class PriorArguments:
    """Stage 2: what the prior is trained on and how."""

    image_tokenizer: str = arg("", help="The trained image tokenizer folder (required unless --init_from gives one).")
    text_tokenizer: str = arg(
        "", help="A saved text tokenizer; default: train a BPE on the captions (or keep --init_from's)."
    )
    init_from: str = arg("", help="Fine-tune: a pipeline folder (or its prior/) to start from; keeps its tokenizers.")
    codes: str = arg("", help="An encoded dataset (`minidalle encode`); default: encode --data once and cache it.")
    text_len: int = arg(
        32, help="Text tokens per caption (longer captions are truncated with a counted warning).", minimum=1
    )
    text_vocab_size: int = arg(1000, help="BPE vocabulary size when the text tokenizer is trained here.", minimum=1)
    caption_dropout: float = arg(
        0.15,
        help="Probability of training on the empty caption (enables classifier-free guidance).",
        minimum=0,
        maximum=1,
    )
    loss_img_weight: float = arg(7.0, help="w in (L_text + w * L_image) / (1 + w).", minimum=0)
    freeze_blocks: int = arg(
        0, help="Fine-tuning: keep the first N transformer blocks (and the embeddings) fixed.", minimum=0
    )
    gradient_checkpointing: bool = arg(
        False, help="Recompute activations in the backward pass: less memory, slower steps."
    )
    eval_data: str = arg("", help="A separate set for validation (default: --eval_examples held out of --data).")
    eval_split: str = arg(
        "", help="The split to validate on: of --eval_data, or of --data itself when --eval_data is not given."
    )
    eval_examples: int = arg(
        500, help="Without --eval_data/--eval_split: examples held out of --data (a seeded shuffle).", minimum=0
    )
    eval_steps: int = arg(500, help="Validate (image-token NLL, bits/dim) and draw samples every N steps.", minimum=0)
    sample_prompts: str = arg("", help="Prompts for the sample grids, separated by '|' (default: 4 held-out captions).")
    guidance_scale: float = arg(3.0, help="Classifier-free guidance scale for the sample grids.")
    image_positions: str = arg(
        "rowcol", help="How image positions are embedded: rowcol (row + column, 2-D) or flat (1-D)."
    )


def _codes_cache(
    data_args: DataArguments, prior_args: PriorArguments, tokenizer: ImageTokenizer, out_dir: Path, accelerator
):
    """The encode-once cache: `--codes`, or DATA/.minidalle-codes/<hash>-<split>, built on first use and rebuilt
    (with a log line saying why) when the data's content changed since (`data_fingerprint`)."""
    h = tokenizer.codes_hash()
    if prior_args.codes:
        return load_codes(prior_args.codes, expected_hash=h)
    if not data_args.data:
        raise UserError("--data or --codes is required")
    data = Path(data_args.data)
    base = data / ".minidalle-codes" if data.is_dir() and os.access(data, os.W_OK) else out_dir / "codes"
    cache = base / f"{h}-{data_args.split}{f'-{data_args.max_examples}' if data_args.max_examples else ''}"
    fingerprint = data_fingerprint(data_args)
    info_path = cache / "codes_info.json"
    stale = info_path.is_file() and json.loads(info_path.read_text()).get("data_fingerprint") != fingerprint
    if not info_path.is_file() or stale:
        if accelerator.is_main_process:
            if stale:
                logger.info(
                    "the codes cache %s was made from other images or captions than %s holds now: encoding again",
                    cache,
                    data_args.data,
                )
            logger.info("encoding %s once with image tokenizer %s -> %s", data_args.data, h, cache)
            encode_to_disk(tokenizer, data_args, cache)
        accelerator.wait_for_everyone()
    return load_codes(cache, expected_hash=h)


def _load_start(prior_args: PriorArguments):
    """(image tokenizer, text tokenizer or None, prior or None) from --init_from / --image_tokenizer."""
    if prior_args.init_from:
        folder = Path(prior_args.init_from)
        if (folder / "model_index.json").is_file():
            image_tokenizer, text_tokenizer, prior = load_pipeline_parts(folder)
            prior_args.image_tokenizer = prior_args.image_tokenizer or str(folder / "image_tokenizer")
        else:
            prior, text_tokenizer = Prior.from_pretrained(folder), None
            if not prior_args.image_tokenizer:
                raise UserError(f"--init_from {folder} is a bare prior: also give --image_tokenizer")
            image_tokenizer = load_image_tokenizer(prior_args.image_tokenizer)
            check_compatible(prior, image_tokenizer, None, str(folder))
        if prior_args.image_tokenizer and Path(prior_args.image_tokenizer) != folder / "image_tokenizer":
            check_compatible(prior, load_image_tokenizer(prior_args.image_tokenizer), None, prior_args.image_tokenizer)
        return image_tokenizer, text_tokenizer, prior
    if not prior_args.image_tokenizer:
        raise UserError("--image_tokenizer is required (the folder train_tokenizer.py wrote), or --init_from")
    return load_image_tokenizer(prior_args.image_tokenizer), None, None


def train(
    data_args: DataArguments, args: TrainingArguments, prior_args: PriorArguments, explicit: set[str] | None = None
) -> Path:
    """Train in `args.output_dir` (see `run_folder` for new, resumed and overwritten runs). `explicit` names the
    flags given on the command line: on resume, the others take the run's saved values (None: all were given)."""
    sections, accelerator, out_dir = runtime.start_run(
        {"data": data_args, "training": args, "prior": prior_args}, explicit
    )
    data_args, args, prior_args = sections["data"], sections["training"], sections["prior"]
    is_main = accelerator.is_main_process
    image_tokenizer, text_tokenizer, init_prior = _load_start(prior_args)
    codes_ds, codes_info = _codes_cache(data_args, prior_args, image_tokenizer, out_dir, accelerator)
    captions = list(codes_ds.with_format(None)["caption"])

    # ---- text tokenizer: given, inherited, or trained here on the captions (main process), then shared
    if prior_args.text_tokenizer:
        text_tokenizer = load_text_tokenizer(prior_args.text_tokenizer)
    elif text_tokenizer is None:
        tok_dir = out_dir / "text_tokenizer"
        if is_main and not (tok_dir / "tokenizer.json").is_file():
            train_text_tokenizer(captions, prior_args.text_vocab_size).save_pretrained(str(tok_dir))
        accelerator.wait_for_everyone()
        text_tokenizer = load_text_tokenizer(tok_dir)
    if init_prior is not None and prior_args.text_len != init_prior.config.text_len:
        prior_args.text_len = init_prior.config.text_len  # a fine-tuned prior keeps its text length
    text_ids, truncated = encode_captions(text_tokenizer, captions, prior_args.text_len, warn=False)
    if truncated and is_main:
        lengths = token_lengths(text_tokenizer, captions)
        logger.warning(
            "%d of %d captions are longer than --text_len %d tokens and were truncated (longest: %d)",
            truncated,
            len(captions),
            prior_args.text_len,
            max(lengths),
        )

    # ---- model
    if init_prior is not None:
        model = init_prior.train()
        model.config.caption_dropout = prior_args.caption_dropout
        model.config.loss_img_weight = prior_args.loss_img_weight
    else:
        if args.preset not in PRESETS:
            raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {args.preset!r}")
        config = PriorConfig(
            text_vocab_size=len(text_tokenizer),
            text_len=prior_args.text_len,
            num_image_codes=image_tokenizer.num_codes,
            image_grid=image_tokenizer.grid_size,
            caption_dropout=prior_args.caption_dropout,
            loss_img_weight=prior_args.loss_img_weight,
            gradient_checkpointing=prior_args.gradient_checkpointing,
            image_positions=prior_args.image_positions,
            image_tokenizer_hash=image_tokenizer.codes_hash(),
            **PRESETS[args.preset],
        )
        model = Prior(config)
    model.config.gradient_checkpointing = prior_args.gradient_checkpointing
    if len(text_tokenizer) > model.config.text_vocab_size:
        raise UserError(
            f"the text tokenizer has {len(text_tokenizer)} tokens, more than the prior's {model.config.text_vocab_size}"
        )
    if prior_args.freeze_blocks:
        frozen = [*model.embedding_modules(), *model.blocks[: prior_args.freeze_blocks]]
        for module in frozen:
            module.requires_grad_(False)
    text_tokens = model.text_tokens(text_ids, text_tokenizer.pad_token_id)
    image_codes = torch.as_tensor(codes_ds.with_format("numpy")[:]["codes"]).long()  # (N, h*w)

    if prior_args.eval_data or prior_args.eval_split:
        eval_args = dataclasses.replace(
            data_args,
            data=prior_args.eval_data or data_args.data,
            split=prior_args.eval_split or data_args.split,
            max_examples=0,
        )
        eval_ds, _ = _codes_cache(
            eval_args, dataclasses.replace(prior_args, codes=""), image_tokenizer, out_dir, accelerator
        )
        eval_captions = list(eval_ds.with_format(None)["caption"])
        eval_ids, _ = encode_captions(text_tokenizer, eval_captions, prior_args.text_len, warn=False)
        eval_text = model.text_tokens(eval_ids, text_tokenizer.pad_token_id)
        eval_codes = torch.as_tensor(eval_ds.with_format("numpy")[:]["codes"]).long()
        train_set = torch.utils.data.TensorDataset(text_tokens, image_codes)
        holdout = {"data": eval_args.data, "split": eval_args.split}
    else:
        held = seeded_holdout(len(captions), min(prior_args.eval_examples, len(captions) // 10), args.seed)
        kept = sorted(set(range(len(captions))) - set(held))
        train_set = torch.utils.data.TensorDataset(text_tokens[kept], image_codes[kept])
        eval_text, eval_codes, eval_captions = text_tokens[held], image_codes[held], [captions[i] for i in held]
        holdout = {"seed": args.seed, "indices": held}
    n_train, n_eval = len(train_set), len(eval_captions)
    loader = train_loader(train_set, args)

    runtime.check_free_space(args, model)
    optimizer = runtime.build_optimizer(model, args)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    runtime.maybe_compile(accelerator, model, args)
    image_tokenizer.to(accelerator.device)
    raw_model = accelerator.unwrap_model(model)
    state = restore_state(accelerator, args)

    prompts = [p.strip() for p in prior_args.sample_prompts.split("|") if p.strip()] or list(
        dict.fromkeys(eval_captions)
    )[:4]
    pixels_per_image = 3 * image_tokenizer.image_size**2
    if is_main:
        (out_dir / "train_config.json").write_text(
            json.dumps(
                {
                    "data": asdict(data_args),
                    "training": asdict(args),
                    "prior": asdict(prior_args),
                    "model": asdict(raw_model.config),
                    "codes": codes_info,
                    "holdout": holdout,
                },
                indent=2,
            )
        )
        accelerator.init_trackers(
            "minidalle-prior", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))}
        )
        logger.info(
            "prior: %.2fM parameters (%.2fM without embeddings), %d text + %d image tokens; "
            "%d training pairs, %d processes",
            raw_model.num_parameters() / 1e6,
            raw_model.num_parameters(False) / 1e6,
            raw_model.config.text_len,
            raw_model.config.num_image_tokens,
            n_train,
            accelerator.num_processes,
        )

    def step_fn(batch, step: int):
        text, codes = batch
        out = model(text, codes)
        return out.loss, {"loss_text": out.loss_text, "loss_image": out.loss_image}

    def on_log(step: int, means: dict) -> dict:
        tokens = (
            args.batch_size * args.gradient_accumulation_steps * accelerator.num_processes * raw_model.config.seq_len
        )
        return {"tokens_seen": tokens * step}

    def on_step(step: int) -> None:
        due = prior_args.eval_steps and (step % prior_args.eval_steps == 0 or step == args.max_steps)
        if due and is_main and n_eval:
            result = validate(raw_model, eval_text, eval_codes, pixels_per_image)
            log_path = out_dir / "log.jsonl"
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **result}) + "\n")
            accelerator.log(result, step=step)
            logger.info(
                "step %d: validation image NLL %.4f nats/token = %.4f bits/token, %.4f bits/dim",
                step,
                result["val_image_nll"],
                result["val_bits_per_image_token"],
                result["val_bits_per_dim"],
            )
            save_samples(
                raw_model,
                image_tokenizer,
                text_tokenizer,
                prompts,
                out_dir / "samples" / f"samples-step-{step:07d}.png",
                prior_args.guidance_scale,
                seed=args.seed,
            )

    train_loop(accelerator, args, [TrainPart(model, optimizer)], loader, state, step_fn, on_log, on_step, desc="prior")
    save_checkpoint(accelerator, args, state.step)
    runtime.write_run_summary(accelerator, args, model, state.step)
    final = out_dir / "pipeline"
    if is_main:
        save_pipeline(final, image_tokenizer.cpu(), text_tokenizer, raw_model.cpu().eval())
        if n_eval:
            result = {"step": state.step, **validate(raw_model, eval_text, eval_codes, pixels_per_image)}
            (out_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
        logger.info("saved the pipeline to %s", final)
    runtime.end_run(accelerator)
    return final


@torch.no_grad()
def validate(
    prior: Prior, text_tokens: torch.Tensor, codes: torch.Tensor, pixels_per_image: int, batch_size: int = 256
) -> dict:
    """Held-out -log p(image codes | caption): nats and bits per image token, bits per image dimension."""
    was_training = prior.training
    prior.eval()
    device = next(prior.parameters()).device
    nll = torch.cat(
        [
            prior.image_nll(t.to(device), c.to(device))
            for t, c in zip(text_tokens.split(batch_size), codes.split(batch_size))
        ]
    )
    prior.train(was_training)
    per_token = nll.mean().item() / prior.config.num_image_tokens
    return {
        "val_image_nll": per_token,
        "val_bits_per_image_token": bits_per_dim(per_token, 1),
        "val_bits_per_dim": bits_per_dim(nll.mean().item(), pixels_per_image),
    }


@torch.no_grad()
def save_samples(
    prior, image_tokenizer, text_tokenizer, prompts, path, guidance_scale: float, seed: int = 0, per_prompt: int = 4
) -> None:
    """A PNG grid: one row of `per_prompt` samples per prompt (a simple sampler; sample.py has the full one)."""
    was_training = prior.training
    prior.eval()
    device = next(prior.parameters()).device
    ids, _ = encode_captions(
        text_tokenizer, [p for p in prompts for _ in range(per_prompt)], prior.config.text_len, warn=False
    )
    tokens = prior.text_tokens(ids.to(device), text_tokenizer.pad_token_id)
    generator = torch.Generator(device=device).manual_seed(seed)
    codes = sample_codes(prior, tokens, guidance_scale=guidance_scale, generator=generator)
    images = image_tokenizer.decode(codes).cpu()
    prior.train(was_training)
    save_image_grid(list(images.split(per_prompt)), path)
    (Path(path).with_suffix(".txt")).write_text("\n".join(prompts) + "\n")
