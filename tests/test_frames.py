"""End frames (`end_image`, frame edges to a shot's first or last frame) and `extend`: on
previz end to end, offline, and as plan-time errors on models without them."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from runner import cli
from runner.backends.base import Refused
from runner.backends.previz import PrevizBackend, draw_card
from runner.film.request import ShotRequest
from runner.media import ffmpeg
from tests.conftest_media import ff
from tests.films import MINIMAL, gen
from tests.servers.veo_server import VeoServer

KEY = "AIzaSy-loopback-frames"

FILM = """\
[film]
title = "Frames"
size = "160x90"
fps = 24

[shots.a]
scene = "A lantern is lit."
seconds = 1

[shots.a_more]
extend = { shot = "a" }
scene = "It drifts away."
seconds = 1

[shots.b]
scene = "The river at night."
end_image = { shot = "c", frame = "first" }
seconds = 1

[shots.c]
scene = "The sky fills with lanterns."
seconds = 1

[edit]
sequence = ["a", "a_more", "b", "c"]
loudness_lufs = -16
"""


def test_a_film_with_an_end_frame_and_an_extension_renders_on_previz(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    film = gen(tmp_path / "film", {"film.toml": FILM}) / "film.toml"
    assert cli.main(["plan", str(film), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    order = [n["id"] for n in plan["nodes"]]
    # b ends where c starts: c and its first frame come first; the extension after its source.
    assert order.index("shots.c") < order.index("frames.c.first") < order.index("shots.b")
    assert order.index("shots.a") < order.index("shots.a_more")

    assert cli.main(["render", str(film)]) == 0
    out = film.parent / "out"
    assert abs(ffmpeg.probe(out / "film.mp4").duration - 4.0) < 0.1  # four 1 s clips
    provenance = json.loads((out / "film.provenance.json").read_text())
    nodes = {n["id"]: n for n in provenance["nodes"]}
    assert nodes["shots.b"]["inputs"]["end_image"]["node"] == "frames.c.first"
    assert nodes["shots.b"]["parameters"]["end_image"] is True
    extension = nodes["shots.a_more"]
    assert extension["parameters"]["extend_from"] == 1.0  # the timecode runs on from a's end
    assert extension["inputs"]["extend"]["node"] == "shots.a"
    assert "trimmed" not in extension  # previz renders the new part alone

    # Nothing renders again; a's new prompt re-renders a and its extension (its input).
    capsys.readouterr()
    assert cli.main(["plan", str(film), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["to_render"] == 0
    film.write_text(FILM.replace("A lantern is lit.", "A lantern glows."))
    assert cli.main(["plan", str(film), "--json"]) == 0
    nodes = json.loads(capsys.readouterr().out)["nodes"]
    assert {n["id"] for n in nodes if n["status"] != "cached"} == {
        "shots.a", "shots.a_more", "edit"
    }  # fmt: skip


def shot(**changes: object) -> ShotRequest:
    fields: dict[str, object] = dict(
        film="F", shot="s", take=1, model="previz", prompt="p", avoid=(), seconds=1.0,
        width=160, height=90, fps=24, seed=None,
    )  # fmt: skip
    return ShotRequest(**{**fields, **changes})  # type: ignore[arg-type]


def test_previz_keys_of_shots_without_the_features_are_unchanged(tmp_path: Path) -> None:
    backend = PrevizBackend(tmp_path)
    plain = backend.request(shot())
    assert "end_image" not in plain and "extend_from" not in plain  # no old clip re-renders
    assert backend.request(shot(extend_of="a", extend_from=4.0))["extend_from"] == 4.0


def test_previz_extension_timecode_starts_where_its_source_ended() -> None:
    args = ffmpeg.previz_args(
        card_png="c.png", fontfile="f.ttf", out="o.mp4", frames=24, fps=24, samples=48000,
        font_size=8, noise_seed=0, start_frame=96,
    )  # fmt: skip
    graph = args[args.index("-filter_complex") + 1]
    assert "start_number=96" in graph and "hms\\:4.0" in graph
    plain = ffmpeg.previz_args(
        card_png="c.png", fontfile="f.ttf", out="o.mp4", frames=24, fps=24, samples=48000,
        font_size=8, noise_seed=0,
    )  # fmt: skip
    assert "start_number" not in " ".join(plain)


def test_previz_end_frame_is_drawn_on_the_card(tmp_path: Path) -> None:
    from PIL import Image

    end = tmp_path / "end.png"
    Image.new("RGB", (64, 36), (255, 0, 0)).save(end)
    with_end = draw_card(shot(end_image=end, width=320, height=180))
    r, g, b = with_end.getpixel((320 - 12, 180 - 12))
    assert r > 200 and g < 60 and b < 60  # the red end frame, bottom right


Check = Callable[..., str]


@pytest.fixture
def check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Check:
    """`runner plan` on a film: exit code 2, no traceback, every expected text in stderr."""
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))

    def run(toml: str, *expected: str) -> str:
        film = gen(tmp_path / "film", {"film.toml": toml}) / "film.toml"
        capsys.readouterr()
        code = cli.main(["plan", str(film)])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "Traceback" not in err
        for text in expected:
            assert text in err, err
        return err

    return run


VEO = 'backend = "veo"\nsize = "1280x720"\nseconds = 8\n'


def test_an_end_frame_on_a_model_without_one_names_the_models_that_have_it(check: Check) -> None:
    bad = MINIMAL + f'[shots.end]\n{VEO}model = "veo-3.0-generate-001"\nscene = "x"\n'
    bad += 'end_image = { shot = "river", frame = "first" }\n'
    err = check(bad, "shots.end.end_image: veo model veo-3.0-generate-001 takes no last-frame")
    assert "models that can:" in err
    assert "luma ray-2" in err and "veo veo-3.1-generate-preview" in err
    assert "runway veo3.1" in err and "fal fal-ai/kling-video/v2.1/master/image-to-video" in err
    assert "openai" not in err.split("models that can:")[1]


def test_extend_on_a_model_without_it_names_the_models_that_have_it(
    check: Check, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # a gateway, never reached
    sora = 'backend = "openai"\nmodel = "sora-2"\nsize = "1280x720"\nseconds = 4\n'
    bad = MINIMAL + f"[shots.a]\n{sora}scene = 'a'\n[shots.b]\n{sora}scene = 'b'\n"
    bad += 'extend = { shot = "a" }\n'
    err = check(bad, "shots.b.extend: openai model sora-2 cannot extend a video")
    assert "luma ray-2" in err and "veo veo-3.1-generate-preview" in err


def test_extend_across_backends_is_refused(check: Check) -> None:
    bad = MINIMAL + f'[shots.more]\n{VEO}scene = "x"\nextend = {{ shot = "river" }}\n'
    check(bad, "shots.more.extend: shot 'river' renders on another backend")


def test_ending_on_a_shot_that_starts_on_this_one_is_a_cycle(check: Check) -> None:
    # sky starts on river's last frame; river cannot also end on sky's first frame.
    bad = MINIMAL.replace(
        'cast = ["mara"]', 'cast = ["mara"]\nend_image = { shot = "sky", frame = "first" }'
    )
    err = check(bad, "dependency cycle:", "`end_image`")
    assert "river -> sky -> river" in err or "sky -> river -> sky" in err


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('end_image = { shot = "sky", frame = "middle" }', "shots.river.end_image.frame"),
        ('end_image = "assets.nope"', "shots.river.end_image: `assets.nope` is not a declared"),
        ('extend = { shot = "skyy" }', "shots.river.extend.shot: no shot named `skyy`"),
        ('extend = { shot = "river" }', "shots.river.extend: a shot cannot extend itself"),
        ('extend = { shot = "sky", at = 1 }', "shots.river.extend.at: unknown key"),
    ],
)
def test_bad_end_frames_and_extends_name_the_key(check: Check, line: str, expected: str) -> None:
    check(MINIMAL.replace('cast = ["mara"]', f'cast = ["mara"]\n{line}'), expected)


# -- veo: lastFrame and video extension, through google-genai to the loopback server --------


def png(path: Path, colour: str) -> Path:
    ff("-f", "lavfi", "-i", f"color={colour}:s=64x36", "-frames:v", "1", str(path))
    return path


def test_a_veo_film_sends_the_end_frame_and_the_video_it_extends_and_cuts_the_repeat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml = """\
[film]
title = "Veo frames"
size = "320x180"
fps = 24
[defaults]
backend = "veo"
size = "1280x720"
seconds = 4
[assets.start]
path = "start.png"
[shots.s0]
scene = "A lantern on the water."
[shots.s1]
extend = { shot = "s0" }
scene = "It drifts under the bridge."
[shots.s2]
image = "assets.start"
end_image = { shot = "s0", frame = "first" }
scene = "The girl runs to the river."
[edit]
sequence = ["s0", "s1"]
"""
    root = gen(tmp_path / "film", {"film.toml": toml})
    gen(root, {"pyproject.toml": "[tool.runner.backends.veo]\npoll_seconds = 0.05\n"})
    png(root / "start.png", "blue")
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    with VeoServer(job_seconds=0.1, api_key=KEY) as server:
        monkeypatch.setenv("GOOGLE_VERTEX_BASE_URL", server.base_url)
        monkeypatch.setenv("GOOGLE_API_KEY", KEY)
        assert cli.main(["render", str(root / "film.toml")]) == 0
    creates = {c["prompt"].split("\n")[0]: c for c in server.creates}
    assert len(server.creates) == 3  # one billable create per shot
    s0_clip = creates["A lantern on the water."]
    extension = creates["It drifts under the bridge."]
    ending = creates["The girl runs to the river."]
    assert not s0_clip["video_bytes"] and not s0_clip["last_frame_bytes"]
    assert extension["video_mime"] == "video/mp4" and not extension["has_image"]
    assert ending["image_bytes"] == (root / "start.png").read_bytes()
    assert ending["last_frame_bytes"][:8] == b"\x89PNG\r\n\x1a\n"  # s0's first frame

    provenance = json.loads((root / "out" / "film.provenance.json").read_text())
    nodes = {n["id"]: n for n in provenance["nodes"]}
    s0 = nodes["shots.s0"]["output_sha256"]
    blob = tmp_path / "cache" / "cas" / s0[:2] / s0
    assert extension["video_bytes"] == blob.read_bytes()  # the very video s0 made
    trimmed = nodes["shots.s1"]["trimmed"]
    assert trimmed["source"] == "shots.s0" and 3.9 < trimmed["head_seconds"] < 4.2
    assert nodes["shots.s1"]["parameters"]["extend"] is True
    assert abs(ffmpeg.probe(root / "out" / "film.mp4").duration - 8.0) < 0.15  # back to back


def test_veo_end_frame_without_a_first_frame_is_a_plan_time_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, check: Check
) -> None:
    bad = MINIMAL + f'[shots.end]\n{VEO}scene = "x"\n'
    bad += 'end_image = { shot = "river", frame = "first" }\n'
    check(bad, "shots.end: veo cannot render it: veo interpolates from a first to a last frame")
    bad = MINIMAL + f'[shots.a]\n{VEO}scene = "a"\n[shots.b]\n{VEO}scene = "b"\n'
    bad += 'extend = { shot = "a" }\nend_image = { shot = "river", frame = "first" }\n'
    check(bad, "shots.b: veo cannot render it: veo extends a video without a last frame")


# -- runway: promptImage [{first}, {last}], through runwayml to the loopback server ----------


def test_runway_sends_first_and_last_frames_as_positioned_prompt_images(tmp_path: Path) -> None:
    from runner.backends.runway import RunwayBackend
    from tests.servers.runway_server import RunwayServer

    first, last = png(tmp_path / "first.png", "blue"), png(tmp_path / "last.png", "red")
    request = ShotRequest(
        film="F", shot="s", take=1, model="veo3.1_fast", prompt="A lantern.", avoid=(),
        seconds=4.0, width=1280, height=720, fps=24, seed=None, image=first, end_image=last,
    )  # fmt: skip
    with RunwayServer(job_seconds=0.05, api_key="key_frames") as server:
        backend = RunwayBackend(
            tmp_path / "runway", {"base_url": server.base_url, "api_key": "key_frames"}
        )
        assert backend.request(request)["end_image"] is True
        backend.submit(request)
        gen45 = dataclasses.replace(request, model="gen4.5")
        assert "gen4.5 takes no last-frame image" in (backend.check(gen45) or "")
        alone = dataclasses.replace(request, image=None)
        assert "needs a first frame" in (backend.check(alone) or "")
        backend.close()
    (post,) = server.posts
    assert post["endpoint"] == "image_to_video"
    images = post["body"]["promptImage"]
    assert [i["position"] for i in images] == ["first", "last"]
    assert base64.b64decode(images[1]["uri"].split(",", 1)[1]) == last.read_bytes()
    assert base64.b64decode(images[0]["uri"].split(",", 1)[1]) == first.read_bytes()


# -- fal: Kling's tail_image_url, Veo 3.1's extend-video video_url, through fal-client --------


def test_fal_uploads_the_end_frame_and_the_video_it_extends(tmp_path: Path) -> None:
    from runner.backends.fal import FalBackend
    from tests.servers.fal_server import FalServer

    first, last = png(tmp_path / "first.png", "blue"), png(tmp_path / "last.png", "red")
    source = tmp_path / "source.mp4"
    ff("-f", "lavfi", "-i", "testsrc2=s=160x90:r=24:d=1", "-pix_fmt", "yuv420p", str(source))
    kling = ShotRequest(
        film="F", shot="s", take=1, model="fal-ai/kling-video/v2.1/master/image-to-video",
        prompt="A lantern.", avoid=(), seconds=5.0, width=1920, height=1080, fps=24, seed=None,
        image=first, end_image=last,
    )  # fmt: skip
    extend = dataclasses.replace(
        kling, model="fal-ai/veo3.1/fast/extend-video", seconds=7.0, width=1280, height=720,
        image=None, end_image=None, extend_of="a", extend_video=source,
    )  # fmt: skip
    with FalServer(job_seconds=0.05, api_key="fal-frames") as server:
        backend = FalBackend(
            tmp_path / "fal", {"base_url": server.base_url, "api_key": "fal-frames"}
        )
        assert backend.check(kling) is None and backend.check(extend) is None
        assert backend.request(extend)["extend"] is True
        plain = dataclasses.replace(extend, extend_of=None, extend_video=None)
        assert "is an extend endpoint" in (backend.check(plain) or "")
        wan = dataclasses.replace(
            kling, model="fal-ai/wan/v2.2-a14b/image-to-video", width=1280, height=720
        )
        assert "takes no last-frame image" in (backend.check(wan) or "")
        backend.submit(kling)
        backend.submit(extend)
        uploads = [kind for kind, _ in server.uploads]
        inputs = [r.input for r in server.billable()]
    assert uploads == ["image/png", "image/png", "video/mp4"]
    assert server.uploads[1][1] == last.read_bytes() and server.uploads[2][1] == source.read_bytes()
    by_field = {k: v for i in inputs for k, v in i.items() if k.endswith("_url")}
    assert set(by_field) == {"image_url", "tail_image_url", "video_url"}
    assert inputs[1]["duration"] == "7s" and "image_url" not in inputs[1]


# -- luma: keyframes frame1 image, frame0 generation, through lumaai to the loopback server ----


def test_luma_ends_on_a_frame1_image_and_extends_from_a_frame0_generation(tmp_path: Path) -> None:
    from runner.backends.luma import LumaBackend
    from tests.servers.luma_server import LumaServer

    bucket = tmp_path / "bucket"
    bucket.mkdir()
    last = png(tmp_path / "last.png", "red")
    first = ShotRequest(
        film="F", shot="a", take=1, model="ray-flash-2", prompt="A lantern on the river.",
        avoid=(), seconds=5.0, width=1280, height=720, fps=24, seed=None,
    )  # fmt: skip
    with LumaServer(job_seconds=0.05, api_key="luma-frames", images=bucket) as server:
        config = {"base_url": server.base_url, "api_key": "luma-frames", "poll_seconds": 0.02}
        config |= {"image_store": bucket.as_uri(), "image_url": server.root + "/images"}
        backend = LumaBackend(tmp_path / "luma", config)
        source = backend.submit(first)
        while backend.poll(source).state != "done":
            time.sleep(0.02)
        more = dataclasses.replace(
            first, shot="a_more", prompt="It drifts away.", end_image=last, extend_of="a",
            extend_job=source,
        )  # fmt: skip
        assert backend.request(more)["extend"] is True and backend.request(more)["end_image"]
        job = backend.submit(more)
        while (status := backend.poll(job)).state not in ("done", "failed"):
            time.sleep(0.02)
        assert status.state == "done", status.error
        backend.download(job, tmp_path / "more.mp4")
        with pytest.raises(Refused, match="by its id"):
            backend.submit(dataclasses.replace(more, extend_job=None))
        backend.close()
    keyframes = server.creates[1]["body"]["keyframes"]
    assert keyframes["frame0"] == {"type": "generation", "id": source}
    assert keyframes["frame1"]["type"] == "image"
    assert (bucket / keyframes["frame1"]["url"].rsplit("/", 1)[1]).read_bytes() == last.read_bytes()
    # Luma answers with the generation extended: the runner cuts the first 5 s (see the veo film).
    assert abs(ffmpeg.probe(tmp_path / "more.mp4").duration - 10.0) < 0.2
