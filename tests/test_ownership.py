"""Nothing is lost: a command replaces or deletes only what minidalle wrote, of the same kind; anything else stops
it before any work, naming the folder. Re-runs into their own output remove their own earlier files only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from minidalle.cli.codes import encode_main, reconstruct_main
from minidalle.cli.datasets import make_shapes_main
from minidalle.cli.export_pipeline import export_pipeline_main
from minidalle.cli.sample import main as sample_main
from minidalle.errors import UserError
from minidalle.folders import OUTPUT_MARKER
from minidalle.image_tokenizers import DiscreteVAE

SHAPES_IMAGES = 12  # the size of the shared `shapes_dir` fixture (conftest.py)


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_image_tokenizer_dir) -> Path:
    return tiny_image_tokenizer_dir


@pytest.fixture(scope="module")
def pipeline_dir(tiny_pipeline_dir) -> Path:
    return tiny_pipeline_dir


def users_folder(root: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder of the user's own: an imagefolder export plus notes. Returns it and its files' contents."""
    folder = root / "mydata"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "000000.png").write_bytes(b"\x89PNG not really")
    (folder / "metadata.jsonl").write_text('{"file_name": "images/000000.png", "text": "mine"}\n')
    (folder / "NOTES.txt").write_text("my notes\n")
    return folder, snapshot(folder)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_encode_onto_the_users_folder_is_refused_and_deletes_nothing(shapes_dir, tokenizer_dir, tmp_path):
    folder, before = users_folder(tmp_path)
    with pytest.raises(UserError, match="mydata: exists and does not hold an encoded dataset written by minidalle"):
        encode_main(["--image_tokenizer", str(tokenizer_dir), "--data", str(shapes_dir), "--out", str(folder)])
    assert snapshot(folder) == before
    with pytest.raises(UserError, match="--out .* is --data"):  # the case: --out names the data itself
        encode_main(["--image_tokenizer", str(tokenizer_dir), "--data", str(folder), "--out", str(folder)])
    with pytest.raises(UserError, match="is inside --data"):
        encode_main(["--image_tokenizer", str(tokenizer_dir), "--data", str(folder), "--out", str(folder / "codes")])
    assert snapshot(folder) == before


def test_encode_replaces_its_own_earlier_codes(shapes_dir, tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "codes"
    args = ["--image_tokenizer", str(tokenizer_dir), "--data", str(shapes_dir), "--out", str(out)]
    encode_main(args)
    encode_main(args)  # a codes folder of ours: replaced
    assert json.loads((out / "codes_info.json").read_text())["num_examples"] == SHAPES_IMAGES


def test_export_pipeline_onto_a_home_folder_is_refused(pipeline_dir, tmp_path):
    home, before = users_folder(tmp_path)
    with pytest.raises(UserError, match="mydata: exists and does not hold a minidalle pipeline"):
        export_pipeline_main(["--source", str(pipeline_dir), "--out", str(home)])
    assert snapshot(home) == before
    out = tmp_path / "small"
    export_pipeline_main(["--source", str(pipeline_dir), "--out", str(out)])
    export_pipeline_main(["--source", str(pipeline_dir), "--out", str(out)])  # ours: replaced
    assert (out / "model_index.json").is_file()


def test_a_model_folder_of_another_kind_is_not_replaced(pipeline_dir, tmp_path):
    prior_copy = tmp_path / "prior"
    shutil.copytree(pipeline_dir / "prior", prior_copy)
    before = snapshot(prior_copy)
    with pytest.raises(UserError, match="does not hold a saved minidalle image tokenizer"):
        DiscreteVAE.from_pretrained(pipeline_dir / "image_tokenizer").save_pretrained(prior_copy)
    assert snapshot(prior_copy) == before


def test_make_shapes_onto_a_larger_earlier_export_leaves_no_stale_image(tmp_path):
    out = tmp_path / "shapes"
    make_shapes_main(["--out", str(out), "--num", "7", "--workers", "1", "--no_progress"])
    (out / "NOTES.txt").write_text("kept\n")
    make_shapes_main(["--out", str(out), "--num", "3", "--workers", "1", "--no_progress"])
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 3
    assert (out / "NOTES.txt").read_text() == "kept\n"  # not a file make-shapes writes


def test_make_shapes_onto_the_users_folder_is_refused(tmp_path):
    folder, before = users_folder(tmp_path)
    with pytest.raises(UserError, match="holds files minidalle did not write"):
        make_shapes_main(["--out", str(folder), "--num", "2", "--workers", "1", "--no_progress"])
    assert snapshot(folder) == before


def test_an_export_of_another_kind_is_not_overwritten(tmp_path):
    out = tmp_path / "data"
    make_shapes_main(["--out", str(out), "--num", "2", "--workers", "1", "--no_progress"])
    from minidalle.data.exporters.mnist import export_mnist

    with pytest.raises(UserError, match="holds a minidalle shapes output, not mnist"):
        export_mnist(out, limit=1, progress=False)


def test_sample_into_its_own_earlier_output_removes_the_old_images_only(pipeline_dir, tmp_path):
    out = tmp_path / "samples"
    common = ["--model", str(pipeline_dir), "--out", str(out), "--num_candidates", "1"]
    sample_main(["a red circle", "a blue square", "--num_images", "3", *common])
    (out / "NOTES.txt").write_text("kept\n")
    sample_main(["a red circle", "--num_images", "1", *common])
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["grid-p000.png", "images/p000-i00.png"]
    assert [r["file"] for r in manifest] == ["images/p000-i00.png"]
    assert (out / "NOTES.txt").read_text() == "kept\n" and (out / OUTPUT_MARKER).is_file()


def test_sample_into_the_users_folder_is_refused_before_any_work(pipeline_dir, tmp_path):
    folder, before = users_folder(tmp_path)
    with pytest.raises(UserError, match="--out .*mydata: holds files minidalle did not write"):
        sample_main(["a red circle", "--model", str(pipeline_dir), "--out", str(folder)])
    assert snapshot(folder) == before


def test_reconstruct_inside_the_data_is_refused(shapes_dir, tokenizer_dir):
    with pytest.raises(UserError, match="is inside --data"):
        reconstruct_main(
            ["--image_tokenizer", str(tokenizer_dir), "--data", str(shapes_dir), "--out", str(shapes_dir / "recon")]
        )
    assert not (shapes_dir / "recon").exists()
