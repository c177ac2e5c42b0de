"""The default backend: offline, free, deterministic animatic clips (a shot card on screen).

Each clip is a real H.264/AAC MP4 of the requested size, length and frame rate, so the whole
pipeline (cache, assembly, provenance) runs end to end without a provider. The card shows the
film title, shot, take and an excerpt of the compiled prompt; a running timecode is burned in;
the audio is a quiet seeded noise bed. The same request gives the same bytes on every machine:
the fonts are Pillow's embedded Aileron and pinned Noto wheels (a font per glyph, see
`cardtext`), the layout engine is Pillow's basic one, and ffmpeg is the pinned build.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.backends import cardtext
from runner.backends.base import Capabilities, JobStatus, ShotRequest
from runner.errors import NodeFailed
from runner.film import model_table
from runner.film.model_table import ModelRow
from runner.media import ffmpeg

MIN_SIDE = 64
MAX_SIDE = 3840
MAX_SECONDS = 60.0
MAX_FPS = 120
FONT_NAME = "previz-aileron.ttf"
MAX_PROMPT_CHARS = 100_000  # generous (hosted models take a few thousand); bounds plan's work
RECIPE_VERSION = 3  # 2: a font per glyph, linear wrap, bounded excerpt; 3: H.264 High
"""Bumped when the look of a previz clip changes, so cached clips re-render."""

# Any even size from 64 to 3840 (see `check`), any length up to 60 s, free. It takes all a
# hosted model might (references, remix, end frames, extend), so a film meant for Veo or a
# gateway previews offline; like Sora, `avoid` goes into the text, so the card shows it.
ROW = ModelRow(
    max_seconds=MAX_SECONDS,
    price_per_second=0.0,
    image=True,
    reference_images=3,
    remix=True,
    last_frame=True,
    extend=True,
    seed=True,
    max_prompt_chars=MAX_PROMPT_CHARS,
)


class PrevizBackend:
    """Renders shot cards locally with Pillow and ffmpeg; synchronous, $0."""

    name = "previz"
    default_model = "previz"
    reconciles = True
    lands_late = False  # rendered in this process: a killed run's render died with it

    def __init__(self, workdir: Path, config: Mapping[str, Any] | None = None) -> None:
        self.workdir = workdir  # previz takes no configuration

    def rows(self) -> Mapping[str, Capabilities]:
        """The backend's model table, by model name."""
        return {self.default_model: ROW}

    def capabilities(self, model: str) -> Capabilities:
        return ROW

    def credentials_problem(self) -> str | None:
        return None  # offline: nothing to reach

    def check(self, shot: ShotRequest) -> str | None:
        """A problem with the shot's parameters, in words, or None when previz can render it."""
        for side, value in (("width", shot.width), ("height", shot.height)):
            if not MIN_SIDE <= value <= MAX_SIDE or value % 2:
                return f"{side} {value} is not an even number from {MIN_SIDE} to {MAX_SIDE}"
        problem = model_table.words(shot, ROW, self.name)
        if problem is not None:
            return problem
        if not 1 <= shot.fps <= MAX_FPS:
            return f"fps {shot.fps} is not from 1 to {MAX_FPS}"
        if round(shot.seconds * shot.fps) < 1:
            return f"{shot.seconds:g} s at {shot.fps} fps is less than one frame"
        return None

    def price_per_second(self, model: str, width: int, height: int) -> float:
        return ROW.price(width, height) or 0.0

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """Everything that changes the clip's bytes, except the image (hashed by the caller)."""
        return {
            "backend": self.name,
            "version": RECIPE_VERSION,
            "film": shot.film,
            "shot": shot.shot,
            "take": shot.take,
            "model": shot.model,
            "prompt": shot.prompt,
            "avoid": list(shot.avoid),
            "seconds": shot.seconds,
            "width": shot.width,
            "height": shot.height,
            "fps": shot.fps,
            "seed": shot.seed,
            # Only for a shot that has them, so every other shot's key (and clip) is unchanged.
            **({"end_image": True} if shot.end_image is not None else {}),
            **(
                {"extend_of": shot.extend_of, "extend_from": shot.extend_from}
                if shot.extend_of is not None
                else {}
            ),
        }

    def job_id(self, shot: ShotRequest) -> str:
        """sha256 of the canonical request JSON and the first-frame image's bytes."""
        h = hashlib.sha256()
        h.update(json.dumps(self.request(shot), sort_keys=True, separators=(",", ":")).encode())
        if shot.image is not None:
            h.update(b"\0image\0")
            h.update(_file_digest(shot.image).encode())
        if shot.end_image is not None:
            h.update(b"\0end_image\0")
            h.update(_file_digest(shot.end_image).encode())
        if shot.extend_of is not None:
            h.update(f"\0extend\0{shot.extend_of}".encode())
        return h.hexdigest()

    def connect(self, shot: ShotRequest) -> None:
        """Nothing to connect to: previz renders here."""

    def submit(self, shot: ShotRequest) -> str:
        """Render the clip now (previz is synchronous) and return its job id."""
        problem = self.check(shot)
        if problem is not None:
            raise NodeFailed(f"previz cannot render shot {shot.shot!r}: {problem}")
        job = self.job_id(shot)
        out = self._job_path(job)
        if not out.is_file():
            render(shot, out, self.workdir, noise_seed=int(job[:8], 16))
        return job

    def remix(self, source_job_id: str, shot: ShotRequest) -> str:
        """A card like any other: the remix prompt is on it, the source is in its key."""
        return self.submit(shot)

    def find(self, shot: ShotRequest, since: float, exclude: frozenset[str]) -> str | None:
        """A clip already rendered for this request (previz jobs are named by their request)."""
        job = self.job_id(shot)
        return job if self._job_path(job).is_file() else None

    def poll(self, job_id: str) -> JobStatus:
        """Done once rendered; there is never anything to wait for."""
        if self._job_path(job_id).is_file():
            return JobStatus(state="done")
        return JobStatus(state="failed", error=f"no previz job {job_id}")

    def download(self, job_id: str, dest: Path) -> None:
        """Move the rendered clip to dest (ffmpeg wrote it: the store hashes it)."""
        src = self._job_path(job_id)
        if not src.is_file():
            raise NodeFailed(f"no previz job {job_id} to download")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(src, dest)

    def _job_path(self, job_id: str) -> Path:
        return self.workdir / "jobs" / f"{job_id}.mp4"


def frames_for(shot: ShotRequest) -> int:
    """The clip's frame count: round(seconds × fps)."""
    return max(1, round(shot.seconds * shot.fps))


def render(shot: ShotRequest, out: Path, workdir: Path, *, noise_seed: int = 0) -> None:
    """Render one previz clip to `out` (written to a temp file, then renamed into place)."""
    workdir.mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    font = _font_file(workdir)
    frames = frames_for(shot)
    samples = round(frames * ffmpeg.SAMPLE_RATE / shot.fps)
    with tempfile.TemporaryDirectory(prefix="previz-", dir=workdir) as tmp_name:
        tmp = Path(tmp_name)
        draw_card(shot).save(tmp / "card.png", optimize=False, compress_level=1)
        shutil.copyfile(font, tmp / "font.ttf")
        args = ffmpeg.previz_args(
            card_png="card.png",
            fontfile="font.ttf",
            out="clip.mp4",
            frames=frames,
            fps=shot.fps,
            samples=samples,
            font_size=max(8, shot.height // 22),
            noise_seed=noise_seed,
            start_frame=round(shot.extend_from * shot.fps) if shot.extend_of else 0,
        )
        ffmpeg.run(args, cwd=tmp)
        os.replace(tmp / "clip.mp4", out)


def _font_file(workdir: Path) -> Path:
    """Pillow's embedded Aileron font, written once into workdir for ffmpeg's drawtext."""
    path = workdir / FONT_NAME
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=workdir, suffix=".ttf")
        with os.fdopen(fd, "wb") as f:
            f.write(cardtext.aileron_bytes())
        os.replace(tmp, path)
    return path


def background(shot_id: str) -> tuple[int, int, int]:
    """A dark colour derived from the shot id, so each shot is recognisable at a glance."""
    d = hashlib.sha256(shot_id.encode()).digest()
    r, g, b = colorsys.hsv_to_rgb(d[0] / 255, 0.35 + d[1] / 255 * 0.3, 0.22 + d[2] / 255 * 0.16)
    return round(r * 255), round(g * 255), round(b * 255)


def draw_card(shot: ShotRequest) -> Any:
    """The shot card as a Pillow image: title, shot and take, parameters, prompt excerpt."""
    from PIL import Image, ImageDraw

    w, h = shot.width, shot.height
    card = Image.new("RGB", (w, h), background(shot.shot))
    draw = ImageDraw.Draw(card)
    margin = max(3, w // 32)
    text_right = w - margin
    thumb_bottom = 0
    end_top = h  # the text stays above the end frame's thumbnail
    if shot.image is not None:
        thumb = _thumbnail(shot.image, (w // 3, h // 3))
        x = w - margin - thumb.width
        card.paste(thumb, (x, margin))
        draw.rectangle(
            (x - 1, margin - 1, x + thumb.width, margin + thumb.height), outline=(230, 230, 230)
        )
        text_right = x - margin
        thumb_bottom = margin + thumb.height
    if shot.end_image is not None:  # the frame the clip ends on, bottom right
        end = _thumbnail(shot.end_image, (w // 4, h // 4))
        x, y0 = w - margin - end.width, h - margin - end.height
        card.paste(end, (x, y0))
        end_top = y0 - margin
        draw.rectangle((x - 1, y0 - 1, x + end.width, y0 + end.height), outline=(255, 214, 140))
    title = cardtext.Typeset(max(8, h // 14))
    body = cardtext.Typeset(max(7, h // 30))
    bottom = h - max(8, h // 22) * 2 - margin  # keep clear of the burned-in timecode
    bottom = min(bottom, end_top)
    y = margin
    header: list[tuple[str, cardtext.Typeset, tuple[int, int, int]]] = [
        (shot.film, title, (255, 255, 255)),
        (f"shot {shot.shot} · take {shot.take}", title, (255, 214, 140)),
        (
            f"{shot.model} · {shot.seconds:g}s · {w}x{h} · {shot.fps} fps"
            + (f" · seed {shot.seed}" if shot.seed is not None else ""),
            body,
            (200, 200, 200),
        ),
    ]
    if shot.extend_of is not None:
        since = f"{int(shot.extend_from // 60)}:{shot.extend_from % 60:05.2f}"
        header.append((f"extends {shot.extend_of} from {since}", body, (255, 214, 140)))
    if shot.end_image is not None:
        header.append(("ends on the frame shown bottom right", body, (255, 214, 140)))
    for text, face, colour in header:
        lines, more = face.wrap(text, text_right - margin, 2)
        if more and lines:
            lines[-1] = face.ellipsize(lines[-1], text_right - margin)
        for line in lines:
            if y + face.line_height > bottom:
                return card
            face.draw(draw, margin, y, line, colour)
            y += face.line_height
    y = max(y, thumb_bottom) + body.line_height // 2
    paragraphs = shot.prompt.splitlines()
    if shot.avoid:
        paragraphs.append("avoid: " + ", ".join(shot.avoid))
    fits = max(0, (bottom - y) // body.line_height)
    wrapped: list[cardtext.Line] = []
    more = False
    for i, para in enumerate(paragraphs):
        if len(wrapped) >= fits:
            more = True  # wrapping the rest would only be cut off
            break
        lines, cut = body.wrap(para, w - 2 * margin, fits - len(wrapped))
        wrapped.extend(lines or [[]])
        more = cut or (len(wrapped) >= fits and i + 1 < len(paragraphs))
    wrapped = wrapped[:fits]
    if more and wrapped:
        wrapped[-1] = body.ellipsize(wrapped[-1], w - 2 * margin)
    for line in wrapped:
        body.draw(draw, margin, y, line, (235, 235, 235))
        y += body.line_height
    return card


def _thumbnail(image: Path, box: tuple[int, int]) -> Any:
    """The first-frame reference image scaled to fit `box`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image) as im:
            thumb = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as exc:
        raise NodeFailed(f"{image}: cannot read the image: {exc}") from None
    thumb.thumbnail((max(1, box[0]), max(1, box[1])), Image.Resampling.BICUBIC)
    return thumb


def _file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise NodeFailed(f"{path}: cannot read the first-frame image: {exc}") from None
    return h.hexdigest()
