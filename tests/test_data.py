"""Loading captioned imagefolders (minidalle/data.py): validation, conversion, transforms.

Everything runs offline against folders written under tmp_path; the `datasets`
cache also goes to tmp_path, so nothing outside it is touched.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minidalle.data import (
    CaptionedImages,
    DataArguments,
    ImageTransform,
    load_captioned_dataset,
    load_image_tensor,
    to_rgb,
)
from minidalle.data.shapes import make_shapes
from minidalle.errors import UserError

NUM_SHAPES = 40


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network and a private `datasets` cache for every test.

    `datasets` and `huggingface_hub` read the offline variables once, at import,
    so the module-level values they already hold are patched too.
    """
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


SHAPES_IMAGES = NUM_SHAPES  # the size of the shared `shapes_dir` fixture (conftest.py)


def read_metadata(folder: Path) -> list[dict]:
    with open(folder / "metadata.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_metadata(folder: Path, rows: list[dict]) -> None:
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def small_shapes(folder: Path, num: int, seed: int = 0) -> list[dict]:
    make_shapes(folder, "train", num, seed=seed, progress=False)
    return read_metadata(folder)


def image_paths(ds, column: str = "image") -> list[str]:
    """The source file of each row, without decoding."""
    import datasets

    return [value["path"] for value in ds.cast_column(column, datasets.Image(decode=False))[column]]


def relative_names(ds, folder: Path) -> list[str]:
    return [Path(p).relative_to(folder).as_posix() for p in image_paths(ds)]


def noise_bytes(fmt: str, seed: int, size: int = 48) -> bytes:
    """An incompressible image, so cutting the file in half cuts its pixel data."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def png_roundtrip(image: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    buf.seek(0)
    return Image.open(buf)


def rgb(image: Image.Image) -> np.ndarray:
    converted = to_rgb(image)
    assert converted.mode == "RGB"
    assert converted.size == image.size
    return np.asarray(converted).astype(int)


# --- loading an imagefolder ----------------------------------------------------------


def test_loads_shapes_imagefolder_offline_with_matching_captions(shapes_dir):
    ds = load_captioned_dataset(DataArguments(data=str(shapes_dir), resolution=64))
    assert len(ds) == NUM_SHAPES
    assert {"image", "text"} <= set(ds.column_names)
    caption_of = {row["file_name"]: row["text"] for row in read_metadata(shapes_dir)}
    names = relative_names(ds, shapes_dir)
    assert sorted(names) == sorted(caption_of)
    assert ds["text"] == [caption_of[name] for name in names]


def test_captioned_images_are_the_png_pixels_exactly(shapes_dir):
    args = DataArguments(data=str(shapes_dir), resolution=64)
    ds = load_captioned_dataset(args)
    items = CaptionedImages(ds, args)
    assert len(items) == NUM_SHAPES
    paths = image_paths(ds)
    for i in range(0, NUM_SHAPES, 7):
        item = items[i]
        pixels = item["pixel_values"]
        assert pixels.dtype == torch.float32
        assert pixels.shape == (3, 64, 64)
        assert 0.0 <= pixels.min() and pixels.max() <= 1.0
        png = torch.from_numpy(np.asarray(Image.open(paths[i]).convert("RGB")).copy()).permute(2, 0, 1)
        assert torch.equal((pixels * 255).round().to(torch.uint8), png)
        assert pixels.max() > 0  # a shape is drawn, not an all-black canvas
        assert item["caption"] == ds[i]["text"]
        assert item["index"] == i


def test_metadata_csv_imagefolder_loads(tmp_path):
    folder = tmp_path / "csv"
    rows = small_shapes(folder, 5)
    (folder / "metadata.jsonl").unlink()
    with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        for row in rows:
            writer.writerow([row["file_name"], row["text"]])
    ds = load_captioned_dataset(DataArguments(data=str(folder)))
    caption_of = {row["file_name"]: row["text"] for row in rows}
    names = relative_names(ds, folder)
    assert sorted(names) == sorted(caption_of)
    assert ds["text"] == [caption_of[name] for name in names]


def test_missing_caption_column_names_it_and_lists_columns(tmp_path):
    folder = tmp_path / "cap"
    rows = small_shapes(folder, 4)
    write_metadata(folder, [{"file_name": r["file_name"], "caption": r["text"]} for r in rows])
    with pytest.raises(UserError) as err:
        load_captioned_dataset(DataArguments(data=str(folder)))
    message = str(err.value)
    assert "'text'" in message
    assert "image" in message and "caption" in message
    assert "--caption_column" in message

    ds = load_captioned_dataset(DataArguments(data=str(folder), caption_column="caption"))
    caption_of = {r["file_name"]: r["text"] for r in rows}
    assert ds["caption"] == [caption_of[name] for name in relative_names(ds, folder)]
    item = CaptionedImages(ds, DataArguments(data=str(folder), caption_column="caption"))[0]
    assert item["caption"] == ds[0]["caption"]


# --- bad examples ---------------------------------------------------------------------


@pytest.fixture
def folder_with_bad_examples(tmp_path):
    """8 good shapes + 1 good JPEG, and 5 bad examples; returns (folder, {bad name: problem word}, good names)."""
    folder = tmp_path / "bad"
    rows = small_shapes(folder, 12)  # rows 0-3 are spoiled below, 4-11 stay good
    (folder / "images" / "good.jpg").write_bytes(noise_bytes("JPEG", seed=1))
    rows.append({"file_name": "images/good.jpg", "text": "noise, as a jpeg"})
    bad = {
        rows[0]["file_name"]: "caption",
        rows[1]["file_name"]: "zero-byte",
        rows[2]["file_name"]: "unreadable",
        rows[3]["file_name"]: "truncated",
        "images/cut.jpg": "truncated",
    }
    rows[0]["text"] = "   "
    (folder / rows[1]["file_name"]).write_bytes(b"")
    (folder / rows[2]["file_name"]).write_bytes(np.random.default_rng(0).bytes(600))
    whole_png = noise_bytes("PNG", seed=2)
    (folder / rows[3]["file_name"]).write_bytes(whole_png[: len(whole_png) // 2])
    whole_jpeg = noise_bytes("JPEG", seed=3)
    (folder / "images" / "cut.jpg").write_bytes(whole_jpeg[: len(whole_jpeg) // 2])
    rows.append({"file_name": "images/cut.jpg", "text": "half a jpeg"})
    write_metadata(folder, rows)
    good = [r["file_name"] for r in rows if r["file_name"] not in bad]
    assert len(good) == 9 and len(rows) == 14
    return folder, bad, good


def test_bad_examples_reported_in_one_error(folder_with_bad_examples):
    folder, bad, good = folder_with_bad_examples
    with pytest.raises(UserError) as err:
        load_captioned_dataset(DataArguments(data=str(folder)))
    message = str(err.value)
    assert "5 bad example(s) of 14" in message
    lines = message.splitlines()
    for name, problem in bad.items():
        matching = [line for line in lines if line.rstrip().split(":")[0].endswith(name)]
        assert len(matching) == 1, (name, message)
        assert problem in matching[0], (name, matching[0])
    for name in good:
        assert name not in message
    assert "--skip_bad_examples" in message


def test_skip_bad_examples_keeps_the_rest_and_logs_the_count(folder_with_bad_examples, caplog):
    folder, bad, good = folder_with_bad_examples
    args = DataArguments(data=str(folder), resolution=32, skip_bad_examples=True)
    with caplog.at_level(logging.WARNING, logger="minidalle.data"):
        ds = load_captioned_dataset(args)
    assert sorted(relative_names(ds, folder)) == sorted(good)
    summary = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(summary) == 1
    assert re.search(r"\b5 bad example", summary[0]), summary[0]
    for name in bad:
        assert any(name in r.getMessage() for r in caplog.records), name
    items = CaptionedImages(ds, args)
    for i in range(len(items)):  # every kept example decodes
        assert items[i]["pixel_values"].shape == (3, 32, 32)
        assert items[i]["caption"].strip()


def test_all_examples_bad_with_skip_leaves_nothing(tmp_path):
    folder = tmp_path / "allbad"
    rows = small_shapes(folder, 2)
    rows[0]["text"] = ""
    (folder / rows[1]["file_name"]).write_bytes(b"")
    write_metadata(folder, rows)
    with pytest.raises(UserError, match="nothing left"):
        load_captioned_dataset(DataArguments(data=str(folder), skip_bad_examples=True))


# --- folders and splits ---------------------------------------------------------------


def test_nonexistent_folder_is_a_user_error(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(UserError, match="no such folder") as err:
        load_captioned_dataset(DataArguments(data=str(missing)))
    assert str(missing) in str(err.value)


def test_metadata_not_utf8_is_a_user_error(tmp_path):
    folder = tmp_path / "latin1"
    rows = small_shapes(folder, 3)
    rows[1]["text"] = "un carré rouge"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (folder / "metadata.jsonl").write_bytes(text.encode("latin-1"))
    with pytest.raises(UserError) as err:
        load_captioned_dataset(DataArguments(data=str(folder)))
    assert "UTF-8" in str(err.value)
    assert str(folder) in str(err.value)


def test_splits_from_subfolders_and_unknown_split_lists_them(tmp_path):
    small_shapes(tmp_path / "data" / "train", 4, seed=0)
    test_rows = small_shapes(tmp_path / "data" / "test", 3, seed=1)
    data = str(tmp_path / "data")
    assert len(load_captioned_dataset(DataArguments(data=data))) == 4
    test = load_captioned_dataset(DataArguments(data=data, split="test"))
    assert sorted(test["text"]) == sorted(r["text"] for r in test_rows)
    with pytest.raises(UserError) as err:
        load_captioned_dataset(DataArguments(data=data, split="validation"))
    message = str(err.value)
    assert "'validation'" in message
    assert "train" in message and "test" in message


def test_max_examples_limits_the_count(shapes_dir):
    ds = load_captioned_dataset(DataArguments(data=str(shapes_dir), max_examples=5))
    assert len(ds) == 5
    full = load_captioned_dataset(DataArguments(data=str(shapes_dir)))
    assert ds["text"] == full["text"][:5]
    assert len(load_captioned_dataset(DataArguments(data=str(shapes_dir), max_examples=10_000))) == NUM_SHAPES


def test_max_examples_validates_only_the_kept_examples(tmp_path):
    folder = tmp_path / "tail"
    rows = small_shapes(folder, 4)
    (folder / rows[3]["file_name"]).write_bytes(b"")
    with pytest.raises(UserError, match="zero-byte"):
        load_captioned_dataset(DataArguments(data=str(folder)))
    ds = load_captioned_dataset(DataArguments(data=str(folder), max_examples=3))
    assert sorted(relative_names(ds, folder)) == sorted(r["file_name"] for r in rows[:3])


def test_load_image_tensor_equals_captioned_images(shapes_dir):
    args = DataArguments(data=str(shapes_dir), resolution=32, max_examples=12)
    ds = load_captioned_dataset(args)
    tensor = load_image_tensor(ds, args, progress=False)
    assert tensor.dtype == torch.uint8
    assert tensor.shape == (12, 3, 32, 32)
    items = CaptionedImages(ds, args)
    expected = torch.stack([(items[i]["pixel_values"] * 255).round().to(torch.uint8) for i in range(len(items))])
    assert torch.equal(tensor, expected)
    assert tensor.float().std() > 0


# --- to_rgb ---------------------------------------------------------------------------


def test_rgba_composites_transparency_on_white():
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue
    image.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black
    out = rgb(image)
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 0, 255]
    assert np.abs(out[0, 2] - 127).max() <= 1


def test_la_composites_on_white():
    image = Image.new("LA", (3, 1))
    image.putpixel((0, 0), (0, 0))  # transparent black
    image.putpixel((1, 0), (0, 255))  # opaque black
    image.putpixel((2, 0), (100, 255))
    out = rgb(image)
    assert out[0].tolist() == [[255, 255, 255], [0, 0, 0], [100, 100, 100]]


def palette_image(transparent_index: int | None) -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
    return png_roundtrip(image)


def test_palette_without_transparency():
    image = palette_image(None)
    assert image.mode == "P" and "transparency" not in image.info
    assert rgb(image)[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_palette_with_transparency_composites_on_white():
    image = palette_image(0)
    assert image.mode == "P" and "transparency" in image.info
    assert rgb(image)[0].tolist() == [[255, 255, 255], [0, 0, 255]]


def test_grayscale_l():
    image = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), mode="L")
    assert rgb(image)[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]


def test_cmyk():
    image = Image.new("CMYK", (3, 1))
    image.putpixel((0, 0), (0, 255, 255, 0))  # red
    image.putpixel((1, 0), (0, 0, 0, 0))  # white
    image.putpixel((2, 0), (0, 0, 0, 255))  # black
    assert rgb(image)[0].tolist() == [[255, 0, 0], [255, 255, 255], [0, 0, 0]]


def test_16_bit_grayscale_scales_to_8_bit():
    values = np.array([[0, 257 * 64, 32768, 65535]], dtype=np.uint16)
    image = png_roundtrip(Image.fromarray(values))
    assert image.mode.startswith("I")
    out = rgb(image)
    assert out[0].tolist() == [[0] * 3, [64] * 3, [128] * 3, [255] * 3]


def test_dark_16_bit_image_stays_dark():
    # every value <= 255 out of 65535: nearly black, not a full-range 8-bit picture
    values = np.array([[0, 128, 255]], dtype=np.uint16)
    image = png_roundtrip(Image.fromarray(values))
    assert image.mode == "I;16"
    assert rgb(image).max() <= 1


def test_float_image_in_0_1_is_read_on_that_scale_and_0_255_as_it_is():
    unit = Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0, np.nan]], dtype=np.float32))
    assert unit.mode == "F"
    assert rgb(unit)[0, :, 0].tolist() == [0, 64, 128, 255, 0]  # PIL alone would give 0, 0, 0, 1, 0
    wide = Image.fromarray(np.array([[0.0, 100.0, 255.0, 300.0]], dtype=np.float32))
    assert rgb(wide)[0, :, 0].tolist() == [0, 100, 255, 255]


# --- ImageTransform -------------------------------------------------------------------


def coordinate_image(width: int, height: int) -> Image.Image:
    """Red channel = x, green channel = y: a crop shows where it was taken."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    return Image.fromarray(array)


def crop_origin(pixels: torch.Tensor) -> tuple[int, int]:
    """(left, top) of a crop of `coordinate_image`, checking it is one contiguous window."""
    values = (pixels * 255).round().long()
    r = pixels.shape[-1]
    left, top = int(values[0, 0, 0]), int(values[1, 0, 0])
    assert torch.equal(values[0], (left + torch.arange(r)).expand(r, r))
    assert torch.equal(values[1], (top + torch.arange(r))[:, None].expand(r, r))
    return left, top


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "1"])
def test_transform_gives_float_rgb_tensor_for_every_mode(mode):
    image = (
        Image.new("RGB", (40, 24), (200, 100, 50)).convert(mode)
        if mode != "I;16"
        else Image.new("I;16", (40, 24), 30000)
    )
    pixels = ImageTransform(16)(image)
    assert pixels.dtype == torch.float32
    assert pixels.shape == (3, 16, 16)
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0


def test_small_image_is_upscaled_and_cropped():
    solid = Image.new("RGB", (10, 10), (10, 200, 30))
    pixels = ImageTransform(64)(solid)
    assert pixels.shape == (3, 64, 64)
    colour = torch.tensor([10, 200, 30]).view(3, 1, 1)
    assert ((pixels * 255).round() - colour).abs().max() <= 1

    tall = ImageTransform(64)(Image.new("RGB", (8, 20), (0, 0, 255)))
    assert tall.shape == (3, 64, 64)


def test_wide_image_keeps_the_centre():
    pixels = ImageTransform(64)(coordinate_image(128, 64))
    assert pixels.shape == (3, 64, 64)
    assert crop_origin(pixels) == (32, 0)


def test_tall_image_keeps_the_centre():
    pixels = ImageTransform(64)(coordinate_image(64, 100))
    assert crop_origin(pixels) == (0, 18)


def test_non_square_downscaled_keeps_the_middle():
    # left quarter red, middle half green, right quarter blue; 256x128 -> 64x32 -> centre 32x32
    array = np.zeros((128, 256, 3), dtype=np.uint8)
    array[:, :64] = (255, 0, 0)
    array[:, 64:192] = (0, 255, 0)
    array[:, 192:] = (0, 0, 255)
    pixels = ImageTransform(32)(Image.fromarray(array))
    assert pixels.shape == (3, 32, 32)
    inner = pixels[:, :, 2:-2]  # away from the resampling edges
    assert inner[1].min() > 0.9 and inner[0].max() < 0.1 and inner[2].max() < 0.1


def test_random_crop_varies_with_the_generator_and_keeps_size():
    # the short side is resized to R, so only the long side leaves room to move
    wide, tall = coordinate_image(160, 64), coordinate_image(64, 100)
    origins = []
    for seed in range(12):
        pixels = ImageTransform(64, random_crop=True, generator=torch.Generator().manual_seed(seed))(wide)
        assert pixels.shape == (3, 64, 64)
        origins.append(crop_origin(pixels))
    assert all(0 <= left <= 96 and top == 0 for left, top in origins)
    assert len(set(origins)) > 3
    again = [
        crop_origin(ImageTransform(64, random_crop=True, generator=torch.Generator().manual_seed(seed))(wide))
        for seed in range(12)
    ]
    assert again == origins  # the generator's state decides the crop
    torch.manual_seed(7)  # by default the crops come from torch's default generator (saved in checkpoints)
    first = [crop_origin(ImageTransform(64, random_crop=True)(wide)) for _ in range(6)]
    torch.manual_seed(7)
    assert [crop_origin(ImageTransform(64, random_crop=True)(wide)) for _ in range(6)] == first
    assert crop_origin(ImageTransform(64)(wide)) == (48, 0)

    tops = [
        crop_origin(ImageTransform(64, random_crop=True, generator=torch.Generator().manual_seed(seed))(tall))
        for seed in range(12)
    ]
    assert all(left == 0 and 0 <= top <= 36 for left, top in tops)
    assert len(set(tops)) > 3


def test_random_crops_are_a_function_of_seed_epoch_and_example(tmp_path):
    """In training, a crop depends on (seed, epoch, index) only: DataLoader workers crop their examples differently
    (a private random.Random(0) used to repeat itself in every worker), epochs differ, and a resumed run, whatever
    the loader read ahead, crops as an uninterrupted one."""
    folder = tmp_path / "wide"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(8):
        coordinate_image(160, 64).save(folder / f"images/{i}.png")
        rows.append({"file_name": f"images/{i}.png", "text": "a wide picture"})
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = DataArguments(data=str(folder), resolution=64, random_crop=True)
    images = CaptionedImages(load_captioned_dataset(args), args, seed=3)

    def crops(num_workers: int) -> list[tuple[int, int]]:
        loader = torch.utils.data.DataLoader(images, batch_size=1, num_workers=num_workers)
        return [crop_origin(batch["pixel_values"][0]) for batch in loader]

    two_workers = crops(2)  # worker 0 makes items 0, 2, ...; worker 1 items 1, 3, ...
    assert two_workers[0::2] != two_workers[1::2] and len(set(two_workers)) > 3
    torch.manual_seed(123)  # the global RNG plays no part
    assert crops(0) == two_workers
    images.set_epoch(1)
    assert crops(0) != two_workers


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "bomb"
    rows = small_shapes(folder, 3)
    big = Image.new("RGB", (200, 200), "red")  # a "bomb" once the pixel limit is lowered below its size
    big.save(folder / rows[1]["file_name"])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200 // 4)  # PIL refuses over twice the limit
    with pytest.raises(UserError) as err:
        load_captioned_dataset(DataArguments(data=str(folder)))
    line = next(line for line in str(err.value).splitlines() if rows[1]["file_name"] in line)
    assert "decompression bomb refused" in line
    kept = load_captioned_dataset(DataArguments(data=str(folder), skip_bad_examples=True))
    assert len(kept) == 2
