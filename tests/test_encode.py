"""Encode once (codes cached with the image tokenizer's hash), the codebook sheet, reconstructions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from minidalle.cli.codes import codebook_main, reconstruct_main
from minidalle.data import DataArguments
from minidalle.errors import UserError
from minidalle.image_tokenizers import DiscreteVAE, DVAEConfig
from minidalle.training.encode import INFO_NAME, encode_to_disk, load_codes

NUM_CODES = 17  # not a square: the sheet has ceil(sqrt(17)) = 5 tiles a row, 4 rows, 3 blank tiles
SIZE = 32


SHAPES_IMAGES = 20  # the size of the shared `shapes_dir` fixture (conftest.py)


@pytest.fixture(scope="module")
def metadata(shapes_dir):
    return [json.loads(line) for line in (shapes_dir / "metadata.jsonl").read_text().splitlines()]


def make_tokenizer(seed: int) -> DiscreteVAE:
    torch.manual_seed(seed)
    config = DVAEConfig(image_size=SIZE, num_codes=NUM_CODES, codebook_dim=8, widths=[8, 16], res_blocks=0)
    return DiscreteVAE(config).eval()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return make_tokenizer(0).save_pretrained(tmp_path_factory.mktemp("tok") / "image_tokenizer")


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir):
    return DiscreteVAE.from_pretrained(tokenizer_dir)


def load_images(shapes_dir, metadata) -> torch.Tensor:
    """The shapes PNGs (64x64) brought to the tokenizer's size the way the data pipeline does: (N, 3, 32, 32)."""
    out = []
    for row in metadata:
        with Image.open(shapes_dir / row["file_name"]) as im:
            im = im.convert("RGB").resize((SIZE, SIZE), Image.LANCZOS)
            out.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(out)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tokenizer_dir, shapes_dir):
    out = tmp_path_factory.mktemp("codes") / "shapes-codes"
    result = encode_to_disk(tokenizer_dir, DataArguments(data=str(shapes_dir)), out, batch_size=8, progress=False)
    assert result == out
    return out


# --- encode once -------------------------------------------------------------------------


def test_encoded_rows_are_the_tokenizer_codes_and_captions(encoded, tokenizer, shapes_dir, metadata):
    import datasets

    ds = datasets.load_from_disk(str(encoded))
    assert len(ds) == 20
    assert set(ds.column_names) == {"codes", "caption"}
    assert ds["caption"] == [row["text"] for row in metadata]
    codes = torch.tensor(ds["codes"], dtype=torch.long)
    assert codes.shape == (20, tokenizer.grid_size**2)
    expected = tokenizer.get_codebook_indices(load_images(shapes_dir, metadata))
    assert torch.equal(codes, expected)
    assert len(set(map(tuple, codes.tolist()))) > 1  # different images, different codes


def test_codes_info_names_the_tokenizer(encoded, tokenizer, shapes_dir):
    info = json.loads((encoded / INFO_NAME).read_text())
    assert info["tokenizer_hash"] == tokenizer.codes_hash()
    assert info["num_codes"] == NUM_CODES
    assert info["grid_size"] == tokenizer.grid_size == 8
    assert info["num_examples"] == 20
    assert info["data"] == str(shapes_dir)


def test_load_codes_checks_the_tokenizer_hash(encoded, tokenizer):
    other = make_tokenizer(1)
    assert other.codes_hash() != tokenizer.codes_hash()
    with pytest.raises(UserError) as err:
        load_codes(encoded, expected_hash=other.codes_hash())
    assert str(encoded) in str(err.value) and other.codes_hash() in str(err.value)

    ds, info = load_codes(encoded, expected_hash=tokenizer.codes_hash())
    assert info["tokenizer_hash"] == tokenizer.codes_hash()
    assert len(ds) == 20
    codes = ds[:]["codes"]  # (N, h*w), as stage 2 reads it
    assert isinstance(codes, torch.Tensor) and codes.shape == (20, 64)
    assert int(codes.min()) >= 0 and int(codes.max()) < NUM_CODES
    # the cached codes decode as they are (int16)
    images = tokenizer.decode(codes[:2])
    assert images.shape == (2, 3, SIZE, SIZE)
    assert load_codes(encoded)[1] == info  # no hash given: no check


def test_load_codes_of_a_folder_that_is_not_encoded_raises(tmp_path, shapes_dir):
    with pytest.raises(UserError, match=INFO_NAME):
        load_codes(shapes_dir)
    with pytest.raises(UserError):
        load_codes(tmp_path / "nowhere")


def test_encode_over_an_existing_folder_replaces_it(tmp_path, shapes_dir):
    out = tmp_path / "codes"
    first, second = make_tokenizer(0), make_tokenizer(1)
    encode_to_disk(first, DataArguments(data=str(shapes_dir), max_examples=5), out, progress=False)
    encode_to_disk(second, DataArguments(data=str(shapes_dir), max_examples=7), out, progress=False)
    ds, info = load_codes(out, expected_hash=second.codes_hash())
    assert len(ds) == 7 and info["num_examples"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes"]  # no temporary folder left


def test_encode_with_a_bad_tokenizer_folder_raises_user_error(tmp_path, shapes_dir):
    with pytest.raises(UserError):
        encode_to_disk(tmp_path / "missing", DataArguments(data=str(shapes_dir)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# --- the codebook sheet --------------------------------------------------------------------


def read_png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def tile(sheet: np.ndarray, index: int, cols: int) -> np.ndarray:
    r, c = divmod(index, cols)
    return sheet[r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE]


def code_image(tokenizer: DiscreteVAE, code: int) -> np.ndarray:
    g = tokenizer.grid_size
    image = tokenizer.decode(torch.full((1, g, g), code))[0]
    return (image.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def test_codebook_sheet_has_every_code_in_order(tmp_path, tokenizer_dir, tokenizer, capsys):
    png = tmp_path / "sheet" / "codebook.png"
    codebook_main(["--tokenizer", str(tokenizer_dir), "--out", str(png)])
    assert str(png) in capsys.readouterr().out
    sheet = read_png(png)
    cols = math.ceil(math.sqrt(NUM_CODES))
    rows = math.ceil(NUM_CODES / cols)
    assert (cols, rows) == (5, 4)
    assert sheet.shape == (rows * SIZE, cols * SIZE, 3)
    for code in (0, 1, 7, NUM_CODES - 1):
        assert np.array_equal(tile(sheet, code, cols), code_image(tokenizer, code)), code
    for blank in range(NUM_CODES, rows * cols):
        assert not tile(sheet, blank, cols).any()


def test_codebook_sheet_with_data_orders_codes_by_use(tmp_path, tokenizer_dir, tokenizer, shapes_dir, metadata, capsys):
    png = tmp_path / "used.png"
    codebook_main(["--tokenizer", str(tokenizer_dir), "--out", str(png), "--data", str(shapes_dir)])
    printed = capsys.readouterr().out
    codes = tokenizer.get_codebook_indices(load_images(shapes_dir, metadata))
    counts = torch.bincount(codes.flatten(), minlength=NUM_CODES)
    assert f"{int((counts > 0).sum())} of {NUM_CODES} codes used by 20 images" in printed
    sheet = read_png(png)
    assert sheet.shape == (4 * SIZE, 5 * SIZE, 3)
    most_used = int(counts.argmax())
    assert np.array_equal(tile(sheet, 0, 5), code_image(tokenizer, most_used))
    # every code still appears once: the sheet is a permutation of the plain one
    plain = {code_image(tokenizer, k).tobytes() for k in range(NUM_CODES)}
    assert {tile(sheet, i, 5).tobytes() for i in range(NUM_CODES)} == plain


def test_codebook_without_tokenizer_raises_user_error(tmp_path):
    with pytest.raises(UserError, match="--image_tokenizer"):
        codebook_main(["--out", str(tmp_path / "x.png")])


# --- reconstructions -----------------------------------------------------------------------


def test_reconstruct_writes_images_and_a_manifest(tmp_path, tokenizer_dir, tokenizer, shapes_dir, metadata):
    out = tmp_path / "recon"
    reconstruct_main(
        ["--image_tokenizer", str(tokenizer_dir), "--data", str(shapes_dir), "--out", str(out), "--batch_size", "8"]
    )
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 20
    rows = [json.loads(line) for line in lines]
    expected = tokenizer.reconstruct(load_images(shapes_dir, metadata))
    for i, row in enumerate(rows):
        assert {"prompt", "file"} <= set(row)
        assert isinstance(row["prompt"], str) and row["prompt"].strip()
        assert row["original_caption"] == metadata[i]["text"]
        path = out / row["file"]
        assert path.is_file()
        image = read_png(path)
        assert image.shape == (SIZE, SIZE, 3)
        want = (expected[i].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(image, want), row["file"]
    assert len({row["file"] for row in rows}) == 20
    summary = json.loads((out / "reconstruct.json").read_text())
    assert summary["images"] == 20
    assert math.isfinite(summary["psnr"])
    assert summary["tokenizer_hash"] == tokenizer.codes_hash()
    assert 0 < summary["codebook_usage"] <= 1


def test_reconstruct_requires_its_arguments(tmp_path, shapes_dir):
    with pytest.raises(UserError, match="--image_tokenizer and --out"):
        reconstruct_main(["--data", str(shapes_dir), "--out", str(tmp_path / "r")])
