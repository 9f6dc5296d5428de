"""What the trainers and commands tell a user (issue 19): checks that come before the expensive steps, the
thread count, the best model kept and early stopping, fine-tunes that report what they did, advice on a
collapsing codebook, previews drawn as sample.py draws, and reconstruction grids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from PIL import Image
from safetensors.torch import load_file
from tiny_runs import prior_argv, tokenizer_argv

import minidalle.training.prior_trainer as prior_trainer
import minidalle.training.tokenizer_trainer as tokenizer_trainer
from minidalle.cli.codes import codebook_main, reconstruct_main
from minidalle.cli.sample import SampleArguments
from minidalle.cli.sample import main as sample_main
from minidalle.cli.score import score_main
from minidalle.cli.train import train_prior_main, train_tokenizer_main
from minidalle.data import DataArguments, load_captioned_dataset
from minidalle.errors import UserError
from minidalle.images import save_image_grid
from minidalle.pipeline import DEFAULT_MODEL, SAMPLING_DEFAULTS, MiniDallePipeline, resolve_model
from minidalle.prior import Prior
from minidalle.training.advice import collapse_advice, say_the_grid
from minidalle.training.best import BestModel

SHAPES_IMAGES = 24  # the shared `shapes_dir` fixture (conftest.py): 22 training + 2 held-out examples


def run(main, argv: list[str]) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    main(argv)


def log_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def refuse(monkeypatch, module, name: str) -> None:
    """Make `module.name` fail the test if it is called (the check must come before it)."""

    def called(*args, **kwargs):
        raise AssertionError(f"{name} ran before the check")

    monkeypatch.setattr(module, name, called)


# --- 1. early checks -------------------------------------------------------------------------


def test_a_caption_less_folder_fails_in_the_prior_before_any_image_is_encoded(
    shapes_dir, tiny_image_tokenizer_dir, tmp_path, monkeypatch, caplog
):
    data = tmp_path / "no-captions"
    shutil.copytree(shapes_dir / "images", data)  # the pictures without metadata.jsonl
    refuse(monkeypatch, prior_trainer, "encode_to_disk")
    caplog.set_level("INFO", logger="minidalle")
    with pytest.raises(UserError, match="no caption column 'text'"):
        run(train_prior_main, prior_argv(data, tmp_path / "run", tiny_image_tokenizer_dir, max_steps=2))
    assert "encoding" not in caplog.text
    assert not (data / ".minidalle-codes").exists()


def test_an_unknown_preset_is_refused_before_the_text_tokenizer_is_trained(
    shapes_dir, tiny_image_tokenizer_dir, tmp_path, monkeypatch
):
    refuse(monkeypatch, prior_trainer, "encode_to_disk")
    refuse(monkeypatch, prior_trainer, "train_text_tokenizer")
    out = tmp_path / "run"
    with pytest.raises(UserError, match="--preset must be one of"):
        run(train_prior_main, prior_argv(shapes_dir, out, tiny_image_tokenizer_dir, preset="huge"))
    assert not (out / "text_tokenizer").exists()


def test_a_set_smaller_than_one_batch_is_refused_with_both_numbers_before_any_work(
    shapes_dir, tiny_image_tokenizer_dir, tmp_path, monkeypatch
):
    refuse(monkeypatch, tokenizer_trainer, "load_image_tensor")
    expected = r"22 examples \(24 less 2 held out for validation\), fewer than one batch \(--batch_size 64\)"
    with pytest.raises(UserError, match=expected):
        run(train_tokenizer_main, tokenizer_argv(shapes_dir, tmp_path / "tok", batch_size=64))
    data = tmp_path / "data"  # a fresh copy: no codes cache yet, so the prior would encode next
    shutil.copytree(shapes_dir, data, ignore=shutil.ignore_patterns(".minidalle-codes"))
    refuse(monkeypatch, prior_trainer, "encode_to_disk")
    with pytest.raises(UserError, match=expected):
        run(train_prior_main, prior_argv(data, tmp_path / "prior", tiny_image_tokenizer_dir, batch_size=64))


def _imagefolder(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    folder.mkdir()
    rows = []
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (200, 30, 30)).save(folder / f"{i:03d}.png")
        rows.append(json.dumps({"file_name": f"{i:03d}.png", "text": "a red picture"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_resizes_and_crops_are_counted_in_one_line_and_a_local_folder_shows_no_download(tmp_path, caplog, capfd):
    import datasets

    bars_were_off = datasets.are_progress_bars_disabled()
    data = _imagefolder(tmp_path / "mixed", [(200, 80), (64, 64), (32, 32)] + [(32, 32)] * 17)  # 20 files: a bar
    caplog.set_level("INFO", logger="minidalle")
    capfd.readouterr()
    ds = load_captioned_dataset(DataArguments(data=str(data), resolution=32))
    assert len(ds) == 20
    assert "Downloading data" not in capfd.readouterr().err
    assert datasets.are_progress_bars_disabled() == bars_were_off  # the global switch is restored
    lines = [r.getMessage() for r in caplog.records if "resized" in r.getMessage()]
    assert len(lines) == 1
    assert "2 of 20 images are resized to 32 px on the short side" in lines[0]
    assert "1 of 20 are not square and are centre-cropped to 32x32" in lines[0]
    assert "000.png at 200x80, keeps 40% of its width" in lines[0]


def test_a_run_folder_given_as_the_model_names_its_pipeline(tiny_pipeline_dir, tmp_path):
    run_folder = tiny_pipeline_dir.parent  # the fixture's pipeline lies in RUN/pipeline, as train_prior.py writes it
    with pytest.raises(UserError, match=f"the pipeline it wrote is {tiny_pipeline_dir}"):
        sample_main(["a red circle", "--model", str(run_folder), "--out", str(tmp_path / "s")])
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match=f"the pipeline it wrote is {tiny_pipeline_dir}"):
        score_main([str(tmp_path / "a.png"), "--caption", "a red circle", "--model", str(run_folder)])


def test_score_candidates_are_labelled_and_ranked_in_json_too(tiny_pipeline_dir, tmp_path, capsys):
    Image.new("RGB", (32, 32), (200, 0, 0)).save(tmp_path / "a.png")
    argv = [str(tmp_path / "a.png"), "--candidates", "a red circle|a blue square", "--model", str(tiny_pipeline_dir)]
    score_main(argv)
    text = capsys.readouterr().out.splitlines()
    assert text[0].endswith("captions ranked by log p(image codes | caption), most likely first")
    assert text[1].startswith("  1. log p = ") and text[2].startswith("  2. log p = ")
    assert {line.split(" nats  ")[1] for line in text[1:]} == {"a red circle", "a blue square"}
    score_main(argv + ["--json"])
    ranking = json.loads(capsys.readouterr().out)["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2]
    assert ranking[0]["log_prob"] >= ranking[1]["log_prob"]


def test_codebook_takes_a_split(shapes_dir, tiny_image_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "codebook.png"
    codebook_main(["--image_tokenizer", str(tiny_image_tokenizer_dir), "--data", str(shapes_dir)] + ["--out", str(out)])
    assert out.is_file()
    with pytest.raises(UserError, match="no split 'test'"):
        codebook_main(
            ["--image_tokenizer", str(tiny_image_tokenizer_dir), "--data", str(shapes_dir), "--split", "test"]
            + ["--out", str(tmp_path / "other.png")]
        )


def test_a_preset_at_another_resolution_says_its_grid(caplog):
    caplog.set_level("INFO", logger="minidalle")
    tiny_at_64 = tokenizer_trainer.TokenizerArguments().model_config("tiny", 64)
    say_the_grid("tiny", tiny_at_64, widths_given=False)
    assert "--preset tiny is sized for 32 px images (grid 8x8); at --resolution 64 it gives a 16x16 grid" in caplog.text
    assert "--preset small: 8x8" in caplog.text and "--widths 16,32,64 keeps 8x8" in caplog.text
    caplog.clear()
    say_the_grid("small", tokenizer_trainer.TokenizerArguments().model_config("small", 64), False)
    assert caplog.text == ""


# --- 2, 3 and 5 in one image-tokenizer run: threads, evaluations with the best kept, the alarm's advice -----------


def test_the_image_tokenizer_run_sets_threads_keeps_the_best_and_advises_on_collapse(
    shapes_dir, tmp_path, monkeypatch, caplog
):
    calls = []
    set_threads = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), set_threads(n)))
    caplog.set_level("INFO", logger="minidalle")
    out = tmp_path / "tok"
    argv = tokenizer_argv(shapes_dir, out, "--threads", "1", "--eval_steps", "4", max_steps=11, num_codes=512)
    run(train_tokenizer_main, argv)
    assert calls == [1]
    assert "1 CPU thread (--threads 1; " in caplog.text
    # evaluations every 4 steps and at the end; the exported model is the best of them, and says so
    evaluations = {r["step"]: r["eval_psnr"] for r in log_rows(out) if "eval_psnr" in r}
    assert sorted(evaluations) == [4, 8, 11]
    best_step = max(evaluations, key=evaluations.get)
    info = json.loads((out / "image_tokenizer" / "training_info.json").read_text())
    assert info["step"] == best_step and info["last_step"] == 11 and "highest eval_psnr" in info["selected_by"]
    assert json.loads((out / "eval.json").read_text())["step"] == best_step
    assert f"is the step-{best_step} model, the best held-out PSNR" in caplog.text
    # 512 codes of a tiny tokenizer collapse at once: the first alarm gives advice, the repeat (10 lines on) not
    alarms = [r.getMessage() for r in caplog.records if "collapse alarm" in r.getMessage()]
    assert len(alarms) == 2
    assert "try a lower --kl_weight (now 0.05), a longer --temperature_steps" in alarms[0]
    assert "--quantizer fsq" in alarms[0] and "try" not in alarms[1]


def test_vq_advice_leaves_out_the_flags_already_given():
    from minidalle.training.runtime import TrainingArguments

    vq = tokenizer_trainer.TokenizerArguments(quantizer="vq", vq_l2=True)
    advice = collapse_advice(vq, TrainingArguments(), tau=1.0, beta=0.05, tau_steps=100)
    assert "--vq_kmeans_init" in advice and "--vq_restart_dead" in advice and "--vq_l2" not in advice


def test_sample_sets_threads_and_says_so(tiny_pipeline_dir, tmp_path, capsys):
    sample_main(["a red circle", "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "s")] + ["--threads", "1"])
    assert "sampling on cpu with 1 CPU thread (--threads 1; " in capsys.readouterr().err


# --- 3 and 6 in one prior run: the best pipeline kept, early stopping, previews drawn as sample.py draws -------


def test_the_prior_keeps_the_best_pipeline_stops_early_and_previews_like_sample_py(
    shapes_dir, tiny_image_tokenizer_dir, tmp_path, monkeypatch, caplog
):
    figures = [2.0, 1.5, 1.7, 1.9]  # the validation losses at steps 2, 4, 6, 8: the best at 4, then worse
    real_validate = prior_trainer.validate

    def scripted(*args, **kwargs):  # the last call, after training, validates the step-8 model again
        value = figures.pop(0) if len(figures) > 1 else figures[0]
        return {**real_validate(*args, **kwargs), "val_image_nll": value}

    monkeypatch.setattr(prior_trainer, "validate", scripted)
    caplog.set_level("INFO", logger="minidalle")
    out = tmp_path / "prior"
    argv = prior_argv(
        shapes_dir, out, None, eval_steps=2, max_steps=20, early_stopping_patience=2, checkpointing_steps=0
    )
    run(train_prior_main, argv + ["--image_tokenizer", str(tiny_image_tokenizer_dir)])
    assert "early stopping at step 8: val_image_nll has not improved for 2 evaluations" in caplog.text
    assert "the best, 1.5000, was at step 4" in caplog.text
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["step"] == 8 and summary["early_stopped"] and summary["best_step"] == 4
    info = json.loads((out / "pipeline" / "training_info.json").read_text())
    assert info["step"] == 4 and info["val_image_nll"] == 1.5 and info["last_step"] == 8
    assert json.loads((out / "eval.json").read_text())["step"] == 4
    # the pipeline is the step-4 model; the last step's weights are in the last checkpoint
    best = Prior.from_pretrained(out / "pipeline" / "prior").state_dict()
    last_weights = load_file(str(out / "checkpoints" / "step-0000008" / "model.safetensors"))
    assert not torch.equal(best["image_head.weight"], last_weights["image_head.weight"])
    # the step-4 preview is what sample.py's defaults give with the step-4 pipeline, and says how it was drawn
    settings = json.loads((out / "samples" / "samples-step-0000004.json").read_text())
    assert {k: settings[k] for k in SAMPLING_DEFAULTS} == SAMPLING_DEFAULTS
    assert {k: getattr(SampleArguments(), k) for k in SAMPLING_DEFAULTS} == SAMPLING_DEFAULTS
    preview = Image.open(out / "samples" / "samples-step-0000004.png")
    assert preview.size == (4 * 32, len(settings["prompts"]) * 32)
    pipe = MiniDallePipeline.from_pretrained(out / "pipeline", device="cpu")
    again = pipe(settings["prompts"], num_images_per_prompt=4, seed=settings["seed"], **SAMPLING_DEFAULTS)
    rows = [torch.cat(list(pipe._pixels(again.images[i : i + 4])), dim=2) for i in range(0, len(again.images), 4)]
    expected = (torch.cat(rows, dim=1).permute(1, 2, 0) * 255).round().to(torch.uint8)
    assert torch.equal(torch.from_numpy(np.array(preview.convert("RGB"))), expected)


def test_the_best_record_is_replayed_from_the_log_on_resume(tmp_path):
    rows = [{"step": 0, "val_image_nll": 0.1}, {"step": 2, "loss": 3.0}]  # step 0: before fine-tuning, not a candidate
    rows += [{"step": 2, "val_image_nll": 2.0}, {"step": 4, "val_image_nll": 1.5}, {"step": 6, "val_image_nll": 1.7}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    best = BestModel("val_image_nll", patience=2)
    best.replay(tmp_path, 6)
    assert (best.best_step, best.since_best, best.stop) == (4, 1, False)
    best.update(8, {"val_image_nll": 1.8})
    assert best.stop
    fine_tune = BestModel("val_image_nll", patience=2, first_step=0)  # a fine-tune: its start is a candidate
    fine_tune.replay(tmp_path, 6)
    assert (fine_tune.best_step, fine_tune.since_best, fine_tune.stop) == (0, 3, True)


# --- 4. fine-tuning reports what it did ------------------------------------------------------------------------


def test_a_fine_tune_keeps_its_text_length_or_grows_it_when_asked(shapes_dir, tiny_pipeline_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="minidalle")
    start = Prior.from_pretrained(tiny_pipeline_dir / "prior")
    flags = {"text_len": None, "max_steps": 1}  # no --text_len: the prior's own
    run(
        train_prior_main,
        prior_argv(shapes_dir, tmp_path / "kept", None, "--init_from", str(tiny_pipeline_dir), **flags),
    )
    assert Prior.from_pretrained(tmp_path / "kept" / "pipeline" / "prior").config.text_len == start.config.text_len
    longer = start.config.text_len + 4
    argv = prior_argv(shapes_dir, tmp_path / "grown", None, "--init_from", str(tiny_pipeline_dir), **flags)
    run(train_prior_main, argv + ["--text_len", str(longer)])
    assert f"text positions grown from {start.config.text_len} to {longer} (--text_len)" in caplog.text
    grown = MiniDallePipeline.from_pretrained(tmp_path / "grown" / "pipeline", device="cpu")
    assert grown.prior.config.text_len == longer
    assert len(grown(["a red circle"], num_images_per_prompt=1, seed=0).images) == 1  # and it samples
    shorter = start.config.text_len - 1
    with pytest.raises(UserError, match=f"--text_len {shorter}: the prior has {start.config.text_len} text positions"):
        run(
            train_prior_main,
            prior_argv(shapes_dir, tmp_path / "x", None, "--init_from", str(tiny_pipeline_dir), text_len=shorter),
        )
    assert not (tmp_path / "x" / "text_tokenizer").exists()  # refused before any work


def test_a_fine_tune_that_only_hurts_ships_the_model_it_started_from(
    shapes_dir, tiny_pipeline_dir, tmp_path, monkeypatch, caplog
):
    figures = [1.0, 1.2, 1.3]  # steps 0 (before fine-tuning), 2 and 4: every later evaluation is worse
    real_validate = prior_trainer.validate

    def scripted(*args, **kwargs):
        value = figures.pop(0) if len(figures) > 1 else figures[0]
        return {**real_validate(*args, **kwargs), "val_image_nll": value}

    monkeypatch.setattr(prior_trainer, "validate", scripted)
    caplog.set_level("INFO", logger="minidalle")
    out = tmp_path / "finetune"
    argv = ["--init_from", str(tiny_pipeline_dir), "--learning_rate", "0.05"]
    argv = prior_argv(shapes_dir, out, None, *argv, eval_steps=2, max_steps=4, checkpointing_steps=0, text_len=None)
    run(train_prior_main, argv)
    info = json.loads((out / "pipeline" / "training_info.json").read_text())
    assert info["step"] == 0 and info["val_image_nll"] == 1.0 and info["last_step"] == 4
    assert "fine-tuning never beat the starting model's validation image NLL (1.0000 at step 0)" in caplog.text
    start = Prior.from_pretrained(tiny_pipeline_dir / "prior").state_dict()
    shipped = Prior.from_pretrained(out / "pipeline" / "prior").state_dict()
    assert all(torch.equal(start[k], shipped[k]) for k in start)  # the starting weights, not a fine-tuned step
    last = load_file(str(out / "checkpoints" / "step-0000004" / "model.safetensors"))
    assert not torch.equal(start["image_head.weight"], last["image_head.weight"])  # and training did move them


def test_fine_tuning_logs_its_source_frozen_parts_and_a_step_zero_validation(
    shapes_dir, tiny_pipeline_dir, tmp_path, caplog
):
    caplog.set_level("INFO", logger="minidalle")
    before = Prior.from_pretrained(tiny_pipeline_dir / "prior").state_dict()
    out = tmp_path / "finetune"
    run(
        train_prior_main,
        prior_argv(
            shapes_dir,
            out,
            None,
            "--init_from",
            str(tiny_pipeline_dir),
            "--freeze_blocks",
            "1",
            max_steps=2,
            text_len=None,
        ),
    )
    assert f"fine-tuning from the pipeline {tiny_pipeline_dir}: its prior, image tokenizer and text tokenizer" in (
        caplog.text
    )
    assert "frozen: block 0 of 1 (the embeddings stay trainable: --freeze_embeddings fixes them); " in caplog.text
    trainable = sum(v.numel() for k, v in before.items() if not k.startswith("blocks."))
    total = sum(v.numel() for v in before.values())
    assert f"trainable parameters: {trainable / 1e6:.3f}M of {total / 1e6:.3f}M" in caplog.text
    assert "step 0 (before fine-tuning): validation image NLL" in caplog.text
    assert [r["step"] for r in log_rows(out) if "val_image_nll" in r][0] == 0
    after = Prior.from_pretrained(out / "pipeline" / "prior").state_dict()
    assert torch.equal(before["blocks.0.qkv.weight"], after["blocks.0.qkv.weight"])
    assert not torch.equal(before["token_emb.weight"], after["token_emb.weight"])  # new words can be learned
    out = tmp_path / "finetune-frozen-embeddings"
    argv = ["--init_from", str(tiny_pipeline_dir), "--freeze_blocks", "1", "--freeze_embeddings"]
    run(train_prior_main, prior_argv(shapes_dir, out, None, *argv, max_steps=2, text_len=None))
    after = Prior.from_pretrained(out / "pipeline" / "prior").state_dict()
    assert torch.equal(before["token_emb.weight"], after["token_emb.weight"])
    with pytest.raises(UserError, match="--freeze_blocks 2: the prior has only 1 blocks"):
        run(
            train_prior_main,
            prior_argv(
                shapes_dir,
                tmp_path / "x",
                None,
                "--init_from",
                str(tiny_pipeline_dir),
                "--freeze_blocks",
                "2",
                text_len=None,
            ),
        )


def test_init_from_takes_the_bundled_models_name(shapes_dir, tmp_path, caplog, monkeypatch):
    assert resolve_model("shapes") == resolve_model("default") == DEFAULT_MODEL
    shutil.copytree(shapes_dir, tmp_path / "shapes", ignore=shutil.ignore_patterns(".minidalle-codes"))
    monkeypatch.chdir(tmp_path)  # a data folder of the same name holds no model: the name means the bundled one
    caplog.set_level("INFO", logger="minidalle")
    out = tmp_path / "finetune"
    run(
        train_prior_main,
        prior_argv(Path("shapes"), out, None, "--init_from", "shapes", max_steps=1, batch_size=4, text_len=None),
    )
    assert f"fine-tuning from the bundled model 'shapes' ({DEFAULT_MODEL})" in caplog.text
    assert json.loads((out / "pipeline" / "training_info.json").read_text())["selected_by"] == "the last step"


# --- 6. reconstructions: a grid and each image's PSNR ----------------------------------------------------------


def test_reconstruct_writes_a_grid_and_each_images_psnr(shapes_dir, tiny_image_tokenizer_dir, tmp_path):
    out = tmp_path / "recon"
    reconstruct_main(
        ["--image_tokenizer", str(tiny_image_tokenizer_dir), "--data", str(shapes_dir), "--out", str(out)]
        + ["--grid_images", "10", "--batch_size", "7"]
    )
    assert Image.open(out / "grid.png").size == (8 * 32, 4 * 32)  # 10 images: two rows of 8, each over its own
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == SHAPES_IMAGES and all(r["psnr"] > 0 for r in rows)
    summary = json.loads((out / "reconstruct.json").read_text())
    assert summary["psnr_per_image_mean"] == pytest.approx(sum(r["psnr"] for r in rows) / len(rows), abs=1e-2)
    assert summary["psnr_per_image_min"] == pytest.approx(min(r["psnr"] for r in rows), abs=1e-2)


# --- pictures reach the trackers -------------------------------------------------------------


def tensorboard_images(out: Path) -> dict[str, list[tuple[int, tuple[int, int]]]]:
    """Every image in the run's TensorBoard event files: tag -> [(step, (width, height))]."""
    import io

    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    found: dict[str, list] = {}
    for events in out.rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events.parent), size_guidance={IMAGES: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[IMAGES]:
            for event in accumulator.Images(tag):
                size = Image.open(io.BytesIO(event.encoded_image_string)).size
                found.setdefault(tag, []).append((event.step, size))
    return found


def test_reconstruction_grids_and_prior_samples_reach_tensorboard(shapes_dir, tiny_image_tokenizer_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="the `test` extra installs it")
    tokenizer = tmp_path / "tokenizer"
    run(
        train_tokenizer_main,
        tokenizer_argv(shapes_dir, tokenizer, "--report_to", "tensorboard", image_steps=3, max_steps=6),
    )
    on_disk = Image.open(tokenizer / "samples" / "recon-step-0000003.png").size
    assert {tag: sorted(rows) for tag, rows in tensorboard_images(tokenizer).items()} == {
        "reconstructions": [(3, on_disk), (6, on_disk)]
    }
    prior = tmp_path / "prior"
    argv = prior_argv(
        shapes_dir, prior, tiny_image_tokenizer_dir, "--report_to", "tensorboard", eval_steps=4, max_steps=4
    )
    run(train_prior_main, argv)
    on_disk = Image.open(prior / "samples" / "samples-step-0000004.png").size
    assert tensorboard_images(prior) == {"samples": [(4, on_disk)]}


def test_a_tracker_without_images_is_skipped_and_a_failing_one_does_not_stop_the_run(tmp_path, caplog):
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    class Recorder(GeneralTracker):
        name, requires_logging_directory = "recorder", False

        def __init__(self, fail: bool = False):
            super().__init__()
            self.fail, self.images = fail, []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values):
            pass

        def log(self, values, step=None, **kwargs):
            pass

        def log_images(self, values, step=None, **kwargs):
            if self.fail:
                raise ConnectionError("offline")
            self.images += [(name, step, [image.size for image in images]) for name, images in values.items()]

    class NoImages(Recorder):
        name = "no-images"
        log_images = None  # type: ignore[assignment]

    from minidalle.training.loop import log_image

    AcceleratorState._reset_state(reset_partial_state=True)
    good, bad = Recorder(), Recorder(fail=True)
    bad.name = "flaky"
    accelerator = Accelerator(cpu=True, log_with=[good, bad, NoImages()])
    accelerator.init_trackers("t")
    picture = tmp_path / "grid.png"
    Image.new("RGB", (40, 20), "red").save(picture)
    log_image(accelerator, "samples", picture, 7)
    assert good.images == [("samples", 7, [(40, 20)])]
    assert "tracker flaky: could not log the image" in caplog.text and "offline" in caplog.text


def test_a_labelled_grid_keeps_every_pixel_and_names_each_row(tmp_path):
    rows = [torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    plain = np.asarray(Image.open(save_image_grid(rows, tmp_path / "plain.png")))
    labelled = np.asarray(Image.open(save_image_grid(rows, tmp_path / "named.png", labels=["original", "fsq_gan"])))
    margin = labelled.shape[1] - plain.shape[1]
    assert margin > 8 and labelled.shape[0] == plain.shape[0]
    assert np.array_equal(labelled[:, margin:], plain)  # the images themselves are untouched
    for r in range(2):  # each row's strip of the margin carries its (dark) label
        assert labelled[r * 16 : (r + 1) * 16, :margin].min() < 128
    with pytest.raises(ValueError, match="1 labels for 2 rows"):
        save_image_grid(rows, tmp_path / "bad.png", labels=["original"])
