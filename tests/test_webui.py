"""The web page's request handlers without a browser (and without Gradio): seeds, validation, concurrency.

The browser drives the same handlers in tests/test_webui_browser.py.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minidalle.cli import main as cli_main
from minidalle.cli.sample import main as sample_main
from minidalle.errors import UserError
from minidalle.pipeline import BUNDLED_MODELS, DEFAULT_MODEL
from minidalle.webui import (
    PAGE_TEXT,
    Handlers,
    Limits,
    SamplingSettings,
    WarmSampler,
    load_models,
    resolve_models,
    warm_up_all,
)
from minidalle.webui.handlers import friendly, open_upload
from minidalle.webui.models import page_text
from minidalle.webui.server import check_address

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def handlers(tiny_pipeline_dir) -> Handlers:
    return Handlers(load_models(resolve_models([str(tiny_pipeline_dir)]), device="cpu"))


@pytest.fixture(scope="module")
def name(handlers) -> str:
    return next(iter(handlers.models))


def generate(
    handlers, name, prompt=PROMPT, images=2, guidance=1.5, temperature=0.3, top_k=0, top_p=1.0, cands=8, seed=""
):
    return friendly(([],))(handlers.generate)(name, prompt, images, guidance, temperature, top_k, top_p, cands, seed)


def pixels(items) -> list[np.ndarray]:
    return [np.asarray(image) for image, _ in items]


def test_a_fixed_seed_gives_the_images_of_sample_py(handlers, name, tiny_pipeline_dir, tmp_path):
    """The page's defaults are sample.py's; with --seed 5 both give the same pictures, seeds and prompts."""
    for extra, settings in (
        ([], (1.5, 0.3, 0, 1.0, 8)),
        (["--temperature", "1", "--top_k", "5"], (1.5, 1.0, 5, 1.0, 8)),
    ):
        out = tmp_path / f"samples{len(extra)}"
        sample_main(
            [PROMPT, "a blue square", "--model", str(tiny_pipeline_dir), "--seed", "5", "--num_images", "3"]
            + ["--out", str(out), *extra]
        )
        items, status = generate(handlers, name, f"{PROMPT}\na blue square", 3, *settings[:4], settings[4], "5")
        assert "seed 5" in status and "⚠️" not in status
        manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
        assert len(items) == len(manifest) == 6
        for (image, caption), row in zip(items, manifest):
            assert np.array_equal(np.asarray(image), np.asarray(Image.open(out / row["file"]).convert("RGB")))
            assert caption == f"seed {row['seed']} · {row['prompt']}"


class EagerAsIfCompiled:
    """The pipeline, with `compile=True` ignored: the sampler's padding to warm batch sizes, without a compiler."""

    def __init__(self, pipe) -> None:
        self.pipe = pipe
        self.batch_sizes: list[int] = []

    def __call__(self, prompts, compile=False, **kwargs):
        self.batch_sizes.append((len(prompts), compile))
        return self.pipe(prompts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.pipe, name)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_padding_each_batch_to_a_warm_size_changes_no_image(handlers, name, guidance):
    pipe = handlers.models[name].pipe
    sampler = WarmSampler(EagerAsIfCompiled(pipe), batch_size=4)
    sampler.warm_steps = {4 * (2 if guidance != 1 else 1)}  # as if warm_up had compiled batches of 4 rows
    settings = SamplingSettings(num_images_per_prompt=3, guidance_scale=guidance, temperature=1.0, num_candidates=2)
    got = sampler([PROMPT, "a blue square"], settings, seed=11)  # 12 rows: 4 + 4 + 4
    want = pipe(
        [PROMPT, "a blue square"],
        num_images_per_prompt=3,
        guidance_scale=guidance,
        temperature=1.0,
        num_candidates=2,
        seed=11,
    )
    assert torch.equal(got.codes, want.codes) and got.seeds == want.seeds and got.prompts == want.prompts
    assert got.scores == pytest.approx(want.scores, abs=1e-6)
    assert sampler.pipe.batch_sizes == [(4, True)] * 3
    sampler.pipe.batch_sizes.clear()
    one_row = SamplingSettings(num_images_per_prompt=1, num_candidates=1, guidance_scale=guidance)
    one = sampler([PROMPT], one_row, seed=3)  # 1 row -> padded to 4
    assert sampler.pipe.batch_sizes == [(4, True)]
    assert torch.equal(one.codes, pipe([PROMPT], guidance_scale=guidance, seed=3).codes)
    # a completion keeps the top rows of the image's codes and pads the same way
    image = pipe([PROMPT], seed=1).images[0]
    two = SamplingSettings(num_images_per_prompt=2, num_candidates=1, guidance_scale=guidance)
    done = sampler([PROMPT], two, seed=4, init_image=image, keep_rows=3)
    want = pipe([PROMPT], num_images_per_prompt=2, guidance_scale=guidance, seed=4, init_image=image, keep_rows=3)
    assert torch.equal(done.codes, want.codes)


def test_a_batch_too_large_for_every_warm_size_runs_eagerly(handlers, name):
    sampler = WarmSampler(EagerAsIfCompiled(handlers.models[name].pipe), batch_size=8)
    sampler.warm_steps = {4}
    sampler([PROMPT], SamplingSettings(num_images_per_prompt=3, num_candidates=1, guidance_scale=1.0), seed=0)
    sampler([PROMPT], SamplingSettings(num_images_per_prompt=5, num_candidates=1, guidance_scale=1.0), seed=0)
    assert sampler.pipe.batch_sizes == [(4, True), (5, False)]


def test_two_requests_at_once_get_their_own_reproducible_images(handlers, name):
    alone = {
        seed: pixels(generate(handlers, name, images=4, cands=2, temperature=1.0, seed=str(seed))[0]) for seed in (1, 2)
    }
    assert not all(np.array_equal(a, b) for a, b in zip(alone[1], alone[2]))
    results, start = {}, threading.Barrier(4)

    def request(seed: int, slot: int) -> None:
        start.wait()
        results[slot] = (seed, pixels(generate(handlers, name, images=4, cands=2, temperature=1.0, seed=str(seed))[0]))

    threads = [threading.Thread(target=request, args=(1 + slot % 2, slot)) for slot in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for seed, images in results.values():
        assert all(np.array_equal(a, b) for a, b in zip(images, alone[seed]))


def test_an_empty_seed_draws_a_fresh_one_that_is_shown_and_redraws_the_images(handlers, name):
    first, status = generate(handlers, name, images=2, temperature=1.0)
    seed = int(status.split("seed ")[1].split()[0])
    again, status_again = generate(handlers, name, images=2, temperature=1.0, seed=f" {seed} ")
    assert f"seed {seed}" in status_again
    assert all(np.array_equal(a, b) for a, b in zip(pixels(first), pixels(again)))
    assert [c for _, c in first] == [c for _, c in again]
    # one image's own seed, with 1 candidate, redraws that image alone
    own = int(first[1][1].removeprefix("seed "))
    (alone,), _ = generate(handlers, name, images=1, temperature=1.0, cands=1, seed=str(own))
    assert np.array_equal(np.asarray(alone[0]), pixels(first)[1])


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(prompt=""), "Type a prompt first"),
        (dict(prompt="  \n\t\n "), "Type a prompt first"),
        (dict(prompt="x" * 10_000), "Prompt 1 has 10,000 characters; the limit is 2,000"),
        (dict(prompt="\n".join(["a red circle"] * 9)), "9 prompts given; the page takes at most 8"),
        (dict(images=0), "Images per prompt must be between 1 and 16; got 0"),
        (dict(images=17), "Images per prompt must be between 1 and 16; got 17"),
        (dict(images=2.5), "Images per prompt must be a whole number; got 2.5"),
        (dict(images=None), "Images per prompt: give a number between 1 and 16"),
        (dict(images="4"), "Images per prompt: give a number"),
        (dict(guidance=0.5), "Guidance must be between 1 and 10; got 0.5"),
        (dict(guidance=float("nan")), "Guidance: give a number"),
        (dict(temperature=-1), "Temperature must be between 0 and 2; got -1"),
        (dict(top_k=10**6), "Top-k must be between 0 and 16; got 1000000"),
        (dict(top_p=0), "Top-p must be between 0.01 and 1; got 0"),
        (dict(cands=17), "Candidates per image must be between 1 and 16"),
        (dict(images=16, cands=16, prompt="a\nb"), "That asks for 512 samples"),
        (dict(seed="-5"), "Seed must be between 0 and 2147483647; got -5"),
        (dict(seed="lucky"), "Seed must be a whole number"),
        (dict(seed=str(2**40)), "Seed must be between 0 and 2147483647"),
    ],
)
def test_bad_generate_input_is_a_message_never_a_trace(handlers, name, change, message):
    items, status = generate(handlers, name, **change)
    assert items == [] and status.startswith("⚠️ ") and message in status, status
    assert "Traceback" not in status


def test_an_unknown_model_is_named(handlers):
    _, status = generate(handlers, "no-such-model")
    assert status.startswith("⚠️ No model named 'no-such-model'")


@pytest.fixture(scope="module")
def uploads(tmp_path_factory):
    root = tmp_path_factory.mktemp("uploads")
    Image.new("RGB", (40, 30), (200, 40, 40)).save(root / "red.png")
    Image.new("1", (10_000, 5_000)).save(root / "50mp.png")  # 50 megapixels, a few kB on disk
    (root / "notes.png").write_text("not an image\n")
    data = (root / "red.png").read_bytes()
    (root / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("RGBA", (20, 20), (0, 0, 255, 128)).save(root / "rgba.png")
    Image.new("RGB", (20, 20)).save(root / "small.jpg")
    return root


@pytest.mark.parametrize(
    "file, message",
    [
        (None, "Upload an image first"),
        ("notes.png", "That file is not an image this page can read"),
        ("50mp.png", "The image is 10,000×5,000 pixels (50.0 megapixels); the limit is 16 megapixels"),
        ("cut.png", "damaged or cut short"),
    ],
)
def test_a_bad_upload_is_a_message_in_the_score_and_complete_tabs(handlers, name, uploads, file, message):
    path = str(uploads / file) if file else None
    rows, seen, status = friendly(([], None))(handlers.score)(name, path, "a red circle")
    assert (rows, seen) == ([], None) and status.startswith("⚠️ ") and message in status, status
    kept, items, status = friendly((None, []))(handlers.complete)(name, path, PROMPT, 4, 2, 1.5, 0.3, 1, "1")
    assert (kept, items) == (None, []) and message in status, status


def test_an_upload_over_the_byte_limit_is_refused_before_it_is_read(uploads):
    with pytest.raises(UserError, match="larger than 0 MB"):
        open_upload(str(uploads / "red.png"), Limits(max_upload_bytes=10), 64)


@pytest.mark.parametrize("file", ["red.png", "rgba.png", "small.jpg"])
def test_score_ranks_captions_by_pmi(handlers, name, uploads, file):
    rows, seen, status = handlers.score(name, str(uploads / file), "a red circle\n\na blue square\na green square")
    assert [r[0] for r in rows] == [1, 2, 3] and sorted(r[1] for r in rows) == [
        "a blue square",
        "a green square",
        "a red circle",
    ]
    assert [r[2] for r in rows] == sorted((r[2] for r in rows), reverse=True)  # pmi, best first
    pipe = handlers.models[name].pipe
    expected = pipe.score([open_upload(str(uploads / file), Limits(), 32)], [rows[0][1]])[0]
    assert rows[0][2] == pytest.approx(expected["pmi"], abs=0.01)
    assert rows[0][3] == pytest.approx(expected["log_prob"], abs=0.01)
    assert seen.size == (32, 32) and "3 caption(s) scored" in status


def test_complete_keeps_the_top_rows_and_matches_the_pipeline(handlers, name, uploads):
    kept, items, status = handlers.complete(name, str(uploads / "red.png"), PROMPT, 3, 2, 1.5, 1.0, 1, "9")
    pipe = handlers.models[name].pipe
    image = open_upload(str(uploads / "red.png"), Limits(), 32)
    want = pipe([PROMPT], num_images_per_prompt=2, temperature=1.0, seed=9, init_image=image, keep_rows=3)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(pixels(items), want.images))
    assert kept.size == (32, 32) and "top 3 of 8 rows" in status and "seed 9" in status
    _, _, status = friendly((None, []))(handlers.complete)(name, str(uploads / "red.png"), PROMPT, 9, 2, 1.5, 1, 1, "")
    assert "Rows of codes kept must be between 0 and 8; got 9" in status


def test_an_unexpected_error_is_one_line_and_the_trace_goes_to_the_log(caplog):
    def broken(*_):
        raise RuntimeError("deep inside")

    with caplog.at_level(logging.ERROR, logger="minidalle"):
        items, status = friendly(([],))(broken)()
    assert items == [] and status == "⚠️ Something went wrong on the server (RuntimeError); its log has the details."
    assert "deep inside" in caplog.text and "Traceback" in caplog.text


# --- start-up: models, address, compilation ---------------------------------------------------------------


def test_models_are_bundled_names_or_pipeline_folders(tiny_pipeline_dir, tmp_path, monkeypatch):
    assert list(resolve_models([])) == ["shapes", "emoji"]
    # a bundled model missing from the installation is not offered by default
    monkeypatch.setitem(BUNDLED_MODELS, "emoji", tmp_path / "x")
    assert list(resolve_models([])) == ["shapes"]
    monkeypatch.undo()
    both = resolve_models(["shapes", "default", str(tiny_pipeline_dir)])
    assert both == {"shapes": DEFAULT_MODEL, "default": DEFAULT_MODEL, str(tiny_pipeline_dir): tiny_pipeline_dir}
    # the bundled model's examples follow its folder, whatever name it was asked by; a folder's get none
    assert page_text(both["default"]) is PAGE_TEXT["shapes"] and page_text(tiny_pipeline_dir) is None
    # names are read as sample.py reads them: a folder named like a bundled model that holds one is taken
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_pipeline_dir, tmp_path / "emoji")
    assert resolve_models(["emoji"]) == {"emoji": Path("emoji")}
    with pytest.raises(UserError, match=r"--model nope: no such model folder, and no bundled model .*shapes"):
        resolve_models(["nope"])
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(UserError, match="not a pipeline folder"):
        resolve_models([str(tmp_path / "f.txt")])
    with pytest.raises(UserError, match="not a pipeline folder"):
        resolve_models([str(tmp_path)])


def test_a_host_other_machines_reach_needs_allow_remote(capsys):
    check_address("127.0.0.1", 0, allow_remote=False)
    check_address("localhost", 0, allow_remote=False)
    with pytest.raises(UserError, match="--host 0.0.0.0 would let other machines use the page.*--allow_remote"):
        check_address("0.0.0.0", 0, allow_remote=False)
    check_address("0.0.0.0", 0, allow_remote=True)
    with pytest.raises(SystemExit) as stop:  # the command says so before loading any model
        cli_main(["serve", "--host", "192.168.1.5"])
    assert stop.value.code == 2 and "--allow_remote" in capsys.readouterr().err


def test_a_port_in_use_is_named_before_anything_loads():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"--port {port}: cannot listen on 127.0.0.1:{port}"):
            check_address("127.0.0.1", port, allow_remote=False)


def test_without_a_compiler_sampling_is_eager_with_one_log_line(handlers, name, monkeypatch, caplog):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda _: None)
    monkeypatch.delenv("CXX", raising=False)
    sampler = WarmSampler(handlers.models[name].pipe)
    with caplog.at_level(logging.INFO, logger="minidalle"):
        warm_up_all([sampler], compile=True)
    assert sampler.warm_steps == set()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "sampling runs eagerly" in warnings[0].getMessage()
    assert "C++ compiler" in warnings[0].getMessage()


def test_the_page_builds_with_its_three_tabs(handlers):
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    from minidalle.webui.app import build_app

    app = build_app(handlers, concurrency=2)
    config = app.get_config_file()
    labels = {c.get("props", {}).get("label") for c in config["components"]}
    assert {"Generate", "Score", "Complete"} <= labels
    assert {d["api_name"] for d in config["dependencies"]} >= {"generate", "score", "complete"}


def test_the_sliders_start_at_and_follow_each_models_own_settings(tiny_pipeline_dir, tmp_path):
    """A model folder's sampling settings (model_index.json) are where the sliders start and where picking that
    model moves them; a folder without them gets the library's."""
    pytest.importorskip("gradio", reason="the ui extra is not installed")
    from minidalle.pipeline import SAMPLING_DEFAULTS
    from minidalle.pipeline.io import load_pipeline_parts, save_pipeline
    from minidalle.webui.app import build_app

    own = {"guidance_scale": 2.5, "temperature": 0.7, "top_k": 5, "num_candidates": 2}
    own_dir = save_pipeline(tmp_path / "own", *load_pipeline_parts(tiny_pipeline_dir), own)
    handlers = Handlers(load_models(resolve_models([str(own_dir), str(tiny_pipeline_dir)]), device="cpu"))
    app = build_app(handlers)
    values = {c["props"].get("elem_id"): c["props"].get("value") for c in app.get_config_file()["components"]}
    assert values["generate-guidance"] == 2.5 and values["generate-temperature"] == 0.7
    assert values["generate-top-k"] == 5 and values["generate-candidates"] == 2
    assert values["complete-guidance"] == 2.5 and values["complete-candidates"] == 1
    picker = next(c["id"] for c in app.get_config_file()["components"] if c["props"].get("elem_id") == "model")
    (follow,) = [f for f in app.fns.values() if any(t[0] == picker for t in f.targets)]
    plain, with_own = follow.fn(str(tiny_pipeline_dir)), follow.fn(str(own_dir))
    assert plain == [SAMPLING_DEFAULTS[k] for k in ("guidance_scale", "temperature", "top_k", "top_p")] + [
        SAMPLING_DEFAULTS["num_candidates"],
        SAMPLING_DEFAULTS["guidance_scale"],
        SAMPLING_DEFAULTS["temperature"],
    ]
    assert with_own == [2.5, 0.7, 5, 1.0, 2, 2.5, 0.7]
