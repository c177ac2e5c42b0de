"""One model-table schema for every backend, one check of a shot against a row, one provider
policy: a row reads and fails the same way in any backend's table, and the plan names the
shot's key that a row does not allow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.backends import policy
from runner.backends.base import Expired, RateLimited, Refused, ShotRequest, Transient
from runner.backends.openai import OpenAIBackend
from runner.backends.veo import VeoBackend
from runner.errors import UserError
from runner.film import model_table
from runner.film.model_table import ModelRow
from tests.films import Checkout, gen

BACKENDS = {"openai": OpenAIBackend, "veo": VeoBackend}
ROW = {"sizes": ["1280x720", "1920x1080"], "seconds": [4, 8], "price_per_second": 0.2}


def shot(**changes: Any) -> ShotRequest:
    fields: dict[str, Any] = {
        "film": "f",
        "shot": "a",
        "take": 1,
        "model": "m",
        "prompt": "A lantern on the river.",
        "avoid": (),
        "seconds": 4.0,
        "width": 1280,
        "height": 720,
        "fps": 24,
        "seed": None,
    }
    return ShotRequest(**(fields | changes))


def table(backend: str, tmp_path: Path, row: dict[str, Any]) -> Any:
    """The backend with row `gw-1`, served through a gateway."""
    return BACKENDS[backend](tmp_path, {"base_url": "http://gw/v1", "models": {"gw-1": row}})


# -- the schema: the same keys and the same errors in every backend's table ---------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_unknown_key_in_a_row_names_its_path_and_suggests_the_right_one(
    backend: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError) as err:
        table(backend, tmp_path, ROW | {"secnds": [5]})
    message = str(err.value)
    assert f"[tool.runner.backends.{backend}] models.gw-1.secnds: unknown key" in message
    assert "did you mean 'seconds'?" in message and "max_prompt_chars" in message  # allowed


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("image", "yes", "models.gw-1.image: expected true or false (got 'yes')"),
        ("price_per_second", "0.2", "models.gw-1.price_per_second: expected a number"),
        ("reference_images", -1, "models.gw-1.reference_images: "),
        ("seconds", [4, "8"], "models.gw-1.seconds[1]: expected a number (got '8')"),
        ("prices", {"8k": 1.0}, "models.gw-1.prices.8k: Input should be '480p', '720p'"),
    ],
)
def test_a_wrong_value_in_a_row_names_its_path_what_was_wrong_and_what_is_allowed(
    backend: str, tmp_path: Path, key: str, value: object, expected: str
) -> None:
    with pytest.raises(UserError) as err:
        table(backend, tmp_path, ROW | {key: value})
    assert expected in str(err.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_prices_by_resolution_above_its_base_price(backend: str, tmp_path: Path) -> None:
    b = table(backend, tmp_path, ROW | {"prices": {"1080p": 0.35}})
    assert b.price_per_second("gw-1", 1280, 720) == pytest.approx(0.2)
    assert b.price_per_second("gw-1", 1920, 1080) == pytest.approx(0.35)
    assert b.check(shot(model="gw-1", width=1920, height=1080)) is None


def test_one_price_given_for_a_built_in_model_holds_for_every_size(tmp_path: Path) -> None:
    models = {"veo-3.1-generate-001": {"price_per_second": 0.3}}
    veo = VeoBackend(tmp_path, {"models": models})
    assert veo.price_per_second("veo-3.1-generate-001", 3840, 2160) == pytest.approx(0.3)
    assert veo.capabilities("veo-3.1-generate-001").reference_images == 3  # the rest stays
    openai = OpenAIBackend(tmp_path, {"models": {"sora-2-pro": {"price_per_second": 0.4}}})
    assert openai.price_per_second("sora-2-pro", 1920, 1080) == pytest.approx(0.4)


@pytest.mark.parametrize(("backend", "key"), [("openai", "reference_images"), ("veo", "remix")])
def test_a_row_cannot_promise_what_the_backend_never_sends(
    backend: str, key: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=rf"models\.gw-1\.{key}: this backend cannot send it"):
        table(backend, tmp_path, ROW | {key: 2 if key == "reference_images" else True})


def test_a_row_listing_lengths_allows_up_to_the_longest_unless_it_says() -> None:
    assert ModelRow.model_validate({"seconds": [5, 10]}).max_seconds == 10.0
    assert ModelRow.model_validate({"seconds": [5], "max_seconds": 20}).max_seconds == 20.0
    assert ModelRow().max_seconds == model_table.DEFAULT_MAX_SECONDS


# -- the one check ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "changes", "words"),
    [
        ({"sizes": ["1280x720"]}, {"width": 640, "height": 480}, "size 640x480 is not supported"),
        ({"seconds": [4, 8]}, {"seconds": 5.0}, "seconds 5 is not supported by x model m"),
        ({"max_seconds": 10}, {"seconds": 12.0}, "seconds 12 is longer than x model m allows"),
        ({"image": False}, {"image": Path("a.png")}, "x model m takes no first-frame image"),
        ({"reference_images": 1}, {"references": (Path("a"), Path("b"))}, "takes 1 reference"),
        ({"max_seed": 9}, {"seed": 10}, "seed 10 is not from 0 to 9 for x model m"),
        ({"max_prompt_chars": 10}, {}, "the compiled prompt has 23 characters; x model m takes"),
        ({"remix": False}, {"remix_of": "b"}, "x model m cannot remix a video"),
    ],
)
def test_one_check_says_what_a_row_does_not_allow(
    row: dict[str, Any], changes: dict[str, Any], words: str
) -> None:
    allowing = ModelRow.model_validate({"remix": True, "reference_images": 3})
    assert model_table.check(shot(**changes), allowing, "x") is None
    problem = model_table.check(shot(**changes), ModelRow.model_validate(row), "x")
    assert problem is not None and words in str(problem)


GATEWAY = """\
[tool.runner.backends.openai]
base_url = "https://gateway.example/v1"
models = { "seedance-1" = { sizes = ["1280x720"], seconds = [5], price_per_second = 0.2, \
max_prompt_chars = 60 } }
[tool.runner.backends.veo]
models = { "veo-3.1-generate-001" = { price_per_second = 0.5 } }
"""

FILM = """\
[film]
title = "Rows"
size = "1280x720"
fps = 24

[defaults]
backend = "openai"
model = "seedance-1"
seconds = 5

[shots.a]
scene = "A lantern on the river."
"""


def plan(tmp_path: Path, film: str) -> Any:
    files = {"pyproject.toml": GATEWAY, "films/x/film.toml": film, ".git/HEAD": ""}
    gen(tmp_path / "repo", files)
    manifest = tmp_path / "repo" / "films" / "x" / "film.toml"
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    return Checkout(manifest, tmp_path / "cache", env).run("plan")


def test_a_prompt_longer_than_the_model_takes_fails_the_plan_naming_the_shot(
    tmp_path: Path,
) -> None:
    assert plan(tmp_path / "short", FILM).returncode == 0
    long = FILM.replace("A lantern on the river.", "A lantern drifts down the wide river at dusk.")
    result = plan(tmp_path / "long", long + '[style]\nlook = "35mm, soft grain"\n')
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "shots.a.prompt: the compiled prompt has" in result.stderr
    assert "openai model seedance-1 takes at most 60" in result.stderr


def test_a_veo_price_row_in_pyproject_prices_the_plan(tmp_path: Path) -> None:
    film = FILM.replace('backend = "openai"\nmodel = "seedance-1"\nseconds = 5', "")
    film += '\n[shots.b]\nscene = "Dawn."\n'
    film = film.replace("[shots.a]", '[shots.a]\nbackend = "veo"\nmodel = "veo-3.1-generate-001"')
    film = film.replace("[shots.b]", '[shots.b]\nbackend = "veo"\nmodel = "veo-3.1-generate-001"')
    film = film.replace("[defaults]", "[defaults]\nseconds = 4")
    result = plan(tmp_path, film)
    assert result.returncode == 0, result.stderr
    assert "estimated cost $4.00" in result.stdout  # 2 shots x 4 s x $0.50


def test_a_row_problem_is_located_at_the_shots_key(tmp_path: Path) -> None:
    film = FILM.replace("[shots.a]", '[shots.a]\nbackend = "veo"\nseconds = 4\nseed = 4294967296')
    film = film.replace('model = "seedance-1"\n', "")
    result = plan(tmp_path, film)
    assert result.returncode == 2, result.stderr
    assert "shots.a.seed: 4294967296 is not from 0 to 4294967295 for veo model" in result.stderr


# -- shared provider policy -------------------------------------------------------------


def test_one_policy_classifies_every_providers_http_answers() -> None:
    quota = policy.from_status(429, "quota", stage="create", code="insufficient_quota")
    assert isinstance(quota, Refused)
    assert isinstance(policy.from_status(429, "slow", stage="job"), RateLimited)
    assert isinstance(policy.from_status(503, "down", stage="create"), Transient)
    assert isinstance(policy.from_status(404, "no such job", stage="job"), Expired)
    assert isinstance(policy.from_status(404, "no such model", stage="create"), Refused)
    refused = policy.from_status(401, "bad key", stage="create", credentials="check X_KEY")
    assert "check X_KEY" in str(refused)


def test_retry_after_reads_milliseconds_seconds_and_dates() -> None:
    assert policy.retry_after({"retry-after-ms": "1500"}) == pytest.approx(1.5)
    assert policy.retry_after({"retry-after": "7"}) == pytest.approx(7.0)
    assert policy.retry_after({"retry-after": "Thu, 01 Jan 1970 00:00:00 GMT"}) == 0.0
    assert policy.retry_after({"retry-after": "soon"}) is None
    assert policy.scrub("key sk-abcdef in a message", "sk-abcdef", None, "ab") == (
        "key *** in a message"
    )
