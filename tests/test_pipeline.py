"""MiniDallePipeline and sample.py on a tiny pipeline folder: sampling, scoring, checks, the CLI."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from minidalle import MiniDallePipeline
from minidalle.cli.sample import main as sample_main
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig
from minidalle.pipeline import check_prompts
from minidalle.pipeline.io import INDEX_NAME, load_pipeline_parts, save_pipeline
from minidalle.prior import Prior, PriorConfig
from minidalle.text import MAX_CAPTION_CHARS, encode_captions, train_text_tokenizer

SIZE, K, G, L = 16, 32, 4, 8
CAPTIONS = [
    "a small red circle in the top left",
    "a big blue square at the bottom right",
    "two green triangles next to a yellow star",
    "a purple hexagon above a small orange circle",
] * 4


def make_image_tokenizer(seed: int = 0, num_codes: int = K) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(
        DVAEConfig(image_size=SIZE, num_codes=num_codes, codebook_dim=8, widths=[8, 8], res_blocks=0)
    ).eval()


def make_prior(text_vocab_size: int, image_tokenizer_hash: str, num_image_codes: int = K, seed: int = 0) -> Prior:
    torch.manual_seed(seed)
    prior = Prior(
        PriorConfig(
            text_vocab_size=text_vocab_size,
            text_len=L,
            num_image_codes=num_image_codes,
            image_grid=G,
            dim=32,
            layers=2,
            heads=2,
            image_tokenizer_hash=image_tokenizer_hash,
        )
    )
    with torch.no_grad():  # sharper, caption-dependent distributions than a fresh init gives
        prior.image_head.weight.mul_(10)
        prior.token_emb.weight.mul_(10)
    return prior.eval()


@pytest.fixture(scope="module")
def parts():
    image_tokenizer = make_image_tokenizer()
    text_tokenizer = train_text_tokenizer(CAPTIONS, vocab_size=300, min_frequency=1)
    prior = make_prior(len(text_tokenizer), image_tokenizer.codes_hash())
    return image_tokenizer, text_tokenizer, prior


@pytest.fixture(scope="module")
def folder(parts, tmp_path_factory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("model") / "pipeline", *parts)


@pytest.fixture(scope="module")
def pipe(folder) -> MiniDallePipeline:
    return MiniDallePipeline.from_pretrained(folder, device="cpu")


def copy_of(folder: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(folder, out)
    return out


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


# --- the folder ------------------------------------------------------------------------------


def test_the_folder_holds_three_parts_and_an_index(folder, parts):
    image_tokenizer, _, prior = parts
    assert {p.name for p in folder.iterdir()} == {INDEX_NAME, "image_tokenizer", "text_tokenizer", "prior"}
    index = json.loads((folder / INDEX_NAME).read_text())
    assert index["image_tokenizer_hash"] == image_tokenizer.codes_hash()
    assert index["_class_name"] == "MiniDallePipeline"
    assert index["image_tokenizer"] == ["minidalle", "DiscreteVAE"] and index["prior"] == ["minidalle", "Prior"]
    assert (index["image_size"], index["image_grid"], index["num_image_codes"], index["text_len"]) == (SIZE, G, K, L)
    assert not list(folder.parent.glob(".pipeline.*"))  # the temporary folder is gone
    loaded_tok, _, loaded_prior = load_pipeline_parts(folder)
    assert loaded_tok.content_hash() == image_tokenizer.content_hash()
    assert loaded_prior.content_hash() == prior.content_hash()


def test_an_index_that_names_another_pipeline_class_is_refused(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    index = json.loads((copy / INDEX_NAME).read_text())
    (copy / INDEX_NAME).write_text(json.dumps({**index, "_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(UserError, match="StableDiffusionPipeline"):
        load_pipeline_parts(copy)
    (copy / INDEX_NAME).write_text("{not json")
    with pytest.raises(UserError, match="model_index.json"):
        load_pipeline_parts(copy)


# --- sampling --------------------------------------------------------------------------------


def test_sampling_gives_pil_images_of_the_right_size_and_count(pipe):
    out = pipe(["a red circle", "a blue square"], num_images_per_prompt=3, seed=0)
    assert len(out.images) == 6
    assert all(isinstance(im, Image.Image) and im.size == (SIZE, SIZE) and im.mode == "RGB" for im in out.images)
    assert out.prompts == ["a red circle"] * 3 + ["a blue square"] * 3
    assert out.codes.shape == (6, G * G)
    assert out.codes.min() >= 0 and out.codes.max() < K
    assert len(out.seeds) == 6
    # the images are the decoded codes
    decoded = MiniDallePipeline.to_pil(pipe.image_tokenizer.decode(out.codes))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(out.images, decoded))
    assert len(pipe("a green star").images) == 1  # one prompt as a plain string


def test_seeds_reproduce_and_differ(pipe):
    a = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, seed=5)
    b = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, seed=5)
    c = pipe(["a red circle", "a blue square"], num_images_per_prompt=2, seed=6)
    assert torch.equal(a.codes, b.codes)
    assert [im.tobytes() for im in a.images] == [im.tobytes() for im in b.images]
    assert not torch.equal(a.codes, c.codes)


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_each_images_seed_reproduces_it_alone_whatever_the_batch_size(pipe, batch_size):
    out = pipe(
        ["a red circle", "a blue square"], num_images_per_prompt=2, seed=10, batch_size=batch_size, temperature=1.0
    )
    assert out.seeds == [10, 11, 12, 13]
    for i in range(4):
        alone = pipe([out.prompts[i]], seed=out.seeds[i], temperature=1.0)
        assert torch.equal(alone.codes[0], out.codes[i]), i


@pytest.mark.parametrize("seed", [3000, 3900, 4500, 6700])
def test_each_images_own_seed_redraws_its_pixels_alone_too(tiny_pipeline_dir, seed):
    """Not only its codes: decoded in a batch, a convolution could round an image's pixel to the next level.

    These seeds are the ones where it did (one pixel, one level off) among 1,600 images swept on an AMD EPYC
    (Zen 3) at one thread when the pipeline decoded its batch at once; it now decodes one image at a time.
    """
    pipe = MiniDallePipeline.from_pretrained(tiny_pipeline_dir, device="cpu")
    out = pipe(["a red circle", "a blue square"], num_images_per_prompt=8, seed=seed, temperature=1.0)
    for i in range(16):
        alone = pipe([out.prompts[i]], seed=out.seeds[i], temperature=1.0)
        assert torch.equal(alone.codes[0], out.codes[i]), i
        assert alone.images[0].tobytes() == out.images[i].tobytes(), i


def test_no_seed_means_fresh_images_and_a_generator_makes_them_reproducible(pipe):
    runs = [pipe("a red circle", num_images_per_prompt=2, temperature=1.0) for _ in range(3)]
    assert len({tuple(r.seeds) for r in runs}) == 3  # each call drew its own seed
    assert not all(torch.equal(runs[0].codes, r.codes) for r in runs[1:])
    a = pipe("a red circle", num_images_per_prompt=2, temperature=1.0, generator=torch.Generator().manual_seed(5))
    b = pipe("a red circle", num_images_per_prompt=2, temperature=1.0, generator=torch.Generator().manual_seed(5))
    assert a.seeds == b.seeds and torch.equal(a.codes, b.codes)


def test_the_constructor_and_to_move_the_modules(pipe, monkeypatch):
    moved = []
    for module in (pipe.image_tokenizer, pipe.prior):
        real = module.to
        monkeypatch.setattr(
            module, "to", lambda device, real=real, module=module: (moved.append((module, device)), real(device))[1]
        )
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    assert moved == [(pipe.image_tokenizer, torch.device("cpu")), (pipe.prior, torch.device("cpu"))]
    moved.clear()
    rebuilt = MiniDallePipeline(pipe.image_tokenizer, pipe.text_tokenizer, pipe.prior, device="cpu")
    assert len(moved) == 2 and rebuilt.device == torch.device("cpu")


def test_batches_split_the_work_without_changing_the_count(pipe):
    out = pipe(["a red circle"], num_images_per_prompt=5, seed=0, batch_size=2)
    assert len(out.images) == 5
    assert len(out.seeds) == 5 and out.codes.shape == (5, G * G)


def test_completion_keeps_the_primed_rows(pipe):
    image = pipe("a red circle", seed=1).images[0]
    codes = pipe.image_tokenizer.encode(pipe._pixels(image)).flatten(1)
    out = pipe(["a blue square"], num_images_per_prompt=2, init_image=image, keep_rows=2, seed=3)
    assert torch.equal(out.codes[:, : 2 * G], codes[:, : 2 * G].expand(2, -1))
    full = pipe(["a blue square"], init_image=image, keep_rows=G, seed=3)  # every row kept: the reconstruction
    assert torch.equal(full.codes, codes)
    with pytest.raises(UserError, match="keep_rows"):
        pipe("a blue square", init_image=image, keep_rows=G + 1)


def test_bad_counts_are_user_errors(pipe):
    with pytest.raises(UserError, match="num_images_per_prompt"):
        pipe("a red circle", num_images_per_prompt=0)
    with pytest.raises(UserError, match="batch_size"):
        pipe("a red circle", batch_size=0)
    with pytest.raises(UserError, match="num_candidates"):
        pipe("a red circle", num_candidates=0)


def test_num_candidates_keeps_the_plain_sample_with_the_highest_pmi(parts):
    image_tokenizer, text_tokenizer, prior = parts
    image_tokenizer = copy.deepcopy(image_tokenizer)
    with torch.no_grad():  # livelier weights: decoded samples re-encode to varied codes (a fresh init gives one code)
        for p in image_tokenizer.parameters():
            p.mul_(3)
    pipe = MiniDallePipeline(image_tokenizer, text_tokenizer, prior)
    prompts = ["a red circle", "a blue square"]
    plain = pipe(prompts, num_images_per_prompt=2 * 3, seed=7, batch_size=4)
    ranked = pipe(prompts, num_images_per_prompt=2, num_candidates=3, seed=7, batch_size=4)
    pmi = torch.tensor([s["pmi"] for s in pipe.score(plain.images, plain.prompts)]).view(4, 3)
    best = (torch.arange(4) * 3 + pmi.argmax(1)).tolist()
    assert best != [0, 3, 6, 9]  # the ranking does pick other candidates than the first
    assert torch.equal(ranked.codes, plain.codes[best])
    assert [im.tobytes() for im in ranked.images] == [plain.images[i].tobytes() for i in best]
    assert ranked.prompts == [plain.prompts[i] for i in best] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert ranked.seeds == [plain.seeds[i] for i in best]
    assert ranked.scores == pytest.approx(pmi.max(1).values.tolist(), rel=1e-5)
    assert plain.scores is None
    # completion: every candidate keeps the primed rows, so the pick does too
    image = plain.images[0]
    primed = pipe.image_tokenizer.encode(pipe._pixels(image)).flatten(1)[:, :G]
    done = pipe(["a blue square"], num_images_per_prompt=2, num_candidates=3, init_image=image, keep_rows=1, seed=1)
    assert torch.equal(done.codes[:, :G], primed.expand(2, -1)) and done.scores is not None


def test_num_candidates_samples_once_where_every_candidate_would_be_the_same(pipe, monkeypatch):
    calls = []
    monkeypatch.setattr(MiniDallePipeline, "_score", lambda self, *a, **k: calls.append(a) or [])
    greedy = pipe(["a red circle"], num_images_per_prompt=2, temperature=0, num_candidates=4)
    assert greedy.scores is None and not calls and len(greedy.images) == 2
    assert torch.equal(greedy.codes, pipe(["a red circle"], num_images_per_prompt=2, temperature=0).codes)
    image = greedy.images[0]
    full = pipe(["a blue square"], init_image=image, keep_rows=G, num_candidates=4)
    assert full.scores is None and not calls and len(full.images) == 1


# --- reconstruct and score -------------------------------------------------------------------


def test_reconstruct_returns_pil_images(pipe):
    images = pipe("a red circle", num_images_per_prompt=2, seed=2).images
    recon = pipe.reconstruct(images)
    assert len(recon) == 2
    assert all(isinstance(im, Image.Image) and im.size == (SIZE, SIZE) for im in recon)
    pixels = torch.rand(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    expected = MiniDallePipeline.to_pil(pipe.image_tokenizer.decode(pipe.image_tokenizer.encode(pixels)))
    assert [im.tobytes() for im in pipe.reconstruct(pixels)] == [im.tobytes() for im in expected]
    assert len(pipe.reconstruct(images[0])) == 1  # one PIL image on its own
    big = images[0].resize((40, 40))  # any size is brought to the tokenizer's
    assert pipe.reconstruct(big)[0].size == (SIZE, SIZE)


def test_score_is_the_priors_image_nll(pipe):
    pixels = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    captions = ["a small red circle", "a big blue square 🎨"]
    results = pipe.score(pixels, captions)
    codes = pipe.image_tokenizer.encode(pixels).flatten(1)
    ids, _ = encode_captions(pipe.text_tokenizer, captions, L)
    nll = pipe.prior.image_nll(pipe.prior.text_tokens(ids, pipe.text_tokenizer.pad_token_id), codes)
    assert [r["caption"] for r in results] == captions
    for r, value in zip(results, nll.tolist()):
        assert r["log_prob"] == pytest.approx(-value, rel=1e-6)
        assert r["bits_per_dim"] == pytest.approx(value / (3 * SIZE * SIZE * math.log(2)), rel=1e-6)
        assert r["log_prob"] < 0 < r["bits_per_dim"]
    # one caption for many images is broadcast; a count mismatch is an error
    same = pipe.score(pixels, "a small red circle")
    assert [r["log_prob"] for r in same][0] == pytest.approx(results[0]["log_prob"], rel=1e-6)
    assert len(same) == 2
    with pytest.raises(UserError, match="2 images but 3 captions"):
        pipe.score(pixels, ["a", "b", "c"])
    # small batches give the same figures
    assert [r["log_prob"] for r in pipe.score(pixels, captions, batch_size=1)] == pytest.approx(
        [r["log_prob"] for r in results]
    )
    # pmi: how much the caption raises the likelihood over the empty caption
    uncond = pipe.prior.image_nll(pipe.prior.empty_text_tokens(2), codes)
    for r, value, cond in zip(results, uncond.tolist(), nll.tolist()):
        assert r["log_prob_unconditional"] == pytest.approx(-value, rel=1e-6)
        assert r["pmi"] == pytest.approx(value - cond, rel=1e-5, abs=1e-4)
    assert results[0]["pmi"] != pytest.approx(results[1]["pmi"])
    plain = pipe.score(pixels, captions, pmi=False)  # without the empty-caption pass
    assert [set(r) for r in plain] == [{"caption", "log_prob", "bits_per_dim"}] * 2
    assert [r["log_prob"] for r in plain] == pytest.approx([r["log_prob"] for r in results], rel=1e-6)


def test_rank_captions_sorts_by_log_prob(pipe):
    image = pipe("a red circle", seed=4).images[0]
    candidates = ["a small red circle", "a big blue square", "two green triangles", "a purple hexagon"]
    ranked = pipe.rank_captions(image, candidates)
    assert sorted(c for c, _ in ranked) == sorted(candidates)
    values = [v for _, v in ranked]
    assert values == sorted(values, reverse=True)
    assert len(set(values)) > 1  # the caption matters to this prior
    scores = {r["caption"]: r["log_prob"] for r in pipe.score([image] * 4, candidates)}
    for caption, value in ranked:
        assert value == pytest.approx(scores[caption], rel=1e-5)
    many = [f"{c} number {i}" for i in range(18) for c in candidates]  # 72: more than one batch of the prior
    scores = {r["caption"]: r["log_prob"] for r in pipe.score([image] * len(many), many)}
    ranked = pipe.rank_captions(image, many)
    assert len(ranked) == len(many) and all(v == pytest.approx(scores[c], rel=1e-5) for c, v in ranked)


# --- loading errors --------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["prior", "text_tokenizer", "image_tokenizer", INDEX_NAME])
def test_a_missing_part_is_a_user_error_naming_the_folder(folder, tmp_path, part):
    broken = copy_of(folder, tmp_path)
    target = broken / part
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(UserError, match=f"{re.escape(str(broken))}.*missing {part}"):
        MiniDallePipeline.from_pretrained(broken, device="cpu")


def test_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no-model"):
        MiniDallePipeline.from_pretrained(tmp_path / "no-model", device="cpu")


def test_a_prior_paired_with_another_image_tokenizer_is_a_user_error(folder, tmp_path):
    broken = copy_of(folder, tmp_path)
    other = make_image_tokenizer(seed=1)  # same shape, other weights: another content hash
    other.save_pretrained(broken / "image_tokenizer")
    with pytest.raises(UserError, match=f"{re.escape(str(broken))}.*trained with image tokenizer"):
        MiniDallePipeline.from_pretrained(broken, device="cpu")


def test_a_prior_for_another_codebook_size_is_a_user_error(parts, tmp_path):
    image_tokenizer, text_tokenizer, _ = parts
    prior = make_prior(len(text_tokenizer), image_tokenizer.codes_hash(), num_image_codes=K // 2)
    folder = save_pipeline(tmp_path / "wrong-k", image_tokenizer, text_tokenizer, prior)
    with pytest.raises(UserError, match=f"{re.escape(str(folder))}.*expects {K // 2} codes.*has {K}"):
        MiniDallePipeline.from_pretrained(folder, device="cpu")


def test_a_text_tokenizer_larger_than_the_priors_vocabulary_is_a_user_error(parts, tmp_path):
    image_tokenizer, text_tokenizer, _ = parts
    prior = make_prior(len(text_tokenizer) - 10, image_tokenizer.codes_hash())
    folder = save_pipeline(tmp_path / "small-vocab", image_tokenizer, text_tokenizer, prior)
    with pytest.raises(UserError, match=f"{re.escape(str(folder))}.*text tokenizer has {len(text_tokenizer)} tokens"):
        MiniDallePipeline.from_pretrained(folder, device="cpu")


# --- prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", "\t\n \x00 "])
def test_an_empty_prompt_is_a_user_error_naming_its_number(bad):
    with pytest.raises(UserError, match="prompt 2 is empty"):
        check_prompts(["a red circle", bad, "a blue square"])


def test_check_prompts_normalises_and_rejects(caplog):
    assert check_prompts("  a  red\ncircle ") == ["a red circle"]
    with pytest.raises(UserError, match="no prompts"):
        check_prompts([])
    with pytest.raises(UserError, match="prompt 1 is not text"):
        check_prompts([3])
    huge = "a red circle " * 800
    with caplog.at_level(logging.WARNING, logger="minidalle"):
        (checked,) = check_prompts([huge])
    assert len(checked) == MAX_CAPTION_CHARS
    assert any("prompt 1 has" in m for m in warnings_of(caplog))


def test_a_ten_thousand_character_prompt_is_truncated_with_a_warning_and_samples(pipe, caplog):
    huge = ("a small red circle in the top left " * 300)[:10_000]
    with caplog.at_level(logging.WARNING, logger="minidalle"):
        out = pipe([huge, "a blue square"], seed=0, num_images_per_prompt=2, num_candidates=3, batch_size=4)
    messages = warnings_of(caplog)
    assert any("10000 characters" in m for m in messages)
    # one warning for the one long prompt, not one per copy, sampling batch or scoring batch
    assert [m for m in messages if "longer than" in m] == [f"1 prompt(s) longer than {L} text tokens were truncated"]
    assert len(out.images) == 4 and out.images[0].size == (SIZE, SIZE)
    assert len(out.prompts[0]) == MAX_CAPTION_CHARS


@pytest.mark.parametrize("prompt", ["a 🎨 red 🦄 circle", "un cercle rouge près d'un carré bleu — très joli", "赤い丸"])
def test_emoji_and_non_ascii_prompts_sample(pipe, prompt):
    out = pipe(prompt, num_images_per_prompt=2, seed=0)
    assert len(out.images) == 2 and all(im.size == (SIZE, SIZE) for im in out.images)
    assert out.prompts == [prompt, prompt]


# --- sample.py -------------------------------------------------------------------------------


def read_manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text(encoding="utf-8").splitlines()]


def test_sample_main_writes_images_grids_and_a_manifest(folder, tmp_path):
    out = tmp_path / "samples"
    sample_main(
        [
            "a red circle",
            "a 🎨 blue square",
            "--model",
            str(folder),
            "--out",
            str(out),
            "--num_images",
            "2",
            "--seed",
            "3",
        ]
    )
    rows = read_manifest(out)
    assert [r["prompt"] for r in rows] == ["a red circle"] * 2 + ["a 🎨 blue square"] * 2
    assert [r["file"] for r in rows] == [
        "images/p000-i00.png",
        "images/p000-i01.png",
        "images/p001-i00.png",
        "images/p001-i01.png",
    ]
    assert len({r["seed"] for r in rows}) == 4  # each image records its own seed, which reproduces it alone
    for r in rows[:2]:
        again = MiniDallePipeline.from_pretrained(folder, device="cpu")(r["prompt"], seed=r["seed"])
        with Image.open(out / r["file"]) as im:
            assert again.images[0].tobytes() == im.convert("RGB").tobytes()
    for r in rows:
        with Image.open(out / r["file"]) as im:
            assert im.size == (SIZE, SIZE)
    for p in range(2):
        with Image.open(out / f"grid-p{p:03d}.png") as im:
            assert im.size == (2 * SIZE, SIZE)  # one row of the prompt's 2 images
    assert not (out / "grid-p002.png").exists()
    # the same command gives the same pictures as the pipeline, re-ranked among sample.py's default 8 candidates
    # (this tiny model's candidates mostly tie; the ranking itself is tested in test_num_candidates_keeps_...)
    expected = MiniDallePipeline.from_pretrained(folder, device="cpu")(
        ["a red circle", "a 🎨 blue square"], num_images_per_prompt=2, seed=3, num_candidates=8
    )
    assert all(r["num_candidates"] == 8 for r in rows)
    assert [r["pmi"] for r in rows] == pytest.approx(expected.scores, abs=1e-3)
    for r, image in zip(rows, expected.images):
        with Image.open(out / r["file"]) as im:
            assert im.convert("RGB").tobytes() == image.tobytes()
    # --num_candidates 1: no re-ranking, no score
    sample_main(
        [
            "a red circle",
            "--model",
            str(folder),
            "--out",
            str(tmp_path / "plain"),
            "--num_images",
            "2",
            "--seed",
            "3",
            "--num_candidates",
            "1",
        ]
    )
    plain = read_manifest(tmp_path / "plain")
    assert [(r["num_candidates"], r["pmi"]) for r in plain] == [(1, None), (1, None)]
    unranked = MiniDallePipeline.from_pretrained(folder, device="cpu")("a red circle", num_images_per_prompt=2, seed=3)
    for r, image in zip(plain, unranked.images):
        with Image.open(tmp_path / "plain" / r["file"]) as im:
            assert im.convert("RGB").tobytes() == image.tobytes()


def test_sample_main_compile_gives_the_eager_pictures(folder, tmp_path, cxx_compiler):
    from torch._dynamo.utils import counters

    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    for out, extra in ((eager, []), (compiled, ["--compile"])):
        graphs = counters["stats"]["unique_graphs"]
        sample_main(
            [
                "a red circle",
                "--model",
                str(folder),
                "--out",
                str(out),
                "--num_images",
                "3",
                "--temperature",
                "0",
                *extra,
            ]
        )
        assert (counters["stats"]["unique_graphs"] > graphs) == bool(extra)  # --compile, and only it, compiles
    for r in read_manifest(eager):
        with Image.open(eager / r["file"]) as a, Image.open(compiled / r["file"]) as b:
            assert a.tobytes() == b.tobytes()


def test_compile_pads_a_short_last_batch_to_one_shape(pipe, cxx_compiler):
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    out = pipe(
        ["a red circle", "a blue square", "a green circle"],
        batch_size=2,
        guidance_scale=1.0,
        temperature=0,
        compile=True,
    )
    assert counters["stats"]["unique_graphs"] == graphs + 1  # batches of 2 and 1 (padded to 2): one compiled shape
    assert len(out.images) == 3 and out.prompts == ["a red circle", "a blue square", "a green circle"]
    eager = pipe(["a red circle", "a blue square", "a green circle"], batch_size=2, guidance_scale=1.0, temperature=0)
    assert torch.equal(out.codes, eager.codes)


def test_compile_without_a_cpp_compiler_is_a_user_error(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler on it
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(UserError, match="C\\+\\+ compiler.*--compile"):
        sample_main(["a red circle", "--model", str(folder), "--out", str(tmp_path / "x"), "--compile"])


def test_sample_main_reads_a_prompts_file(folder, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n   \na green star  \n", encoding="utf-8")
    out = tmp_path / "samples"
    sample_main(
        [
            "a blue square",
            "--prompts_file",
            str(prompts),
            "--model",
            str(folder),
            "--out",
            str(out),
            "--num_images",
            "1",
        ]
    )
    rows = read_manifest(out)
    assert [r["prompt"] for r in rows] == ["a blue square", "a red circle", "a green star"]
    assert all((out / r["file"]).is_file() for r in rows)
    assert sorted(p.name for p in out.glob("grid-*.png")) == ["grid-p000.png", "grid-p001.png", "grid-p002.png"]


def test_sample_main_without_prompts_is_a_user_error(folder, tmp_path):
    with pytest.raises(UserError, match="at least one prompt"):
        sample_main(["--model", str(folder), "--out", str(tmp_path / "x")])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match="at least one prompt"):
        sample_main(["--prompts_file", str(empty), "--model", str(folder), "--out", str(tmp_path / "y")])
    with pytest.raises(UserError, match="no such file"):
        sample_main(
            ["--prompts_file", str(tmp_path / "nope.txt"), "--model", str(folder), "--out", str(tmp_path / "z")]
        )
    with pytest.raises(UserError, match="prompt 1 is empty"):
        sample_main(["   ", "--model", str(folder), "--out", str(tmp_path / "w")])
    with pytest.raises(UserError, match="--num_images"):
        sample_main(["a red circle", "--model", str(folder), "--out", str(tmp_path / "v"), "--num_images", "0"])


# --- export-pipeline --------------------------------------------------------------------------


def test_export_in_float16_loads_and_samples(folder, tmp_path):
    from minidalle.pipeline.io import export_pipeline

    out = export_pipeline(folder, tmp_path / "small", "float16")
    size = lambda d: sum(f.stat().st_size for f in d.rglob("*.safetensors"))  # noqa: E731
    assert size(out) < 0.6 * size(folder)
    pipe = MiniDallePipeline.from_pretrained(out, device="cpu")
    assert len(pipe(["a red circle"], num_images_per_prompt=2).images) == 2


def test_export_swaps_in_a_decoder_finetuned_tokenizer_but_refuses_another(folder, parts, tmp_path):
    from minidalle.pipeline.io import export_pipeline

    tuned = make_image_tokenizer()
    with torch.no_grad():
        for p in tuned.decoder.parameters():
            p.add_(0.01)
    tuned.save_pretrained(tmp_path / "tuned")
    out = export_pipeline(folder, tmp_path / "swapped", "float32", tmp_path / "tuned")
    image_tokenizer, _, _ = load_pipeline_parts(out)
    assert image_tokenizer.content_hash() == tuned.content_hash()
    make_image_tokenizer(seed=1).save_pretrained(tmp_path / "other")
    with pytest.raises(UserError, match="image tokenizer"):
        export_pipeline(folder, tmp_path / "bad", "float32", tmp_path / "other")


def test_numpy_images_score_like_pil_images(pipe):
    import numpy as np

    image = pipe(["a red circle"], num_images_per_prompt=1).images[0]
    as_array = np.asarray(image)
    assert pipe.score([as_array], ["a red circle"])[0]["log_prob"] == pytest.approx(
        pipe.score([image], ["a red circle"])[0]["log_prob"]
    )
    assert pipe.rank_captions(as_array, ["a red circle", "a blue square"]) == pipe.rank_captions(
        image, ["a red circle", "a blue square"]
    )


# --- minidalle score ---------------------------------------------------------------------------


def test_score_cli_prints_log_prob_bits_and_pmi_or_a_ranking(folder, pipe, tmp_path, capsys):
    from minidalle.cli.score import score_main

    image = pipe("a red circle", seed=4).images[0]
    image.save(tmp_path / "a.png")
    score_main([str(tmp_path / "a.png"), "--caption", "a red circle", "--model", str(folder), "--json"])
    printed = json.loads(capsys.readouterr().out)
    (expected,) = pipe.score([image], ["a red circle"])
    assert printed["image"] == str(tmp_path / "a.png")
    for key in ("log_prob", "bits_per_dim", "log_prob_unconditional", "pmi"):
        assert printed[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-5)
    score_main(
        [str(tmp_path / "a.png"), "--candidates", "a blue square|a red circle", "--model", str(folder), "--json"]
    )
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    assert [r["caption"] for r in ranking] == [
        c for c, _ in pipe.rank_captions(image, ["a blue square", "a red circle"])
    ]
    with pytest.raises(UserError, match="either --caption or --candidates"):
        score_main([str(tmp_path / "a.png"), "--model", str(folder)])
    with pytest.raises(UserError, match="missing.png: no such image file"):
        score_main([str(tmp_path / "missing.png"), "--caption", "a red circle", "--model", str(folder)])
