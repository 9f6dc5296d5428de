"""The emoji-styles dataset exporter and its judges.

Small fake Iconify tarballs are built here (no network); one test runs the real
`npm pack` of the smallest set, skipped only where npm is absent.
"""

from __future__ import annotations

import io
import json
import random
import shutil
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidalle.data.emoji_styles import export as E
from minidalle.errors import UserError

N_ITEMS = 24  # fake emoji "fake item 00".."fake item 23"
GROUPS = {"0": "smileys-emotion", "1": "people-body", "3": "animals-nature", "7": "objects"}
SUBGROUPS = {"0": "face-smiling", "10": "hand-fingers-open", "34": "animal-mammal", "70": "clothing", "71": "sound"}


def _tarball(path: Path, files: dict[str, object]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            raw = content if isinstance(content, bytes) else json.dumps(content).encode()
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def _package(source: Path, style: str, files: dict, share_alike: bool = False, chars_from: str = "") -> E.Package:
    name = f"@fake/{style}"
    probe = E.Package(style, name, "1.0.0", "", style.title(), share_alike, chars_from)
    path = _tarball(source / probe.file_name, files)
    return E.Package(style, name, "1.0.0", E.sha256_file(path), style.title(), share_alike, chars_from)


def _circle(colour: str, r: int = 9, c: int = 12) -> str:
    return f'<circle cx="{c}" cy="{c}" r="{r}" fill="{colour}"/>'


def _info(style: str, spdx: str) -> dict:
    return {
        "name": f"{style.title()} Emoji",
        "author": {"name": f"{style.title()} Authors", "url": f"https://{style}.example"},
        "license": {"title": spdx, "spdx": spdx, "url": f"https://licenses.example/{spdx}"},
    }


def _emojibase() -> dict:
    data = [
        {
            "label": f"fake item {i:02d}",
            "hexcode": f"E{i:03X}",
            "emoji": chr(0xE000 + i),
            "group": 7,
            "subgroup": 70 + i % 2,
        }
        for i in range(N_ITEMS)
    ]
    data += [
        {"label": "dog face", "hexcode": "1F436", "emoji": "\U0001f436", "group": 3, "subgroup": 34},
        {"label": "cat face", "hexcode": "1F431", "emoji": "\U0001f431", "group": 3, "subgroup": 34},
        {"label": "admission tickets", "hexcode": "1F39F-FE0F", "emoji": "\U0001f39f", "group": 7, "subgroup": 70},
        {
            "label": "waving hand",
            "hexcode": "1F44B",
            "emoji": "\U0001f44b",
            "group": 1,
            "subgroup": 10,
            "skins": [{"label": "waving hand: dark skin tone", "hexcode": "1F44B-1F3FF", "emoji": "x"}],
        },
        {"label": "regional indicator A", "hexcode": "1F1E6", "emoji": "A"},  # no group: never exported
    ]
    return {
        "en/data.json": data,
        "meta/groups.json": {"groups": GROUPS, "subgroups": SUBGROUPS},
        "meta/unicode-names.json": {"1F39F": "ADMISSION TICKETS", "1F436": "DOG FACE"},
    }


def make_source(source: Path) -> tuple[list[E.Package], E.Package]:
    """Four fake styles and a fake emojibase in `source`; returns their pinned tables."""
    source.mkdir(parents=True, exist_ok=True)
    palette = {"alpha": "#ff0000", "beta": "#00a000", "gamma": "#0000ff", "delta": "#a000a0"}
    # alpha: set-level 24x24, chars.json names every icon; a hidden icon; a skin tone named without "tone"
    alpha_icons = {f"thing-{i}": {"body": _circle(palette["alpha"])} for i in range(N_ITEMS)}
    alpha_icons["dog-face"] = {"body": _circle(palette["alpha"], 5)}
    alpha_icons["waving-hand"] = {"body": _circle(palette["alpha"], 7)}
    alpha_icons["waving-hand-dark"] = {"body": _circle("#402000", 7)}
    alpha_icons["secret"] = {"body": _circle("#000000"), "hidden": True}
    alpha_icons["wide"] = {"body": _circle(palette["alpha"], 3), "width": 48, "left": -12}
    alpha_chars = {f"e{i:03x}": f"thing-{i}" for i in range(N_ITEMS)}
    alpha_chars.update(
        {"1f436": "dog-face", "1f44b": "waving-hand", "1f44b-1f3ff": "waving-hand-dark", "1f39f-fe0f": "wide"}
    )
    alpha = _package(
        source,
        "alpha",
        {
            "icons.json": {
                "prefix": "alpha",
                "width": 24,
                "height": 24,
                "icons": alpha_icons,
                "aliases": {"dog": {"parent": "dog-face"}},
            },
            "info.json": _info("alpha", "MIT"),
            "chars.json": alpha_chars,
            "metadata.json": {},
        },
    )
    # beta: no chars.json, names are CLDR names; per-icon size; one SVG resvg cannot parse
    beta_icons = {
        f"fake-item-{i:02d}": {"body": _circle(palette["beta"], 14, 16), "width": 32, "height": 32} for i in range(20)
    }
    beta_icons["dog-face"] = {"body": _circle(palette["beta"], 14, 16), "width": 32, "height": 32}
    beta_icons["cat-face"] = {"body": '<path d="M0 0"', "width": 32, "height": 32}
    beta = _package(
        source, "beta", {"icons.json": {"prefix": "beta", "icons": beta_icons}, "info.json": _info("beta", "CC-BY-4.0")}
    )
    # gamma: run-together names (fxemoji-like), icons at Iconify's default 16x16
    gamma_icons = {f"fakeitem{i:02d}": {"body": _circle(palette["gamma"], 6, 8)} for i in range(16)}
    gamma_icons.update(
        {
            "dogface": {"body": _circle(palette["gamma"], 6, 8)},
            "admissiontickets": {"body": _circle(palette["gamma"], 6, 8)},
            "unknownthing": {"body": _circle(palette["gamma"], 6, 8)},
        }
    )
    gamma = _package(
        source,
        "gamma",
        {"icons.json": {"prefix": "gamma", "icons": gamma_icons}, "info.json": _info("gamma", "Apache-2.0")},
    )
    delta = _package(
        source,
        "delta",
        {
            "icons.json": {
                "prefix": "delta",
                "width": 24,
                "height": 24,
                "icons": {f"fake-item-{i:02d}": {"body": _circle(palette["delta"])} for i in range(10)},
            },
            "info.json": _info("delta", "CC-BY-SA-4.0"),
        },
        share_alike=True,
    )
    probe = E.Package("", "fake-emojibase", "1.0.0", "")
    path = _tarball(source / probe.file_name, _emojibase())
    emojibase = E.Package("", "fake-emojibase", "1.0.0", E.sha256_file(path))
    return [alpha, beta, gamma, delta], emojibase


def read_split(out: Path, split: str) -> list[dict]:
    path = out / split / "metadata.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("emoji")
    packages, emojibase = make_source(root / "source")
    return root, packages, emojibase


@pytest.fixture(scope="module")
def exported(fake):
    root, packages, emojibase = fake
    out = root / "out"
    summary = E.export_emoji_styles(
        out, resolution=24, source=root / "source", packages=packages, emojibase=emojibase, workers=1, progress=False
    )
    return out, summary


def export_again(fake, out, **kw):
    root, packages, emojibase = fake
    return E.export_emoji_styles(
        out,
        resolution=24,
        source=root / "source",
        packages=packages,
        emojibase=emojibase,
        workers=1,
        progress=False,
        **kw,
    )


# ---------------------------------------------------------------- SVG, captions, splits


def test_icon_svg_takes_icon_then_set_then_iconify_defaults():
    icon_set = {
        "width": 24,
        "height": 20,
        "icons": {
            "a": {"body": "<g/>"},
            "b": {"body": "<g/>", "width": 32, "left": -4},
            "c": {"body": "<g/>", "hFlip": True},
        },
    }
    assert 'viewBox="0 0 24 20"' in E.icon_svg(icon_set, "a")
    assert 'viewBox="-4 0 32 20"' in E.icon_svg(icon_set, "b")
    assert 'viewBox="0 0 16 16"' in E.icon_svg({"icons": {"a": {"body": "<g/>"}}}, "a")
    flipped = E.icon_svg(icon_set, "c")
    assert 'transform="translate(24 0) scale(-1 1)"' in flipped and flipped.endswith("<g/></g></svg>")


def test_render_composites_on_white_and_fills_the_square():
    png = E.render_png(E.icon_svg({"width": 24, "height": 24, "icons": {"a": {"body": _circle("#ff0000")}}}, "a"), 32)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (32, 32, 3)
    assert tuple(image[16, 16]) == (255, 0, 0) and tuple(image[0, 0]) == (255, 255, 255)
    wide = E.render_png(
        E.icon_svg({"icons": {"a": {"body": _circle("#0000ff", 9, 12), "width": 48, "height": 24}}}, "a"), 32
    )
    assert Image.open(io.BytesIO(wide)).size == (32, 32)


def test_caption_grammar_round_trips():
    assert E.caption("dog-face", "noto") == "a dog face in the noto style"
    assert E.caption("alien-monster", "fxemoji") == "an alien monster in the fxemoji style"
    assert E.parse_caption("An  Alien monster in the fxemoji style") == ("alien-monster", "fxemoji")
    assert E.concept_key("flag: Côte d’Ivoire") == "flag-cote-divoire"
    assert E.concept_key("keycap: #") == "keycap-number-sign"
    for bad in ("dog face", "a dog face in noto style", "a dog face in the noto"):
        with pytest.raises(ValueError, match="caption grammar"):
            E.parse_caption(bad)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_rule_properties(seed):
    rng = random.Random(seed)
    styles = [f"s{i}" for i in range(6)]
    pairs = []
    for c in range(300):
        for s in rng.sample(styles, rng.randint(1, 6)):
            pairs += [(f"c{c}", s)] * rng.choice([1, 1, 2])
    splits, held = E.assign_splits(pairs, seed)
    assert (splits, held) == E.assign_splits(pairs, seed)  # deterministic
    assert E.check_splits(pairs, splits, held) == []
    styles_of = defaultdict(set)
    for c, s in pairs:
        styles_of[c].add(s)
    eligible = [c for c in styles_of if len(styles_of[c]) >= 3]
    assert len(held) == round(0.1 * len(eligible)) and len({c for c, _ in held}) == len(held)
    held_set = set(held)
    for pair, split in zip(pairs, splits):
        assert (split == "zeroshot") == (pair in held_set)
    train = {p for p, s in zip(pairs, splits) if s == "train"}
    assert not train & held_set
    assert all(any(c == hc and s != hs for c, s in train) for hc, hs in held)
    n_rest = sum(s != "zeroshot" for s in splits)
    assert abs(Counter(splits)["test"] - 0.05 * n_rest) <= 2
    assert E.assign_splits(pairs, seed + 100)[1] != held


# ---------------------------------------------------------------- the export


def test_export_rows_captions_and_left_out(exported):
    out, summary = exported
    rows = [r for split in E.SPLITS for r in read_split(out, split)]
    by = {(r["style"], r["icon"]): r for r in rows}
    dog = by[("alpha", "dog-face")]
    assert dog["text"] == "a dog face in the alpha style"
    assert (dog["concept"], dog["group"], dog["subgroup"], dog["codepoints"]) == (
        "dog-face",
        "animals-nature",
        "animal-mammal",
        "1F436",
    )
    assert by[("alpha", "thing-3")]["concept"] == "fake-item-03"  # joined through chars.json
    assert by[("alpha", "wide")]["concept"] == "admission-tickets"  # FE0F dropped
    assert by[("gamma", "admissiontickets")]["concept"] == "admission-tickets"  # run-together name
    assert by[("gamma", "dogface")]["text"] == "a dog face in the gamma style"
    assert ("alpha", "secret") not in by  # hidden
    assert ("alpha", "waving-hand-dark") not in by and ("alpha", "waving-hand") in by  # skin tone by codepoint
    assert ("gamma", "unknownthing") not in by
    assert not any(r["style"] == "delta" for r in rows)  # share-alike needs the flag
    assert summary["left_out"]["alpha"] == {"hidden": 1, "skin tone": 1}
    assert summary["left_out"]["gamma"] == {"no Unicode emoji": 1}
    for r in rows:
        assert r["text"] == E.caption(r["concept"], r["style"]) and E.parse_caption(r["text"]) == (
            r["concept"],
            r["style"],
        )
    assert summary["totals"] == {s: len(read_split(out, s)) for s in E.SPLITS}
    assert len(rows) == N_ITEMS + 3 + 20 + 1 + 16 + 2  # alpha, beta (one unrenderable), gamma


def test_export_images_match_rows(exported):
    out, _ = exported
    for split in E.SPLITS:
        rows = read_split(out, split)
        files = sorted(p.name for p in (out / split / "images").glob("*.png"))
        assert files == [f"{i:06d}.png" for i in range(len(rows))]
        for r in rows[:5]:
            image = Image.open(out / split / r["file_name"])
            assert image.size == (24, 24) and image.mode == "RGB"
            centre = np.asarray(image)[12, 12]
            expected = {"alpha": (255, 0, 0), "beta": (0, 160, 0), "gamma": (0, 0, 255)}[r["style"]]
            assert np.abs(centre.astype(int) - expected).max() <= 2, (r, centre)


def test_unrenderable_svg_is_named_and_skipped(fake, tmp_path, capfd):
    summary = export_again(fake, tmp_path / "o", styles=["beta"])
    err = capfd.readouterr().err
    assert "skipped beta/cat-face" in err and "1 unrenderable SVG(s) skipped" in err
    assert summary["unrenderable"] == ["beta/cat-face"]
    rows = [r for s in E.SPLITS for r in read_split(tmp_path / "o", s)]
    assert len(rows) == 21 and "cat-face" not in {r["icon"] for r in rows}
    assert not (tmp_path / "o" / "zeroshot").exists()  # one style: no zeroshot pairs


def test_export_split_rule(exported):
    out, summary = exported
    where = defaultdict(set)
    for split in E.SPLITS:
        for r in read_split(out, split):
            where[(r["concept"], r["style"])].add(split)
    held = {tuple(p) for p in summary["held_out_pairs"]}
    assert len(held) == 2  # 10% of the 17 concepts in 3 styles, rounded
    assert {p for p, s in where.items() if "zeroshot" in s} == held
    for concept, style in held:
        assert where[(concept, style)] == {"zeroshot"}
        assert any(c == concept and s != style and "train" in sp for (c, s), sp in where.items())
        assert any(c != concept and s == style and "train" in sp for (c, s), sp in where.items())
    assert summary["split_problems"] == [] and summary["totals"]["test"] >= 1


def test_attribution(fake, exported, tmp_path):
    out, _ = exported
    text = (out / "ATTRIBUTION.md").read_text()
    assert (
        "| alpha | Alpha Emoji | Alpha Authors (https://alpha.example) | [MIT](https://licenses.example/MIT) "
        "| `@fake/alpha@1.0.0` |" in text
    )
    assert "CC-BY-4.0" in text and "Apache-2.0" in text and "fake-emojibase@1.0.0" in text
    assert "Share-alike" not in text and "delta" not in text
    with pytest.raises(UserError, match="--include-share-alike"):
        export_again(fake, tmp_path / "sa", styles=["alpha", "delta"])
    summary = export_again(fake, tmp_path / "sa", styles=["alpha", "beta", "delta"], include_share_alike=True)
    text = (tmp_path / "sa" / "ATTRIBUTION.md").read_text()
    assert "**Share-alike:**" in text and "CC-BY-SA-4.0" in text and "`@fake/delta@1.0.0` | 10 |" in text
    assert sum(summary["counts"][s].get("delta", 0) for s in E.SPLITS) == 10


def test_load_dataset_reads_three_splits(exported, tmp_path):
    datasets = pytest.importorskip("datasets")
    out, summary = exported
    ds = datasets.load_dataset(
        str(out), cache_dir=str(tmp_path / "hf")
    )  # the dataset card's configs name the three splits
    assert set(ds) == {"train", "test", "zeroshot"}
    assert {k: ds[k].num_rows for k in ds} == summary["totals"]
    row = ds["zeroshot"][0]
    assert {"image", "text", "style", "concept", "group", "subgroup"} <= set(row)
    assert row["image"].size == (24, 24) and row["text"] == read_split(out, "zeroshot")[0]["text"]
    one = datasets.load_dataset("imagefolder", data_dir=str(out / "zeroshot"), cache_dir=str(tmp_path / "hf"))[
        "train"
    ]  # one split alone
    assert one.num_rows == summary["totals"]["zeroshot"]


def test_reexport_is_idempotent_and_replaces_its_own_files(fake, tmp_path, capfd):
    out = tmp_path / "o"
    first = export_again(fake, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".json"}
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "notes.txt").write_text("mine")
    capfd.readouterr()
    # the same settings (the same set in another order) onto a complete export: kept, not one file rewritten
    assert export_again(fake, out, styles=["beta", "gamma", "alpha"]) == first
    assert "already exported with these settings" in capfd.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    # an image gone, the attribution gone, or --force: rendered again, to the same bytes
    missing = next(iter(stamps))
    missing.unlink()
    for kw in ({}, {"attribution": True}, {"force": True}):
        if kw.pop("attribution", False):
            (out / E.ATTRIBUTION_FILE).unlink()
        export_again(fake, out, **kw)
        assert "already exported" not in capfd.readouterr().err
        after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.suffix != ".json"}
        assert after.pop(Path("notes.txt")) == b"mine"
        assert after == before
    summary = export_again(fake, out, styles=["gamma"])  # a smaller export leaves no stale images
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert len(files) == sum(summary["totals"].values()) == 18
    assert not (out / "zeroshot").exists()


def test_refuses_a_foreign_non_empty_out(fake, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match=r"--out .*photos is not empty and is not an earlier emoji-styles export"):
        export_again(fake, tmp_path / "photos")
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"x"


def test_corrupt_tarball_and_wrong_sha_are_named(fake, tmp_path):
    root, packages, emojibase = fake
    source = tmp_path / "src"
    shutil.copytree(root / "source", source)
    alpha = packages[0]
    (source / alpha.file_name).write_bytes(b"\x1f\x8b this is not a tarball")
    with pytest.raises(UserError, match=rf"{alpha.file_name}: sha256 .* is not the pinned"):
        E.fetch_tarball(alpha, source)
    corrupt = E.Package(alpha.style, alpha.name, alpha.version, E.sha256_file(source / alpha.file_name))
    with pytest.raises(UserError, match=rf"{alpha.file_name}: not a readable npm tarball"):
        E.export_emoji_styles(
            tmp_path / "o",
            source=source,
            packages=[corrupt, *packages[1:3]],
            emojibase=emojibase,
            workers=1,
            progress=False,
        )


def test_without_npm_or_source_says_both_ways(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(E.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"npm is not installed.*--source DIR holding"):
        E.fetch_tarball(fake[1][0], cache=tmp_path / "empty-cache")


def test_command_line_rejects_bad_flags(tmp_path):
    from minidalle.cli.emoji_styles import export_emoji_styles_main

    with pytest.raises(UserError, match="unknown style"):
        export_emoji_styles_main(["--out", str(tmp_path / "o"), "--styles", "noto,nope"])
    with pytest.raises(UserError, match="--include-share-alike"):
        export_emoji_styles_main(["--out", str(tmp_path / "o"), "--styles", "openmoji"])
    with pytest.raises(UserError, match="--resolution"):
        export_emoji_styles_main(["--out", str(tmp_path / "o"), "--resolution", "0"])


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed: the real `npm pack` test needs it")
def test_real_npm_pack_of_streamline(tmp_path):
    from minidalle.cli.emoji_styles import export_emoji_styles_main

    cache = tmp_path / "cache"
    export_emoji_styles_main(
        [
            "--out",
            str(tmp_path / "o"),
            "--styles",
            "streamline",
            "--cache",
            str(cache),
            "--resolution",
            "16",
            "--workers",
            "2",
            "--no_progress",
        ]
    )
    stream = next(p for p in E.PACKAGES if p.style == "streamline")
    assert E.sha256_file(cache / stream.file_name) == stream.sha256
    summary = json.loads((tmp_path / "o" / E.MARKER_FILE).read_text())
    assert summary["complete"] and summary["unrenderable"] == []
    rows = read_split(tmp_path / "o", "train") + read_split(tmp_path / "o", "test")
    assert len(rows) == summary["totals"]["train"] + summary["totals"]["test"] > 700
    assert "a fire in the streamline style" in {r["text"] for r in rows}
    assert "Streamline" in (tmp_path / "o" / "ATTRIBUTION.md").read_text()


# ---------------------------------------------------------------- judges


def _manifest(folder: Path, lines: list) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, colour in (("red.png", (220, 30, 30)), ("blue.png", (30, 30, 220))):
        Image.fromarray(np.full((64, 64, 3), colour, np.uint8)).save(folder / name)
    path = folder / "manifest.jsonl"
    path.write_text("".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines))
    return path


def test_shipped_judges_load_small_and_float16():
    from safetensors import safe_open

    from minidalle.data.emoji_styles import judge as J

    judges = J.load_judges()
    assert {"noto", "twemoji", "fluent", "fluent-flat"} <= set(judges.styles)
    assert judges.concept_subgroup["dog-face"] == "animal-mammal"
    files = [J.SHIPPED_DIR / J.WEIGHTS_FILE, J.SHIPPED_DIR / J.CONFIG_FILE]
    assert sum(f.stat().st_size for f in files) < 2_000_000
    with safe_open(str(files[0]), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {__import__("torch").float16}
    acc, robust = judges.config["accuracy"], judges.config["robustness"]
    # the recorded figures of the shipped weights (issue 15 asks style >= 97% on zeroshot too: not reached)
    assert acc["test"]["style"] >= 0.95 and acc["test"]["subgroup"] >= 0.70
    assert acc["zeroshot"]["style"] >= 0.92 and acc["zeroshot"]["images"] == 165
    # trained on degraded images and the emoji tokenizer's round trips: mild degradations cost a few points
    # (the first judges, trained without them, fell to 20-28% style: every such image "fluent")
    assert judges.config["training"]["augmentation"]["round_trip_model"] == "emoji"
    for condition in ("gaussian_noise_4_of_255", "jpeg_quality_75", "gaussian_blur_1px"):
        assert robust["test"][condition]["style"] >= 0.80, condition
    assert robust["test"]["tokenizer_round_trip"]["style"] >= 0.5
    styles, subgroups = judges.predict(__import__("torch").full((2, 3, 64, 64), 255, dtype=__import__("torch").uint8))
    assert len(styles) == len(subgroups) == 2 and styles[0] in judges.styles


def test_eval_emoji_prints_table_and_json(tmp_path, capsys):
    from minidalle.cli.emoji_styles import eval_emoji_main

    manifest = _manifest(
        tmp_path / "gen",
        [
            {"prompt": "a dog face in the noto style", "file": "red.png"},
            {"prompt": "a red apple in the twemoji style", "file": "blue.png"},
            "",
            {"prompt": "an alien monster in the noto style", "file": "blue.png"},
        ],
    )
    eval_emoji_main([str(manifest)])
    table = capsys.readouterr().out
    assert "3 images" in table and "style acc" in table
    assert "judges on real held-out images: test style" in table
    assert "after the round trip through emoji's image tokenizer: test style" in table
    assert any(line.split()[:2] == ["noto", "2"] for line in table.splitlines())
    assert any(line.split()[:2] == ["twemoji", "1"] for line in table.splitlines())
    eval_emoji_main([str(manifest), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 3 and set(report["per_style"]) == {"noto", "twemoji"}
    assert report["per_style"]["noto"]["images"] == 2
    assert 0.0 <= report["style_accuracy"] <= 1.0 and report["judges_ceiling"]["test"]["style"] >= 0.95
    assert report["round_trip_model"] == "emoji" and set(report["judges_round_trip"]) == {"test", "zeroshot"}


def test_eval_emoji_counts_right_answers(tmp_path):
    """A judge that always answers (noto, animal-mammal) is right exactly where the prompt says so."""
    import torch

    from minidalle.data.emoji_styles import judge as J

    config = {
        "styles": ["noto", "twemoji"],
        "subgroups": ["animal-mammal", "fruit"],
        "channels": [4, 4, 4, 4, 4],
        "concept_subgroup": {"dog-face": "animal-mammal", "red-apple": "fruit"},
    }
    model = J.EmojiJudge(2, 2, (4, 4, 4, 4, 4))
    with torch.no_grad():
        for head in (model.style_head[-1], model.subgroup_head):
            head.weight.zero_()
            head.bias.copy_(torch.tensor([5.0, -5.0]))
    manifest = _manifest(
        tmp_path,
        [
            {"prompt": "a dog face in the noto style", "file": "red.png"},
            {"prompt": "a red apple in the noto style", "file": "red.png"},
            {"prompt": "a red apple in the twemoji style", "file": "blue.png"},
            {"prompt": "a dog face in the twemoji style", "file": "blue.png"},
        ],
    )
    report = J.evaluate_manifest(manifest, judges=J.Judges(model, config))
    assert report["style_accuracy"] == 0.5 and report["subgroup_accuracy"] == 0.5
    assert report["per_style"]["noto"] == {"images": 2, "style_accuracy": 1.0, "subgroup_accuracy": 0.5}
    assert report["per_style"]["twemoji"] == {"images": 2, "style_accuracy": 0.0, "subgroup_accuracy": 0.5}


def test_eval_emoji_names_a_bad_line(tmp_path):
    from minidalle.cli.emoji_styles import eval_emoji_main

    manifest = _manifest(
        tmp_path,
        [
            {"prompt": "a dog face in the noto style", "file": "red.png"},
            {"prompt": "a noto dog face", "file": "red.png"},
        ],
    )
    with pytest.raises(
        UserError, match=r"manifest.jsonl line 2: prompt 'a noto dog face' does not follow the caption grammar"
    ):
        eval_emoji_main([str(manifest)])
    manifest = _manifest(tmp_path, [{"prompt": "a dog face in the crayon style", "file": "red.png"}])
    with pytest.raises(UserError, match=r"line 1: style 'crayon' is not one the judges know"):
        eval_emoji_main([str(manifest)])
    manifest = _manifest(tmp_path, ['{"prompt": "a dog face in the noto style", "file": "missing.png"}'])
    with pytest.raises(UserError, match=r"line 1: cannot read image"):
        eval_emoji_main([str(manifest)])


def test_train_judges_on_a_tiny_export(exported, tmp_path, capsys):
    from minidalle.data.emoji_styles import judge as J

    out, summary = exported
    config = J.train_judges(out, out_dir=tmp_path / "judges", epochs=1, batch_size=32, progress=False)
    assert set(config["accuracy"]) == {"test", "zeroshot"}
    assert config["accuracy"]["zeroshot"]["images"] == summary["totals"]["zeroshot"]
    judges = J.load_judges(tmp_path / "judges")
    assert judges.styles == ["alpha", "beta", "gamma"] and "dog-face" in judges.concept_subgroup
    printed = capsys.readouterr().out
    assert "zeroshot real" in printed and "jpeg_quality_75" in printed
    conditions = {"real", "gaussian_noise_4_of_255", "jpeg_quality_75", "gaussian_blur_1px"}
    assert set(config["robustness"]["test"]) == conditions
    assert config["robustness"]["test"]["real"] == config["accuracy"]["test"]
    assert config["training"]["augmentation"]["degrade_p"] == 0.5


def test_train_judges_with_tokenizer_round_trips(exported, tiny_image_tokenizer_dir, tmp_path):
    """--round_trip_model: the round trips are reported beside the real images (and used in training)."""
    from minidalle.cli.emoji_styles import load_round_trip_tokenizer, train_emoji_judges_main

    out, _ = exported
    train_emoji_judges_main(
        ["--data", str(out), "--out", str(tmp_path / "judges"), "--epochs", "1", "--no_progress"]
        + ["--round_trip_model", str(tiny_image_tokenizer_dir), "--round_trip_p", "0.5"]
    )
    config = json.loads((tmp_path / "judges" / "judges.json").read_text())
    assert "tokenizer_round_trip" in config["robustness"]["zeroshot"]
    assert config["training"]["augmentation"]["round_trip_model"] == str(tiny_image_tokenizer_dir)
    with pytest.raises(UserError, match="no such model folder"):
        load_round_trip_tokenizer(str(tmp_path / "nope"))


def test_degrade_changes_the_chosen_share_of_images_reproducibly():
    import torch

    from minidalle.data.emoji_styles import judge as J

    x = (torch.rand(200, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    assert torch.equal(J.degrade(x, torch.Generator().manual_seed(0), p=0.0), x)
    every = J.degrade(x, torch.Generator().manual_seed(0), p=1.0)
    assert every.dtype == torch.uint8 and every.shape == x.shape
    assert (every != x).flatten(1).any(1).all()  # noise, JPEG, blur and resampling all move a random image
    half = J.degrade(x, torch.Generator().manual_seed(0), p=0.5)
    assert 60 <= int((half != x).flatten(1).any(1).sum()) <= 140
    assert torch.equal(half, J.degrade(x, torch.Generator().manual_seed(0), p=0.5))


def test_gaussian_blur_keeps_flat_images_and_the_mean():
    import torch

    from minidalle.data.emoji_styles import judge as J

    flat = torch.full((1, 3, 16, 16), 200.0)
    assert torch.allclose(J.gaussian_blur(flat, 1.0), flat)
    x = torch.zeros(1, 3, 33, 33)
    x[..., 16, 16] = 1.0
    y = J.gaussian_blur(x, 1.0)
    assert y.shape == x.shape and abs(float(y.sum()) - 3.0) < 1e-4 and float(y.max()) < 0.2
