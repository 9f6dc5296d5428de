#!/usr/bin/env python
"""How much of an emoji's style survives in its codes: a probe trained on the codes alone.

    python bench/style_in_codes.py [--image_tokenizer minidalle/emoji_model/image_tokenizer]
        [--data data/emoji-styles] [--inputs codes,code_vectors,thumbnail,round_trip_thumbnail,thumbnail_2x]
        [--epochs 25] [--seeds 0,1] [--threads 2] [--out FILE.json]

A sample can only show a style its image codes carry: the decoder sees nothing else. This trains the
same small CNN (three 3x3 convolutions, a 2x2 pool, global average, linear) to name the style of an
image from each input below, on the same g x g grid as the tokenizer's codes, trained on the export's `train`
split, and reports its style accuracy on `test` and `zeroshot`:
- `codes`: the tokenizer's codes (an FSQ code as the one-hot of each of its digits; any other as a
  learned embedding of the code);
- `code_vectors`: what the decoder receives for those codes (`quantizer.embed`: an FSQ code's scaled
  digits, a VQ code's codebook vector), fixed;
- `thumbnail`: each cell's mean colour (the image area-averaged to g x g; 24 bits a cell, against the
  codes' log2 K);
- `round_trip_thumbnail`: the same of the decoded codes (does the decoder put back the cells' colours?);
- `thumbnail_2x`: the original's mean colours at 2g x 2g, four times the cells.
Beside the probes, one `round_trip` line: the tokenizer's held-out PSNR (mean of each image's) and the
shipped judges' style and subgroup accuracy on the real images and on their round trips, per split.
A probe's figure is a lower bound of what the input holds (a better probe may read more), so read the
rows against each other: same network, same data, same epochs, mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minidalle.data.emoji_styles.judge import accuracy, load_judges, read_split, round_trips
from minidalle.image_tokenizers import load_image_tokenizer
from minidalle.metrics import psnr
from minidalle.radix import code_digits

SPLITS = ("train", "test", "zeroshot")
INPUTS = ("codes", "code_vectors", "thumbnail", "round_trip_thumbnail", "thumbnail_2x")


class CodeInput(nn.Module):
    """Codes (N, g, g) -> (N, C, g, g): one-hot FSQ digits, else a learned embedding per code."""

    def __init__(self, num_codes: int, levels: list[int] | None, dim: int = 32) -> None:
        super().__init__()
        self.levels = levels
        if levels:
            self.register_buffer("level_tensor", torch.tensor(levels), persistent=False)
            self.channels = sum(levels)
        else:
            self.embedding = nn.Embedding(num_codes, dim)
            self.channels = dim

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        if self.levels:
            digits = code_digits(codes.long(), self.level_tensor)  # (N, g, g, D)
            x = torch.cat([F.one_hot(digits[..., i], n) for i, n in enumerate(self.levels)], -1).float()
        else:
            x = self.embedding(codes.long())
        return x.permute(0, 3, 1, 2)


def probe(in_channels: int, classes: int, width: int = 96) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.GELU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(width, 128, 3, padding=1),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(128, classes),
    )


def train_probe(inputs: dict, labels: dict, front: nn.Module | None, channels: int, classes: int, args, seed: int):
    """Train on inputs['train']; accuracy on every other split after the last epoch."""
    torch.manual_seed(seed)
    net = nn.Sequential(front or nn.Identity(), probe(channels, classes))
    opt = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=0.05)
    x, y = inputs["train"], labels["train"]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        net.train()
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(perm), 64):
            b = perm[i : i + 64]
            xb = x[b]
            if torch.rand((), generator=gen) < 0.5:  # the same mirror for codes and pixels: styles are not handed
                xb = xb.flip(-1)
            loss = F.cross_entropy(net(xb), y[b], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return {s: (net(inputs[s]).argmax(1) == labels[s]).float().mean().item() for s in inputs}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image_tokenizer", default="minidalle/emoji_model/image_tokenizer")
    ap.add_argument("--data", default="data/emoji-styles")
    ap.add_argument("--inputs", default=",".join(INPUTS), help="Which probes, comma-separated (default: all).")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()

    tokenizer = load_image_tokenizer(args.image_tokenizer).float().eval()
    g = tokenizer.grid_size
    levels = list(getattr(tokenizer.config, "fsq_levels", None) or []) if tokenizer.config.quantizer == "fsq" else []
    images, rows = {}, {}
    for split in SPLITS:
        images[split], rows[split] = read_split(args.data, split)
    styles = sorted({r["style"] for r in rows["train"]})
    labels = {s: torch.tensor([styles.index(r["style"]) for r in rows[s]]) for s in SPLITS}
    inputs = [name for name in args.inputs.split(",") if name]
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        ap.error(f"unknown --inputs {unknown}; choose from {', '.join(INPUTS)}")
    with torch.no_grad():
        encoded = SPLITS if inputs else ()  # the probes need every split's codes, the round-trip line none
        codes = {s: torch.cat([tokenizer.encode(b.float() / 255) for b in images[s].split(256)]) for s in encoded}

        def source(name: str) -> dict[str, torch.Tensor]:
            if name == "codes":
                return codes
            if name == "code_vectors":
                return {s: tokenizer.quantizer.embed(c).float() for s, c in codes.items()}
            if name == "round_trip_thumbnail":
                return {
                    s: torch.cat([F.adaptive_avg_pool2d(tokenizer.decode(b), g) for b in c.split(256)])
                    for s, c in codes.items()
                }
            size = g * (2 if name == "thumbnail_2x" else 1)
            return {s: F.adaptive_avg_pool2d(images[s].float() / 255, size) for s in SPLITS}

    judges = load_judges()
    held_out = {}
    for split in SPLITS[1:]:
        trips = round_trips(images[split], tokenizer, progress=False)
        se = (trips.float() / 255 - images[split].float() / 255).pow(2).flatten(1).mean(1)
        held_out[split] = {
            "psnr_per_image": psnr(se).mean().item(),
            "judges_real": accuracy(judges, images[split], rows[split]),
            "judges_round_trip": accuracy(judges, trips, rows[split]),
        }
    print(json.dumps({"round_trip": held_out}), flush=True)

    seeds = [int(v) for v in args.seeds.split(",")]
    rows_out = {}
    for name in inputs:
        with torch.no_grad():  # fixed inputs: no gradient into the tokenizer's codebook
            data = source(name)
        runs = []
        for seed in seeds:
            front = CodeInput(tokenizer.num_codes, levels) if name == "codes" else None
            channels = front.channels if front is not None else data["train"].shape[1]
            runs.append(train_probe(data, labels, front, channels, len(styles), args, seed))
        row = {s: sum(r[s] for r in runs) / len(runs) for s in SPLITS}
        row["per_seed"] = runs
        rows_out[name] = row
        print(json.dumps({"input": name, **{s: round(row[s], 4) for s in SPLITS}}), flush=True)

    report = {
        "image_tokenizer": args.image_tokenizer,
        "tokenizer_hash": tokenizer.codes_hash(),
        "grid": g,
        "num_codes": tokenizer.num_codes,
        "styles": styles,
        "counts": {s: len(rows[s]) for s in SPLITS},
        "epochs": args.epochs,
        "seeds": seeds,
        "threads": args.threads,
        "seconds": round(time.time() - start, 1),
        "round_trip": held_out,
        "probes": rows_out,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
