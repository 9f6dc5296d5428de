"""The emoji-styles dataset: open emoji sets rendered from their vector sources, captioned, split three ways.

Sources
-------
Each style is one Iconify JSON package on the npm registry (versions and the
sha256 of each tarball pinned in `PACKAGES`); Unicode groups, subgroups and CLDR
names come from `emojibase-data` (MIT, pinned in `EMOJIBASE`). Tarballs are
fetched with `npm pack NAME@VERSION` into a cache folder, or read from
`--source DIR` (the files as `npm pack` names them, e.g.
`iconify-json-noto-1.2.9.tgz`); either way the sha256 is checked. The JSON is
read straight from the tarball.

An icon's SVG is assembled the way Iconify does it: the icon's `body` inside a
`viewBox` of `left top width height`, each taken from the icon, else from the
set, else Iconify's default (0, 0, 16, 16), with `rotate`/`hFlip`/`vFlip`
applied as a transform. Icons marked `hidden` and aliases (duplicates of other
icons under old names) are left out. Each SVG is rendered by resvg at
`resolution`² (a non-square viewBox is centred) and composited on white
(`BACKGROUND`); PNGs are RGB.

Concepts, skin tones, fxemoji
-----------------------------
An icon is joined to a Unicode emoji by its codepoints, found in this order:
the set's own `chars.json` (codepoint -> icon name); the `chars.json` of the set
it shares names with (`fluent` borrows `fluent-flat`'s, which has the same icon
names); the emoji's CLDR name in kebab case (`dog-face`, including the
skin-tone variants' names), also after dropping a `-1`/`-2` variant suffix
(Streamline); and last the name with every hyphen removed, matched against
the CLDR names, the Unicode character names and the common shortcodes
(emojibase, GitHub, iamcal, JoyPixels; these are also tried as names before
that) squashed the same way. That last step is how fxemoji's run-together names
(`admissiontickets`, `alienmonster`, `fatherchristmas`) reach a codepoint and
through it the CLDR name (`admission-tickets`, `alien-monster`, `santa-claus`);
fxemoji's remaining names are mostly non-emoji symbols (ballot boxes, arrows)
and are left out. Icons that reach no emoji with
a Unicode group are left out and counted. The concept is the emoji's CLDR name
in kebab case (`#` -> `number sign`, `*` -> `asterisk`, accents folded, other
punctuation dropped), so one concept joins across styles.

Skin-tone variants (any codepoint U+1F3FB-1F3FF, the tone swatches included)
are recognised by those codepoints, never by name, and left out unless
`skin_tones=True` (`--include-skin-tones`); then each variant is its own concept
("waving-hand-dark-skin-tone") with its base emoji's group and subgroup.

Captions
--------
    "{a|an} {concept words} in the {style} style"

e.g. "a dog face in the noto style", "an alien monster in the fxemoji style".
The concept words are the concept with hyphens as spaces ("flag united
states", "keycap number sign"); the article is "an" before a vowel letter,
else "a" (a parser accepts either). `style` is one of the names in `PACKAGES`
(noto, fluent-flat, fluent, twemoji, emojione, streamline, fxemoji, openmoji).
Each metadata row carries `text` (the caption) and, as separate columns,
`style`, `concept`, `group`, `subgroup` (Unicode's, as named by emojibase),
`emoji` (the character), `codepoints` (hex, hyphen-joined), `icon` (the
source icon name) and `package`.

Splits (deterministic from `seed`)
----------------------------------
1. zeroshot: of the concepts present in at least 3 of the exported styles, a
   seeded 10% (at least one when there are any) is drawn; for each, one of
   its styles, drawn with the same seeded generator, is held out: every image
   of that (concept, style) pair is in `zeroshot` and nowhere else.
2. test: a seeded 5% (at least one) of the remaining images.
3. train: the rest.
Guarantees (checked after drawing): no image of a held-out pair is in train;
every held-out concept has train images in another style (an image the test
draw would take from the last such pair stays in train); every held-out style
has other concepts in train.

Output
------
`OUT/train/`, `OUT/test/`, `OUT/zeroshot/` (left out when empty: an export of
fewer than 3 styles has no zeroshot pairs), each an imagefolder
(`images/NNNNNN.png` + `metadata.jsonl`) that
`datasets.load_dataset(OUT)` reads as three splits (through `OUT/README.md`, a
dataset card whose `configs` name them: `load_dataset("imagefolder",
data_dir=OUT)` knows only train/validation/test and would leave zeroshot out;
`load_dataset("imagefolder", data_dir=OUT/zeroshot)` reads one split alone);
`OUT/ATTRIBUTION.md`; and `OUT/emoji-styles.json`, the export's settings and
counts, which marks the folder as an emoji-styles export. Re-running onto a
complete export with the same settings (styles, resolution, seed, skin tones,
the pinned packages) keeps it as it is, every file listed in its metadata
being there (so the image timestamps, and with them the codes caches keyed on
the data, stay valid); `force=True` (`--force`) renders it again. Re-running
with other settings replaces its own earlier files (numbered PNGs, metadata,
README.md, attribution); an `--out` that is not empty and has no such file is
refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from minidalle.data.imagefolder import IMAGES_DIR, METADATA_FILE, image_file_name, prepare_out_dir, write_metadata
from minidalle.errors import UserError

BACKGROUND = "#ffffff"  # transparent pixels are composited on white
SPLITS = ("train", "test", "zeroshot")
MARKER_FILE = "emoji-styles.json"
ATTRIBUTION_FILE = "ATTRIBUTION.md"
CARD_FILE = "README.md"
MARKER_FORMAT = "minidalle emoji-styles export"
ZEROSHOT_CONCEPT_FRACTION = 0.10
MIN_STYLES_FOR_ZEROSHOT = 3
TEST_FRACTION = 0.05
SKIN_TONES = range(0x1F3FB, 0x1F3FF + 1)
ICONIFY_DEFAULTS = {"left": 0, "top": 0, "width": 16, "height": 16, "rotate": 0, "hFlip": False, "vFlip": False}
CAPTION_RE = re.compile(r"^(?:a|an) (.+) in the ([a-z0-9-]+) style$")


@dataclass(frozen=True)
class Package:
    """One pinned npm package: an emoji style (Iconify JSON) or the Unicode data."""

    style: str  # the caption's style word; "" for the Unicode data
    name: str  # npm name
    version: str
    sha256: str
    title: str = ""
    share_alike: bool = False
    chars_from: str = ""  # style whose chars.json names this set's icons (same icon names)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def file_name(self) -> str:
        """The tarball's name as `npm pack` writes it: `@scope/name` -> `scope-name-VERSION.tgz`."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


PACKAGES: tuple[Package, ...] = (
    Package(
        "noto",
        "@iconify-json/noto",
        "1.2.9",
        "3e918d88fc945c0bb3d468dbace6f88caef67f01c9f0e7bcae0915a042e8f1ad",
        "Google Noto Emoji",
    ),
    Package(
        "fluent-flat",
        "@iconify-json/fluent-emoji-flat",
        "1.2.6",
        "7d064769dee690815f823bc5bcc511d957198caf9f5edd8dd9c1aa48a6aeb175",
        "Microsoft Fluent Emoji, flat",
    ),
    Package(
        "fluent",
        "@iconify-json/fluent-emoji",
        "1.2.7",
        "8044210dbf11e016d4de85f15d01a243423bd832457e7e2491df1b751c0e272b",
        "Microsoft Fluent Emoji, colour",
        chars_from="fluent-flat",
    ),
    Package(
        "twemoji",
        "@iconify-json/twemoji",
        "1.2.5",
        "19046dff7d8707ce96212ec86468b36ac5f8e60409629dd13f809265c6d0ebb7",
        "Twitter Emoji (Twemoji)",
    ),
    Package(
        "emojione",
        "@iconify-json/emojione",
        "1.2.3",
        "26a14f44284407e8bcde91799388dca2bfd91dbcd55a97f425524a1c5b73610e",
        "EmojiOne",
    ),
    Package(
        "streamline",
        "@iconify-json/streamline-emojis",
        "1.2.4",
        "5dac87c876b322500989828c5823143e0100d78881627a2e4081a4b897cbfdbc",
        "Streamline Emojis",
    ),
    Package(
        "fxemoji",
        "@iconify-json/fxemoji",
        "1.2.2",
        "f3e72b3c59d05e1db03b7e308d55c0d05bd7ba3f625a90da1b79313c12858eef",
        "Firefox OS Emoji",
    ),
    Package(
        "openmoji",
        "@iconify-json/openmoji",
        "1.2.29",
        "03181e2c156cab35cf4a62f1f7886bd971d59212e75ac3f189d5a4cae3930fc5",
        "OpenMoji",
        share_alike=True,
    ),
)
EMOJIBASE = Package(
    "",
    "emojibase-data",
    "17.0.0",
    "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a",
    "Emojibase data (CLDR names, Unicode groups)",
)
EMOJIBASE_FILES = (
    "en/data.json",
    "meta/groups.json",
    "meta/unicode-names.json",
    "en/shortcodes/emojibase.json",
    "en/shortcodes/github.json",
    "en/shortcodes/iamcal.json",
    "en/shortcodes/joypixels.json",
)
STYLE_NAMES = tuple(p.style for p in PACKAGES)
DEFAULT_STYLES = tuple(p.style for p in PACKAGES if not p.share_alike)


def log(message: str) -> None:
    print(f"emoji-styles: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- fetching


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "minidalle" / "npm"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_sha(path: Path, package: Package) -> None:
    got = sha256_file(path)
    if got != package.sha256:
        raise UserError(
            f"{path}: sha256 {got} is not the pinned {package.sha256} of {package.spec} "
            f"(a different or damaged file; delete it to fetch it again)"
        )


def fetch_tarball(package: Package, source: str | Path | None = None, cache: str | Path | None = None) -> Path:
    """The checked tarball of `package`: from `source` if given, else from the cache, else `npm pack` into it."""
    if source is not None:
        path = Path(source) / package.file_name
        if not path.is_file():
            raise UserError(
                f"--source {source}: no {package.file_name} (get it with `npm pack {package.spec}`, "
                f"or leave out --source to fetch it with npm)"
            )
        _check_sha(path, package)
        return path
    cache = Path(cache) if cache is not None else default_cache_dir()
    path = cache / package.file_name
    if path.is_file() and sha256_file(path) == package.sha256:
        return path
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"{package.spec} is needed and npm is not installed: install npm (Node.js) so it can be "
            f"fetched with `npm pack`, or pass --source DIR holding {package.file_name} "
            f"(from `npm pack {package.spec}` on another machine)"
        )
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cache folder {cache}: not writable ({exc.strerror or exc})") from None
    log(f"fetching {package.spec} with npm pack into {cache}")
    result = subprocess.run(
        [npm, "pack", package.spec, "--pack-destination", str(cache), "--silent"], capture_output=True, text=True
    )
    if result.returncode != 0 or not path.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise UserError(
            f"npm pack {package.spec} failed ({' / '.join(tail) or f'exit {result.returncode}'}); "
            f"or pass --source DIR holding {package.file_name}"
        )
    _check_sha(path, package)
    return path


def read_tar_json(path: str | Path, members: Iterable[str], required: Iterable[str] = ()) -> dict[str, object]:
    """The JSON files `members` (paths inside `package/`) of an npm tarball; missing optional ones are absent."""
    wanted = set(members)
    found: dict[str, object] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.split("/", 1)[1] if "/" in member.name else member.name
                if name in wanted and member.isfile():
                    raw = tar.extractfile(member).read()
                    try:
                        found[name] = json.loads(raw)
                    except ValueError as exc:
                        raise UserError(f"{path}: {member.name} is not valid JSON ({exc})") from None
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{path}: not a readable npm tarball ({exc})") from None
    missing = [m for m in required if m not in found]
    if missing:
        raise UserError(f"{path}: has no package/{', package/'.join(missing)}")
    return found


# ---------------------------------------------------------------- SVG


def icon_svg(icon_set: dict, name: str) -> str:
    """The standalone SVG of icon `name`: body + viewBox from the icon, else the set, else Iconify's defaults."""
    icon = icon_set["icons"][name]
    props = {key: icon.get(key, icon_set.get(key, default)) for key, default in ICONIFY_DEFAULTS.items()}
    left, top, width, height = (float(props[k]) for k in ("left", "top", "width", "height"))
    body = icon["body"]
    transforms: list[str] = []
    rotate = int(props["rotate"])
    if props["hFlip"]:
        if props["vFlip"]:
            rotate += 2
        else:
            transforms.append(f"translate({left + width:g} {0.0 - top + 0.0:g})")
            transforms.append("scale(-1 1)")
            top = left = 0.0
    elif props["vFlip"]:
        transforms.append(f"translate({0.0 - left + 0.0:g} {height + top:g})")
        transforms.append("scale(1 -1)")
        top = left = 0.0
    rotate %= 4
    if rotate == 1:
        c = height / 2 + top
        transforms.insert(0, f"rotate(90 {c:g} {c:g})")
    elif rotate == 2:
        transforms.insert(0, f"rotate(180 {width / 2 + left:g} {height / 2 + top:g})")
    elif rotate == 3:
        c = width / 2 + left
        transforms.insert(0, f"rotate(-90 {c:g} {c:g})")
    if rotate % 2 == 1:
        if left != top:
            left, top = top, left
        width, height = height, width
    if transforms:
        body = f'<g transform="{" ".join(transforms)}">{body}</g>'
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'viewBox="{left:g} {top:g} {width:g} {height:g}">{body}</svg>'
    )


def render_png(svg: str, resolution: int) -> bytes:
    """Render `svg` at `resolution`² on white; RGB PNG bytes. Raises ValueError when resvg cannot."""
    import resvg_py
    from PIL import Image

    png = resvg_py.svg_to_bytes(
        svg_string=svg, width=resolution, height=resolution, background=BACKGROUND, skip_system_fonts=True
    )
    with Image.open(io.BytesIO(bytes(png))) as image:
        if image.size != (resolution, resolution):  # resvg keeps the aspect of a non-square viewBox
            canvas = Image.new("RGBA", (resolution, resolution), BACKGROUND)
            image = image.convert("RGBA")
            image.thumbnail((resolution, resolution))
            canvas.paste(image, ((resolution - image.width) // 2, (resolution - image.height) // 2), image)
            image = canvas
        out = io.BytesIO()
        image.convert("RGB").save(out, format="PNG", compress_level=1)
    return out.getvalue()


# ---------------------------------------------------------------- Unicode names and concepts


def concept_key(label: str) -> str:
    """A CLDR name as a concept: "flag: Côte d’Ivoire" -> "flag-cote-d-ivoire", "keycap: #" -> "keycap-number-sign"."""
    text = label.replace("#", " number sign ").replace("*", " asterisk ")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = text.lower().replace("'", "").replace("\u2019", "")
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-")


def concept_words(concept: str) -> str:
    return concept.replace("-", " ")


def caption(concept: str, style: str) -> str:
    """ "a dog face in the noto style": the caption grammar (see the module docstring)."""
    words = concept_words(concept)
    article = "an" if words[:1] in ("a", "e", "i", "o", "u") else "a"
    return f"{article} {words} in the {style} style"


def parse_caption(text: str) -> tuple[str, str]:
    """(concept, style) of a caption of the grammar; ValueError naming what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a string, got {type(text).__name__}")
    match = CAPTION_RE.match(" ".join(text.strip().lower().split()))
    if not match:
        raise ValueError(
            f"prompt {text!r} does not follow the caption grammar "
            f'"a|an CONCEPT in the STYLE style" (e.g. "a dog face in the noto style")'
        )
    return concept_key(match.group(1)), match.group(2)


def _hex(sequence: str) -> str:
    """Normalised codepoint sequence: upper-case hex joined by '-', variation selector FE0F dropped."""
    parts = [p.upper() for p in re.split(r"[-_ ]", sequence.strip()) if p]
    return "-".join(p for p in parts if p != "FE0F")


def has_skin_tone(hexcodes: str) -> bool:
    return any(int(p, 16) in SKIN_TONES for p in hexcodes.split("-") if p)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", concept_key(name))


class UnicodeData:
    """emojibase-data: hexcode -> (CLDR name, group, subgroup), plus name indexes to reach a hexcode."""

    def __init__(self, files: dict[str, object]):
        groups = files["meta/groups.json"]
        group_names, subgroup_names = groups["groups"], groups["subgroups"]
        self.entries: dict[str, dict] = {}
        self.by_name: dict[str, str] = {}
        squashed: dict[str, str] = {}
        for entry in files["en/data.json"]:
            if "group" not in entry or "subgroup" not in entry:
                continue  # regional-indicator letters and other components without a group
            code = _hex(entry["hexcode"])
            info = {
                "concept": concept_key(entry["label"]),
                "group": group_names[str(entry["group"])],
                "subgroup": subgroup_names[str(entry["subgroup"])],
                "emoji": entry.get("emoji", ""),
                "codepoints": code,
            }
            self.entries[code] = info
            self.by_name.setdefault(info["concept"], code)
            squashed.setdefault(_squash(entry["label"]), code)
            for skin in entry.get("skins", []) or []:
                skin_code = _hex(skin["hexcode"])
                self.entries[skin_code] = {
                    **info,
                    "concept": concept_key(skin["label"]),
                    "codepoints": skin_code,
                    "emoji": skin.get("emoji", ""),
                }
                self.by_name.setdefault(concept_key(skin["label"]), skin_code)
                squashed.setdefault(_squash(skin["label"]), skin_code)
        for code, name in (files.get("meta/unicode-names.json") or {}).items():
            if _hex(code) in self.entries:
                squashed.setdefault(_squash(name), _hex(code))
        self.by_shortcode: dict[str, str] = {}
        for table in EMOJIBASE_FILES[3:]:
            for code, names in (files.get(table) or {}).items():
                if _hex(code) not in self.entries:
                    continue
                for name in [names] if isinstance(names, str) else names:
                    self.by_shortcode.setdefault(concept_key(name), _hex(code))
                    squashed.setdefault(_squash(name), _hex(code))
        self.by_squashed = squashed

    def resolve(self, name: str, chars: dict[str, list[str]]) -> str | None:
        """The hexcode of icon `name`: through `chars` (name -> codepoint sequences), then the name indexes."""
        for seq in chars.get(name, ()):
            code = _hex(seq)
            if code in self.entries or has_skin_tone(code):
                return code
        if name in self.by_name:
            return self.by_name[name]
        base = re.sub(r"-\d+$", "", name)
        if base != name and base in self.by_name:
            return self.by_name[base]
        for key in (name, base):
            if key in self.by_shortcode:
                return self.by_shortcode[key]
        return self.by_squashed.get(_squash(name)) or self.by_squashed.get(_squash(base))


def _inverse_chars(chars: object) -> dict[str, list[str]]:
    inverse: dict[str, list[str]] = defaultdict(list)
    if isinstance(chars, dict):
        for code, name in sorted(chars.items()):
            inverse[name].append(code)
    return inverse


# ---------------------------------------------------------------- collecting the icons


@dataclass
class Item:
    style: str
    icon: str
    concept: str
    group: str
    subgroup: str
    emoji: str
    codepoints: str
    svg: str

    def row(self, package: Package) -> dict:
        return {
            "text": caption(self.concept, self.style),
            "style": self.style,
            "concept": self.concept,
            "group": self.group,
            "subgroup": self.subgroup,
            "emoji": self.emoji,
            "codepoints": self.codepoints,
            "icon": self.icon,
            "package": package.spec,
        }


def collect_items(sets: dict[str, dict], unicode: UnicodeData, skin_tones: bool = False) -> tuple[list[Item], dict]:
    """Every exported icon of the loaded `sets` (style -> tarball JSON) as an `Item`; and what was left out."""
    items: list[Item] = []
    left_out: dict[str, Counter] = {}
    by_style = {p.style: p for p in PACKAGES}
    for style, files in sets.items():
        icon_set = files["icons.json"]
        package = by_style.get(style)
        chars = _inverse_chars(files.get("chars.json"))
        if not chars and package is not None and package.chars_from in sets:
            chars = _inverse_chars(sets[package.chars_from].get("chars.json"))
        counts: Counter = Counter()
        for name in sorted(icon_set.get("icons", {})):
            icon = icon_set["icons"][name]
            if icon.get("hidden"):
                counts["hidden"] += 1
                continue
            code = unicode.resolve(name, chars)
            if code is not None and has_skin_tone(code) and not skin_tones:
                counts["skin tone"] += 1
                continue
            info = unicode.entries.get(code) if code else None
            if info is None:
                counts["no Unicode emoji"] += 1
                continue
            items.append(
                Item(
                    style,
                    name,
                    info["concept"],
                    info["group"],
                    info["subgroup"],
                    info["emoji"],
                    info["codepoints"],
                    icon_svg(icon_set, name),
                )
            )
        left_out[style] = counts
    return items, left_out


# ---------------------------------------------------------------- splits


def assign_splits(pairs: Sequence[tuple[str, str]], seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """The split of each (concept, style) in `pairs` (one entry per image) by the rule in the module docstring.

    Returns (split per entry, the held-out (concept, style) pairs).
    """
    rng = random.Random(seed)
    styles_of: dict[str, set] = defaultdict(set)
    for concept, style in pairs:
        styles_of[concept].add(style)
    eligible = sorted(c for c, s in styles_of.items() if len(s) >= MIN_STYLES_FOR_ZEROSHOT)
    n_held = max(1, round(ZEROSHOT_CONCEPT_FRACTION * len(eligible))) if eligible else 0
    held_concepts = sorted(rng.sample(eligible, n_held))
    held = {c: rng.choice(sorted(styles_of[c])) for c in held_concepts}
    held_pairs = set(held.items())

    splits = ["zeroshot" if pair in held_pairs else "train" for pair in pairs]
    rest = [i for i, s in enumerate(splits) if s == "train"]
    n_test = max(1, round(TEST_FRACTION * len(rest))) if len(rest) > 1 else 0
    for i in sorted(rng.sample(rest, n_test)):
        splits[i] = "test"
    # a held-out concept keeps at least one train image in another style
    for concept in held_concepts:
        idx = [i for i, (c, _) in enumerate(pairs) if c == concept and splits[i] != "zeroshot"]
        if idx and not any(splits[i] == "train" for i in idx):
            splits[idx[0]] = "train"
    return splits, sorted(held_pairs)


def check_splits(pairs: Sequence[tuple[str, str]], splits: Sequence[str], held: Iterable[tuple[str, str]]) -> list[str]:
    """The split rule's guarantees that do not hold (an empty list when all do)."""
    problems = []
    train = [p for p, s in zip(pairs, splits) if s == "train"]
    train_pairs, train_concepts = set(train), {c for c, _ in train}
    train_styles = defaultdict(set)
    for c, s in train:
        train_styles[s].add(c)
    for concept, style in held:
        if (concept, style) in train_pairs:
            problems.append(f"held-out pair ({concept}, {style}) has train images")
        if concept not in train_concepts:
            problems.append(f"held-out concept {concept} has no train image in another style")
        if not train_styles[style] - {concept}:
            problems.append(f"held-out style {style} has no other concept in train")
    return problems


# ---------------------------------------------------------------- writing


def _render_task(task: tuple[str, str, int]) -> tuple[str, str | None]:
    """Worker: render one SVG to its final path; (path, None) or (path, error)."""
    svg, path, resolution = task
    try:
        png = render_png(svg, resolution)
    except Exception as exc:
        return path, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    with open(path, "wb") as f:
        f.write(png)
    return path, None


def _finished_export(out: Path, settings: dict) -> dict | None:
    """The summary of a complete export in `out` made with `settings`, when its attribution, its dataset card and
    every file its metadata lists are there and each split has the rows its summary counts; otherwise None."""
    try:
        summary = json.loads((out / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    expected = json.loads(json.dumps(settings))  # as it reads back from JSON
    if not isinstance(summary, dict) or summary.get("complete") is not True:
        return None
    if any(summary.get(k) != v for k, v in expected.items()) or not isinstance(summary.get("totals"), dict):
        return None
    if not (out / ATTRIBUTION_FILE).is_file() or not (out / CARD_FILE).is_file():
        return None
    for split in SPLITS:
        total = summary["totals"].get(split, 0)
        if not total:
            continue
        try:
            with open(out / split / METADATA_FILE, encoding="utf-8") as f:
                names = [json.loads(line)["file_name"] for line in f if line.strip()]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if len(names) != total or not all((out / split / name).is_file() for name in names):
            return None
    return summary


def _check_out_dir(out: Path) -> None:
    """Refuse a non-empty `out` that is not an earlier emoji-styles export; remove an earlier export's files."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = out / MARKER_FILE
    try:
        is_ours = json.loads(marker.read_text(encoding="utf-8")).get("format") == MARKER_FORMAT
    except (OSError, ValueError, AttributeError):
        is_ours = False
    if not is_ours:
        raise UserError(
            f"--out {out} is not empty and is not an earlier emoji-styles export (no {MARKER_FILE}); "
            f"choose an empty or new folder"
        )
    for split in SPLITS:
        folder = out / split
        for png in (folder / IMAGES_DIR).glob("*.png"):
            if re.fullmatch(r"\d{6}", png.stem):
                png.unlink()
        for name in (METADATA_FILE, METADATA_FILE + ".tmp"):
            (folder / name).unlink(missing_ok=True)
        for empty in (folder / IMAGES_DIR, folder):  # only when nothing of the user's is left in them
            try:
                empty.rmdir()
            except OSError:
                pass
    (out / ATTRIBUTION_FILE).unlink(missing_ok=True)
    (out / CARD_FILE).unlink(missing_ok=True)


def dataset_card(splits: Sequence[str], summary: dict) -> str:
    """README.md with the `configs` YAML that makes `datasets.load_dataset(OUT)` read every split by its name.

    (`load_dataset("imagefolder", data_dir=OUT)` only knows the names train/validation/test, so without
    this it would silently leave `zeroshot` out.)
    """
    lines = ["---", "configs:", "- config_name: default", "  data_files:"]
    for split in splits:
        lines += [f"  - split: {split}", f"    path: {split}/**"]
    lines += [
        "---",
        "",
        "# emoji-styles",
        "",
        "Open emoji sets rendered by `minidalle export-dataset emoji-styles`; sources, authors and licences in",
        f"[{ATTRIBUTION_FILE}]({ATTRIBUTION_FILE}), settings and counts in `{MARKER_FILE}`.",
        "",
        "| split | images |",
        "|---|---|",
    ]
    lines += [f"| {split} | {summary['totals'][split]} |" for split in splits]
    return "\n".join(lines) + "\n"


def attribution_text(
    packages: Sequence[Package], infos: dict[str, dict], counts: dict[str, int], emojibase: Package = EMOJIBASE
) -> str:
    """ATTRIBUTION.md: one row per exported set (authors, licence, package and version), plus the data sources."""
    lines = [
        "# Attribution",
        "",
        "This dataset was rendered by `minidalle export-dataset emoji-styles` from these open emoji sets",
        "(Iconify's JSON packages on npm). Each image's `style` and `package` columns name its source.",
        "",
        "| style | set | authors | licence | package | images |",
        "|---|---|---|---|---|---|",
    ]
    for p in packages:
        info = infos.get(p.style, {})
        author = info.get("author", {}) if isinstance(info.get("author"), dict) else {}
        licence = info.get("license", {}) if isinstance(info.get("license"), dict) else {}
        who = author.get("name", "?") + (f" ({author['url']})" if author.get("url") else "")
        lic = licence.get("spdx") or licence.get("title") or "?"
        if licence.get("url"):
            lic = f"[{lic}]({licence['url']})"
        lines.append(
            f"| {p.style} | {info.get('name', p.title)} | {who} | {lic} | `{p.spec}` | {counts.get(p.style, 0)} |"
        )
    lines += [
        "",
        f"Emoji names, Unicode groups and subgroups: `{emojibase.spec}` (MIT, https://emojibase.dev), built from",
        "the Unicode CLDR annotations and emoji data (Unicode License v3).",
        "",
        "The CC-BY-4.0 and Apache-2.0 sets require this attribution to travel with the images and with",
        "models or pictures derived from them: keep this file with any copy.",
    ]
    if any(p.share_alike for p in packages):
        lines += [
            "",
            "**Share-alike:** OpenMoji is licensed CC-BY-SA-4.0. Images derived from it, and adaptations of them",
            "(possibly including models trained on them), must be shared under CC-BY-SA-4.0 or a compatible licence,",
            "with this attribution. It was included because `--include-share-alike` was given.",
        ]
    return "\n".join(lines) + "\n"


def export_emoji_styles(
    out_dir: str | Path,
    resolution: int = 64,
    styles: Sequence[str] | None = None,
    include_share_alike: bool = False,
    source: str | Path | None = None,
    cache: str | Path | None = None,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    packages: Sequence[Package] | None = None,
    emojibase: Package | None = None,
    skin_tones: bool = False,
    force: bool = False,
) -> dict:
    """Export the emoji-styles dataset to `out_dir` (see the module docstring); returns the summary it writes
    (or, when `out_dir` already holds this export complete and `force` is false, the summary it wrote then).

    `packages`/`emojibase` replace the pinned tables (tests use small fake tarballs).
    """
    start = time.perf_counter()
    packages = tuple(PACKAGES if packages is None else packages)
    emojibase = EMOJIBASE if emojibase is None else emojibase
    known = {p.style: p for p in packages}
    if resolution < 8 or resolution > 2048:
        raise UserError(f"--resolution must be 8 to 2048 pixels, got {resolution}")
    if styles is None:
        chosen = [p.style for p in packages if include_share_alike or not p.share_alike]
    else:
        chosen = list(dict.fromkeys(s.strip() for s in styles if s.strip()))
        unknown = [s for s in chosen if s not in known]
        if unknown:
            raise UserError(f"--styles: unknown style(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        if not chosen:
            raise UserError("--styles: name at least one style")
        chosen = [p.style for p in packages if p.style in chosen]  # the table's order, whatever the flag's
        sa = [s for s in chosen if known[s].share_alike and not include_share_alike]
        if sa:
            raise UserError(
                f"--styles {', '.join(sa)}: licensed share-alike (CC-BY-SA-4.0); add --include-share-alike to export it"
            )
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UserError(f"--workers must be 1 or more, got {workers}")
    out = Path(out_dir)
    settings = {
        "format": MARKER_FORMAT,
        "resolution": resolution,
        "styles": chosen,
        "include_share_alike": include_share_alike,
        "seed": seed,
        "background": BACKGROUND,
        "skin_tones": skin_tones,
        "packages": {p.style: p.spec for p in packages if p.style in chosen},
        "emojibase": emojibase.spec,
    }
    previous = _finished_export(out, settings)
    if previous is not None and not force:
        totals = previous["totals"]
        log(
            f"{out}: already exported with these settings ({totals['train']} train, {totals['test']} test, "
            f"{totals['zeroshot']} zeroshot images, every file there): kept as it is (--force renders it again)"
        )
        return previous
    _check_out_dir(out)

    # fetch and read
    needed = list(chosen)
    for s in chosen:
        if known[s].chars_from and known[s].chars_from in known and known[s].chars_from not in needed:
            needed.append(known[s].chars_from)  # for its chars.json only
    unicode = UnicodeData(
        read_tar_json(fetch_tarball(emojibase, source, cache), EMOJIBASE_FILES, required=EMOJIBASE_FILES[:2])
    )
    sets: dict[str, dict] = {}
    infos: dict[str, dict] = {}
    for s in needed:
        path = fetch_tarball(known[s], source, cache)
        files = read_tar_json(path, ("icons.json", "info.json", "chars.json"), required=("icons.json",))
        if not isinstance(files["icons.json"], dict) or not isinstance(files["icons.json"].get("icons"), dict):
            raise UserError(f"{path}: icons.json has no 'icons' object (not an Iconify JSON package)")
        sets[s] = files
        infos[s] = files.get("info.json") if isinstance(files.get("info.json"), dict) else {}
    items, left_out = collect_items(sets, unicode, skin_tones=skin_tones)
    items = [it for it in items if it.style in chosen]
    left_out = {s: left_out[s] for s in chosen}
    if not items:
        raise UserError(f"no icons to export from {', '.join(chosen)}")

    # split
    items.sort(key=lambda it: (it.style, it.concept, it.icon))
    pairs = [(it.concept, it.style) for it in items]
    split_of, held = assign_splits(pairs, seed)
    problems = check_splits(pairs, split_of, held)
    for problem in problems:
        log(f"split rule: {problem} (too few styles or concepts?)")

    # write
    by_split: dict[str, list[Item]] = {s: [] for s in SPLITS}
    for it, s in zip(items, split_of):
        by_split[s].append(it)
    written = [s for s in SPLITS if by_split[s]]  # zeroshot is empty with fewer than 3 styles
    for split in written:
        prepare_out_dir(out / split, "--out")
    marker = {**settings, "complete": False}  # settings begin with the format
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    tasks = []
    for split in SPLITS:
        for index, it in enumerate(by_split[split]):
            tasks.append((it.svg, str(out / split / image_file_name(index)), resolution))
    failed: dict[str, str] = {}
    from tqdm import tqdm

    bar = tqdm(total=len(tasks), desc="rendering", unit="img", disable=not progress)
    if workers == 1 or len(tasks) < 64:
        results = map(_render_task, tasks)
        pool = None
    else:
        import multiprocessing

        pool = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers)
        results = pool.imap(_render_task, tasks, chunksize=32)
    try:
        for path, error in results:
            if error is not None:
                failed[path] = error
            bar.update()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()

    counts: dict[str, dict[str, int]] = {s: Counter() for s in SPLITS}
    skipped = []
    for split in written:
        rows, next_index = [], 0
        for index, it in enumerate(by_split[split]):
            path = out / split / image_file_name(index)
            if str(path) in failed:
                log(f"skipped {it.style}/{it.icon} ({it.concept}): resvg cannot render it: {failed[str(path)]}")
                skipped.append(f"{it.style}/{it.icon}")
                continue
            if next_index != index:  # close the gap a skipped image left
                os.replace(path, out / split / image_file_name(next_index))
            rows.append({"file_name": image_file_name(next_index), **it.row(known[it.style])})
            counts[split][it.style] += 1
            next_index += 1
        write_metadata(out / split, rows)
    per_style = {s: sum(counts[sp][s] for sp in SPLITS) for s in chosen}
    (out / ATTRIBUTION_FILE).write_text(
        attribution_text([known[s] for s in chosen], infos, per_style, emojibase), encoding="utf-8"
    )
    seconds = time.perf_counter() - start
    summary = {
        **marker,
        "complete": True,
        "counts": {split: dict(sorted(counts[split].items())) for split in SPLITS},
        "totals": {split: sum(counts[split].values()) for split in SPLITS},
        "held_out_pairs": [list(p) for p in held],
        "left_out": {s: dict(sorted(c.items())) for s, c in left_out.items()},
        "unrenderable": skipped,
        "split_problems": problems,
        "workers": workers,
        "seconds": round(seconds, 1),
    }
    (out / CARD_FILE).write_text(dataset_card(written, summary), encoding="utf-8")
    (out / MARKER_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    totals = summary["totals"]
    log(
        f"{out}: {totals['train']} train, {totals['test']} test, {totals['zeroshot']} zeroshot images "
        f"({len(held)} held-out pairs) from {', '.join(chosen)} at {resolution}px in {seconds:.1f} s; "
        f"{len(skipped)} unrenderable SVG(s) skipped"
    )
    return summary
