"""The previz backend renders real, exact, byte-identical animatic clips, fast and offline."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from runner.backends import cardtext, previz
from runner.backends.base import Backend, ShotRequest
from runner.backends.previz import PrevizBackend
from runner.errors import NodeFailed
from runner.media import ffmpeg
from tests.conftest_media import audio_samples, sha256

PROMPT = """Riverbank at dusk; Mara kneels at the water's edge holding a paper lantern.

Cinematography:
Slow push-in, 50mm, handheld feel

Actions:
- 0-2s: she lights the lantern
- 2-4s: she lets it drift onto the water"""


def shot(**changes: object) -> ShotRequest:
    base = ShotRequest(
        film="The Lantern",
        shot="river",
        take=1,
        model="previz",
        prompt=PROMPT,
        avoid=("logos",),
        seconds=2.0,
        width=320,
        height=180,
        fps=24,
        seed=7,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def render(backend: PrevizBackend, request: ShotRequest, dest: Path) -> Path:
    job = backend.submit(request)
    assert backend.poll(job).state == "done"
    backend.download(job, dest)
    return dest


def test_previz_renders_free_whatever_its_capabilities_promise(tmp_path: Path) -> None:
    backend: Backend = PrevizBackend(tmp_path)
    caps = backend.capabilities("previz")
    assert caps.sizes == ()  # any size: so every even size in bounds must pass `check`
    for width, height in ((64, 64), (1280, 720), (3840, 2160), (322, 180)):
        assert backend.check(shot(width=width, height=height)) is None
        assert backend.price_per_second("previz", width, height) == 0.0
    assert backend.check(shot(seconds=caps.max_seconds)) is None
    assert backend.check(shot(seconds=caps.max_seconds + 0.5)) is not None
    assert backend.find(shot(), 0.0, frozenset()) is None  # nothing rendered yet
    job = backend.submit(shot())
    assert backend.find(shot(), 0.0, frozenset()) == job  # reconciles by its request
    assert backend.poll(job).state == "done"
    backend.download(job, tmp_path / "clip.mp4")
    ffmpeg.verify_video(tmp_path / "clip.mp4", 2.0, 0.01)


def test_clip_has_the_requested_size_rate_frames_and_audio(tmp_path: Path) -> None:
    clip = render(PrevizBackend(tmp_path / "w"), shot(seconds=1.5, fps=30), tmp_path / "c.mp4")
    info = ffmpeg.verify_video(clip, 1.5, 0.01)
    assert (info.width, info.height, info.fps, info.frames) == (320, 180, 30.0, 45)
    assert info.codecs == ("h264", "aac") and info.pix_fmt == "yuv420p"
    assert info.sample_rate == 48000
    assert audio_samples(clip, tmp_path) == 72000


def test_same_request_gives_byte_identical_clips(tmp_path: Path) -> None:
    one = render(PrevizBackend(tmp_path / "a"), shot(), tmp_path / "one.mp4")
    two = render(PrevizBackend(tmp_path / "b"), shot(), tmp_path / "two.mp4")
    assert sha256(one) == sha256(two)


@pytest.mark.parametrize(
    "change",
    [{"take": 2}, {"prompt": PROMPT + " More wind."}, {"seed": 8}, {"shot": "sky"}],
)
def test_anything_in_the_request_changes_the_job_and_the_bytes(
    tmp_path: Path, change: dict[str, object]
) -> None:
    backend = PrevizBackend(tmp_path / "w")
    assert backend.request(shot()) != backend.request(shot(**change))
    assert backend.job_id(shot()) != backend.job_id(shot(**change))
    one = render(backend, shot(), tmp_path / "one.mp4")
    two = render(backend, shot(**change), tmp_path / "two.mp4")
    assert sha256(one) != sha256(two)


def test_request_leaves_out_the_image_path_but_the_job_hashes_its_bytes(tmp_path: Path) -> None:
    first, moved, other = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    Image.new("RGB", (64, 36), (200, 40, 40)).save(first)
    Image.new("RGB", (64, 36), (200, 40, 40)).save(moved)
    Image.new("RGB", (64, 36), (40, 40, 200)).save(other)
    backend = PrevizBackend(tmp_path / "w")

    assert "image" not in backend.request(shot(image=first))
    assert backend.job_id(shot(image=first)) == backend.job_id(shot(image=moved))
    assert backend.job_id(shot(image=first)) != backend.job_id(shot(image=other))
    assert backend.job_id(shot(image=first)) != backend.job_id(shot())
    clip = render(backend, shot(image=first), tmp_path / "with-image.mp4")
    ffmpeg.verify_video(clip, 2.0, 0.01)


def test_first_frame_image_shows_as_a_thumbnail(tmp_path: Path) -> None:
    image = tmp_path / "ref.png"
    Image.new("RGB", (640, 360), (250, 0, 0)).save(image)
    clip = render(PrevizBackend(tmp_path / "w"), shot(image=image), tmp_path / "c.mp4")
    ffmpeg.extract_last_frame(clip, tmp_path / "last.png")
    with Image.open(tmp_path / "last.png") as frame:
        pixel = frame.convert("RGB").getpixel((320 - 10 - 50, 10 + 25))
    assert isinstance(pixel, tuple)
    assert pixel[0] > 200 and pixel[1] < 60


def test_tiny_odd_length_clip_renders(tmp_path: Path) -> None:
    clip = render(
        PrevizBackend(tmp_path / "w"), shot(width=64, height=64, seconds=0.1), tmp_path / "c.mp4"
    )
    assert ffmpeg.verify_video(clip, None).frames == 2


def test_long_prompts_and_non_latin_text_render(tmp_path: Path) -> None:
    long = shot(prompt=("Lanterns " * 400) + "\n灯笼 — ½ ünïcödé " + "x" * 300, film="Ж" * 80)
    clip = render(PrevizBackend(tmp_path / "w"), long, tmp_path / "c.mp4")
    ffmpeg.verify_video(clip, 2.0, 0.01)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"width": 321}, "width 321"),
        ({"height": 32}, "height 32"),
        ({"width": 4096}, "width 4096"),
        ({"seconds": 0.0}, "seconds 0"),
        ({"seconds": 61.0}, "seconds 61"),
        ({"fps": 0}, "fps 0"),
        ({"seconds": 0.01}, "less than one frame"),
    ],
)
def test_check_names_what_previz_cannot_render(
    tmp_path: Path, change: dict[str, object], problem: str
) -> None:
    backend = PrevizBackend(tmp_path)
    assert backend.check(shot()) is None
    message = backend.check(shot(**change))
    assert message is not None and problem in message
    with pytest.raises(NodeFailed, match=problem):
        backend.submit(shot(**change))


def test_unknown_job_polls_as_failed(tmp_path: Path) -> None:
    backend = PrevizBackend(tmp_path)
    assert backend.poll("nope").state == "failed"
    with pytest.raises(NodeFailed):
        backend.download("nope", tmp_path / "x.mp4")


def test_submitting_a_rendered_request_again_does_not_render_it_again(tmp_path: Path) -> None:
    # What keeps previz fast in CI: a retried or reconciled submit reuses the clip. The
    # per-clip time itself is measured by `make bench`, not asserted here.
    backend = PrevizBackend(tmp_path / "w")
    job = backend.submit(shot())
    clip = tmp_path / "w" / "jobs" / f"{job}.mp4"
    first = clip.stat()
    assert backend.submit(shot()) == job
    again = clip.stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)


def counted_measurements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text FreeType is asked to measure from now on."""
    measured: list[str] = []
    real = cardtext._measure

    def measure(font: object, text: str) -> float:
        measured.append(text)
        return real(font, text)  # type: ignore[arg-type]

    monkeypatch.setattr(cardtext, "_measure", measure)
    return measured


def test_wrapping_one_huge_word_measures_each_character_at_most_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    measured = counted_measurements(monkeypatch)
    word = "".join(chr(0x4E00 + i % 2000) if i % 3 else "abcdefghij"[i % 10] for i in range(20_000))
    lines, more = cardtext.Typeset(13).wrap(word, 300, 1000)
    assert len(lines) > 10 and more  # cut into lines, and the rest left off the card
    # Linear: each distinct glyph measured once (the old wrap measured growing prefixes).
    assert sum(map(len, measured)) <= cardtext.MAX_CARD_CHARS


def test_a_five_megabyte_one_word_prompt_draws_a_card_ending_in_an_ellipsis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[int] = []
    real = cardtext.clusters

    def clusters(text: str) -> Iterator[cardtext.Cluster]:
        seen.append(len(text))
        return real(text)

    monkeypatch.setattr(cardtext, "clusters", clusters)
    card = previz.draw_card(shot(prompt="x" * 5_000_000, shot="s" * 2_000))
    assert seen and max(seen) <= cardtext.MAX_CARD_CHARS  # the card looks at an excerpt only
    body = cardtext.Typeset(max(7, 180 // 30))
    lines, more = body.wrap("x" * 5_000_000, 300, 3)
    assert more and len(lines) == 3
    assert card.size == (320, 180)
    assert body.ellipsize(lines[-1], 300)[-1].text == cardtext.ELLIPSIS


@pytest.mark.parametrize("char", ["Ж", "Ω", "म", "ส", "م", "é"])
def test_non_latin_scripts_are_drawn_by_a_font_that_has_the_glyph(char: str) -> None:
    face = cardtext.face_of(char)
    assert face != cardtext.PLACEHOLDER
    # The chosen face draws the glyph itself: it differs from the face's own missing-glyph box.
    font = cardtext.font(face, 24)
    assert font.getmask(char).getbbox() is not None
    assert bytes(font.getmask(char)) != bytes(font.getmask("\U000f0000"))


def test_a_glyph_no_font_has_is_one_placeholder_whatever_its_modifiers() -> None:
    for emoji in ["🎬", "👍🏽", "👨\u200d👩\u200d👧", "❤️"]:
        found = list(cardtext.clusters(f"a{emoji}b"))
        assert [c.face == cardtext.PLACEHOLDER for c in found] == [False, True, False], emoji
        assert found[1].text == emoji


def test_cards_in_any_script_are_byte_identical_for_the_same_request() -> None:
    request = shot(prompt="Mara नदी สะพาน نهر мост 灯笼 🎬 " * 5, film="Фильм")
    one, two = previz.draw_card(request), previz.draw_card(request)
    assert one.tobytes() == two.tobytes()
    assert one.tobytes() != previz.draw_card(shot(prompt="Mara")).tobytes()
