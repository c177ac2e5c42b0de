"""film.lock: version 3 keeps a section per profile, each with a fingerprint of each node's
recipe; versions 1 and 2 are still read (as the default profile's) and written back as version
3 by the next render."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from runner import cli
from runner.cache.lock import LOCK_VERSION, Entry, Lock
from tests.films import MINIMAL, gen

KEY, OUT = "a" * 64, "b" * 64


def test_fields_round_trip_through_the_lock_file(tmp_path: Path) -> None:
    fields = {
        "prompt": "sha256:0123456789abcdef",
        "seconds": 4.0,
        "image": True,
        "inputs.image": "frames.river.last@0123456789abcdef",
        "model": "sora-2",
    }
    lock = Lock(tmp_path / "film.lock", {"shots.river": Entry(KEY, OUT, "shot", fields=fields)})
    lock.write()
    text = lock.path.read_text()
    assert "version = 3" in text and '[profiles.default.nodes."shots.river".fields]' in text
    assert "seconds = 4.0\n" in text and '"inputs.image" = ' in text
    again = Lock.read(lock.path)
    assert again.version == LOCK_VERSION == 3
    assert again.entries["shots.river"].fields == fields


def test_a_version_1_lock_is_read_and_a_render_writes_it_as_version_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    film = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    assert cli.main(["render", str(film)]) == 0
    lock = film.with_suffix(".lock")
    # What runner 1 wrote: the same entries without their fields.
    old = re.sub(r"\n\[[^\]]+\.fields\]\n(?:[^\[\n].*\n)*", "", lock.read_text())
    old = old.replace("[profiles.default.nodes.", "[nodes.")
    lock.write_text(old.replace("version = 3", "version = 1"))
    assert Lock.read(lock).version == 1 and "fields" not in lock.read_text()

    # A teammate's clone: the v1 lock and no cache; a node the lock names is not "never rendered".
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "clone-cache"))
    capsys.readouterr()
    assert cli.main(["plan", str(film)]) == 0
    out = capsys.readouterr().out
    assert "never rendered" not in out and "locked output not in any cache" in out

    # Back on the machine that rendered it: nothing renders, and the lock is upgraded.
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["render", str(film)]) == 0
    assert "0 rendered" in capsys.readouterr().err
    upgraded = tomllib.loads(lock.read_text())
    assert upgraded["version"] == 3
    assert all("fields" in entry for entry in upgraded["profiles"]["default"]["nodes"].values())


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        # A shot's entry that says it is a frame: not this node's kind of output.
        ({"shots.river": ("frame", "c" * 64)}, "nodes.\"shots.river\".kind: 'frame'"),
        # A frame pointed at the bytes a shot's entry names: another node's output.
        (
            {"shots.river": ("shot", "c" * 64), "frames.river.last": ("frame", "c" * 64)},
            "the same bytes as frames.river.last's, a frame node",
        ),
    ],
)
def test_a_lock_that_points_a_node_at_another_kinds_output_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    entries: dict[str, tuple[str, str]],
    expected: str,
) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    film = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    lock = {nid: Entry(KEY, out, kind) for nid, (kind, out) in entries.items()}
    Lock(film.with_suffix(".lock"), lock).write()
    assert cli.main(["plan", str(film)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "film.lock" in err and "restore film.lock from git" in err


def test_a_render_updates_only_its_profiles_section_and_a_no_op_render_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    film = gen(tmp_path / "film", {"film.toml": MINIMAL + "[profiles.final]\nseed = 7\n"})
    path = film / "film.toml"
    lock = path.with_suffix(".lock")
    assert cli.main(["render", str(path)]) == 0
    default = Lock.read(lock).entries
    assert cli.main(["render", str(path), "--profile", "final"]) == 0
    both = Lock.read(lock, profile="final")
    assert both.profiles["default"] == default  # untouched by the final render
    assert set(both.entries) == set(default) and both.entries != default
    written = (lock.read_bytes(), lock.stat().st_mtime_ns)
    for profile in ([], ["--profile", "final"]):  # no-op renders, either profile: no write
        assert cli.main(["render", str(path), *profile]) == 0
        assert (lock.read_bytes(), lock.stat().st_mtime_ns) == written
