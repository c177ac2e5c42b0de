"""Random and hostile films end in exit 0, 1 or 2 with one clear message, never a traceback
and never "internal error".

About 20 seeded cases run in `make test`; `make fuzz` runs hundreds (RUNNER_FUZZ_CASES,
RUNNER_FUZZ_RENDERS); RUNNER_FUZZ_SEED=N runs one case alone. Findings are in BENCHMARKS.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from runner import cli
from tests import fuzz

CASES = int(os.environ.get("RUNNER_FUZZ_CASES", "20"))
RENDERS = int(os.environ.get("RUNNER_FUZZ_RENDERS", "3"))
ONE = os.environ.get("RUNNER_FUZZ_SEED")
SEEDS = [int(ONE)] if ONE else list(range(CASES))


def run(command: str, manifest: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main([command, str(manifest)])
    return code, capsys.readouterr().err


def assert_clear(code: int, err: str, seed: int) -> None:
    case = f"case {seed} (RUNNER_FUZZ_SEED={seed})"
    assert code in (0, 1, 2), f"{case}: exit {code}: {err[-2000:]}"
    assert "Traceback" not in err, f"{case}: {err[-2000:]}"
    assert "internal error" not in err, f"{case}: {err[-2000:]}"
    if code:
        assert err.strip(), f"{case}: exit {code} with no message"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("RUNNER_DEBUG", raising=False)  # an internal error must not pass as one


@pytest.mark.parametrize("seed", SEEDS)
def test_plan_of_a_hostile_film_ends_in_one_clear_message(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run("plan", fuzz.film(tmp_path / "film", seed), capsys)
    assert_clear(code, err, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10_000, 10_000 + RENDERS))
def test_render_of_a_hostile_film_ends_in_one_clear_message(
    seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = fuzz.film(tmp_path / "film", seed, mild=True)
    code, err = run("plan", manifest, capsys)
    assert_clear(code, err, seed)
    if code == 0:
        code, err = run("render", manifest, capsys)
        assert_clear(code, err, seed)
