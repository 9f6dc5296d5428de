#!/usr/bin/env python
"""Image tokenizers compared at equal CPU time: one table, one picture (issue 16).

    python bench/compare_tokenizers.py calibrate [--rows A,B] [--budget_cpu_minutes 60]
    python bench/compare_tokenizers.py train [--rows A,B] [--datasets emoji,shapes] [--threads 1]
    python bench/compare_tokenizers.py report [--rows A,B]

`calibrate` times a short run of every row at one thread, in CPU seconds of the process (at a
high priority; other work on the machine moves wall time, much less CPU time), and turns the
budget of CPU time into a step count per row (`runs/compare-tokenizers/calibration.json`): rows
that cost more per step get fewer steps. The default, 60 CPU-minutes, is 30 minutes of the 2-core
machine: two rows side by side at one thread each. `train` then trains every row for its steps
(step-based: a busy machine changes the wall time, not the result; a killed run resumes from its
last checkpoint). `report` evaluates each row's tokenizer on held-out images (emoji-styles `test`: PSNR,
perceptual distance, codes, and the emoji judges' style and subgroup accuracy after the round trip;
shapes: PSNR, attributes kept and the zero-shot round trip), prints the table as Markdown and
JSON, and draws the reconstructions side by side, one labelled row per tokenizer of the table so far
(`docs/tokenizer-comparison-{emoji,shapes}.png`; `report.json` keeps the rows of earlier reports, so
`report --rows X` adds X to both).

Data (made once): `minidalle export-dataset emoji-styles --out data/emoji-styles` and
`minidalle make-shapes --out data/shapes-train40k --split train --num 40000 --seed 0`,
`minidalle make-shapes --out data/shapes-heldout --split train --num 500 --seed 1` (and
`--num 2000` into `data/shapes-heldout2k`: 500 of them differ from every training image).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "compare-tokenizers"

DATASETS = {
    "emoji": ["--data", "data/emoji-styles", "--split", "train", "--eval_split", "test", "--resolution", "64"],
    "shapes": ["--data", "data/shapes-train40k", "--split", "train", "--max_examples", "20000"]
    + ["--eval_data", "data/shapes-heldout", "--eval_split", "train"],
}

# Every row: train_tokenizer.py flags, and schedule lengths as fractions of the row's step budget.
ROWS: dict[str, dict] = {
    "dvae": {
        "what": "today's dVAE (recipes/tokenizer_emoji.json: small preset, K=512, MSE, tau 1 -> 1/16)",
        "flags": ["--config", "recipes/tokenizer_emoji.json"],
        "fractions": {"temperature_steps": 0.8, "warmup_steps": 0.05},
    },
}

# The VQ-GAN rows share today's conv stack (the small preset: what changes is the quantizer and the
# objective, not the capacity), batch and learning rate; K close to DALL-E's 8,192.
STACK = ["--preset", "small", "--batch_size", "32", "--learning_rate", "0.002", "--output_bias_init", "mean"]
# taming's objective (L1, perceptual weight 1, GAN weight 0.8 x lambda) sized for the CPU: the perceptual
# distance on 8 images of each batch of 32, the discriminator at width 32 (taming: 64)


def vqgan(perceptual: float = 1.0, disc: float = 0.8) -> list[str]:
    flags = ["--recon_loss", "l1", "--perceptual_weight", str(perceptual), "--perceptual_images", "8"]
    return flags + ["--disc_weight", str(disc), "--disc_width", "32", "--disc_learning_rate", "0.0002"]


VQGAN = vqgan()
GAN_PHASES = {"before": ["--disc_start", "1000000"], "after": ["--disc_start", "0"]}
QUANTIZER_FLAGS = {
    "dvae": ["--quantizer", "gumbel", "--num_codes", "8192", "--kl_weight", "0.02"],
    "vq_l2": ["--quantizer", "vq", "--num_codes", "8192", "--codebook_dim", "16", "--vq_l2", "--vq_kmeans_init"]
    + ["--vq_ema", "--vq_restart_dead", "--kl_weight", "0.25"],
    "fsq": ["--quantizer", "fsq", "--fsq_levels", "8,6,6,5,5"],
}
GUMBEL_RAMPS = {"temperature_steps": 0.8, "kl_warmup_steps": 0.05}  # DALL-E's beta and tau ramps, scaled
for quantizer, flags in QUANTIZER_FLAGS.items():
    ROWS[f"{quantizer}_gan"] = {
        "what": f"{quantizer} (K~8k) + VQ-GAN losses (L1, perceptual, patch-GAN from half-way)",
        "flags": STACK + flags + VQGAN,
        "fractions": {"warmup_steps": 0.05, "disc_start": 0.5, **(GUMBEL_RAMPS if quantizer == "dvae" else {})},
        "calibrate_phases": GAN_PHASES,
        "second_phase_from": 0.5,
    }
ROWS["fsq_no_perceptual"] = {
    "what": "fsq + L1 + patch-GAN, no perceptual term (ablation)",
    "flags": STACK + QUANTIZER_FLAGS["fsq"] + vqgan(perceptual=0),
    "fractions": {"warmup_steps": 0.05, "disc_start": 0.5},
    "calibrate_phases": GAN_PHASES,
    "second_phase_from": 0.5,
}
ROWS["fsq_no_gan"] = {
    "what": "fsq + L1 + perceptual, no discriminator (ablation)",
    "flags": STACK + QUANTIZER_FLAGS["fsq"] + vqgan(disc=0),
    "fractions": {"warmup_steps": 0.05},
}

# the finer grid for the best row: 16x16 codes at 64 px (four times the prior's image tokens), the conv stack
# one downsampling shorter with the small preset's widest layers kept
ROWS["fsq_gan_16x16"] = {
    "what": "fsq + VQ-GAN losses on a 16x16 grid (widths 64,128: one downsampling fewer)",
    "flags": STACK + QUANTIZER_FLAGS["fsq"] + VQGAN + ["--widths", "64,128"],
    "fractions": {"warmup_steps": 0.05, "disc_start": 0.5},
    "calibrate_phases": GAN_PHASES,
    "second_phase_from": 0.5,
}

# the table's and the picture's order: today's dVAE, the three quantizers with the VQ-GAN losses, the ablations,
# the finer grid
TABLE_ORDER = ("dvae", "fsq_gan", "vq_l2_gan", "dvae_gan", "fsq_no_gan", "fsq_no_perceptual", "fsq_gan_16x16")
assert sorted(TABLE_ORDER) == sorted(ROWS)
ROWS = {name: ROWS[name] for name in TABLE_ORDER}

COMMON = ["--logging_steps", "50", "--seed", "0"]


def row_flags(name: str, dataset: str, steps: int, precision: str = "auto") -> list[str]:
    row = ROWS[name]
    flags = list(row["flags"]) + DATASETS[dataset] + COMMON
    flags += ["--mixed_precision", precision, "--max_steps", str(steps)]
    for key, fraction in row.get("fractions", {}).items():
        flags += [f"--{key}", str(max(1, int(fraction * steps)))]
    return flags


def environment(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def run_train(flags: list[str], out: Path, threads: int, priority: int = 0, log_name: str = "train.log") -> None:
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["nice", "-n", str(priority)] if priority else []
    cmd += [sys.executable, str(ROOT / "train_tokenizer.py"), *flags, "--output_dir", str(out)]
    with open(out.parent / f"{out.name}.{log_name}", "a") as log:
        log.write(" ".join(cmd) + "\n")
        log.flush()
        subprocess.run(cmd, cwd=ROOT, env=environment(threads), check=True, stdout=log, stderr=subprocess.STDOUT)


def seconds_per_step(out: Path, first: int, last: int) -> float:
    """CPU seconds per step (the process's, all threads): other work on the machine barely moves it."""
    times = {}
    for line in (out / "log.jsonl").read_text().splitlines():
        entry = json.loads(line)
        times[entry["step"]] = entry["cpu_time"]
    return (times[last] - times[first]) / (last - first)


def calibrate(args) -> None:
    path = RUNS / "calibration.json"
    table = json.loads(path.read_text()) if path.exists() else {}
    for name in args.rows:
        phases = ROWS[name].get("calibrate_phases", {"all": []})
        costs = {}
        for phase, extra in phases.items():
            out = RUNS / "calibrate" / f"{name}-{phase}"
            flags = row_flags(name, "emoji", 25, args.mixed_precision) + ["--logging_steps", "5", "--image_steps", "0"]
            flags += ["--checkpointing_steps", "0", "--overwrite_output_dir", *extra]
            load = os.getloadavg()[0]
            run_train(flags, out, 1, priority=-10)
            costs[phase] = {"seconds_per_step": seconds_per_step(out, 5, 25), "load_before": round(load, 2)}
        # a phase with a start fraction runs for the rest of the steps (the discriminator after disc_start)
        start = ROWS[name].get("second_phase_from", 1.0)
        per_step = [c["seconds_per_step"] for c in costs.values()]
        mean = per_step[0] if len(per_step) == 1 else per_step[0] * start + per_step[1] * (1 - start)
        steps = int(args.budget_cpu_minutes * 60 / mean)
        table[name] = {
            "what": ROWS[name]["what"],
            "phases": costs,
            "mean_seconds_per_step": round(mean, 4),
            "budget_cpu_minutes": args.budget_cpu_minutes,
            "threads": 1,
            "steps": steps,
            "machine": machine(),
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        print(json.dumps({name: table[name]}))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(table, indent=2) + "\n")


def machine() -> str:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model}".strip()


def train(args) -> None:
    table = json.loads((RUNS / "calibration.json").read_text())
    for dataset in args.datasets:
        for name in args.rows:
            if name not in table:
                sys.exit(f"row {name} has no step budget yet: run `calibrate --rows {name}` first")
            out = RUNS / dataset / name
            if (out / "eval.json").exists():
                print(f"{dataset}/{name}: done")
                continue
            flags = row_flags(name, dataset, table[name]["steps"], args.mixed_precision)
            flags += ["--checkpointing_steps", "250", "--image_steps", "0"]
            if (out / "checkpoints").exists():
                flags += ["--resume_from_checkpoint", "latest"]
            start = time.time()
            run_train(flags, out, args.threads, priority=args.priority)
            (out / "wall.json").write_text(
                json.dumps({"wall_seconds": round(time.time() - start), "threads": args.threads, "machine": machine()})
            )
            print(f"{dataset}/{name}: trained in {time.time() - start:.0f} s")


def cpu_minutes(out: Path) -> float:
    """CPU minutes the run took: `cpu_time` restarts at 0 on a resume, so sum each segment's last value."""
    total, last = 0.0, 0.0
    for line in (out / "log.jsonl").read_text().splitlines():
        t = json.loads(line).get("cpu_time", 0.0)
        if t < last:
            total += last
        last = t
    return round((total + last) / 60, 1)


def load_split(data: str, split: str, limit: int = 0):
    import torch

    from minidalle.data import DataArguments, load_captioned_dataset, load_image_tensor

    args = DataArguments(data=data, split=split, resolution=64, max_examples=limit)
    ds = load_captioned_dataset(args, require_captions=False)
    return load_image_tensor(ds, args, progress=False).float() / 255, ds, torch


def evaluate_tokenizer(folder: Path, images, perceptual) -> dict:
    """PSNR (mean of each image's), our perceptual distance, and the codes' use, on held-out images."""
    import torch

    from minidalle.image_tokenizers import load_image_tokenizer
    from minidalle.metrics import codebook_stats, psnr

    tokenizer = load_image_tokenizer(folder).eval()
    codes, recon = [], []
    with torch.no_grad():
        for chunk in images.split(64):
            c = tokenizer.encode(chunk)
            codes.append(c.flatten())
            recon.append(tokenizer.decode(c))
        recon = torch.cat(recon)
        distance = torch.cat([perceptual(a, b) for a, b in zip(recon.split(64), images.split(64))])
    per_image = psnr((recon - images).pow(2).flatten(1).mean(1))
    stats = codebook_stats(torch.bincount(torch.cat(codes), minlength=tokenizer.num_codes))
    return {
        "psnr": round(float(per_image.mean()), 2),
        "perceptual": round(float(distance.mean()), 4),
        "codes": tokenizer.num_codes,
        "grid": tokenizer.grid_size,
        "codebook_usage": round(stats["codebook_usage"], 3),
        "codebook_perplexity": round(stats["codebook_perplexity"], 1),
    }


def reconstruct(folder: Path, images):
    """A tokenizer's round trip of a few images (the picture's rows)."""
    import torch

    from minidalle.image_tokenizers import load_image_tokenizer

    tokenizer = load_image_tokenizer(folder).eval()
    with torch.no_grad():
        return tokenizer.decode(tokenizer.encode(images))


def thumbnail_figures(images, grid: int) -> dict:
    """PSNR of a grid x grid thumbnail (area averages) scaled back up bilinearly: no codes, no training."""
    import torch.nn.functional as F

    from minidalle.metrics import psnr

    small = F.interpolate(images, size=(grid, grid), mode="area")
    back = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    return {"psnr": round(float(psnr((back - images).pow(2).flatten(1).mean(1)).mean()), 2), "grid": grid}


def shapes_figures(folder: Path) -> dict:
    """Attributes kept on held-out shapes, and the zero-shot round trip (both under the exact two-object rule)."""
    figures = {}
    out = RUNS / "report-tmp" / folder.parent.name
    cmd = [sys.executable, str(ROOT / "bench" / "eval_tokenizer_shapes.py"), "--image_tokenizer", str(folder)]
    cmd += ["--heldout", "data/shapes-heldout2k", "--train", "data/shapes-train40k", "--out", str(out)]
    kept = json.loads(subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    figures.update(attributes_kept=kept["all_correct"], shapes_psnr=kept["psnr"])
    cmd = [sys.executable, str(ROOT / "bench" / "zeroshot_ceiling.py"), "--image_tokenizer", str(folder)]
    cmd += ["--splits", "zeroshot", "--num", "400"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()[0]
    figures["zeroshot_round_trip"] = json.loads(first)["all_correct"]
    return figures


def judged_figures(folder: Path | None, judged) -> dict:
    """The emoji-styles judges' style and subgroup accuracy on held-out images after the round trip (None: on the
    real images, the judges' ceiling), and the style confusion (in report.json). The shipped judges saw round
    trips through the bundled emoji model's tokenizer in training, which favours tokenizers like it."""
    from minidalle.data.emoji_styles.judge import accuracy, round_trips
    from minidalle.image_tokenizers import load_image_tokenizer

    judges, images, rows = judged
    if folder is not None:
        images = round_trips(images, load_image_tokenizer(folder).eval(), progress=False)
    right = accuracy(judges, images, rows)
    confusion = {style: dict.fromkeys(judges.styles, 0) for style in judges.styles}  # true style -> judged -> n
    for row, judged_style in zip(rows, judges.predict(images)[0]):
        confusion[row["style"]][judged_style] += 1
    return {
        "judged_style": round(right["style"], 4),
        "judged_subgroup": round(right["subgroup"], 4),
        "style_confusion": confusion,
    }


def report(args) -> None:
    import torch

    from minidalle.image_tokenizers.perceptual import LPIPS_LAYERS, PerceptualDistance
    from minidalle.images import save_image_grid

    torch.set_num_threads(args.threads)
    table = json.loads((RUNS / "calibration.json").read_text())
    perceptual = PerceptualDistance(layers=LPIPS_LAYERS)  # all five taps for evaluation (training: three)
    # rows reported earlier (another --rows or --datasets) are kept beside the ones measured now
    saved = RUNS / "report.json"
    kept = json.loads(saved.read_text())["rows"] if saved.exists() else {}
    results = {}
    for dataset in args.datasets:
        if dataset == "emoji":
            from minidalle.data.emoji_styles.judge import load_judges, read_split

            images, ds, _ = load_split("data/emoji-styles", "test")
            styles = ds["style"]
            shown = [styles.index(s) for s in dict.fromkeys(styles)] + [len(styles) // 2, len(styles) - 1]
            judged = (load_judges(), *read_split("data/emoji-styles", "test"))
            results["emoji/real_images"] = judged_figures(None, judged)
            print(json.dumps({"emoji/real_images": results["emoji/real_images"]}))
        else:
            images, _, _ = load_split("data/shapes-heldout", "train", limit=500)
            shown = list(range(0, 80, 10))
        for grid in (8, 16):  # the information bound of a grid: each cell's mean colour, scaled back up
            key = f"{dataset}/thumbnail_{grid}x{grid}"
            results[key] = thumbnail_figures(images, grid)
            print(json.dumps({key: results[key]}))
        for name in args.rows:
            folder = RUNS / dataset / name / "image_tokenizer"
            if not folder.is_dir():
                continue
            figures = evaluate_tokenizer(folder, images, perceptual)
            figures.update(shapes_figures(folder) if dataset == "shapes" else judged_figures(folder, judged))
            figures.update(steps=table[name]["steps"], cpu_minutes=cpu_minutes(folder.parent), what=ROWS[name]["what"])
            results[f"{dataset}/{name}"] = figures
            print(json.dumps({f"{dataset}/{name}": figures}), flush=True)
        # the picture: every row of the table so far (measured now or in an earlier report), in ROWS' order
        names = [n for n in ROWS if f"{dataset}/{n}" in {**kept, **results}]
        names = [n for n in names if (RUNS / dataset / n / "image_tokenizer").is_dir()]
        picture = ROOT / "docs" / f"tokenizer-comparison-{dataset}.png"
        rows_shown = [reconstruct(RUNS / dataset / n / "image_tokenizer", images[shown]) for n in names]
        save_image_grid([images[shown], *rows_shown], picture, labels=["original", *names])
    saved.write_text(json.dumps({"machine": machine(), "rows": {**kept, **results}}, indent=2) + "\n")
    judged_keys = ("attributes_kept", "zeroshot_round_trip", "judged_style", "judged_subgroup")
    print(
        "| row | data | steps | CPU min | PSNR dB | perceptual | codes used | perplexity | attrs kept | zero-shot "
        "| judged style | judged subgroup |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for key, f in results.items():
        dataset, name = key.split("/")
        extra = " | ".join(f"{100 * f[k]:.1f}%" if k in f else "" for k in judged_keys)
        if "steps" not in f:  # the thumbnails, and the real images the judges see
            print(f"| {name} | {dataset} | | | {f.get('psnr', '')} | | | | {extra} |")
            continue
        print(
            f"| {name} | {dataset} | {f['steps']} | {f['cpu_minutes']} | {f['psnr']} | {f['perceptual']} | "
            f"{100 * f['codebook_usage']:.1f}% of {f['codes']} | {f['codebook_perplexity']} | {extra} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["calibrate", "train", "report"])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--datasets", default="emoji,shapes")
    parser.add_argument("--budget_cpu_minutes", type=float, default=60.0, help="per row, at one thread")
    parser.add_argument("--threads", type=int, default=1, help="train: threads per run")
    parser.add_argument("--priority", type=int, default=0, help="train: nice value of the runs")
    parser.add_argument(
        "--mixed_precision",
        default="auto",
        choices=["auto", "no", "bf16", "fp16"],
        help="calibrate/train: train_tokenizer.py's; auto is bf16 only on a CPU with native bf16, so give `no` to "
        "add rows comparable with rows trained in fp32 elsewhere",
    )
    args = parser.parse_args()
    args.rows = [r for r in args.rows.split(",") if r]
    args.datasets = [d for d in args.datasets.split(",") if d]
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        sys.exit(f"unknown rows {unknown}; rows: {', '.join(ROWS)}")
    {"calibrate": calibrate, "train": train, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
