#!/usr/bin/env python
"""Stack sample sheets (PNGs) into one picture, each under a title line: one model's sheet per section.

    python bench/stack_sheets.py OUT.png "TITLE=SHEET.png" ["TITLE=SHEET.png" ...]

Made for the README's fine-tuning picture: `bench/eval_emoji_model.py --only sheet` draws each model's
sheet (the same prompts and seeds), and this puts them one above the other.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont


def stack(sections: list[tuple[str, Image.Image]]) -> Image.Image:
    font = ImageFont.load_default(size=12)
    title_height = 20
    width = max(max(sheet.width for _, sheet in sections), *(8 + int(font.getlength(t)) for t, _ in sections))
    height = sum(title_height + sheet.height for _, sheet in sections)
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    y = 0
    for title, sheet in sections:
        draw.text((4, y + title_height // 2), title, fill="black", font=font, anchor="lm")
        out.paste(sheet.convert("RGB"), (0, y + title_height))
        y += title_height + sheet.height
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("sections", nargs="+", help="TITLE=SHEET.png")
    args = parser.parse_args()
    sections = []
    for item in args.sections:
        title, sep, path = item.rpartition("=")
        if not sep or not title:
            parser.error(f"expected TITLE=SHEET.png, got {item!r}")
        try:
            sections.append((title, Image.open(path)))
        except OSError as exc:
            parser.error(f"{path}: not a readable image ({exc})")
    tmp = args.out.with_name(args.out.name + ".tmp")
    stack(sections).save(tmp, format="PNG")
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
