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

from ..data import DataArguments, load_captioned_dataset
from ..data.loading import data_fingerprint, seeded_holdout
from ..errors import UserError
from ..image_tokenizers import ImageTokenizer, load_image_tokenizer
from ..images import save_image_grid
from ..metrics import bits_per_dim
from ..options import arg
from ..pipeline import SAMPLING_DEFAULTS, MiniDallePipeline, resolve_model
from ..pipeline.io import (
    check_compatible,
    check_weight_dtype,
    is_pipeline_folder,
    load_pipeline_parts,
    read_attribution,
    read_sampling_defaults,
    round_weights,
    save_pipeline,
)
from ..prior import PRESETS, Prior, PriorConfig
from ..text import encode_captions, load_text_tokenizer, token_lengths, train_text_tokenizer
from . import runtime
from .best import INFO_NAME, BestModel, agree, write_info
from .checkpoints import restore_state, save_checkpoint
from .encode import encode_to_disk, load_codes
from .loop import TrainPart, append_log_row, check_batch_fits, log_image, train_loader, train_loop
from .runtime import TrainingArguments

logger = logging.getLogger("minidalle")


DEFAULT_TEXT_LEN = 32  # --text_len 0 without --init_from


@dataclass
class PriorArguments:
    """Stage 2: what the prior is trained on and how."""

    image_tokenizer: str = arg("", help="The trained image tokenizer folder (required unless --init_from gives one).")
    text_tokenizer: str = arg(
        "", help="A saved text tokenizer; default: train a BPE on the captions (or keep --init_from's)."
    )
    init_from: str = arg(
        "",
        help="Fine-tune: a pipeline folder (or its prior/), or a bundled model's name (shapes), to start from; "
        "keeps its tokenizers.",
    )
    codes: str = arg("", help="An encoded dataset (`minidalle encode`); default: encode --data once and cache it.")
    text_len: int = arg(
        0,
        help="Text tokens per caption (longer captions are truncated with a counted warning); 0: 32, or when "
        "fine-tuning the --init_from prior's own, which a larger value grows (the new positions start as copies "
        "of its last).",
        minimum=0,
    )
    text_vocab_size: int = arg(1000, help="BPE vocabulary size when the text tokenizer is trained here.", minimum=1)
    caption_dropout: float = arg(
        0.15,
        help="Probability of training on the empty caption (enables classifier-free guidance).",
        minimum=0,
        maximum=1,
    )
    dropout: float | None = arg(
        None,
        help="Dropout on the prior's embeddings, attention weights and residual branches while training (nanoGPT's; "
        "e.g. 0.1 for a small dataset that the prior overfits: measured on the emoji prior in the README). "
        "Default: 0, or when fine-tuning the --init_from prior's own.",
        minimum=0,
        maximum=0.9,
    )
    loss_img_weight: float = arg(7.0, help="w in (L_text + w * L_image) / (1 + w).", minimum=0)
    freeze_blocks: int = arg(
        0,
        help="Fine-tuning: keep the first N transformer blocks fixed (the embeddings stay trainable, so that "
        "new words' byte pieces can be learned, unless --freeze_embeddings).",
        minimum=0,
    )
    freeze_embeddings: bool = arg(False, help="Fine-tuning: keep the token and position embeddings fixed.")
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
    save_best: bool = arg(
        True,
        help="With validation (--eval_steps and held-out examples): OUTPUT_DIR/pipeline is the model of the "
        "best validation image NLL (its training_info.json says which step); the last step's weights stay in "
        "the last checkpoint. --no_save_best: the last step's model.",
    )
    early_stopping_patience: int = arg(
        0, help="Stop after N evaluations in a row without a better validation image NLL (0: never).", minimum=0
    )
    sample_prompts: str = arg("", help="Prompts for the sample grids, separated by '|' (default: 4 held-out captions).")
    guidance_scale: float = arg(
        SAMPLING_DEFAULTS["guidance_scale"], help="Classifier-free guidance for the sample grids (sample.py's default)."
    )
    temperature: float = arg(
        SAMPLING_DEFAULTS["temperature"], help="Sampling temperature for the sample grids (sample.py's).", minimum=0
    )
    num_candidates: int = arg(
        SAMPLING_DEFAULTS["num_candidates"],
        help="Candidates re-ranked per image of the sample grids (sample.py's; 1: none).",
        minimum=1,
    )
    image_positions: str = arg(
        "rowcol", help="How image positions are embedded: rowcol (row + column, 2-D) or flat (1-D)."
    )
    image_tokenizer_dtype: str = arg(
        "",
        help="Round the image tokenizer's weights to float16 or bfloat16 before encoding, as `minidalle "
        "export-pipeline --dtype` will: the prior then learns the codes the exported tokenizer gives, and the "
        "export reproduces the trained pipeline exactly (default: the weights as stored).",
    )
    factorised_image_codes: bool = arg(
        False,
        help="With an FSQ image tokenizer: embed and predict each code digit by digit (one softmax per FSQ level), "
        "so codes whose digit combination no training image has stay reachable (bench/unseen_codes.py).",
    )


def image_code_levels(image_tokenizer: ImageTokenizer) -> list[int]:
    """An FSQ image tokenizer's levels (`--factorised_image_codes`); a clear error for any other quantizer."""
    config = image_tokenizer.config
    if getattr(config, "quantizer", None) != "fsq":
        raise UserError(
            "--factorised_image_codes needs an FSQ image tokenizer (its codes are digits); this one's quantizer is "
            f"{getattr(config, 'quantizer', type(image_tokenizer).__name__)!r}"
        )
    return list(config.fsq_levels)


def _codes_cache(
    data_args: DataArguments,
    prior_args: PriorArguments,
    tokenizer: ImageTokenizer,
    out_dir: Path,
    accelerator,
    check_count=None,
):
    """The encode-once cache: `--codes`, or DATA/.minidalle-codes/<hash>-<split>, built on first use and rebuilt
    (with a log line saying why) when the data's content changed since (`data_fingerprint`). Before anything is
    encoded the data is loaded and checked (captions, images) and `check_count(number of examples)` runs."""
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
            ds = load_captioned_dataset(_at_resolution(data_args, tokenizer), require_captions=True)
            if check_count is not None:
                check_count(len(ds))
            if stale:
                logger.info(
                    "the codes cache %s was made from other images or captions than %s holds now: encoding again",
                    cache,
                    data_args.data,
                )
            logger.info("encoding %s once with image tokenizer %s -> %s", data_args.data, h, cache)
            encode_to_disk(tokenizer, data_args, cache, ds=ds)
        accelerator.wait_for_everyone()
    return load_codes(cache, expected_hash=h)


def _at_resolution(data_args: DataArguments, tokenizer: ImageTokenizer) -> DataArguments:
    return dataclasses.replace(data_args, resolution=tokenizer.image_size)


def _load_start(prior_args: PriorArguments):
    """(image tokenizer, text tokenizer or None, prior or None, what --init_from named, for the log) from
    --init_from / --image_tokenizer."""
    if prior_args.init_from:
        folder = resolve_model(prior_args.init_from)
        if not (folder / "model_index.json").is_file() and is_pipeline_folder(folder / "pipeline"):
            raise UserError(
                f"--init_from {prior_args.init_from}: a training run's folder, not a pipeline; "
                f"use --init_from {folder / 'pipeline'}"
            )
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
        if folder != Path(prior_args.init_from):
            source = f"the bundled model {prior_args.init_from!r} ({folder})"
        elif text_tokenizer is None:
            source = f"the prior {folder}, with the image tokenizer {prior_args.image_tokenizer}"
        else:
            source = f"the pipeline {folder}"
        if (folder / INFO_NAME).is_file():
            info = json.loads((folder / INFO_NAME).read_text())
            source += f" (its step {info.get('step')}, {info.get('selected_by')})"
        text = "and text tokenizer" if text_tokenizer is not None else "(the text tokenizer: trained here or given)"
        return image_tokenizer, text_tokenizer, prior, f"{source}: its prior, image tokenizer {text}"
    if not prior_args.image_tokenizer:
        raise UserError("--image_tokenizer is required (the folder train_tokenizer.py wrote), or --init_from")
    return load_image_tokenizer(prior_args.image_tokenizer), None, None, ""


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
    if not prior_args.init_from and args.preset not in PRESETS:  # before anything is encoded or trained
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {args.preset!r}")
    if prior_args.image_tokenizer_dtype:
        check_weight_dtype(prior_args.image_tokenizer_dtype, "--image_tokenizer_dtype")
    image_tokenizer, text_tokenizer, init_prior, init_source = _load_start(prior_args)
    if prior_args.image_tokenizer_dtype:
        round_weights(image_tokenizer, prior_args.image_tokenizer_dtype, "--image_tokenizer_dtype")
        if init_prior is not None:  # the same codes up to the rounding: the fine-tune is paired with the rounded one
            init_prior.config.image_tokenizer_hash = image_tokenizer.codes_hash()
    init_folder = resolve_model(prior_args.init_from) if prior_args.init_from else None
    # what the pipeline carries on: the starting model's sampling settings, and the attribution of the art learned from
    carried = dict(
        sampling_defaults=read_sampling_defaults(init_folder) if is_pipeline_folder(init_folder or Path()) else None,
        attribution=read_attribution(data_args.data, prior_args.eval_data, init_folder, prior_args.image_tokenizer),
    )
    grown_from = None
    if init_prior is not None and prior_args.factorised_image_codes and not init_prior.config.factorised:
        raise UserError(
            "--factorised_image_codes: the prior of --init_from predicts whole codes; a fine-tune keeps its head"
        )
    if init_prior is not None:  # a fine-tune keeps its prior's text length unless asked for more
        if prior_args.text_len and prior_args.text_len != init_prior.config.text_len:
            grown_from = init_prior.config.text_len
            init_prior = init_prior.with_text_len(prior_args.text_len)
        prior_args.text_len = init_prior.config.text_len
    prior_args.text_len = prior_args.text_len or DEFAULT_TEXT_LEN
    layers = init_prior.config.layers if init_prior is not None else PRESETS[args.preset]["layers"]
    if prior_args.freeze_blocks > layers:
        raise UserError(f"--freeze_blocks {prior_args.freeze_blocks}: the prior has only {layers} blocks")
    separate_eval = bool(prior_args.eval_data or prior_args.eval_split)

    def check_count(n: int) -> None:  # the training set against one batch, with the hold-out taken out
        held = 0 if separate_eval else min(prior_args.eval_examples, n // 10)
        check_batch_fits(n - held, args, accelerator.num_processes, held)

    codes_ds, codes_info = _codes_cache(data_args, prior_args, image_tokenizer, out_dir, accelerator, check_count)
    check_count(len(codes_ds))
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
        if prior_args.dropout is not None:
            model.config.dropout = prior_args.dropout
    else:
        config = PriorConfig(
            text_vocab_size=len(text_tokenizer),
            text_len=prior_args.text_len,
            num_image_codes=image_tokenizer.num_codes,
            image_grid=image_tokenizer.grid_size,
            caption_dropout=prior_args.caption_dropout,
            loss_img_weight=prior_args.loss_img_weight,
            dropout=prior_args.dropout or 0.0,
            gradient_checkpointing=prior_args.gradient_checkpointing,
            image_positions=prior_args.image_positions,
            image_code_levels=image_code_levels(image_tokenizer) if prior_args.factorised_image_codes else [],
            image_tokenizer_hash=image_tokenizer.codes_hash(),
            **PRESETS[args.preset],
        )
        model = Prior(config)
    model.config.gradient_checkpointing = prior_args.gradient_checkpointing
    if len(text_tokenizer) > model.config.text_vocab_size:
        raise UserError(
            f"the text tokenizer has {len(text_tokenizer)} tokens, more than the prior's {model.config.text_vocab_size}"
        )
    frozen = [*model.blocks[: prior_args.freeze_blocks]]
    if prior_args.freeze_embeddings:
        frozen += model.embedding_modules()
    for module in frozen:
        module.requires_grad_(False)
    text_tokens = model.text_tokens(text_ids, text_tokenizer.pad_token_id)
    image_codes = torch.as_tensor(codes_ds.with_format("numpy")[:]["codes"]).long()  # (N, h*w)

    if separate_eval:
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

    def evaluate(step: int, when: str = "") -> dict:
        """Validate (main process), with a log.jsonl row, the trackers and a log line."""
        result = validate(raw_model, eval_text, eval_codes, pixels_per_image)
        append_log_row(out_dir, step, result)
        accelerator.log(result, step=step)
        logger.info(
            "step %d%s: validation image NLL %.4f nats/token = %.4f bits/token, %.4f bits/dim",
            step,
            when,
            result["val_image_nll"],
            result["val_bits_per_image_token"],
            result["val_bits_per_dim"],
        )
        return result

    final = out_dir / "pipeline"
    # a fine-tune's starting model is validated at step 0 and is a candidate: one that only hurts ships it
    first_step = 0 if init_prior is not None else 1
    best = BestModel("val_image_nll", patience=prior_args.early_stopping_patience, first_step=first_step)
    best.replay(out_dir, state.step)
    keep_best = prior_args.save_best and n_eval > 0 and prior_args.eval_steps > 0

    def keep_if_best(step: int, result: dict) -> None:
        if best.update(step, result) and keep_best:
            save_pipeline(final, image_tokenizer, text_tokenizer, raw_model, **carried)
            write_info(final, best.info())
            logger.info("step %d: the best validation so far; saved the pipeline to %s", step, final)

    if is_main:
        if init_prior is not None:
            logger.info("fine-tuning from %s", init_source)
            if grown_from is not None:
                logger.info(
                    "text positions grown from %d to %d (--text_len): each new one starts as a copy of the last",
                    grown_from,
                    prior_args.text_len,
                )
        logger.info(_frozen_line(raw_model, prior_args))
        if init_prior is not None and n_eval and state.step == 0:
            keep_if_best(0, evaluate(0, " (before fine-tuning)"))
        if n_eval and prior_args.eval_steps:
            kept = "the best validation image NLL (--save_best)" if keep_best else "the last step (--no_save_best)"
            logger.info(
                "validating every %d steps on %d examples; %s will be %s", prior_args.eval_steps, n_eval, final, kept
            )
    sampling = {
        "guidance_scale": prior_args.guidance_scale,
        "temperature": prior_args.temperature,
        "top_k": SAMPLING_DEFAULTS["top_k"],
        "top_p": SAMPLING_DEFAULTS["top_p"],
        "num_candidates": prior_args.num_candidates,
    }

    def on_step(step: int) -> bool:
        due = prior_args.eval_steps and (step % prior_args.eval_steps == 0 or step == args.max_steps)
        if not (due and n_eval):
            return False
        stop = False
        if is_main:
            keep_if_best(step, evaluate(step))
            path = out_dir / "samples" / f"samples-step-{step:07d}.png"
            save_samples(raw_model, image_tokenizer, text_tokenizer, prompts, path, seed=args.seed, **sampling)
            log_image(accelerator, "samples", path, step)
            stop = best.stop
        if agree(accelerator, stop):
            if is_main:
                logger.warning(best.stopping_line(step))
            return True
        return False

    train_loop(accelerator, args, [TrainPart(model, optimizer)], loader, state, step_fn, on_log, on_step, desc="prior")
    last_checkpoint = save_checkpoint(accelerator, args, state.step)
    extra = {"best_step": best.best_step} if keep_best else {}
    runtime.write_run_summary(
        accelerator, args, model, state.step, {**extra, "early_stopped": state.step < args.max_steps}
    )
    if is_main:
        last = validate(raw_model, eval_text, eval_codes, pixels_per_image) if n_eval else {}
        if keep_best and best.best_step is not None and is_pipeline_folder(final):
            info = best.info(state.step)
            write_info(final, info)
            (out_dir / "eval.json").write_text(json.dumps({**info, "last": last}, indent=2) + "\n")
            figure = f"the best validation image NLL ({best.best['val_image_nll']:.4f} nats/token)"
            logger.info(best.kept_line(final, state.step, figure, last_checkpoint, f"{last['val_image_nll']:.4f}"))
            if best.best_step == 0:
                logger.warning(
                    "fine-tuning never beat the starting model's validation image NLL (%.4f at step 0), so %s is "
                    "the model it started from; try a lower --learning_rate, more --freeze_blocks or more data",
                    best.best["val_image_nll"],
                    final,
                )
        else:
            save_pipeline(final, image_tokenizer.cpu(), text_tokenizer, raw_model.cpu().eval(), **carried)
            write_info(final, {"step": state.step, "selected_by": "the last step", **last})
            if n_eval:
                (out_dir / "eval.json").write_text(json.dumps({"step": state.step, **last}, indent=2) + "\n")
            logger.info("saved the pipeline (the step-%d model) to %s", state.step, final)
    runtime.end_run(accelerator)
    return final


def _frozen_line(model: Prior, prior_args: PriorArguments) -> str:
    """What fine-tuning trains: the frozen parts and the trainable parameter count."""
    n, blocks = prior_args.freeze_blocks, len(model.blocks)
    parts = [f"block{'s' if n > 1 else ''} {f'0-{n - 1}' if n > 1 else '0'} of {blocks}"] if n else []
    if prior_args.freeze_embeddings:
        parts.append("the token and position embeddings")
    note = " (the embeddings stay trainable: --freeze_embeddings fixes them)" if n and not parts[1:] else ""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = model.num_parameters()
    return (
        f"frozen: {' and '.join(parts) or 'nothing'}{note}; trainable parameters: {trainable / 1e6:.3f}M of "
        f"{total / 1e6:.3f}M ({100 * trainable / total:.1f}%)"
    )


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


def save_samples(
    prior, image_tokenizer, text_tokenizer, prompts, path, seed: int = 0, per_prompt: int = 4, **sampling
) -> None:
    """A PNG grid, one row of `per_prompt` images per prompt, drawn as sample.py draws them: through the
    pipeline, with `sampling` (guidance_scale, temperature, top_k, top_p, num_candidates; sample.py's
    defaults by default) and `--seed seed`; beside it a JSON of the prompts, the settings and each pmi."""
    sampling = {**SAMPLING_DEFAULTS, **sampling}
    was_training = prior.training
    device = next(prior.parameters()).device
    pipe = MiniDallePipeline(image_tokenizer, text_tokenizer, prior, device)  # puts the prior in eval mode
    try:
        result = pipe(prompts, num_images_per_prompt=per_prompt, seed=seed, **sampling)
    finally:
        prior.train(was_training)
    images = pipe._pixels(result.images).cpu()
    save_image_grid(list(images.split(per_prompt)), path)
    settings = {"prompts": list(prompts), "num_images_per_prompt": per_prompt, "seed": seed, **sampling}
    settings["pmi"] = None if result.scores is None else [round(v, 4) for v in result.scores]
    Path(path).with_suffix(".json").write_text(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
