"""No on-disk format is dropped for being newer than this runner: a paid render behind it is
refused with what to do, never taken for "not cached" and bought again."""

from __future__ import annotations

import json
from pathlib import Path

from tests.films import MINIMAL, Checkout, gen


def checkout(tmp_path: Path) -> Checkout:
    film = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    return Checkout(film, tmp_path / "cache")


def test_the_cache_root_carries_its_format(tmp_path: Path) -> None:
    assert checkout(tmp_path).run("plan").returncode == 0
    marker = json.loads((tmp_path / "cache" / "CACHE.json").read_text())
    assert marker["version"] == 1


def test_a_cache_made_by_a_newer_runner_is_refused(tmp_path: Path) -> None:
    c = checkout(tmp_path)
    assert c.run("plan").returncode == 0
    (tmp_path / "cache" / "CACHE.json").write_text('{"version": 2}')
    result = c.run("render")
    assert result.returncode == 2
    assert "made by a newer runner" in result.stderr and "upgrade runner" in result.stderr


def test_a_record_from_a_newer_runner_is_refused_not_rendered_again(tmp_path: Path) -> None:
    c = checkout(tmp_path)
    assert c.run("render").returncode == 0
    for path in (tmp_path / "cache" / "actions").rglob("*.json"):
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "version": 99}))
    (tmp_path / "cache" / "state").rename(tmp_path / "state-gone")  # no build log to lean on
    (c.manifest.with_suffix(".lock")).unlink()
    result = c.run("plan")
    assert result.returncode == 2
    assert "written by a newer runner" in result.stderr
