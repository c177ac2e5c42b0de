"""The review page in a real headless Chromium, opened from disk: a 20-shot film with takes
and one shot the provider refused (issue 17's "done when")."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from runner.backends.base import Refused, ShotRequest
from runner.backends.previz import PrevizBackend
from runner.backends.registry import Backends
from runner.run import review
from runner.run.project import Project
from runner.run.render import Options, render
from tests.films import gen

REFUSAL = "Your request was blocked by our moderation system. <b>(policy 7)</b>"


class RefusingPreviz(PrevizBackend):
    """Previz that refuses, in a provider's words, every shot whose prompt says FORBIDDEN."""

    def submit(self, shot: ShotRequest) -> str:
        if "FORBIDDEN" in shot.prompt:
            raise Refused(REFUSAL)
        return super().submit(shot)


class RefusingBackends(Backends):
    def get(self, name: str) -> PrevizBackend:  # type: ignore[override]
        if name not in self._made:
            self._made[name] = RefusingPreviz(self.scratch / name)
        return self._made[name]  # type: ignore[return-value]


def film() -> str:
    shots = [f'[shots.s{i:02d}]\nscene = "Shot {i} of the film."\n' for i in range(1, 20)]
    shots[2] += "takes = 3\npick = 2\n"
    shots[7] += "takes = 2\n"
    shots.append('[shots.banned]\nscene = "FORBIDDEN: a shot the provider refuses."\n')
    cut = ", ".join(f'"s{i:02d}"' for i in range(1, 20))  # the refused shot is outside the cut
    head = '[film]\ntitle = "Twenty"\nsize = "160x90"\nfps = 24\n\n[defaults]\nseconds = 1\n'
    return head + "\n" + "\n".join(shots) + f"\n[edit]\nsequence = [{cut}]\n"


def paused(request: object) -> bool:
    """Chromium ends a `preload="metadata"` media read once it has the metadata, and reports
    it as aborted: the file was found and read, nothing failed."""
    return bool(
        getattr(request, "resource_type", "") == "media"
        and getattr(request, "failure", "") == "net::ERR_ABORTED"
    )


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.mark.slow
def test_the_review_page_of_20_shots_with_takes_and_a_refusal_in_headless_chromium(
    tmp_path: Path,
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("no Chromium here: apt-get install chromium (.ci/run does)")
    manifest = gen(tmp_path / "film", {"film.toml": film()}) / "film.toml"
    cache = tmp_path / "cache"
    backends = RefusingBackends(scratch=cache / "tmp" / "backends")
    project = Project.open(manifest, cache, None, backends=backends)
    result = render(project, Options(keep_going=True), lambda *a: None)
    assert list(result.outcome.failed) == ["shots.banned"] and result.film is not None
    index = review.write(Project.open(manifest, cache, None, backends=backends))

    errors: list[str] = []
    failed: list[str] = []
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(
                executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"]
            )
        except sync_api.Error as err:
            pytest.skip(f"Chromium at {browser_path} cannot start here: {err}")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "requestfailed",
            lambda r: failed.append(f"{r.url}: {r.failure}") if not paused(r) else None,
        )
        page.goto(index.as_uri())
        page.wait_for_function("document.getElementById('film').readyState >= 1", timeout=15000)
        assert page.locator("article.shot").count() == 20
        assert page.locator("[data-node]").count() == 18 + 3 + 2  # s03 has 3 takes, s08 2
        assert page.locator(".take.picked").count() == 20
        banned = page.locator("#shot-banned")
        assert "(not in the cut)" in banned.inner_text()
        assert REFUSAL in banned.locator(".message").inner_text()  # as text, not as markup
        assert page.locator("#shot-s03 code").all_inner_texts() == [
            "runner pick film.toml s03 1",
            "runner pick film.toml s03 3",
        ]
        posters = page.locator(".take video[poster]").count()
        assert posters == 22  # every rendered take has its poster frame
        page.keyboard.press("j")
        page.keyboard.press("j")
        assert page.evaluate("document.activeElement.id") == "shot-s02"
        shot = Path(os.environ.get("RUNNER_TEST_ARTIFACTS", tmp_path)) / "review.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    print(f"screenshot: {shot}")
    assert errors == [] and failed == []
    assert shot.stat().st_size > 10_000
