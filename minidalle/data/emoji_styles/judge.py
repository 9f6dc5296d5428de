"""Judges for the emoji-styles dataset: which style an image is drawn in, and which Unicode subgroup it shows.

One small CNN (`EmojiJudge`: five 3×3 conv blocks with batch norm, global
average pooling) with two linear heads, a style head and a Unicode-subgroup
head, trained together on an export's `train` split at 64×64 (images of another
size are resized). Augmentation: a random shift of up to 4 px (white padding)
and a horizontal flip. `train_judges` writes `judges.safetensors` (float16) and
`judges.json` (the class lists, the concept -> subgroup map of the export, the
training settings and the accuracy on `test` and `zeroshot`); the package ships
one such pair under `judges/`, so judging needs neither the export nor training.

`evaluate_manifest` reads a JSONL manifest of `{"prompt", "file"}` lines (files
relative to the manifest's folder), takes the style and the concept from each
prompt by the caption grammar ("a dog face in the noto style", see
`minidalle.data.emoji_styles.export`), and reports the style accuracy (the
style head's top class is the prompt's style), the subgroup accuracy (the
subgroup head's top class is the concept's subgroup) and both per style.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from minidalle.errors import UserError

from ..imagefolder import manifest_entries, open_manifest_image
from .export import SPLITS, parse_caption

RESOLUTION = 64
SHIPPED_DIR = Path(__file__).resolve().parent / "judges"
WEIGHTS_FILE = "judges.safetensors"
CONFIG_FILE = "judges.json"
CHANNELS = (24, 48, 96, 160, 192)


PALETTE_BUCKETS = 4096  # exact colours (6 bits a channel) hashed into this many buckets
PALETTE_DIM = 32
DIFF_BINS = (1, 4, 9, 17, 33, 65, 129)  # |horizontal neighbour difference| edges: flat fills vs gradients


def palette_features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, H, W) uint8 -> the image's colour histogram over hashed 6-bit-per-channel colours (white left
    out) and a histogram of neighbour differences inside the drawing, both as log(1 + 100 share)."""
    q = x.long() >> 2
    key = (q[:, 0] << 12) | (q[:, 1] << 6) | q[:, 2]
    ink = (key != (63 << 12 | 63 << 6 | 63)).flatten(1).float()
    bucket = (((key * 2654435761) % (1 << 32)) >> 13).flatten(1) % PALETTE_BUCKETS
    hist = torch.zeros(x.shape[0], PALETTE_BUCKETS).scatter_add_(1, bucket, ink)
    hist = hist / hist.sum(1, keepdim=True).clamp(min=1)
    xi = x.long()
    diff = (xi[..., 1:] - xi[..., :-1]).abs().sum(1).flatten(1)
    inside = (xi[..., 1:].sum(1) < 760).flatten(1).float()
    bins = torch.bucketize(diff, torch.tensor(DIFF_BINS))
    dh = torch.zeros(x.shape[0], len(DIFF_BINS) + 1).scatter_add_(1, bins, inside)
    dh = dh / dh.sum(1, keepdim=True).clamp(min=1)
    return torch.log1p(100 * hist), torch.log1p(100 * dh)


class EmojiJudge(nn.Module):
    """(B, 3, 64, 64) uint8 -> (style logits, subgroup logits).

    A CNN of five 3×3 conv blocks (batch norm, ReLU; the first at stride 2, max pooling after the
    second to fourth). The subgroup head reads the last block, pooled (mean + max). The style head reads
    local texture instead (the second and third blocks pooled, receptive fields of 7 and 19 px, which
    carry little of the concept: a style judge that knows the concept learns which styles drew it, and
    that is exactly wrong on zeroshot pairs) plus the image's palette (`palette_features`).
    """

    def __init__(self, num_styles: int, num_subgroups: int, channels: tuple[int, ...] = CHANNELS):
        super().__init__()
        self.blocks = nn.ModuleList()
        c_in = 3
        for i, c in enumerate(channels):
            layers: list[nn.Module] = [
                nn.Conv2d(c_in, c, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            self.blocks.append(nn.Sequential(*layers))
            c_in = c
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.1)
        self.palette = nn.Linear(PALETTE_BUCKETS, PALETTE_DIM)
        texture = 2 * (channels[1] + channels[2])
        self.style_head = nn.Sequential(
            nn.Linear(texture + PALETTE_DIM + len(DIFF_BINS) + 1, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_styles),
        )
        self.subgroup_head = nn.Linear(2 * c_in, num_subgroups)

    @staticmethod
    def _pooled(f: torch.Tensor) -> torch.Tensor:
        return torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)

    def trunk(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(B, 3, 64, 64) uint8 -> the feature maps of the second and third blocks (the style head's texture)
        and the last block's output (the subgroup head's)."""
        f = (x.float() / 255 - 0.5) / 0.5
        texture = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            f = block(f)
            if i in (1, 2):
                texture.append(f)
            if 0 < i < last:
                f = self.pool(f)
        return texture, f

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hist, diffs = palette_features(x)
        texture, f = self.trunk(x)
        h = self.dropout(self._pooled(f))
        style_in = torch.cat([*map(self._pooled, texture), F.relu(self.palette(hist)), diffs], dim=1)
        return self.style_head(self.dropout(style_in)), self.subgroup_head(h)


# ---------------------------------------------------------------- data


def _image_tensor(image) -> torch.Tensor:
    """A PIL image -> (3, 64, 64) uint8, composited on white, resized when needed."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        canvas = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(canvas, image)
    image = image.convert("RGB")
    if image.size != (RESOLUTION, RESOLUTION):
        image = image.resize((RESOLUTION, RESOLUTION), Image.LANCZOS)
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def read_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, list[dict]]:
    """All images of one split of an export as a (N, 3, 64, 64) uint8 tensor, and its metadata rows."""
    from PIL import Image

    folder = Path(data_dir) / split
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        raise UserError(f"--data {data_dir}: no {split}/metadata.jsonl (not an emoji-styles export?)")
    rows = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    images = torch.empty((len(rows), 3, RESOLUTION, RESOLUTION), dtype=torch.uint8)
    for i, row in enumerate(rows):
        with Image.open(folder / row["file_name"]) as image:
            images[i] = _image_tensor(image)
    return images, rows


def _augment(x: torch.Tensor, generator: torch.Generator, shift: int = 4) -> torch.Tensor:
    """Random shift of up to `shift` px (white padding) and horizontal flip of (B, 3, 64, 64) uint8 images."""
    b = x.shape[0]
    padded = F.pad(x, (shift,) * 4, value=255)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + RESOLUTION, dx[i] : dx[i] + RESOLUTION] for i in range(b)])
    flip = torch.rand(b, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 3, H, W) float images blurred by a separable Gaussian of `sigma` px (edges replicated)."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).repeat(x.shape[1], 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=x.shape[1])


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """(3, H, W) uint8 -> the same image after JPEG compression at `quality` (PIL, 4:2:0 chroma)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(x.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


DEGRADATIONS = ("noise", "jpeg", "blur", "resample", "blur+noise")


def degrade(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Each of (B, 3, 64, 64) uint8 images, with probability `p`, degraded by one of `DEGRADATIONS` at a random
    strength: Gaussian noise (sigma 1-10 of 255), JPEG (quality 30-95), Gaussian blur (sigma 0.4-1.5 px), a
    bilinear round trip through 20-48 px, or blur then noise. What a decoder's output looks like (soft edges,
    ringing, grain) without the exact colours and edges a style judge would otherwise key on."""
    out = x.clone()
    chosen = (torch.rand(len(x), generator=generator) < p).nonzero().flatten().tolist()
    for i in chosen:
        kind = DEGRADATIONS[int(torch.randint(len(DEGRADATIONS), (1,), generator=generator))]
        u = float(torch.rand(1, generator=generator))
        image = x[i : i + 1].float()
        if kind == "jpeg":
            out[i] = jpeg(x[i], quality=int(30 + 65 * u))
            continue
        if kind in ("blur", "blur+noise"):
            image = gaussian_blur(image, 0.4 + 1.1 * u)
        if kind == "resample":
            side = int(20 + 28 * u)
            small = F.interpolate(image, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            image = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if kind in ("noise", "blur+noise"):
            sigma = 1 + 9 * float(torch.rand(1, generator=generator))
            image = image + sigma * torch.randn(image.shape, generator=generator)
        out[i] = image.round().clamp(0, 255).to(torch.uint8)[0]
    return out


@torch.inference_mode()
def round_trips(images: torch.Tensor, tokenizer, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """(N, 3, 64, 64) uint8 images after the round trip (encode -> decode) through an image tokenizer (see
    `load_round_trip_tokenizer`), at its resolution and back."""
    from tqdm import tqdm

    side = tokenizer.image_size
    out = torch.empty_like(images)
    for i in tqdm(range(0, len(images), batch_size), desc="tokenizer round trips", disable=not progress):
        x = images[i : i + batch_size].float() / 255
        if side != RESOLUTION:
            x = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
        y = tokenizer.reconstruct(x)
        if side != RESOLUTION:
            y = F.interpolate(y, size=(RESOLUTION, RESOLUTION), mode="bilinear", antialias=True, align_corners=False)
        out[i : i + batch_size] = (y.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


# ---------------------------------------------------------------- loading and predicting


class Judges:
    """The trained judges: `predict(images)` -> (style names, subgroup names)."""

    def __init__(self, model: EmojiJudge, config: dict):
        self.model = model.eval()
        self.config = config
        self.styles: list[str] = config["styles"]
        self.subgroups: list[str] = config["subgroups"]
        self.concept_subgroup: dict[str, str] = config["concept_subgroup"]

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Style and subgroup logits of (N, 3, 64, 64) uint8 images."""
        styles, subgroups = [], []
        for i in range(0, len(images), batch_size):
            s, g = self.model(images[i : i + batch_size])
            styles.append(s)
            subgroups.append(g)
        return torch.cat(styles), torch.cat(subgroups)

    def predict(self, images: torch.Tensor) -> tuple[list[str], list[str]]:
        s, g = self.logits(images)
        return [self.styles[i] for i in s.argmax(1).tolist()], [self.subgroups[i] for i in g.argmax(1).tolist()]


def load_judges(folder: str | Path | None = None) -> Judges:
    """The judges in `folder` (default: the shipped ones) as written by `train_judges`."""
    from safetensors.torch import load_file

    folder = SHIPPED_DIR if folder is None else Path(folder)
    weights, config_path = folder / WEIGHTS_FILE, folder / CONFIG_FILE
    if not weights.is_file() or not config_path.is_file():
        raise UserError(
            f"judges folder {folder}: needs {WEIGHTS_FILE} and {CONFIG_FILE} "
            f"(train them with `minidalle train-emoji-judges --data EXPORT`)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        model = EmojiJudge(len(config["styles"]), len(config["subgroups"]), tuple(config["channels"]))
        state = {k: v.float() for k, v in load_file(str(weights)).items()}
        model.load_state_dict(state)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"judges folder {folder}: cannot load ({type(exc).__name__}: {exc})") from None
    return Judges(model, config)


def accuracy(judges: Judges, images: torch.Tensor, rows: list[dict]) -> dict:
    """Style and subgroup accuracy of `judges` on labelled images (rows with `style` and `subgroup`)."""
    styles, subgroups = judges.predict(images)
    n = len(rows)
    style_right = sum(p == r["style"] for p, r in zip(styles, rows))
    sub_right = sum(p == r["subgroup"] for p, r in zip(subgroups, rows))
    return {"images": n, "style": style_right / n if n else None, "subgroup": sub_right / n if n else None}


def robustness(
    judges: Judges, images: torch.Tensor, rows: list[dict], seed: int = 0, trips: torch.Tensor | None = None
) -> dict:
    """`accuracy` on the real images and on fixed, mild degradations of them (Gaussian noise 4/255, JPEG
    quality 75, Gaussian blur 1 px) and, given, on their tokenizer round trips `trips`: how much of a judge's
    accuracy reads what is drawn and how much the exact pixels."""
    generator = torch.Generator().manual_seed(seed)
    noisy = (images.float() + 4 * torch.randn(images.shape, generator=generator)).round().clamp(0, 255)
    figures = {
        "real": accuracy(judges, images, rows),
        "gaussian_noise_4_of_255": accuracy(judges, noisy.to(torch.uint8), rows),
        "jpeg_quality_75": accuracy(judges, torch.stack([jpeg(x, 75) for x in images]), rows),
        "gaussian_blur_1px": accuracy(
            judges, gaussian_blur(images.float(), 1.0).round().clamp(0, 255).to(torch.uint8), rows
        ),
    }
    if trips is not None:
        figures["tokenizer_round_trip"] = accuracy(judges, trips, rows)
    return figures


# ---------------------------------------------------------------- training


def train_judges(
    data_dir: str | Path,
    out_dir: str | Path | None = None,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    threads: int = 1,
    progress: bool = True,
    degrade_p: float = 0.5,
    round_trip_model: str | Path | None = None,
    round_trip_p: float = 0.25,
    round_trip_tokenizer=None,
) -> dict:
    """Train the judges on `data_dir/train`; write them to `out_dir` (default: the shipped folder).

    Each training image is shifted and flipped (`_augment`); with probability `degrade_p` it is also
    degraded (`degrade`); with `round_trip_tokenizer` (an image tokenizer, loaded from `round_trip_model`,
    the name recorded), with probability `round_trip_p` it is first replaced by its round trip (computed once).
    Prints and returns the accuracy on `test` and `zeroshot` (in judges.json too), real and degraded (`robustness`).
    """
    from safetensors.torch import save_file
    from tqdm import tqdm

    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    random.seed(seed)
    data_dir = Path(data_dir)
    marker = data_dir / "emoji-styles.json"
    settings = json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else {}
    train_x, train_rows = read_split(data_dir, "train")
    evals = {s: read_split(data_dir, s) for s in SPLITS[1:] if (data_dir / s / "metadata.jsonl").is_file()}
    styles = sorted({r["style"] for r in train_rows})
    subgroups = sorted({r["subgroup"] for r in train_rows})
    concept_subgroup = {}
    for rows in [train_rows] + [rows for _, rows in evals.values()]:
        for r in rows:
            concept_subgroup[r["concept"]] = r["subgroup"]
    style_index = {s: i for i, s in enumerate(styles)}
    sub_index = {s: i for i, s in enumerate(subgroups)}
    y_style = torch.tensor([style_index[r["style"]] for r in train_rows])
    y_sub = torch.tensor([sub_index[r["subgroup"]] for r in train_rows])
    model = EmojiJudge(len(styles), len(subgroups))
    steps_per_epoch = math.ceil(len(train_rows) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    generator = torch.Generator().manual_seed(seed)
    trips = {}
    if round_trip_tokenizer is not None:
        trips = {
            split: round_trips(x, round_trip_tokenizer, progress=progress)
            for split, x in [("train", train_x)] + [(s, x) for s, (x, _) in evals.items()]
        }
    bar = tqdm(total=epochs * steps_per_epoch, desc="training judges", unit="step", disable=not progress)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(train_rows), generator=generator)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            x = train_x[idx]
            if trips:
                use = torch.rand(len(idx), generator=generator) < round_trip_p
                x = torch.where(use[:, None, None, None], trips["train"][idx], x)
            x = _augment(degrade(x, generator, degrade_p) if degrade_p > 0 else x, generator)
            style_logits, sub_logits = model(x)
            loss = F.cross_entropy(style_logits, y_style[idx], label_smoothing=0.05) + F.cross_entropy(
                sub_logits, y_sub[idx], label_smoothing=0.05
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.update()
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    bar.close()
    train_seconds = time.perf_counter() - start
    config = {
        "format": "minidalle emoji-styles judges",
        "resolution": RESOLUTION,
        "channels": list(CHANNELS),
        "styles": styles,
        "subgroups": subgroups,
        "concept_subgroup": dict(sorted(concept_subgroup.items())),
        "trained_on": {
            "export_styles": settings.get("styles"),
            "packages": settings.get("packages"),
            "emojibase": settings.get("emojibase"),
            "seed_of_splits": settings.get("seed"),
            "train_images": len(train_rows),
        },
        "training": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "threads": threads,
            "seconds": round(train_seconds, 1),
            "augmentation": {
                "shift_px": 4,
                "flip": True,
                "degrade_p": degrade_p,
                "degradations": list(DEGRADATIONS) if degrade_p > 0 else [],
                "round_trip_model": None if round_trip_model is None else str(round_trip_model),
                "round_trip_p": round_trip_p if trips else 0.0,
            },
        },
    }
    judges = Judges(model, config)
    config["accuracy"] = {split: accuracy(judges, x, rows) for split, (x, rows) in evals.items()}
    out = SHIPPED_DIR if out_dir is None else Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        state = {
            k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items() if v.is_floating_point()
        }
        save_file(state, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write the judges ({exc.strerror or exc})") from None
    # the figures of the float16 weights as shipped
    reloaded = load_judges(out)
    config["robustness"] = {
        split: robustness(reloaded, x, rows, seed, trips.get(split)) for split, (x, rows) in evals.items()
    }
    config["accuracy"] = {split: figures["real"] for split, figures in config["robustness"].items()}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    for split, figures in config["robustness"].items():
        for condition, acc in figures.items():
            print(
                f"{split:>9} {condition:<24} style {100 * acc['style']:5.1f}%  subgroup {100 * acc['subgroup']:5.1f}%"
                f"  ({acc['images']} images)"
            )
    print(
        f"judges -> {out} (trained {train_seconds:.0f} s on {len(train_rows)} images, {threads} thread(s))",
        file=sys.stderr,
    )
    return config


# ---------------------------------------------------------------- judging a manifest


def _rate(right: int, total: int) -> float | None:
    return right / total if total else None


def evaluate_manifest(path: str | Path, judges: Judges | str | Path | None = None) -> dict:
    """Judge every `{"prompt", "file"}` line of a JSONL manifest; see the module docstring."""

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such manifest: {path}")
    if not isinstance(judges, Judges):
        judges = load_judges(judges)
    entries, images = [], []
    for where, (concept, style), image_path in manifest_entries(path, parse_caption):
        if style not in judges.styles:
            raise UserError(f"{where}: style {style!r} is not one the judges know ({', '.join(judges.styles)})")
        if concept not in judges.concept_subgroup:
            raise UserError(
                f"{where}: concept {concept.replace('-', ' ')!r} is not in the emoji-styles data the judges know"
            )
        images.append(_image_tensor(open_manifest_image(image_path, where)))
        entries.append((style, judges.concept_subgroup[concept]))
    if not entries:
        raise UserError(f"{path}: the manifest has no entries")
    pred_styles, pred_subs = judges.predict(torch.stack(images))
    per_style: dict[str, Counter] = {}
    for (style, subgroup), ps, pg in zip(entries, pred_styles, pred_subs):
        c = per_style.setdefault(style, Counter())
        c["images"] += 1
        c["style_right"] += ps == style
        c["subgroup_right"] += pg == subgroup
    n = len(entries)
    return {
        "manifest": str(path),
        "images": n,
        "style_accuracy": _rate(sum(c["style_right"] for c in per_style.values()), n),
        "subgroup_accuracy": _rate(sum(c["subgroup_right"] for c in per_style.values()), n),
        "per_style": {
            s: {
                "images": c["images"],
                "style_accuracy": _rate(c["style_right"], c["images"]),
                "subgroup_accuracy": _rate(c["subgroup_right"], c["images"]),
            }
            for s, c in sorted(per_style.items())
        },
        "judges_ceiling": judges.config.get("accuracy"),
        # the judges on the same real images after a round trip through the tokenizer they were trained beside
        # (`--round_trip_model`): the ceiling of samples decoded by that tokenizer
        "judges_round_trip": {
            split: figures["tokenizer_round_trip"]
            for split, figures in judges.config.get("robustness", {}).items()
            if "tokenizer_round_trip" in figures
        },
        "round_trip_model": judges.config.get("training", {}).get("augmentation", {}).get("round_trip_model"),
    }


def format_report(report: dict) -> str:
    """The report of `evaluate_manifest` as a readable table."""

    def pct(rate: float | None) -> str:
        return "     -" if rate is None else f"{100 * rate:5.1f}%"

    lines = [
        f"{report['manifest']}: {report['images']} images",
        f"{'style':<14}{'images':>7}{'style acc':>11}{'subgroup acc':>14}",
    ]
    for style, row in report["per_style"].items():
        lines.append(
            f"{style:<14}{row['images']:>7}{pct(row['style_accuracy']):>11}{pct(row['subgroup_accuracy']):>14}"
        )
    lines.append(
        f"{'all':<14}{report['images']:>7}{pct(report['style_accuracy']):>11}{pct(report['subgroup_accuracy']):>14}"
    )

    def figures(by_split: dict) -> str:
        return "; ".join(
            f"{split} style {pct(a['style']).strip()}, subgroup {pct(a['subgroup']).strip()}"
            for split, a in by_split.items()
        )

    if report.get("judges_ceiling"):
        lines.append("judges on real held-out images: " + figures(report["judges_ceiling"]))
    if report.get("judges_round_trip"):
        lines.append(
            f"on them after the round trip through {report['round_trip_model']}'s image tokenizer: "
            + figures(report["judges_round_trip"])
        )
    return "\n".join(lines)
