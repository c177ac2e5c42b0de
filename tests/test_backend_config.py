"""Backends are configured from pyproject.toml before anything is compiled: the README's
gateway example works as written, and a change to a backend's table shows in the next plan."""

from __future__ import annotations

from pathlib import Path

from tests.films import Checkout, gen

GATEWAY = """\
[tool.runner.backends.openai]
base_url = "https://gateway.example/v1"
models = { "seedance-1" = { sizes = ["1280x720"], seconds = [5, 10], price_per_second = 0.2 } }
"""

FILM = """\
[film]
title = "Gateway"
size = "1280x720"
fps = 24

[defaults]
backend = "openai"
model = "seedance-1"
seconds = 5

[shots.a]
scene = "A lantern on the river."

[shots.b]
scene = "The lantern rises."
"""


def repo(tmp_path: Path) -> Checkout:
    gen(tmp_path / "repo", {"pyproject.toml": GATEWAY, "films/x/film.toml": FILM, ".git/HEAD": ""})
    env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    return Checkout(tmp_path / "repo" / "films" / "x" / "film.toml", tmp_path / "cache", env)


def test_the_readme_gateway_example_plans_with_its_model_rows_and_price(tmp_path: Path) -> None:
    result = repo(tmp_path).run("plan")
    assert result.returncode == 0, result.stderr
    assert "estimated cost $2.00" in result.stdout  # 2 shots x 5 s x $0.20


def test_a_price_changed_in_pyproject_shows_in_the_next_plan(tmp_path: Path) -> None:
    checkout = repo(tmp_path)
    assert "estimated cost $2.00" in checkout.run("plan").stdout
    pyproject = tmp_path / "repo" / "pyproject.toml"
    pyproject.write_text(GATEWAY.replace("price_per_second = 0.2", "price_per_second = 0.3"))
    assert "estimated cost $3.00" in checkout.run("plan").stdout


def test_a_model_missing_from_the_table_says_how_to_add_it(tmp_path: Path) -> None:
    checkout = repo(tmp_path)
    (tmp_path / "repo" / "pyproject.toml").write_text(GATEWAY.rsplit("models", 1)[0])
    result = checkout.run("plan")
    assert result.returncode == 2
    assert "model 'seedance-1' is not in the openai backend's table" in result.stderr
    example = result.stderr.split("e.g. ", 1)[1].strip()
    assert example.count("{") == example.count("}")  # the example is valid TOML


TWO_PROVIDERS = (
    FILM
    + """
[shots.c]
backend = "veo"
model = "veo-3.1-generate-001"
seconds = 4
scene = "The sky fills with lanterns."

[shots.d]
backend = "veo"
model = "veo-3.1-generate-001"
seconds = 4
scene = "Morning on the river."
"""
)

NO_KEYS = ("GOOGLE_API_KEY", "GEMINI_API_KEY", "GOOGLE_CLOUD_PROJECT")


def test_plan_needs_no_credentials_and_render_names_each_missing_one_once(
    tmp_path: Path,
) -> None:
    checkout = repo(tmp_path)
    (tmp_path / "repo" / "films" / "x" / "film.toml").write_text(TWO_PROVIDERS)
    for name in NO_KEYS:
        checkout.env.pop(name, None)
    plan = checkout.run("plan")
    assert plan.returncode == 0, plan.stderr
    assert plan.stderr.count("warning: openai: no API key") == 1
    assert plan.stderr.count("warning: veo: veo needs a Google Cloud project") == 1
    render = checkout.run("render")
    assert render.returncode == 2
    assert render.stderr.count("openai: no API key for the openai backend") == 1
    assert render.stderr.count("veo: veo needs a Google Cloud project") == 1
    assert "shots." not in render.stderr  # one message per backend, not per node
