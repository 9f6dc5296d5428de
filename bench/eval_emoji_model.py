#!/usr/bin/env python
"""Quality of an emoji-styles pipeline: judged samples, caption ranking and held-out likelihood.

    python bench/eval_emoji_model.py [--model emoji] [--data data/emoji-styles] [--out runs/eval-emoji]
    python bench/eval_emoji_model.py --tune --write-defaults recipes/emoji_sampling.json   # choose the defaults

Figures (one JSON line each, and OUT/report.json):
- `samples`: one image per prompt with sample.py's defaults for this model (its folder's sampling
  settings) for 400 captions of the train split and every held-out zeroshot pair, judged by
  `minidalle eval-emoji`'s judges; each accuracy also as a fraction of the judges' own on the real
  images (train prompts: the judges on the real test split, the same pairs' distribution; zeroshot: on
  the real zeroshot images).
- `rank`: `rank_captions` on the real zeroshot images: the right style among the caption of that concept
  in every style, and the right concept among 100 captions of the same style (top-1 and top-5).
- `likelihood`: bits per image token and bits/dim of the real test split given its captions, beside a
  unigram model of the codes (their frequencies in the train split, add-one smoothed) and the uniform one.
- `judges`: the judges on the real test and zeroshot images, on mild degradations (noise of 4/255, JPEG 75,
  a 1-pixel blur) and on their round trip through the model's image tokenizer: what a judged figure can mean.
- `rerank` (`--only rerank`, not in the default set): what sample.py's re-ranking buys. On the `--num-tune` other
  train captions (never the reported ones), every one of the model's `num_candidates` candidates per prompt is
  judged; printed: the share right of the candidate the pipeline keeps (the highest pmi), of one candidate
  (the mean over candidates: what `--num_candidates 1` gives), of the candidate whose own caption the model
  finds likeliest among that concept's captions in every style (its style posterior), and of any candidate (a
  perfect re-ranker's ceiling; also among the first 1, 2, 4, ... candidates), with the standard error of the
  kept-minus-one difference, pair by pair.
- `--tune`: a guidance x temperature grid on 100 other train captions (never the reported ones), each prompt
  scored by the mean of its style and subgroup being right, with the same seed per prompt in every cell (so
  cells are compared pair by pair). The best cell replaces the model's own settings only when its paired
  advantage over them is significant, corrected for the number of cells (one-sided 5% shared among the
  challengers: 2.50 standard errors for a 3 x 3 grid); otherwise the model's own settings are kept. At 100
  prompts a cell's score has a standard error of about 3 points, so the best of nine cells is often only
  the luckiest. `--write-defaults FILE` stores the chosen settings as a JSON for
  `minidalle export-pipeline --sampling_defaults`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minidalle.data.emoji_styles.export import caption, parse_caption
from minidalle.data.emoji_styles.judge import _image_tensor, evaluate_manifest, load_judges
from minidalle.images import save_image_grid
from minidalle.pipeline import MiniDallePipeline
from minidalle.pipeline.pipeline import resolve_model

MODEL_FOLDER: Path | None = None  # the folder main() loaded the pipeline from (recorded with the samples)


def read_rows(data: Path, split: str) -> list[dict]:
    with open(data / split / "metadata.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def distinct_captions(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["text"] for r in rows))


def draw(pipe, prompts: list[str], out: Path, seed: int, batch_size: int, reuse: bool, **sampling) -> list:
    """One sample per prompt, saved in `out` with a manifest.jsonl and what drew them (`drawn.json`); with
    `reuse`, the images already there are taken when `drawn.json` says they were drawn exactly so (the same
    model folder, prompts, seed and settings: sampling is seeded per image, so drawing them again gives them
    again)."""
    from PIL import Image

    drawn = {"model": str(MODEL_FOLDER), "prompts": prompts, "seed": seed, "sampling": sampling}
    record = out / "drawn.json"
    if reuse and record.is_file() and json.loads(record.read_text()) == json.loads(json.dumps(drawn)):
        print(f"reusing the samples in {out}", file=sys.stderr)
        return [Image.open(out / f"{i:04d}.png").convert("RGB") for i in range(len(prompts))]
    out.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    result = pipe(prompts, num_images_per_prompt=1, seed=seed, batch_size=batch_size, **sampling)
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for i, (image, prompt) in enumerate(zip(result.images, result.prompts)):
            image.save(out / f"{i:04d}.png")
            f.write(json.dumps({"prompt": prompt, "file": f"{i:04d}.png"}) + "\n")
    record.write_text(json.dumps(drawn, indent=1) + "\n")
    return result.images


def shares(report: dict, ceiling: dict | None, suffix: str) -> dict:
    """A sample report's style and subgroup accuracy as fractions of the judges' own on some images."""
    if not ceiling:
        return {}
    return {f"{k}_{suffix}": report[f"{k}_accuracy"] / ceiling[k] for k in ("style", "subgroup") if ceiling[k]}


def sample_and_judge(pipe, prompts, out: Path, seed: int, batch_size: int, judges, reuse=False, **sampling) -> dict:
    start = time.perf_counter()
    draw(pipe, prompts, out, seed, batch_size, reuse, **sampling)
    report = evaluate_manifest(out / "manifest.jsonl", judges=judges)
    report["seconds"] = round(time.perf_counter() - start, 1)
    return report


def judge_prompts(images, prompts: list[str], judges) -> list[tuple[bool | None, bool]]:
    """Per prompt, its image judged: (style right, or None for a style the judges do not know; subgroup right)."""
    styles, subgroups = judges.predict(torch.stack([_image_tensor(im) for im in images]))
    right = []
    for s, g, prompt in zip(styles, subgroups, prompts):
        concept, style = parse_caption(prompt)
        right.append((s == style if style in judges.styles else None, g == judges.concept_subgroup[concept]))
    return right


def mean_and_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def choose_settings(cells: list[dict], incumbent: dict, alpha: float = 0.05) -> tuple[dict, dict]:
    """The tune's rule. `cells`: {"settings", "scores"} with per-prompt scores on the same prompts and seeds;
    `incumbent`: the model's own settings (one of the cells). Returns the chosen settings and why: the best
    cell by mean score, but only if its paired advantage over the incumbent exceeds z standard errors, z the
    one-sided normal quantile of `alpha` shared among the challengers (Bonferroni: 2.50 for eight)."""
    from statistics import NormalDist

    key = ("guidance_scale", "temperature")
    own = next((c for c in cells if all(c["settings"][k] == incumbent[k] for k in key)), None)
    if own is None:
        raise ValueError("the model's own guidance and temperature must be a cell of the grid")
    z = NormalDist().inv_cdf(1 - alpha / max(1, len(cells) - 1))
    best = max(cells, key=lambda c: mean_and_se(c["scores"])[0])
    diff, se = mean_and_se([b - o for b, o in zip(best["scores"], own["scores"])])
    why = {"best": {k: best["settings"][k] for k in key}, "advantage": diff, "advantage_se": se, "z": z}
    if best is own or diff <= z * se:
        return own["settings"], {**why, "kept": "the model's own settings (no cell beats them significantly)"}
    return best["settings"], {**why, "kept": "the best cell"}


def judge_test_prompts(pipe, data: Path, out: Path, seed: int, batch_size: int, judges, reuse=False, **sampling):
    """Samples for the test split's captions, judged by subgroup (and by style where the judges know it): for a
    style the judges never saw (a fine-tune on OpenMoji), the subgroup head still reads what is drawn."""
    prompts = distinct_captions(read_rows(data, "test"))
    prompts = [p for p in prompts if parse_caption(p)[0] in judges.concept_subgroup]
    right = judge_prompts(draw(pipe, prompts, out, seed, batch_size, reuse, **sampling), prompts, judges)
    styled = [s for s, _ in right if s is not None]
    return {
        "prompts": len(prompts),
        "subgroup_accuracy": sum(g for _, g in right) / len(prompts),
        "style_accuracy": sum(styled) / len(styled) if styled else None,
        "style_judged": bool(styled),
    }


def judge_robustness(image_tokenizer, data: Path, judges, seed: int) -> dict:
    """The judges on the real test and zeroshot images, on mild degradations that keep every shape (noise of
    4/255, JPEG 75, a 1-pixel blur) and on the round trip through this model's image tokenizer (the best a
    prior over these codes could be judged): how much of a judge's accuracy reads what is drawn."""
    from minidalle.data.emoji_styles.judge import read_split, robustness, round_trips

    figures = {}
    for split in ("test", "zeroshot"):
        images, rows = read_split(data, split)
        trips = round_trips(images, image_tokenizer, progress=False)
        figures[split] = robustness(judges, images, rows, seed, trips)
        figures[split]["share_in_fluent"] = sum(r["style"] == "fluent" for r in rows) / len(rows)
    return figures


def rank_figures(pipe, data: Path, train_rows: list[dict], seed: int, num_concepts: int = 100) -> dict:
    """rank_captions on the real zeroshot images: style among styles, concept among `num_concepts` same-style
    captions (left out when 0: it costs ~15 times the style ranking)."""
    from PIL import Image

    styles = sorted({r["style"] for r in train_rows})
    by_style: dict[str, list[str]] = {}
    for r in train_rows:
        by_style.setdefault(r["style"], []).append(r["concept"])
    rng = random.Random(seed)
    style_right = top1 = top5 = n = 0
    for row in read_rows(data, "zeroshot"):
        image = Image.open(data / "zeroshot" / row["file_name"]).convert("RGB")
        ranked = pipe.rank_captions(image, [caption(row["concept"], s) for s in styles])
        style_right += parse_caption(ranked[0][0])[1] == row["style"]
        n += 1
        if not num_concepts:
            continue
        others = sorted(set(by_style[row["style"]]) - {row["concept"]})
        concepts = [row["concept"], *rng.sample(others, min(num_concepts - 1, len(others)))]
        ranked = [
            parse_caption(c)[0] for c, _ in pipe.rank_captions(image, [caption(c, row["style"]) for c in concepts])
        ]
        top1 += ranked[0] == row["concept"]
        top5 += row["concept"] in ranked[:5]
    figures = {"images": n, "style_among_styles": style_right / n, "styles": len(styles)}
    if num_concepts:
        figures.update({"concept_top1": top1 / n, "concept_top5": top5 / n, "concepts": num_concepts})
    return figures


@torch.inference_mode()
def likelihood_figures(pipe, data: Path, train_rows: list[dict], batch_size: int) -> dict:
    """Held-out test bits per image token and bits/dim, beside a unigram and the uniform model of the codes."""
    from PIL import Image

    def codes_of(split: str, rows: list[dict]) -> torch.Tensor:
        out = []
        for i in range(0, len(rows), batch_size):
            images = [Image.open(data / split / r["file_name"]).convert("RGB") for r in rows[i : i + batch_size]]
            out.append(pipe.image_tokenizer.encode(pipe._pixels(images)).flatten(1).cpu())
        return torch.cat(out)

    test_rows = read_rows(data, "test")
    k = pipe.image_tokenizer.num_codes
    counts = torch.bincount(codes_of("train", train_rows).flatten(), minlength=k).double() + 1
    log2_p = torch.log2(counts / counts.sum())
    test_codes = codes_of("test", test_rows)
    tokens = test_codes.shape[1]
    nll = []
    for i in range(0, len(test_rows), batch_size):
        text = pipe._text_tokens([r["text"] for r in test_rows[i : i + batch_size]])
        nll += pipe.prior.image_nll(text, test_codes[i : i + batch_size].to(pipe.device)).tolist()
    dims = 3 * pipe.image_tokenizer.image_size**2
    bits_token = sum(nll) / len(nll) / tokens / math.log(2)  # image_nll: nats summed over an image's codes
    unigram = float(-log2_p[test_codes.flatten()].mean())
    return {
        "images": len(test_rows),
        "bits_per_image_token": bits_token,
        "bits_per_dim": bits_token * tokens / dims,
        "unigram_bits_per_image_token": unigram,
        "unigram_bits_per_dim": unigram * tokens / dims,
        "uniform_bits_per_image_token": math.log2(k),
        "codes_used_in_train": int((counts > 1).sum()),
        "codes": k,
    }


def rerank_figures(pipe, prompts: list[str], judges, seed: int, batch_size: int, sampling: dict) -> dict:
    """`rerank`: every candidate judged, and the share right under each way of keeping one (see the docstring)."""
    n = int(sampling["num_candidates"])
    settings = {k: sampling[k] for k in ("guidance_scale", "temperature", "top_k", "top_p")}
    start = time.perf_counter()
    out = pipe(prompts, num_images_per_prompt=n, num_candidates=1, seed=seed, batch_size=batch_size, **settings)
    right = judge_prompts(out.images, out.prompts, judges)
    style = torch.tensor([bool(r[0]) for r in right], dtype=torch.float).view(-1, n)
    subgroup = torch.tensor([bool(r[1]) for r in right], dtype=torch.float).view(-1, n)
    pmi = torch.tensor([r["pmi"] for r in pipe.score(out.images, out.prompts, batch_size=batch_size)]).view(-1, n)
    styles = judges.styles
    parsed = [parse_caption(p) for p in out.prompts]
    log_p = torch.tensor(  # (candidates, styles): log p(codes | the concept's caption in each style)
        [
            [r["log_prob"] for r in pipe.score(out.images, [caption(c, s) for c, _ in parsed], batch_size, pmi=False)]
            for s in styles
        ]
    ).T
    own = torch.tensor([styles.index(s) for _, s in parsed])
    posterior = (log_p.gather(1, own[:, None]).squeeze(1) - log_p.logsumexp(1)).view(-1, n)

    def kept(score: torch.Tensor) -> dict:
        best = score.argmax(1, keepdim=True)
        return {"style": style.gather(1, best).mean().item(), "subgroup": subgroup.gather(1, best).mean().item()}

    pmi_best = pmi.argmax(1, keepdim=True)
    differences = {  # kept minus one candidate, per prompt: its mean and standard error
        name: mean_and_se((judged.gather(1, pmi_best).squeeze(1) - judged.mean(1)).tolist())
        for name, judged in (("style", style), ("subgroup", subgroup))
    }
    return {
        "prompts": len(prompts),
        "candidates": n,
        "sampling": settings,
        "highest_pmi": kept(pmi),
        "one_candidate": {"style": style.mean().item(), "subgroup": subgroup.mean().item()},
        "highest_style_posterior": kept(posterior),
        "any_candidate": {"style": style.amax(1).mean().item(), "subgroup": subgroup.amax(1).mean().item()},
        "any_of_the_first": {  # a perfect re-ranker's ceiling with fewer candidates
            k: {"style": style[:, :k].amax(1).mean().item(), "subgroup": subgroup[:, :k].amax(1).mean().item()}
            for k in sorted({2**i for i in range(n.bit_length()) if 2**i < n})
        },
        "highest_pmi_minus_one": {k: {"mean": m, "se": se} for k, (m, se) in differences.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def one_per_style(captions: list[str], n: int) -> list[str]:
    """The first `n` captions of distinct styles (then of any style, once every style has one)."""
    picked, seen = [], set()
    for text in captions:
        if parse_caption(text)[1] not in seen:
            picked.append(text)
            seen.add(parse_caption(text)[1])
    picked += [text for text in captions if text not in picked]
    return picked[:n]


def sample_sheet(pipe, train: list[str], zeroshot: list[str], path: Path, per_row: int, seed: int) -> None:
    prompts = train + zeroshot
    result = pipe(prompts, num_images_per_prompt=per_row, seed=seed)
    pixels = pipe._pixels(result.images).cpu()
    rows = [pixels[i * per_row : (i + 1) * per_row] for i in range(len(prompts))]
    mark = " (zero-shot)" if train else " (held out)"
    labels = [f"{p[2:] if p.startswith('a ') else p[3:]}" + (mark if p in zeroshot else "") for p in prompts]
    save_image_grid(rows, path, labels=labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="emoji", help="pipeline folder or bundled name (default: emoji)")
    parser.add_argument("--data", default="data/emoji-styles", help="the emoji-styles export")
    parser.add_argument("--out", default="runs/eval-emoji")
    parser.add_argument("--judges", help="a folder of judges from train-emoji-judges (default: the shipped ones)")
    parser.add_argument("--num-train", type=int, default=400, help="train captions to sample from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--rank-concepts", type=int, default=100, help="rank's same-style captions per image (0: style ranking only)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["samples", "rank", "likelihood", "sheet", "test_samples", "judges", "rerank"],
        help="some figures",
    )
    parser.add_argument(
        "--reuse-samples", action="store_true", help="judge samples already in OUT when drawn with these settings"
    )
    parser.add_argument("--tune", action="store_true", help="choose guidance and temperature on other prompts")
    parser.add_argument("--guidance", default="1.5,3,5", help="--tune's guidance scales")
    parser.add_argument("--temperatures", default="0.5,0.8,1.0", help="--tune's temperatures")
    parser.add_argument("--num-candidates", type=int, default=0, help="re-ranked candidates (0: the model's own)")
    parser.add_argument("--num-tune", type=int, default=100, help="--tune's prompts")
    parser.add_argument("--write-defaults", metavar="FILE", help="with --tune: write the best settings here")
    args = parser.parse_args()

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    global MODEL_FOLDER
    MODEL_FOLDER = resolve_model(args.model).resolve()
    pipe = MiniDallePipeline.from_pretrained(args.model)
    judges = load_judges(args.judges)
    train_rows = read_rows(data, "train")
    shuffled = distinct_captions(train_rows)
    random.Random(args.seed).shuffle(shuffled)
    reported, tuning = shuffled[: args.num_train], shuffled[args.num_train : args.num_train + args.num_tune]
    zeroshot = (
        distinct_captions(read_rows(data, "zeroshot")) if (data / "zeroshot" / "metadata.jsonl").is_file() else []
    )
    sampling = dict(pipe.sampling_defaults)
    if args.num_candidates:
        sampling["num_candidates"] = args.num_candidates
    ceiling = judges.config.get("accuracy", {})

    if args.tune:
        results, cells = [], []
        grid = [(float(g), float(t)) for g in args.guidance.split(",") for t in args.temperatures.split(",")]
        own = (float(sampling["guidance_scale"]), float(sampling["temperature"]))
        grid += [] if own in grid else [own]  # the model's own settings are always a cell: the baseline
        for guidance, temperature in grid:
            settings = {**sampling, "guidance_scale": guidance, "temperature": temperature}
            folder = out / f"tune-g{guidance:g}-t{temperature:g}"
            start = time.perf_counter()
            right = judge_prompts(
                draw(pipe, tuning, folder, args.seed, args.batch_size, False, **settings), tuning, judges
            )
            scores = [(s + g) / 2 for s, g in right]  # train captions: every style is one the judges know
            cells.append({"settings": settings, "scores": scores})
            mean, se = mean_and_se(scores)
            row = {
                "figure": "tune",
                **settings,
                "style_accuracy": sum(s for s, _ in right) / len(right),
                "subgroup_accuracy": sum(g for _, g in right) / len(right),
                "seconds": round(time.perf_counter() - start, 1),
                "score": mean,
                "score_se": se,
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        best, why = choose_settings(cells, sampling)
        chosen = {k: best[k] for k in ("guidance_scale", "temperature", "top_k", "top_p", "num_candidates")}
        print(json.dumps({"figure": "tune_best", "prompts": len(tuning), **chosen, "why": why}))
        (out / "tune.json").write_text(json.dumps({"results": results, "best": chosen, "why": why}, indent=2) + "\n")
        if args.write_defaults:
            Path(args.write_defaults).write_text(json.dumps(chosen, indent=2) + "\n")
        return

    figures = {"model": str(args.model), "sampling": sampling}
    only = set(args.only or ["samples", "rank", "likelihood", "sheet", "judges"])
    if "samples" in only:
        for name, prompts, split in (("train", reported, "test"), ("zeroshot", zeroshot, "zeroshot")):
            where, reuse = out / f"samples-{name}", args.reuse_samples
            report = sample_and_judge(pipe, prompts, where, args.seed, args.batch_size, judges, reuse, **sampling)
            row = {
                "figure": "samples",
                "set": name,
                "prompts": len(prompts),
                "style_accuracy": report["style_accuracy"],
                "subgroup_accuracy": report["subgroup_accuracy"],
                "judges_on_real": {"split": split, **ceiling.get(split, {})},
                **shares(report, ceiling.get(split), "of_ceiling"),
                # the judges on those real images after this tokenizer's round trip, when they were trained beside
                # it: the best samples decoded by it could be judged
                "judges_on_round_trip": report["judges_round_trip"].get(split),
                **shares(report, report["judges_round_trip"].get(split), "of_round_trip"),
                "per_style": report["per_style"],
                "seconds": report["seconds"],
            }
            figures[f"samples_{name}"] = row
            print(json.dumps(row), flush=True)
    if "judges" in only:
        figures["judges"] = {"figure": "judges", **judge_robustness(pipe.image_tokenizer, data, judges, args.seed)}
        print(json.dumps(figures["judges"]), flush=True)
    if "test_samples" in only:  # not in the default set: for a fine-tune's own data
        row = judge_test_prompts(
            pipe, data, out / "samples-test", args.seed, args.batch_size, judges, args.reuse_samples, **sampling
        )
        figures["test_samples"] = {"figure": "test_samples", **row}
        print(json.dumps(figures["test_samples"]), flush=True)
    if "rerank" in only:  # not in the default set: it draws num_candidates images for each of --num-tune prompts
        row = rerank_figures(pipe, tuning, judges, args.seed, args.batch_size, sampling)
        figures["rerank"] = {"figure": "rerank", **row}
        print(json.dumps(figures["rerank"]), flush=True)
    if "rank" in only:
        start = time.perf_counter()
        figures["rank"] = {"figure": "rank", **rank_figures(pipe, data, train_rows, args.seed, args.rank_concepts)}
        figures["rank"]["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(figures["rank"]), flush=True)
    if "likelihood" in only:
        figures["likelihood"] = {"figure": "likelihood", **likelihood_figures(pipe, data, train_rows, args.batch_size)}
        print(json.dumps(figures["likelihood"]), flush=True)
    if "sheet" in only:
        sheet = out / "sample-sheet.png"
        # train and zero-shot prompts; for an export without a zeroshot split (one new style): test prompts
        held = one_per_style(zeroshot or distinct_captions(read_rows(data, "test")), 5)
        sample_sheet(pipe, one_per_style(reported, 5) if zeroshot else [], held, sheet, per_row=6, seed=args.seed)
        print(json.dumps({"figure": "sheet", "path": str(sheet)}))
    name = "report.json" if args.only is None else f"report-{'-'.join(sorted(only))}.json"
    (out / name).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
