"""The text of a previz shot card: a font per glyph, a wrap in linear time, a bounded excerpt.

Pillow's basic layout engine (raqm varies by machine, so it is not used) draws with one font
per call and shows a box for a glyph that font lacks. So the text is cut into clusters, each
drawn by the first font of the chain that has its glyph: Aileron (Pillow's own), then Noto Sans
(Latin, Greek, Cyrillic), Arabic, Devanagari and Thai, pinned wheels from PyPI. A glyph no font
has (an emoji, with its modifiers and joiners) is one drawn placeholder box. Scripts are drawn
glyph by glyph, not shaped (no Arabic joining or reordering): a card is a preview, not typography.

Each cluster's advance is measured once per font and size and lines are sums of them, so
wrapping n characters costs O(n) measurements; the old greedy wrap measured growing prefixes
and took minutes on one long word. The card shows at most MAX_CARD_CHARS of any text (with an
ellipsis); the provider always gets the whole prompt.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from io import BytesIO
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL.ImageFont import FreeTypeFont

MAX_CARD_CHARS = 2000
"""The most of one text a card draws: more would not fit on any card size previz makes."""

ELLIPSIS = "…"
PLACEHOLDER = -1  # the face of a cluster no font has: drawn as a box
# The fallback chain after Aileron: (package, file) of pinned fontpkg wheels.
NOTO = (
    ("fontpkg_noto_sans", "NotoSans[wdth,wght].ttf"),
    ("fontpkg_noto_sans_arabic", "NotoSansArabic[wdth,wght].ttf"),
    ("fontpkg_noto_sans_devanagari", "NotoSansDevanagari[wdth,wght].ttf"),
    ("fontpkg_noto_sans_thai", "NotoSansThai[wdth,wght].ttf"),
)
_JOINER = 0x200D


@dataclass(frozen=True)
class Cluster:
    """What is drawn as one unit: a character (with its combining marks) in one face."""

    text: str
    face: int  # index into the chain, or PLACEHOLDER

    @property
    def space(self) -> bool:
        return self.text == " "


Line = list[Cluster]


@cache
def aileron_bytes() -> bytes:
    """The TrueType bytes of Pillow's embedded default font (Aileron)."""
    from PIL import ImageFont

    data: bytes = ImageFont.load_default(size=12).font_bytes  # type: ignore[union-attr]
    return data


@cache
def _font_bytes(face: int) -> bytes:
    if face == 0:
        return aileron_bytes()
    package, name = NOTO[face - 1]
    return (resources.files(package) / "files" / name).read_bytes()


@cache
def _coverage(face: int) -> frozenset[int]:
    """The code points the face has a glyph for (its cmap)."""
    from fontTools.ttLib import TTFont

    cmap = TTFont(BytesIO(_font_bytes(face)), lazy=True).getBestCmap() or {}
    return frozenset(cmap)


def faces() -> int:
    """How many fonts the chain has."""
    return 1 + len(NOTO)


@cache
def font(face: int, size: int) -> FreeTypeFont:
    """The face at `size` px, with the basic layout engine (the same on every machine)."""
    from PIL import ImageFont

    data = BytesIO(_font_bytes(face))
    return ImageFont.truetype(data, size, layout_engine=ImageFont.Layout.BASIC)


def face_of(char: str) -> int:
    """The first face in the chain with a glyph for char, else PLACEHOLDER."""
    code = ord(char)
    for face in range(faces()):
        if code in _coverage(face):
            return face
    return PLACEHOLDER


def _follows(char: str) -> bool:
    """Belongs to the cluster before it: a combining mark, a variation selector, an emoji
    modifier or tag, a joiner."""
    code = ord(char)
    return (
        unicodedata.category(char) in ("Mn", "Me", "Mc")
        or 0xFE00 <= code <= 0xFE0F
        or 0x1F3FB <= code <= 0x1F3FF
        or 0xE0020 <= code <= 0xE007F
        or code == _JOINER
    )


def clusters(text: str) -> Iterator[Cluster]:
    """The text as clusters; whitespace becomes one space, other control characters vanish."""
    pending: list[str] = []
    face = 0
    for char in text:
        if pending and (_follows(char) or ord(pending[-1]) == _JOINER):
            pending.append(char)  # a mark the base's face lacks still goes with its base
            continue
        if pending:
            yield Cluster("".join(pending), face)
            pending = []
        if char.isspace():
            yield Cluster(" ", 0)
            continue
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn") and not _follows(char):
            continue
        pending, face = [char], face_of(char)
    if pending:
        yield Cluster("".join(pending), face)


def _measure(face_font: FreeTypeFont, text: str) -> float:
    """One measurement by FreeType (the unit the wrap's cost is counted in)."""
    return float(face_font.getlength(text))


class Typeset:
    """Measures, wraps and draws text at one pixel size."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.line_height = round(size * 1.25)
        self._advances: dict[Cluster, float] = {}

    def advance(self, cluster: Cluster) -> float:
        """The cluster's width, measured once."""
        width = self._advances.get(cluster)
        if width is None:
            if cluster.face == PLACEHOLDER:
                width = round(self.size * 0.7)
            else:
                width = _measure(font(cluster.face, self.size), cluster.text)
            self._advances[cluster] = width
        return width

    def wrap(self, text: str, width: int, max_lines: int) -> tuple[list[Line], bool]:
        """Greedy word wrap of text (its first MAX_CARD_CHARS) to `width` px in at most
        max_lines lines; a word wider than a line is cut. Also says whether text was left."""
        lines: list[Line] = []
        line: Line = []
        line_w = 0.0
        word: Line = []
        word_w = 0.0
        space_w = self.advance(Cluster(" ", 0))
        # A space at the end places the last word.
        for cluster in [*clusters(text[:MAX_CARD_CHARS]), Cluster(" ", 0)]:
            if len(lines) >= max_lines:
                return lines, True
            if not cluster.space:
                w = self.advance(cluster)
                if word and word_w + w > width:  # wider than any line: cut the word here
                    if line:
                        lines.append(line)
                        line, line_w = [], 0.0
                    lines.append(word)
                    word, word_w = [], 0.0
                word.append(cluster)
                word_w += w
                continue
            if not word:
                continue
            if line and line_w + space_w + word_w <= width:
                line.append(cluster)
                line.extend(word)
                line_w += space_w + word_w
            else:
                if line:
                    lines.append(line)
                line, line_w = word, word_w
            word, word_w = [], 0.0
        if line:
            if len(lines) >= max_lines:
                return lines, True
            lines.append(line)
        return lines, len(text) > MAX_CARD_CHARS

    def ellipsize(self, line: Line, width: int) -> Line:
        """The line with an ellipsis at its end, dropping clusters until it fits."""
        dots = [Cluster(" ", 0), Cluster(ELLIPSIS, 0)]
        total = sum(self.advance(c) for c in [*line, *dots])
        while line and total > width:
            total -= self.advance(line[-1])
            line = line[:-1]
        while line and line[-1].space:
            line = line[:-1]
        return [*line, *dots]

    def draw(self, draw: Any, x: int, y: int, line: Line, fill: tuple[int, int, int]) -> None:
        """Draw one line, one call per run of a face; a placeholder is an outlined box."""
        pos = float(x)
        baseline = y + font(0, self.size).getmetrics()[0]  # every face sits on Aileron's
        run: Line = []
        for cluster in [*line, Cluster("", PLACEHOLDER - 1)]:  # a sentinel flushes the last run
            if run and cluster.face != run[0].face:
                face = run[0].face
                if face == PLACEHOLDER:
                    for c in run:
                        w = self.advance(c)
                        top = y + round(self.size * 0.2)
                        bottom = y + round(self.size * 0.95)
                        draw.rectangle(
                            (round(pos) + 1, top, round(pos + w) - 2, bottom), outline=fill
                        )
                        pos += w
                else:
                    text = "".join(c.text for c in run)
                    xy = (round(pos), baseline)
                    draw.text(xy, text, font=font(face, self.size), fill=fill, anchor="ls")
                    pos += sum(self.advance(c) for c in run)
                run = []
            run.append(cluster)
