"""The bench scripts' own logic, without their long runs: every row of the stage-1 comparison is a command line
train_tokenizer.py accepts, with its schedules at the stated fractions of its step budget, and the CPU minutes
of a resumed run count every segment."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from minidalle.cli.args import parse_args
from minidalle.cli.train import train_tokenizer_main

ROOT = Path(__file__).resolve().parents[1]


def bench_module(name: str):
    """A script of bench/ imported as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def compare():
    return bench_module("compare_tokenizers")


@pytest.mark.parametrize("dataset", ["emoji", "shapes"])
def test_every_comparison_row_is_a_valid_train_tokenizer_command(compare, dataset, monkeypatch):
    monkeypatch.chdir(ROOT)  # rows name their recipes relative to the repository
    steps = 1000
    for name, row in compare.ROWS.items():
        flags = compare.row_flags(name, dataset, steps, "no") + ["--output_dir", "unused"]
        data_args, args, own, _ = parse_args(train_tokenizer_main.dataclass_types, flags)
        assert args.max_steps == steps and args.mixed_precision == "no" and args.seed == 0, name
        for key, fraction in row.get("fractions", {}).items():
            value = getattr(args, key, None)
            value = getattr(own, key) if value is None else value
            assert value == int(fraction * steps), (name, key, value)
        assert data_args.data == compare.DATASETS[dataset][1], name
    # the quantizers are the rows' own: the table's labels say what was trained
    parsed = {
        n: parse_args(train_tokenizer_main.dataclass_types, compare.row_flags(n, dataset, steps))[2]
        for n in compare.ROWS
    }
    assert parsed["dvae"].quantizer == parsed["dvae_gan"].quantizer == "gumbel"
    assert (
        parsed["fsq_gan"].quantizer == parsed["fsq_no_gan"].quantizer == "fsq" and parsed["vq_l2_gan"].quantizer == "vq"
    )
    assert parsed["fsq_no_gan"].disc_weight == 0 and parsed["fsq_no_perceptual"].perceptual_weight == 0
    assert parsed["fsq_gan_16x16"].widths != parsed["fsq_gan"].widths


def test_cpu_minutes_add_up_the_segments_of_a_resumed_run(compare, tmp_path):
    # cpu_time restarts at 0 when a run resumes: 120 s before the kill, then 60 s more
    log = [{"step": 50, "cpu_time": 60.0}, {"step": 100, "cpu_time": 120.0}, {"step": 150, "cpu_time": 30.0}]
    log.append({"step": 200, "cpu_time": 60.0})
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    assert compare.cpu_minutes(tmp_path) == 3.0


@pytest.fixture(scope="module")
def eval_emoji():
    return bench_module("eval_emoji_model")


def test_the_sampling_tune_keeps_the_models_settings_unless_a_cell_beats_them_significantly(eval_emoji):
    def cell(guidance, scores):
        return {"settings": {"guidance_scale": guidance, "temperature": 0.7}, "scores": scores}

    own = {"guidance_scale": 3.0, "temperature": 0.7}
    base = [0.0, 0.5, 1.0, 0.5] * 25  # 100 prompts
    # the best cell by mean is 2 prompts of 100 better: noise, the model's own settings stay
    lucky = [cell(3.0, base), cell(1.5, base[:98] + [1.0, 1.0]), cell(5.0, base)]
    chosen, why = eval_emoji.choose_settings(lucky, own)
    assert chosen["guidance_scale"] == 3.0 and why["best"]["guidance_scale"] == 1.5
    assert 1.95 < why["z"] < 1.97  # two challengers share the one-sided 5%: 2.5% each
    # better on every prompt where the model's own settings were wrong: chosen
    better = [cell(3.0, base), cell(5.0, [min(1.0, s + 0.5) for s in base])]
    chosen, why = eval_emoji.choose_settings(better, own)
    assert chosen["guidance_scale"] == 5.0 and why["advantage"] > why["z"] * why["advantage_se"]
    with pytest.raises(ValueError, match="must be a cell"):
        eval_emoji.choose_settings(lucky, {"guidance_scale": 9.0, "temperature": 0.7})


def test_caption_ranking_names_the_style_and_the_concept_and_skips_the_concepts_when_asked(eval_emoji, tmp_path):
    from PIL import Image

    from minidalle.data.emoji_styles.export import parse_caption

    rows = [{"concept": c, "style": s} for c in ("dog-face", "red-apple", "rocket") for s in ("noto", "twemoji")]
    (tmp_path / "zeroshot" / "images").mkdir(parents=True)
    with open(tmp_path / "zeroshot" / "metadata.jsonl", "w") as f:
        for i, (concept, style) in enumerate((("dog-face", "noto"), ("rocket", "twemoji"))):
            Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / "zeroshot" / "images" / f"{i}.png")
            f.write(json.dumps({"file_name": f"images/{i}.png", "concept": concept, "style": style}) + "\n")

    class Pipe:  # ranks the noto caption first, then the captions in the order given
        calls = 0

        def rank_captions(self, image, captions):
            Pipe.calls += 1
            return sorted(((c, 0.0) for c in captions), key=lambda c: parse_caption(c[0])[1] != "noto")

    full = eval_emoji.rank_figures(Pipe(), tmp_path, rows, seed=0, num_concepts=3)
    assert full["images"] == 2 and full["style_among_styles"] == 0.5 and full["styles"] == 2
    assert full["concept_top1"] == 1.0 and full["concept_top5"] == 1.0 and Pipe.calls == 4  # the right one first
    Pipe.calls = 0
    styles_only = eval_emoji.rank_figures(Pipe(), tmp_path, rows, seed=0, num_concepts=0)
    assert styles_only == {"images": 2, "style_among_styles": 0.5, "styles": 2} and Pipe.calls == 2


def test_the_rerank_figure_judges_every_candidate_under_each_way_of_keeping_one(eval_emoji):
    from PIL import Image

    from minidalle.data.emoji_styles.export import caption, parse_caption

    prompts = [caption("dog-face", "noto"), caption("rocket", "twemoji")]
    n = 4  # candidate j of prompt i is a solid image: red 40 j, green 40 i

    def where(image_or_tensor) -> tuple[int, int]:
        pixel = (
            image_or_tensor.getpixel((0, 0)) if isinstance(image_or_tensor, Image.Image) else image_or_tensor[:, 0, 0]
        )
        return int(pixel[1]) // 40, int(pixel[0]) // 40

    class Pipe:
        def __call__(self, prompts, num_images_per_prompt, num_candidates, seed, batch_size, **settings):
            assert num_candidates == 1 and num_images_per_prompt == n and settings["guidance_scale"] == 3.0
            flat = [(i, p) for i, p in enumerate(prompts) for _ in range(n)]
            images = [Image.new("RGB", (8, 8), (40 * (k % n), 40 * i, 0)) for k, (i, _) in enumerate(flat)]
            return type("Out", (), {"images": images, "prompts": [p for _, p in flat]})()

        def score(self, images, captions, batch_size=64, pmi=True):
            rows = []
            for image, text in zip(images, captions):
                i, j = where(image)
                own = parse_caption(text)[1] == parse_caption(prompts[i])[1]
                # pmi highest for candidate 1 of prompt 0 and 3 of prompt 1; own caption likeliest for candidate 2
                rows.append({"pmi": float(j == (1, 3)[i]), "log_prob": float(own and j == 2)})
            return rows

    class Judges:  # style right for candidate 1 only, subgroup right for candidates 0 and 1
        styles = ["noto", "twemoji"]
        concept_subgroup = {"dog-face": "animal-mammal", "rocket": "transport-air"}

        def predict(self, images):
            said = [where(x) for x in images]
            own = [parse_caption(prompts[i]) for i, _ in said]
            style = [s if j == 1 else next(o for o in self.styles if o != s) for (_, j), (_, s) in zip(said, own)]
            subgroup = [self.concept_subgroup[c] if j < 2 else "other" for (_, j), (c, _) in zip(said, own)]
            return style, subgroup

    sampling = {"guidance_scale": 3.0, "temperature": 0.7, "top_k": 0, "top_p": 1.0, "num_candidates": n}
    row = eval_emoji.rerank_figures(Pipe(), prompts, Judges(), seed=0, batch_size=8, sampling=sampling)
    assert row["prompts"] == 2 and row["candidates"] == n
    assert row["highest_pmi"] == {"style": 0.5, "subgroup": 0.5}
    assert row["one_candidate"] == {"style": 0.25, "subgroup": 0.5}
    assert row["highest_style_posterior"] == {"style": 0.0, "subgroup": 0.0}
    assert row["any_candidate"] == {"style": 1.0, "subgroup": 1.0}
    assert row["any_of_the_first"] == {1: {"style": 0.0, "subgroup": 1.0}, 2: {"style": 1.0, "subgroup": 1.0}}
    assert row["highest_pmi_minus_one"]["style"]["mean"] == 0.25  # (1 - 1/4) and (0 - 1/4), averaged
    assert row["highest_pmi_minus_one"]["subgroup"]["mean"] == 0.0


def test_the_style_probe_reads_what_the_codes_hold_and_not_what_they_do_not():
    import torch

    probe = bench_module("style_in_codes")
    levels = [4, 3, 3]
    front = probe.CodeInput(36, levels)
    codes = torch.randint(0, 36, (2, 4, 4))
    onehot = front(codes)  # one channel per level of each digit, exactly one of each digit's set
    assert onehot.shape == (2, 10, 4, 4) and onehot[:, :4].sum(1).eq(1).all() and onehot[:, 7:].sum(1).eq(1).all()
    radix = torch.tensor([1, 4, 12])
    digits = torch.stack([onehot[:, :4].argmax(1), onehot[:, 4:7].argmax(1), onehot[:, 7:].argmax(1)], -1)
    assert torch.equal((digits * radix).sum(-1), codes)

    torch.manual_seed(0)
    n = 384
    # the label is every cell's middle digit (the other two are random): held in the codes, readable by the probe
    held = {s: torch.randint(0, 3, (n,)) for s in ("train", "test")}
    codes = {
        s: torch.randint(0, 4, (n, 4, 4)) + 4 * y[:, None, None] + 12 * torch.randint(0, 3, (n, 4, 4))
        for s, y in held.items()
    }
    # a label drawn independently of the codes: the probe may memorise train, but not predict test
    noise = {s: torch.randint(0, 3, (n,)) for s in codes}
    args = type("Args", (), {"epochs": 8})()
    read = probe.train_probe(codes, held, probe.CodeInput(36, levels), 10, 3, args, seed=0)
    guess = probe.train_probe(codes, noise, probe.CodeInput(36, levels), 10, 3, args, seed=0)
    assert read["test"] > 0.9
    assert guess["test"] < 0.5
