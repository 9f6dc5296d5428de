"""train_prior.py end to end, on tiny configs: loss falls, codes cached once, exact resume, fine-tuning,
two processes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from tiny_runs import prior_argv

import minidalle.training.prior_trainer as train_prior_module
from minidalle import MiniDallePipeline
from minidalle.cli.train import train_prior_main as train_main
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig
from minidalle.prior import Prior

SIZE = 32


def make_image_tokenizer(seed: int) -> DiscreteVAE:
    """An untrained tiny image tokenizer: 32x32 images -> 4x4 codes of 32."""
    torch.manual_seed(seed)
    return DiscreteVAE(DVAEConfig(image_size=SIZE, num_codes=32, codebook_dim=8, widths=[8, 8, 8], res_blocks=0)).eval()


SHAPES_IMAGES = 96  # the size of the shared `shapes_dir` fixture (conftest.py)


@pytest.fixture(scope="module")
def image_tokenizer_dir(tmp_path_factory) -> Path:
    return make_image_tokenizer(0).save_pretrained(tmp_path_factory.mktemp("tok") / "image_tokenizer")


def tiny_args(data: Path, out: Path, image_tokenizer: Path | None, *extra: str) -> list[str]:
    return prior_argv(data, out, image_tokenizer, *extra, logging_steps=5, checkpointing_steps=0)


def run(argv: list[str]) -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    train_main(argv)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def weights(pipeline: Path) -> dict[str, torch.Tensor]:
    return Prior.from_pretrained(pipeline / "prior").state_dict()


@pytest.fixture(scope="module")
def trained(shapes_dir, image_tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "prior"
    run(tiny_args(shapes_dir, out, image_tokenizer_dir, "--max_steps", "40", "--eval_steps", "40"))
    return out


# --- one run ---------------------------------------------------------------------------------


def test_loss_falls(trained):
    log = losses(trained)
    assert sorted(log) == [5, 10, 15, 20, 25, 30, 35, 40]
    assert log[40] < 0.8 * log[5]
    rows = [json.loads(line) for line in (trained / "log.jsonl").read_text().splitlines()]
    assert {"loss_text", "loss_image", "lr", "tokens_seen"} <= set(rows[0])
    validation = [r for r in rows if "val_bits_per_dim" in r]
    assert [r["step"] for r in validation] == [40]
    assert (trained / "samples" / "samples-step-0000040.png").is_file()


def test_the_run_writes_a_complete_pipeline_that_loads_and_samples(trained, image_tokenizer_dir):
    pipeline = trained / "pipeline"
    parts = {"model_index.json", "image_tokenizer", "text_tokenizer", "prior", "training_info.json"}
    assert {p.name for p in pipeline.iterdir()} == parts
    assert json.loads((pipeline / "training_info.json").read_text())["step"] == 40  # the one evaluation, the best
    pipe = MiniDallePipeline.from_pretrained(pipeline, device="cpu")
    assert pipe.prior.config.image_tokenizer_hash == DiscreteVAE.from_pretrained(image_tokenizer_dir).codes_hash()
    assert pipe.prior.config.text_len == 16
    assert pipe.prior.config.dim == 32 and len(pipe.prior.blocks) == 2  # the tiny preset
    out = pipe(["a red circle"], num_images_per_prompt=2, seed=0)
    assert len(out.images) == 2 and out.images[0].size == (SIZE, SIZE)
    summary = json.loads((trained / "run_summary.json").read_text())
    assert summary["step"] == 40 and summary["num_processes"] == 1
    evaluation = json.loads((trained / "eval.json").read_text())
    assert evaluation["step"] == 40 and evaluation["val_bits_per_dim"] > 0
    assert (trained / "checkpoints" / "step-0000040").is_dir()


def test_factorised_image_codes_train_on_an_fsq_tokenizer_and_are_refused_for_another(
    shapes_dir, image_tokenizer_dir, tmp_path
):
    torch.manual_seed(0)
    config = DVAEConfig(image_size=SIZE, widths=[8, 8, 8], res_blocks=0, quantizer="fsq", fsq_levels=[4, 8])
    fsq_dir = DiscreteVAE(config).eval().save_pretrained(tmp_path / "fsq")
    out = tmp_path / "factorised"
    run(tiny_args(shapes_dir, out, fsq_dir, "--max_steps", "10", "--factorised_image_codes"))
    assert losses(out)[10] < losses(out)[5]
    pipe = MiniDallePipeline.from_pretrained(out / "pipeline", device="cpu")
    assert pipe.prior.config.image_code_levels == [4, 8] and not hasattr(pipe.prior, "image_pos")
    out_images = pipe(["a red circle"], num_images_per_prompt=2, seed=0, num_candidates=2)
    assert len(out_images.images) == 2 and out_images.codes.max() < 32
    with pytest.raises(UserError, match="needs an FSQ image tokenizer.*'gumbel'"):
        run(
            tiny_args(
                shapes_dir, tmp_path / "gumbel", image_tokenizer_dir, "--max_steps", "2", "--factorised_image_codes"
            )
        )
    other = DiscreteVAE(DVAEConfig(**{**config.__dict__, "fsq_levels": [8, 4]}))
    from minidalle.pipeline.io import check_compatible

    with pytest.raises(UserError, match=r"digits of FSQ levels \[4, 8\]"):
        check_compatible(pipe.prior, other, pipe.text_tokenizer, "here")


def test_a_prior_trained_on_the_rounded_tokenizer_is_what_its_export_ships(shapes_dir, image_tokenizer_dir, tmp_path):
    from minidalle.pipeline.io import export_pipeline

    out = tmp_path / "rounded"
    run(tiny_args(shapes_dir, out, image_tokenizer_dir, "--max_steps", "2", "--image_tokenizer_dtype", "float16"))
    stored = DiscreteVAE.from_pretrained(image_tokenizer_dir)
    rounded = DiscreteVAE.from_pretrained(image_tokenizer_dir).half().float()
    trained_pipe = MiniDallePipeline.from_pretrained(out / "pipeline", device="cpu")
    assert trained_pipe.prior.config.image_tokenizer_hash == rounded.codes_hash() != stored.codes_hash()
    exported = MiniDallePipeline.from_pretrained(export_pipeline(out / "pipeline", tmp_path / "fp16"), device="cpu")
    assert exported.prior.config.image_tokenizer_hash == trained_pipe.prior.config.image_tokenizer_hash
    trained_weights = trained_pipe.image_tokenizer.state_dict()
    for name, tensor in exported.image_tokenizer.state_dict().items():
        assert torch.equal(tensor, trained_weights[name]), name  # the export rounds nothing the prior did not see
    with pytest.raises(UserError, match="--image_tokenizer_dtype must be float16, bfloat16 or float32, got 'int8'"):
        run(tiny_args(shapes_dir, tmp_path / "bad", image_tokenizer_dir, "--image_tokenizer_dtype", "int8"))


def test_training_feeds_per_position_pads(shapes_dir, image_tokenizer_dir, tmp_path, monkeypatch):
    seen = []
    forward = Prior.forward

    def recording(self, text_tokens, image_codes, compute_loss=True):
        if self.training:
            seen.append(text_tokens.detach().clone())
        return forward(self, text_tokens, image_codes, compute_loss)

    monkeypatch.setattr(Prior, "forward", recording)
    run(tiny_args(shapes_dir, tmp_path / "pads", image_tokenizer_dir, "--max_steps", "2"))
    text = torch.cat(seen)
    assert text.shape == (16, 16)
    config = Prior.from_pretrained(tmp_path / "pads" / "pipeline" / "prior").config
    v = config.text_vocab_size
    pads = text >= v
    assert pads.any() and (~pads).any()  # shapes captions are shorter than 16 tokens
    assert (text < config.bos_id).all()
    positions = torch.arange(16).expand_as(text)
    assert torch.equal(text[pads], v + positions[pads])  # the pad at position i is the token V + i
    assert (text[~pads] != 0).all()  # the text tokenizer's <pad> id (0) never reaches the prior


# --- the codes cache -------------------------------------------------------------------------


def test_the_codes_cache_is_built_once_and_reused(shapes_dir, image_tokenizer_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data, ignore=shutil.ignore_patterns(".minidalle-codes"))
    calls = []
    encode = train_prior_module.encode_to_disk

    def counting(*args, **kwargs):
        calls.append(args[2])
        return encode(*args, **kwargs)

    monkeypatch.setattr(train_prior_module, "encode_to_disk", counting)
    run(tiny_args(data, tmp_path / "a", image_tokenizer_dir, "--max_steps", "2"))
    h = DiscreteVAE.from_pretrained(image_tokenizer_dir).codes_hash()
    cache = data / ".minidalle-codes" / f"{h}-train"
    assert calls == [cache]
    assert [p.name for p in (data / ".minidalle-codes").iterdir()] == [f"{h}-train"]
    info = json.loads((cache / "codes_info.json").read_text())
    assert info["tokenizer_hash"] == h and info["num_examples"] == 96
    stamp = (cache / "codes_info.json").stat().st_mtime_ns
    run(tiny_args(data, tmp_path / "b", image_tokenizer_dir, "--max_steps", "2"))
    assert len(calls) == 1  # the second run read the cache, it did not re-encode
    assert (cache / "codes_info.json").stat().st_mtime_ns == stamp
    # another image tokenizer gets its own cache beside the first
    other = make_image_tokenizer(1).save_pretrained(tmp_path / "other_tokenizer")
    run(tiny_args(data, tmp_path / "c", other, "--max_steps", "2"))
    assert len(calls) == 2
    assert len(list((data / ".minidalle-codes").iterdir())) == 2


def test_edited_captions_rebuild_the_codes_cache(shapes_dir, image_tokenizer_dir, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(shapes_dir, data, ignore=shutil.ignore_patterns(".minidalle-codes"))
    run(tiny_args(data, tmp_path / "a", image_tokenizer_dir, "--max_steps", "2"))
    copy = tmp_path / "copy"
    shutil.copytree(data, copy, copy_function=shutil.copy2)  # the dataset copied with its cache (cp -a)
    rows = [json.loads(line) for line in (copy / "metadata.jsonl").read_text().splitlines()]
    (copy / "metadata.jsonl").write_text("".join(json.dumps({**r, "text": "an edited caption"}) + "\n" for r in rows))
    caplog.set_level("INFO", logger="minidalle")
    run(tiny_args(copy, tmp_path / "b", image_tokenizer_dir, "--max_steps", "2"))
    assert "made from other images or captions" in caplog.text
    h = DiscreteVAE.from_pretrained(image_tokenizer_dir).codes_hash()
    codes, _ = train_prior_module.load_codes(copy / ".minidalle-codes" / f"{h}-train")
    assert set(codes.with_format(None)["caption"]) == {"an edited caption"}  # trained on the captions as edited
    caplog.clear()
    run(tiny_args(copy, tmp_path / "c", image_tokenizer_dir, "--max_steps", "2"))
    assert "made from other images or captions" not in caplog.text  # the rebuilt cache is reused


def test_codes_of_another_image_tokenizer_are_a_user_error(shapes_dir, tmp_path):
    from minidalle.data import DataArguments
    from minidalle.training.encode import encode_to_disk

    codes = encode_to_disk(
        make_image_tokenizer(0), DataArguments(data=str(shapes_dir)), tmp_path / "codes", progress=False
    )
    other = make_image_tokenizer(1).save_pretrained(tmp_path / "other_tokenizer")
    with pytest.raises(UserError, match="codes were made by image tokenizer"):
        run(tiny_args(shapes_dir, tmp_path / "x", other, "--max_steps", "2", "--codes", str(codes)))


# --- resume ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ["--dropout", "0.2"]], ids=["plain", "dropout"])
def test_resume_continues_exactly(shapes_dir, image_tokenizer_dir, tmp_path, extra):
    full = tmp_path / "full"
    ckpt = ["--max_steps", "20", "--checkpointing_steps", "10", "--checkpoints_total_limit", "5", *extra]
    run(tiny_args(shapes_dir, full, image_tokenizer_dir, *ckpt))
    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step-0000010", resumed / "checkpoints" / "step-0000010")
    run(tiny_args(shapes_dir, resumed, image_tokenizer_dir, *ckpt, "--resume_from_checkpoint", "latest"))
    a, b = losses(full), losses(resumed)
    assert sorted(b) == [15, 20]  # continued after step 10, did not restart
    assert b[15] == pytest.approx(a[15], rel=1e-6)
    assert b[20] == pytest.approx(a[20], rel=1e-6)
    wa, wb = weights(full / "pipeline"), weights(resumed / "pipeline")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# --- fine-tuning -----------------------------------------------------------------------------


def test_init_from_a_pipeline_fine_tunes_with_frozen_blocks(trained, shapes_dir, tmp_path):
    before = weights(trained / "pipeline")
    out = tmp_path / "finetune"
    run(
        tiny_args(
            shapes_dir,
            out,
            None,
            "--max_steps",
            "10",
            "--init_from",
            str(trained / "pipeline"),
            "--freeze_blocks",
            "1",
            "--freeze_embeddings",
            "--learning_rate",
            "1e-3",
        )
    )
    after = weights(out / "pipeline")
    assert after.keys() == before.keys()
    frozen = [k for k in before if k.startswith(("blocks.0.", "token_emb.", "text_pos.", "row_emb.", "col_emb."))]
    trained_keys = [k for k in before if k not in frozen]
    assert any(k.startswith("blocks.0.") for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(k.startswith("blocks.1.") for k in trained_keys)
    for key in trained_keys:  # every weight of the other blocks and the heads moved
        assert not torch.equal(before[key], after[key]), key
    pipe = MiniDallePipeline.from_pretrained(out / "pipeline", device="cpu")
    assert pipe.prior.config.text_len == 16  # a fine-tuned prior keeps its text length (unless asked for more)
    # the inherited tokenizers: the same image tokenizer and text tokenizer as the run it came from
    index_a = json.loads((trained / "pipeline" / "model_index.json").read_text())
    index_b = json.loads((out / "pipeline" / "model_index.json").read_text())
    assert index_a["image_tokenizer_hash"] == index_b["image_tokenizer_hash"]
    assert not (out / "text_tokenizer").exists()
    assert (out / "pipeline" / "text_tokenizer" / "tokenizer.json").read_text() == (
        trained / "pipeline" / "text_tokenizer" / "tokenizer.json"
    ).read_text()


def test_init_from_without_freezing_trains_everything(trained, shapes_dir, tmp_path):
    before = weights(trained / "pipeline")
    out = tmp_path / "finetune-all"
    run(tiny_args(shapes_dir, out, None, "--max_steps", "3", "--init_from", str(trained / "pipeline")))
    after = weights(out / "pipeline")
    assert not torch.equal(before["blocks.0.qkv.weight"], after["blocks.0.qkv.weight"])
    assert not torch.equal(before["token_emb.weight"], after["token_emb.weight"])


def test_dropout_is_recorded_and_a_fine_tune_keeps_its_bases_unless_asked(trained, shapes_dir, tmp_path):
    def fine_tune(out: Path, base: Path, *extra: str) -> float:
        run(tiny_args(shapes_dir, out, None, "--max_steps", "2", "--init_from", str(base / "pipeline"), *extra))
        return Prior.from_pretrained(out / "pipeline" / "prior").config.dropout

    assert Prior.from_pretrained(trained / "pipeline" / "prior").config.dropout == 0.0  # the default
    assert fine_tune(tmp_path / "base", trained, "--dropout", "0.2") == 0.2
    assert fine_tune(tmp_path / "kept", tmp_path / "base") == 0.2
    assert fine_tune(tmp_path / "changed", tmp_path / "base", "--dropout", "0") == 0.0
    with pytest.raises(UserError, match="--dropout"):
        fine_tune(tmp_path / "bad", trained, "--dropout", "1")


def test_init_from_with_another_image_tokenizer_is_a_user_error(trained, shapes_dir, tmp_path):
    other = make_image_tokenizer(1).save_pretrained(tmp_path / "other_tokenizer")
    with pytest.raises(UserError, match=f"{re.escape(str(other))}.*trained with image tokenizer"):
        run(tiny_args(shapes_dir, tmp_path / "x", other, "--max_steps", "2", "--init_from", str(trained / "pipeline")))


def test_bad_flags_give_clear_errors(shapes_dir, image_tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match="--preset"):
        run(tiny_args(shapes_dir, tmp_path / "a", image_tokenizer_dir, "--preset", "huge"))
    with pytest.raises(UserError, match="--image_tokenizer is required"):
        run(tiny_args(shapes_dir, tmp_path / "b", None))
    with pytest.raises(UserError, match="not a saved minidalle image tokenizer|no such folder"):
        run(tiny_args(shapes_dir, tmp_path / "c", tmp_path / "missing-tokenizer"))


# --- two processes ---------------------------------------------------------------------------


def test_two_cpu_processes_train_in_sync(shapes_dir, image_tokenizer_dir, tmp_path, run_two_cpu_processes):
    out = tmp_path / "ddp"
    summary = run_two_cpu_processes(
        "train_prior.py", tiny_args(shapes_dir, out, image_tokenizer_dir, "--max_steps", "10"), out
    )
    assert summary["num_processes"] == 2
    assert summary["ranks_in_sync"] is True
    assert summary["step"] == 10
    MiniDallePipeline.from_pretrained(out / "pipeline", device="cpu")
