"""Bundled models by name, a model folder's own sampling settings, and the attribution a model carries."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from tiny_runs import prior_argv, tokenizer_argv

from minidalle.cli.export_pipeline import export_pipeline_main
from minidalle.cli.sample import main as sample_main
from minidalle.cli.train import train_prior_main, train_tokenizer_main
from minidalle.errors import UserError
from minidalle.pipeline import (
    BUNDLED_MODELS,
    DEFAULT_MODEL,
    EMOJI_MODEL,
    SAMPLING_DEFAULTS,
    MiniDallePipeline,
    read_sampling_defaults,
    resolve_model,
    save_pipeline,
)
from minidalle.pipeline.io import SAMPLING_KEYS, check_sampling_defaults, load_pipeline_parts

SHAPES_IMAGES = 24
OWN = {"guidance_scale": 2.5, "temperature": 0.7, "num_candidates": 2}


def test_names_and_paths_resolve(tmp_path, tiny_pipeline_dir):
    assert resolve_model(None) == resolve_model("shapes") == resolve_model("default") == DEFAULT_MODEL
    assert resolve_model("emoji") == EMOJI_MODEL
    assert resolve_model(str(tiny_pipeline_dir)) == tiny_pipeline_dir
    with pytest.raises(UserError, match=r"nope: no such model folder, and no bundled model .*bundled: shapes, emoji"):
        resolve_model("nope")
    with pytest.raises(UserError, match=r"no bundled model .*shapes, emoji"):
        MiniDallePipeline.from_pretrained(tmp_path / "missing")
    # a folder named like a bundled model is taken only when it holds a model
    (tmp_path / "emoji").mkdir()
    shutil.copytree(tiny_pipeline_dir, tmp_path / "emoji", dirs_exist_ok=True)
    assert resolve_model(str(tmp_path / "emoji")) == tmp_path / "emoji"


def test_a_missing_bundled_model_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(BUNDLED_MODELS, "emoji", tmp_path / "not-installed")
    with pytest.raises(UserError, match=r"the bundled model 'emoji' is missing from this installation"):
        resolve_model("emoji")


def test_sampling_settings_are_checked():
    assert list(SAMPLING_KEYS) == list(SAMPLING_DEFAULTS)  # the checked settings are the pipeline's, in its order
    assert check_sampling_defaults({"top_k": 5.0, "temperature": 1}, "x") == {"top_k": 5, "temperature": 1.0}
    for bad, message in [
        ({"guidance": 2.0}, "unknown sampling setting"),
        ({"top_k": 1.5}, "top_k must be an integer"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"num_candidates": 0}, "num_candidates = 0 is out of range"),
        ({"top_p": 1.5}, "out of range"),
        ([1, 2], "expected an object"),
    ]:
        with pytest.raises(UserError, match=message):
            check_sampling_defaults(bad, "x")


@pytest.fixture(scope="module")
def own_settings_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny pipeline with its own sampling settings and an ATTRIBUTION.md."""
    parts = load_pipeline_parts(tiny_pipeline_dir)
    return save_pipeline(tmp_path_factory.mktemp("own") / "pipeline", *parts, OWN, "# art\n| set | licence |\n")


def test_a_folders_settings_are_the_pipelines_defaults(own_settings_dir):
    pipe = MiniDallePipeline.from_pretrained(own_settings_dir, device="cpu")
    assert pipe.sampling_defaults == {**SAMPLING_DEFAULTS, **OWN}
    plain = MiniDallePipeline.from_pretrained(DEFAULT_MODEL, device="cpu")
    assert plain.sampling_defaults == SAMPLING_DEFAULTS
    # settings not given are the folder's; a library call still samples one candidate unless asked
    mine = pipe(["a red circle"] * 3, seed=1)
    same = pipe(["a red circle"] * 3, seed=1, guidance_scale=2.5, temperature=0.7)
    other = pipe(["a red circle"] * 3, seed=1, guidance_scale=2.5, temperature=0.0)
    assert torch.equal(mine.codes, same.codes) and mine.scores is None
    assert not torch.equal(mine.codes, other.codes)


def test_sample_py_uses_the_models_settings_unless_flags_say(own_settings_dir, tmp_path):
    def manifest(*flags):
        out = tmp_path / f"s{len(flags)}"
        sample_main(["a red circle", "--model", str(own_settings_dir), "--num_images", "1", "--out", str(out), *flags])
        return json.loads((out / "manifest.jsonl").read_text().splitlines()[0])

    row = manifest()
    assert (row["guidance_scale"], row["temperature"], row["num_candidates"]) == (2.5, 0.7, 2)
    assert row["top_k"] == SAMPLING_DEFAULTS["top_k"]
    row = manifest("--temperature", "0.2", "--num_candidates", "1")
    assert (row["guidance_scale"], row["temperature"], row["num_candidates"]) == (2.5, 0.2, 1)


def test_export_keeps_or_replaces_the_settings_and_keeps_the_attribution(own_settings_dir, tmp_path):
    export_pipeline_main(["--source", str(own_settings_dir), "--out", str(tmp_path / "kept")])
    assert read_sampling_defaults(tmp_path / "kept") == OWN
    assert (tmp_path / "kept" / "ATTRIBUTION.md").read_text() == "# art\n| set | licence |\n"
    (tmp_path / "s.json").write_text(json.dumps({"guidance_scale": 4.0}))
    export_pipeline_main(
        [
            "--source",
            str(own_settings_dir),
            "--out",
            str(tmp_path / "new"),
            "--sampling_defaults",
            str(tmp_path / "s.json"),
        ]
    )
    assert read_sampling_defaults(tmp_path / "new") == {"guidance_scale": 4.0}
    (tmp_path / "bad.json").write_text('{"guidance_scale": -1}')
    with pytest.raises(UserError, match="guidance_scale = -1 is out of range"):
        export_pipeline_main(
            [
                "--source",
                str(own_settings_dir),
                "--out",
                str(tmp_path / "x"),
                "--sampling_defaults",
                str(tmp_path / "bad.json"),
            ]
        )
    assert not (tmp_path / "x").exists()


def test_trained_models_carry_their_datas_attribution(shapes_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data)
    (data / "ATTRIBUTION.md").write_text("# Attribution\n| set | authors | licence |\n| a | b | MIT |\n")
    train_tokenizer_main(tokenizer_argv(data, tmp_path / "tok", "--max_steps", "2", eval_steps=0))
    tokenizer = tmp_path / "tok" / "image_tokenizer"
    assert (tokenizer / "ATTRIBUTION.md").read_text() == (data / "ATTRIBUTION.md").read_text()
    # the prior trained on the same data: one copy, not two
    train_prior_main(prior_argv(data, tmp_path / "prior", tokenizer, "--max_steps", "2", checkpointing_steps=0))
    pipeline = tmp_path / "prior" / "pipeline"
    assert (pipeline / "ATTRIBUTION.md").read_text() == (data / "ATTRIBUTION.md").read_text()
    # a fine-tune on other data carries both
    other = tmp_path / "other"
    shutil.copytree(shapes_dir, other)
    (other / "ATTRIBUTION.md").write_text("# Other art\n")
    train_prior_main(
        prior_argv(
            other, tmp_path / "ft", None, "--max_steps", "1", "--init_from", str(pipeline), checkpointing_steps=0
        )
    )
    carried = (tmp_path / "ft" / "pipeline" / "ATTRIBUTION.md").read_text()
    assert "# Other art" in carried and "| a | b | MIT |" in carried


def test_help_names_the_bundled_models_and_their_art(capsys):
    with pytest.raises(SystemExit):
        sample_main(["--help"])
    text = capsys.readouterr().out
    assert "shapes: synthetic images, no third-party art" in text
    assert "emoji: trained on art under its licences" in text and "Apache-2.0" in text


def test_the_emoji_model_ships_small_with_its_attribution_and_samples():
    files = [f for f in EMOJI_MODEL.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 30e6
    assert "CC-BY-4.0" in (EMOJI_MODEL / "ATTRIBUTION.md").read_text()
    assert set(read_sampling_defaults(EMOJI_MODEL)) == set(SAMPLING_DEFAULTS)
    pipe = MiniDallePipeline.from_pretrained("emoji", device="cpu")
    out = pipe("a dog face in the noto style", seed=0)
    assert out.images[0].size == (64, 64) and out.codes.shape == (1, 64)
    assert int(out.codes.max()) < pipe.image_tokenizer.num_codes
