"""The CI workflow a team adopts as it is: schema-valid, no zizmor findings, and the safety
properties it promises (README.md, "CI"). Offline: both tools come from the dev extra."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "render.yml"
SECRET = re.compile(r"\$\{\{\s*secrets\.")


def tool(name: str) -> str:
    """The dev extra's console script beside this interpreter (else on PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    assert found, f"{name} is missing: `make test` installs it from pyproject.toml's dev extra"
    return found


def offline(*command: str) -> subprocess.CompletedProcess[str]:
    # A dead proxy: a tool that tries the network fails here, as it would on a machine without it.
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HTTPS_PROXY": dead, "HTTP_PROXY": dead, "NO_PROXY": ""}
    for name in ("GH_TOKEN", "GITHUB_TOKEN", "ZIZMOR_GITHUB_TOKEN"):
        env.pop(name, None)
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def test_the_workflow_validates_against_the_github_workflow_schema(tmp_path: Path) -> None:
    # The check itself catches a misspelt key (GitHub would refuse the file on push).
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("timeout-minutes:", "timeout-minute:", 1))
    out = offline(
        tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(broken)
    )
    assert out.returncode == 1, out.stdout + out.stderr
    out = offline(
        tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_zizmor_finds_nothing_in_the_workflow() -> None:
    out = offline(tool("zizmor"), "--offline", "--no-progress", str(WORKFLOW))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No findings" in out.stdout + out.stderr


def test_every_action_is_pinned_to_a_commit_with_its_version_in_a_comment() -> None:
    uses = re.findall(r"uses:\s*(\S+)(.*)", WORKFLOW.read_text())
    assert uses
    for ref, comment in uses:
        assert re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", ref), ref
        assert re.fullmatch(r"\s*# v\d+\.\d+\.\d+", comment), (ref, comment)


def test_the_pull_request_job_has_no_secrets_and_a_read_only_token(
    workflow: dict[str, Any],
) -> None:
    assert workflow["permissions"] == {}
    assert not SECRET.search(yaml.safe_dump(workflow.get("env", {})))
    plan = workflow["jobs"]["plan"]
    assert "pull_request" in plan["if"]
    assert not SECRET.search(yaml.safe_dump(plan)), "the plan job runs for forks"
    assert plan["permissions"] == {"contents": "read"}
    for name in ("render", "assemble"):
        assert SECRET.search(yaml.safe_dump(workflow["jobs"][name]["env"]))


def test_each_providers_key_reaches_the_render_and_assemble_jobs_and_no_other(
    workflow: dict[str, Any],
) -> None:
    keys = ("OPENAI_API_KEY", "GOOGLE_API_KEY", "FAL_KEY")
    for name, job in workflow["jobs"].items():
        env = job.get("env", {})
        for key in keys:
            if name in ("render", "assemble"):
                assert env[key] == f"${{{{ secrets.{key} }}}}", (name, key)
            else:
                assert key not in yaml.safe_dump(job), (name, key)


def test_each_branch_runs_alone_and_every_job_has_a_timeout(workflow: dict[str, Any]) -> None:
    assert "github.ref" in workflow["concurrency"]["group"]
    for name, job in workflow["jobs"].items():
        assert isinstance(job.get("timeout-minutes"), int), name
        assert "permissions" in job, name


def test_jobs_install_the_runner_without_dev_tools_from_the_pip_cache(
    workflow: dict[str, Any],
) -> None:
    text = WORKFLOW.read_text()
    assert "[dev]" not in text and "make " not in text
    for name in ("plan", "render", "assemble"):
        steps = workflow["jobs"][name]["steps"]
        setup = next(s for s in steps if "setup-python" in s.get("uses", ""))
        assert setup["with"]["cache"] == "pip"
        assert any(s.get("run") == "python -m pip install ." for s in steps), name


def test_every_film_is_covered_and_the_plan_uses_the_profile_main_renders(
    workflow: dict[str, Any],
) -> None:
    assert "FILM" not in workflow["env"], "no hard-coded film"
    assert workflow["env"]["PROFILE"] == "${{ vars.PROFILE }}"
    for name in ("render", "assemble"):
        matrix = workflow["jobs"][name]["strategy"]["matrix"]
        assert matrix["film"] == "${{ fromJSON(needs.films.outputs.films) }}"
    assert 'Path("films").glob("*/film.toml")' in workflow["jobs"]["films"]["steps"][1]["run"]
    for name in ("plan", "render", "assemble"):
        runs = " ".join(s.get("run", "") for s in workflow["jobs"][name]["steps"])
        assert '--profile "$PROFILE"' in runs, name


def test_uploads_fail_without_files_and_the_lock_comes_back_as_a_pull_request(
    workflow: dict[str, Any],
) -> None:
    uploads = [
        step
        for job in workflow["jobs"].values()
        for step in job["steps"]
        if "upload-artifact" in step.get("uses", "")
    ]
    assert uploads
    assert all(s["with"]["if-no-files-found"] == "error" for s in uploads)
    assert any(s["with"]["name"] == "lock-${{ matrix.film }}" for s in uploads)
    lock = workflow["jobs"]["lock"]
    assert lock["permissions"] == {"contents": "write", "pull-requests": "write"}
    assert "gh pr create" in lock["steps"][-1]["run"]
