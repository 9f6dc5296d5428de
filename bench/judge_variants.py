#!/usr/bin/env python
"""Variants of the emoji-styles judges, trained exactly like the shipped ones, and the errors they share.

    python bench/judge_variants.py train VARIANT [--seed N] [--out runs/judge-variants] [--threads 1]
    python bench/judge_variants.py shared [--out runs/judge-variants]    # needs the variants trained
    python bench/judge_variants.py knn                                   # the shipped judges only

`train` runs `train_judges` (12 epochs, degradations, a quarter of the images replaced by their round trip
through the emoji model's image tokenizer: `minidalle train-emoji-judges --round_trip_model emoji`) with
the judge network swapped for a variant; it writes OUT/VARIANT-sN/ and prints the same table as the command.
The round trips are cached in OUT/round-trips/ (they are a function of the images and the tokenizer only).

- `base`: the shipped network (`judge.EmojiJudge`), with another `--seed` for the seed-to-seed spread;
- `gram`: the style head also reads second-order (Gram) statistics of the second and third blocks, the
  classic texture descriptor of style transfer (1x1 projection to 24 channels, signed square root, l2 norm);
- `sep`: the style head reads a trunk of its own (three blocks) that the subgroup loss does not train;
- `flat`: the style head also reads a histogram of the exact colours of the image's flat pixels (equal to
  their right and lower neighbour), hashed into 16,384 buckets: the sets' palettes exactly, where a
  drawing has flat fills.

`shared` judges the real test and zeroshot images with the shipped judges and every trained variant,
prints each one's style accuracy, that of their average (softmax averaged) and the shipped judges' averaged
over the flip and four 2-px shifts, and lists the images all of
them get wrong, with, for each, the nearest training images of the same concept
(RMS pixel distance, 0-255): a floor under the errors of this family of judges.

`knn` is another family: the style of the k nearest training images (cosine, k = 1, 5, 10) in the shipped
judges' own features (the style head's input and its hidden layer; the palette histogram alone; raw pixels
for scale), against the shipped judges' argmax, on the real test and zeroshot images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minidalle.data.emoji_styles import judge as J

VARIANTS = ("base", "gram", "sep", "flat")


def _gram(f: torch.Tensor, proj: nn.Module) -> torch.Tensor:
    g = proj(f).flatten(2)
    m = torch.bmm(g, g.transpose(1, 2)) / g.shape[2]
    iu = torch.triu_indices(m.shape[1], m.shape[1])
    v = m[:, iu[0], iu[1]]
    return F.normalize(torch.sign(v) * torch.sqrt(v.abs() + 1e-6), dim=1)


def _style_head(inputs: int, num_styles: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 128), nn.ReLU(inplace=True), nn.Linear(128, num_styles))


EXTRA = J.PALETTE_DIM + len(J.DIFF_BINS) + 1  # the palette and neighbour-difference features


class Gram(J.EmojiJudge):
    def __init__(self, num_styles, num_subgroups, channels=J.CHANNELS, k: int = 24):
        super().__init__(num_styles, num_subgroups, channels)
        self.proj1, self.proj2 = nn.Conv2d(channels[1], k, 1), nn.Conv2d(channels[2], k, 1)
        self.style_head = _style_head(2 * (channels[1] + channels[2]) + k * (k + 1) + EXTRA, num_styles)

    def forward(self, x):
        hist, diffs = J.palette_features(x)
        (f1, f2), f = self.trunk(x)
        texture = [self._pooled(f1), 4 * _gram(f1, self.proj1), self._pooled(f2), 4 * _gram(f2, self.proj2)]
        style_in = torch.cat([*texture, F.relu(self.palette(hist)), diffs], dim=1)
        return self.style_head(self.dropout(style_in)), self.subgroup_head(self.dropout(self._pooled(f)))


class Sep(J.EmojiJudge):
    def __init__(self, num_styles, num_subgroups, channels=J.CHANNELS, style_channels=(32, 64, 96)):
        super().__init__(num_styles, num_subgroups, channels)
        self.style_blocks, c_in = nn.ModuleList(), 3
        for i, c in enumerate(style_channels):
            conv = nn.Conv2d(c_in, c, 3, stride=2 if i == 0 else 1, padding=1, bias=False)
            self.style_blocks.append(nn.Sequential(conv, nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
            c_in = c
        self.style_head = _style_head(2 * sum(style_channels[1:]) + EXTRA, num_styles)

    def forward(self, x):
        hist, diffs = J.palette_features(x)
        _, f = self.trunk(x)
        s, texture = (x.float() / 255 - 0.5) / 0.5, []
        for i, block in enumerate(self.style_blocks):
            s = block(s)
            if i >= 1:
                texture.append(self._pooled(s))
            if i == 1:
                s = self.pool(s)
        style_in = torch.cat([*texture, F.relu(self.palette(hist)), diffs], dim=1)
        return self.style_head(self.dropout(style_in)), self.subgroup_head(self.dropout(self._pooled(f)))


FLAT_BUCKETS = 16384


def flat_colours(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> log(1 + 100 share) of the flat, non-white pixels per hashed exact colour."""
    xi = x.long()
    key = (xi[:, 0] << 16) | (xi[:, 1] << 8) | xi[:, 2]
    k = key[:, :-1, :-1]
    flat = (k == key[:, 1:, :-1]) & (k == key[:, :-1, 1:]) & (k != 0xFFFFFF)
    bucket = (((k * 2654435761) % (1 << 32)) >> 10) % FLAT_BUCKETS
    hist = torch.zeros(x.shape[0], FLAT_BUCKETS).scatter_add_(1, bucket.flatten(1), flat.flatten(1).float())
    return torch.log1p(100 * hist / hist.sum(1, keepdim=True).clamp(min=1))


class Flat(J.EmojiJudge):
    def __init__(self, num_styles, num_subgroups, channels=J.CHANNELS):
        super().__init__(num_styles, num_subgroups, channels)
        self.flat = nn.Linear(FLAT_BUCKETS, J.PALETTE_DIM)
        self.style_head = _style_head(2 * (channels[1] + channels[2]) + J.PALETTE_DIM + EXTRA, num_styles)

    def forward(self, x):
        hist, diffs = J.palette_features(x)
        texture, f = self.trunk(x)
        palette = [F.relu(self.palette(hist)), F.relu(self.flat(flat_colours(x))), diffs]
        style_in = torch.cat([*map(self._pooled, texture), *palette], dim=1)
        return self.style_head(self.dropout(style_in)), self.subgroup_head(self.dropout(self._pooled(f)))


NETWORKS = {"base": J.EmojiJudge, "gram": Gram, "sep": Sep, "flat": Flat}


def _cached_round_trips(cache: Path):
    original = J.round_trips

    def round_trips(images, tokenizer, **kwargs):
        path = cache / f"{hashlib.sha1(images.numpy().tobytes()).hexdigest()[:16]}.pt"
        if path.is_file():
            return torch.load(path)
        trips = original(images, tokenizer, **kwargs)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(trips, path)
        return trips

    return round_trips


def load_variant(folder: Path) -> J.Judges:
    from safetensors.torch import load_file

    config = json.loads((folder / J.CONFIG_FILE).read_text())
    model = NETWORKS[config["variant"]](len(config["styles"]), len(config["subgroups"]))
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / J.WEIGHTS_FILE)).items()})
    return J.Judges(model, config)


def train(args) -> None:
    from minidalle.cli.emoji_styles import load_round_trip_tokenizer

    out = Path(args.out) / f"{args.variant}-s{args.seed}"
    J.round_trips = _cached_round_trips(Path(args.out) / "round-trips")
    J.EmojiJudge = NETWORKS[args.variant]  # train_judges builds and reloads the network by this name
    config = J.train_judges(
        args.data,
        out_dir=out,
        seed=args.seed,
        threads=args.threads,
        round_trip_model="emoji",
        round_trip_tokenizer=load_round_trip_tokenizer("emoji"),
    )
    config["variant"] = args.variant
    (out / J.CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n")


def _shifted(x: torch.Tensor, dx: int, dy: int, pad: int = 4) -> torch.Tensor:
    padded = F.pad(x, (pad,) * 4, value=255)
    return padded[:, :, pad + dy : pad + dy + x.shape[2], pad + dx : pad + dx + x.shape[3]].contiguous()


def shared(args) -> None:
    torch.set_num_threads(args.threads)
    judges = {"shipped": J.load_judges()}
    for folder in sorted(Path(args.out).glob("*-s*")):
        if (folder / J.CONFIG_FILE).is_file():
            judges[folder.name] = load_variant(folder)
    train_x, train_rows = J.read_split(args.data, "train")
    by_concept: dict[str, list[int]] = {}
    for i, r in enumerate(train_rows):
        by_concept.setdefault(r["concept"], []).append(i)
    for split in ("test", "zeroshot"):
        x, rows = J.read_split(args.data, split)
        styles = judges["shipped"].styles
        y = torch.tensor([styles.index(r["style"]) for r in rows])
        probs = {name: j.logits(x)[0].float().softmax(1) for name, j in judges.items()}
        predicted = {name: p.argmax(1) for name, p in probs.items()}
        accuracy = {name: round(100 * (p == y).float().mean().item(), 1) for name, p in predicted.items()}
        shifted = [x.flip(-1)] + [_shifted(x, dx, dy) for dx, dy in ((2, 0), (-2, 0), (0, 2), (0, -2))]
        tta = probs["shipped"] + sum(judges["shipped"].logits(v)[0].float().softmax(1) for v in shifted)
        accuracy["shipped, flip + 4 shifts averaged"] = round(100 * (tta.argmax(1) == y).float().mean().item(), 1)
        accuracy["all, softmax averaged"] = round(100 * (sum(probs.values()).argmax(1) == y).float().mean().item(), 1)
        wrong = sorted(set.intersection(*[set((p != y).nonzero().flatten().tolist()) for p in predicted.values()]))
        cap = 100 * (len(rows) - len(wrong)) / len(rows)
        print(f"{split}: style accuracy {accuracy}; {len(wrong)} of {len(rows)} images wrong in all {len(judges)}")
        print(f"  (so at most {cap:.2f}% right even for a judge that is right wherever one of them is)")
        for i in wrong:
            r = rows[i]
            said = [styles[p[i]] for p in predicted.values()]
            near = sorted(
                (((train_x[k].float() - x[i].float()) ** 2).mean().sqrt().item(), train_rows[k]["style"])
                for k in by_concept.get(r["concept"], [])
            )
            nearest = ", ".join(f"{s} {d:.0f}" for d, s in near[:3])
            print(f"  {r['concept']:<22} {r['style']:<12} judged {'/'.join(said)}; same concept in train: {nearest}")


def _style_features(judges: J.Judges, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The style head's input and hidden layer for (N, 3, 64, 64) uint8 images (read with hooks), the palette
    histogram, and the pixels."""
    head = judges.model.style_head
    seen: dict[str, list[torch.Tensor]] = {"style head input": [], "style head hidden": []}
    hooks = [
        head.register_forward_pre_hook(lambda _m, args: seen["style head input"].append(args[0])),
        head[1].register_forward_hook(lambda _m, _a, out: seen["style head hidden"].append(out.clone())),
    ]
    try:
        judges.logits(x)
    finally:
        for h in hooks:
            h.remove()
    return {
        **{k: torch.cat(v) for k, v in seen.items()},
        "palette histogram": J.palette_features(x)[0],
        "pixels": x.float().flatten(1),
    }


def knn(args) -> None:
    torch.set_num_threads(args.threads)
    judges = J.load_judges()
    styles = judges.styles
    train_x, train_rows = J.read_split(args.data, "train")
    train_y = torch.tensor([styles.index(r["style"]) for r in train_rows])
    memory = _style_features(judges, train_x)
    for split in ("test", "zeroshot"):
        x, rows = J.read_split(args.data, split)
        y = torch.tensor([styles.index(r["style"]) for r in rows])
        shipped = judges.logits(x)[0].argmax(1)
        misses = shipped != y
        print(f"{split}: shipped judges {int((~misses).sum())} of {len(rows)} right")
        for name, query in _style_features(judges, x).items():
            near = (F.normalize(query, dim=1) @ F.normalize(memory[name], dim=1).T).topk(10).indices
            cells = []
            for k in (1, 5, 10):
                said = F.one_hot(train_y[near[:, :k]], len(styles)).sum(1).argmax(1)
                cells.append(f"k={k}: {int((said == y).sum())} ({int((said == y)[misses].sum())} of its misses)")
            print(f"  {name:<18} " + "; ".join(cells))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("train", "shared", "knn"))
    parser.add_argument("variant", nargs="?", choices=VARIANTS, default="base")
    parser.add_argument("--data", default="data/emoji-styles")
    parser.add_argument("--out", default="runs/judge-variants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    {"train": train, "shared": shared, "knn": knn}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
