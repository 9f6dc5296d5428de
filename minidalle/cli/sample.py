"""`python sample.py "a prompt" ["another" ...]`: prompts -> PNGs, grids and a manifest.

Writes OUT/images/pPPP-iII.png (one per image), OUT/grid-pPPP.png (one per
prompt) and OUT/manifest.jsonl with one line per image,
{"prompt", "file", "seed", "num_candidates", "pmi", ...}: the format `minidalle eval-shapes` reads.
Without --model the bundled shapes model is used. Each image is the best of
--num_candidates samples by the prior's own pmi (see MiniDallePipeline.score).
The sampling flags not given are the model's own: its model_index.json's
"sampling_defaults" (chosen for that model), else SAMPLING_DEFAULTS.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..pipeline.pipeline import BUNDLED_NAMES, SAMPLING_DEFAULTS
from .args import UserError, arg, command

# what sample.py writes into --out (a re-run into the same folder removes these and nothing else)
SAMPLE_FILES = r"images/p\d{3,}-i\d{2,}\.png|grid-p\d{3,}\.png|manifest\.jsonl"


@dataclass
class SampleArguments:
    prompts_file: str = arg("", help="A text file with one prompt per line (added to the prompts given as arguments).")
    model: str = arg(
        "",
        help="A pipeline folder (train_prior.py's OUTPUT_DIR/pipeline) or a bundled model's name (shapes, emoji: "
        "see below); default: the bundled shapes model.",
    )
    num_images: int = arg(4, help="Images per prompt.", minimum=1)
    guidance_scale: float = arg(
        SAMPLING_DEFAULTS["guidance_scale"],
        help="Classifier-free guidance: 1 is off; larger follows the prompt more closely.",
    )
    temperature: float = arg(
        SAMPLING_DEFAULTS["temperature"],
        help="Sampling temperature (0: always the most likely code; 1: the model's own distribution).",
        minimum=0,
    )
    top_k: int = arg(SAMPLING_DEFAULTS["top_k"], help="Sample only among the k most likely codes (0: all).", minimum=0)
    top_p: float = arg(
        SAMPLING_DEFAULTS["top_p"],
        help="Nucleus sampling: the smallest set of codes with this total probability.",
        minimum=1e-06,
        maximum=1,
    )
    num_candidates: int = arg(
        SAMPLING_DEFAULTS["num_candidates"],
        help="Sample this many candidates per image and keep the one the model finds best explained by "
        "its prompt (DALL-E's re-ranking, scored by the prior itself: see MiniDallePipeline.score's pmi). "
        "1: no re-ranking; sampling time grows with it. At --temperature 0 every candidate is the "
        "same, so one is sampled.",
        minimum=1,
    )
    seed: int = arg(
        0,
        help="Base seed: image i uses seed + i (the manifest records each), so the same command gives the same "
        "images, whatever --batch_size.",
    )
    batch_size: int = arg(
        16, help="Images sampled together (with --num_candidates N, candidates: N per image).", minimum=1
    )
    compile: bool = arg(
        False,
        help="Run each sampling step through torch.compile: faster per image after a one-off "
        "compilation; worth it for many images (the README's Performance section says from how many).",
    )
    out: str = arg("samples", help="Output folder.")
    device: str = arg("", help="cpu or cuda (default: cuda when available).")
    threads: int = arg(
        0,
        help="CPU threads for torch (0: torch's default, one per core); on a machine another process keeps "
        "busy, 1 can be much faster (see the README).",
        minimum=0,
    )


def read_prompts(positional: list[str], prompts_file: str) -> list[str]:
    prompts = list(positional)
    if prompts_file:
        path = Path(prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise UserError(f"--prompts_file {path}: no such file") from None
        except UnicodeDecodeError:
            raise UserError(f"--prompts_file {path}: not UTF-8 text") from None
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError('give at least one prompt, e.g. python sample.py "a small red circle in the top left"')
    return prompts


SAMPLING_FLAGS = tuple(SAMPLING_DEFAULTS)  # flags whose default is the model's own when the folder stores one


def bundled_models_epilog() -> str:
    """--help's last lines: the bundled models and whose art each learned from."""
    from ..pipeline.pipeline import BUNDLED_MODELS

    lines = ["bundled models (--model NAME):"]
    for name in BUNDLED_NAMES:
        folder = BUNDLED_MODELS[name]
        attribution = folder / "ATTRIBUTION.md"
        if not (folder / "model_index.json").is_file():
            lines.append(f"  {name}: not in this installation")
        elif attribution.is_file():
            sets = [row for row in attribution.read_text(encoding="utf-8").splitlines() if row.startswith("| ")][1:]
            lines.append(f"  {name}: trained on art under its licences; {attribution} says whose:")
            lines += [f"    {row}" for row in sets]
        else:
            lines.append(f"  {name}: synthetic images, no third-party art")
    lines.append(
        "sampling flags not given are the model's own (its model_index.json's sampling_defaults), "
        "else the defaults shown above"
    )
    return "\n".join(lines)


@command(
    SampleArguments,
    prog="sample.py",
    description="Generate images from text prompts with a minidalle pipeline.",
    epilog=bundled_models_epilog,
    positional={"prompts": dict(nargs="*", help="Prompts, e.g. 'a small red circle in the top left'.")},
    output="out",
)
def main(args: SampleArguments, extra) -> None:
    from ..folders import claim_output_folder
    from ..images import save_image_grid, save_png
    from ..pipeline import MiniDallePipeline, check_prompts
    from ..threads import use_threads

    threads = use_threads(args.threads)  # before any work
    prompts = check_prompts(read_prompts(extra.prompts, args.prompts_file))
    out = claim_output_folder(args.out, "samples", SAMPLE_FILES)
    (out / "images").mkdir(exist_ok=True)
    started = time.perf_counter()
    pipe = MiniDallePipeline.from_pretrained(args.model or None, device=args.device or None)
    for flag in SAMPLING_FLAGS:  # the model's own settings for the flags not given
        if flag not in extra.explicit:
            setattr(args, flag, pipe.sampling_defaults[flag])
    print(f"sampling on {pipe.device}" + (f" with {threads}" if pipe.device.type == "cpu" else ""), file=sys.stderr)
    result = pipe(
        prompts,
        num_images_per_prompt=args.num_images,
        guidance_scale=args.guidance_scale,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
        compile=args.compile,
        num_candidates=args.num_candidates,
    )
    rows = []
    for i, (image, prompt) in enumerate(zip(result.images, result.prompts)):
        p, k = divmod(i, args.num_images)
        name = f"images/p{p:03d}-i{k:02d}.png"
        save_png(out / name, image)
        rows.append(
            {
                "prompt": prompt,
                "file": name,
                "seed": result.seeds[i],  # this image's own: `--seed S --num_candidates 1` gives it alone
                "index": i,
                "guidance_scale": args.guidance_scale,
                "temperature": args.temperature,
                "top_k": args.top_k,
                "top_p": args.top_p,
                "num_candidates": args.num_candidates,
                "pmi": None if result.scores is None else round(result.scores[i], 4),
                "model": args.model or "default",
            }
        )
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    tensors = pipe._pixels(result.images).cpu()
    for p in range(len(prompts)):
        save_image_grid([tensors[p * args.num_images : (p + 1) * args.num_images]], out / f"grid-p{p:03d}.png")
    elapsed = time.perf_counter() - started
    print(
        f"wrote {len(rows)} images for {len(prompts)} prompt(s) to {out}/ (images/, grid-p*.png, manifest.jsonl) "
        f"in {elapsed:.1f} s"
    )
