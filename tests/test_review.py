"""The review page (a pure function of records) and `runner pick` (an edit of film.toml that
keeps the user's comments, after which the edit re-cuts and nothing renders)."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest

from runner.cli.main import main
from runner.cli.pick import pick
from runner.errors import UserError
from runner.run import review, review_page
from runner.run.project import Project
from runner.run.render import Options, render
from tests.films import gen

HOSTILE = "</script><img src=x onerror=alert(1)>"


def take(number: int, status: str, *, picked: bool = False, message: str = "") -> review_page.Take:
    clip = f"clips/{number}.mp4" if status in (review_page.CACHED, review_page.RENDERED) else None
    return review_page.Take(
        node=f"shots.sky.take{number}",
        number=number,
        picked=picked,
        status=status,
        pick_command=f"runner pick films/x/film.toml sky {number}",
        message=message,
        clip=clip,
        poster=f"posters/{number}.jpg" if clip else None,
        seconds_taken=42.0,
        cost_usd=0.4,
    )


def sample(prompt: str = "The lantern rises.") -> review_page.Page:
    return review_page.Page(
        title=f"The Lantern {HOSTILE}",
        manifest="films/x/film.toml",
        film="film.mp4",
        film_note="The current cut.",
        shots=[
            review_page.Shot(
                "sky",
                prompt,
                "openai",
                "sora-2",
                4,
                True,
                [
                    take(1, review_page.CACHED),
                    take(2, review_page.RENDERED, picked=True),
                    take(3, review_page.FAILED, message=f"moderation_blocked: {HOSTILE}"),
                ],
            ),
            review_page.Shot(
                "river", "Dusk.", "previz", "previz", 1, False, [take(1, review_page.MISSING)]
            ),
        ],
        spend_by_backend={"openai": 0.8},
        last_run=review_page.LastRun("2026-11-29T10:00:00+00:00", ["shots.sky.take2"], [], [], 0.4),
    )


def test_user_text_is_escaped_everywhere_and_never_reaches_the_script() -> None:
    html = review_page.build(sample(prompt=f"A shot. {HOSTILE}\nSecond line"))
    assert HOSTILE not in html
    assert "&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in html
    assert html.count("<script>") == 1 and html.count("</script>") == 1  # the page's own
    assert "onerror=alert(1)>" not in html


def test_one_card_per_shot_and_take_the_pick_marked_and_the_command_for_the_others() -> None:
    html = review_page.build(sample())
    assert html.count('<article class="shot"') == 2
    assert html.count("data-node=") == 4
    assert html.count('class="take picked"') == 1
    assert "runner pick films/x/film.toml sky 1" in html
    assert "runner pick films/x/film.toml sky 2" not in html  # the picked one needs none
    assert "moderation_blocked" in html and "not yet rendered" in html
    assert "<details><summary>Prompt</summary>" in html
    assert "42 s" in html and "$0.40" in html and "$0.80" in html


def test_the_page_asks_for_nothing_off_the_disk_and_its_csp_allows_only_its_own_code() -> None:
    html = review_page.build(sample())
    assert not re.search(r"(src|href)=\"(https?:)?//", html)
    assert "@import" not in html and "url(" not in html
    csp = re.search(r'Content-Security-Policy" content="([^"]+)"', html)
    assert csp is not None and "default-src 'none'" in csp.group(1)
    script = re.search(r"<script>(.*)</script>", html, re.S)
    assert script is not None
    sha = base64.b64encode(hashlib.sha256(script.group(1).encode()).digest()).decode()
    assert f"'sha256-{sha}'" in csp.group(1)


FILM = """\
# The takes test film
[film]
title = "Takes"
size = "160x90"
fps = 24

[defaults]
seconds = 1

[shots.river]
scene = "Riverbank at dusk."

[shots.sky]
scene = "The lantern rises."
takes = 2     # two variants
pick = 1      # the first, for now

[edit]
sequence = ["river", "sky"]   # cut
"""


def test_pick_keeps_comments_and_layout_and_checks_the_take(tmp_path: Path) -> None:
    manifest = gen(tmp_path, {"film.toml": FILM}) / "film.toml"
    assert pick(manifest, "sky", "2") == 2
    assert manifest.read_text() == FILM.replace("pick = 1      #", "pick = 2      #")
    with pytest.raises(UserError, match=r"shots.sky: no take '3'; it has takes = 2: pick a"):
        pick(manifest, "sky", "3")
    with pytest.raises(UserError, match=r"it has one take; set `takes = 2`"):
        pick(manifest, "river", "2")
    with pytest.raises(UserError, match=r"no shot named `skyy`; did you mean `sky`"):
        pick(manifest, "skyy", "1")
    without = FILM.replace("pick = 1      # the first, for now\n", "")
    manifest.write_text(without)
    pick(manifest, "sky", "2")
    assert manifest.read_text() == without.replace(
        "takes = 2     # two variants\n", "takes = 2     # two variants\npick = 2\n"
    )


@pytest.mark.slow
def test_after_pick_only_the_edit_renders_and_the_page_shows_takes(tmp_path: Path) -> None:
    manifest = gen(tmp_path / "film", {"film.toml": FILM}) / "film.toml"
    cache = tmp_path / "cache"
    result = render(Project.open(manifest, cache, None), Options(), lambda *a: None)
    assert result.outcome.ok and result.film is not None
    assert main(["pick", str(manifest), "sky", "2", "--cache-dir", str(cache)]) == 0
    project = Project.open(manifest, cache, None)
    plan = project.plan()
    assert [d.id for d in plan.to_render] == ["edit"]
    assert [c.code for c in plan.decisions["edit"].causes] == ["pick_changed"]
    index = review.write(project, plan)
    html = index.read_text()
    assert html.count("data-node=") == 3 and 'class="take picked"' in html
    assert "An earlier cut" in html  # the new cut is not assembled yet
    clips = sorted((index.parent / "clips").iterdir())
    assert len(clips) == 3 and len(list((index.parent / "posters").iterdir())) == 3
    blob = project.store.blob(plan.decisions["shots.sky.take2"].output or "")
    assert any(c.stat().st_ino == blob.stat().st_ino for c in clips)  # hard links
    assert main(["render", str(manifest), "--cache-dir", str(cache)]) == 0
    assert "The current cut." in index.read_text()
