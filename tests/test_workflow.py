"""The CI workflow a team adopts as it is, and the action other repositories use: schema-valid,
no zizmor findings, and the safety properties they promise (README.md, "CI"). Offline: both
tools come from the dev extra."""

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
ACTION = ROOT / "action.yml"
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


def test_the_action_validates_against_the_github_action_schema(tmp_path: Path) -> None:
    # One run for both files: the broken copy fails (the check sees a wrong `using`), ours not.
    broken = tmp_path / "action.yml"
    broken.write_text(ACTION.read_text().replace("using: composite", "using: compost", 1))
    schema = ("--builtin-schema", "vendor.github-actions")
    out = offline(tool("check-jsonschema"), *schema, str(broken), str(ACTION))
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"{broken}::" in out.stdout and f"{ACTION}::" not in out.stdout, out.stdout


def test_zizmor_finds_nothing_in_the_workflow_or_the_action(tmp_path: Path) -> None:
    out = offline(tool("zizmor"), "--offline", "--no-progress", str(WORKFLOW), str(ACTION))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "No findings" in out.stdout + out.stderr
    # It does read the action: an input spliced into a script is a finding.
    unsafe = tmp_path / "action.yml"
    unsafe.write_text(ACTION.read_text().replace('"$FILM"', "${{ inputs.film }}", 1))
    out = offline(tool("zizmor"), "--offline", "--no-progress", str(unsafe))
    assert out.returncode != 0 and "template-injection" in out.stdout + out.stderr


def test_every_action_is_pinned_to_a_commit_with_its_version_in_a_comment() -> None:
    for path in (WORKFLOW, ACTION):
        uses = re.findall(r"^\s*-?\s*uses:\s*(\S+)(.*)", path.read_text(), re.M)  # not comments
        assert uses
        for ref, comment in uses:
            if ref == "./":  # this repository's own action, from the same checkout
                assert path == WORKFLOW
                continue
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
    text = WORKFLOW.read_text() + ACTION.read_text()
    assert "[dev]" not in text and "make " not in text
    for name in ("plan", "render"):
        steps = workflow["jobs"][name]["steps"]
        setup = next(s for s in steps if "setup-python" in s.get("uses", ""))
        assert setup["with"]["cache"] == "pip"
        assert any(s.get("run") == "python -m pip install ." for s in steps), name
    # The assemble job runs this repository's own action, which caches pip itself (keyed by
    # the action's pyproject.toml, which setup-python's cache cannot see from another repo).
    steps = workflow["jobs"]["assemble"]["steps"]
    assert any(s.get("uses", "").startswith("./") for s in steps)
    action = yaml.safe_load(ACTION.read_text())["runs"]["steps"]
    cache = next(s for s in action if "actions/cache@" in s.get("uses", ""))
    assert "pyproject.toml" in " ".join(s.get("run", "") for s in action)
    assert cache["with"]["key"] == "${{ steps.key.outputs.key }}"
    assert any(s.get("run") == 'python -m pip install "$GITHUB_ACTION_PATH"' for s in action)


def test_every_film_is_covered_and_the_plan_uses_the_profile_main_renders(
    workflow: dict[str, Any],
) -> None:
    assert "FILM" not in workflow["env"], "no hard-coded film"
    assert workflow["env"]["PROFILE"] == "${{ vars.PROFILE }}"
    for name in ("render", "assemble"):
        matrix = workflow["jobs"][name]["strategy"]["matrix"]
        assert matrix["film"] == "${{ fromJSON(needs.films.outputs.films) }}"
    assert 'Path("films").glob("*/film.toml")' in workflow["jobs"]["films"]["steps"][1]["run"]
    for name in ("plan", "render"):
        runs = " ".join(s.get("run", "") for s in workflow["jobs"][name]["steps"])
        assert '--profile "$PROFILE"' in runs, name
    own = next(s for s in workflow["jobs"]["assemble"]["steps"] if s.get("uses") == "./")
    assert own["with"] == {"film": "${{ env.FILM }}", "profile": "${{ env.PROFILE }}"}


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


@pytest.fixture(scope="module")
def action() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(ACTION.read_text())
    return data


def test_the_action_takes_film_profile_remote_frozen_and_no_secret(action: dict[str, Any]) -> None:
    assert action["runs"]["using"] == "composite"
    assert {"film", "profile", "remote", "frozen"} <= set(action["inputs"])
    assert not SECRET.search(yaml.safe_dump(action)), "secrets come from the caller's env"
    steps = action["runs"]["steps"]
    upload = next(s for s in steps if "upload-artifact" in s.get("uses", ""))
    assert upload["with"]["path"] == "${{ steps.film.outputs.review }}"
    assert upload["with"]["if-no-files-found"] == "warn"  # the review page may not exist
    for step in steps:  # inputs reach scripts through env, never spliced into the text
        assert "inputs." not in step.get("run", ""), step.get("name")


def test_the_actions_scripts_plan_into_the_summary_and_render(
    action: dict[str, Any], tmp_path: Path
) -> None:
    """The action's own shell steps (find, plan, render), run as the runner would run them on
    a tiny film: the plan lands in the job summary, the outputs in GITHUB_OUTPUT."""
    from tests.films import gen

    repo = gen(
        tmp_path / "repo",
        {
            ".git/HEAD": "",
            "films/tiny/film.toml": '[film]\ntitle = "Tiny"\nsize = "160x90"\n\n'
            '[defaults]\nseconds = 1\n\n[shots.a]\nprompt = "a lantern"\n',
        },
    )
    bin_dir = tmp_path / "bin"  # `runner` and `python` as the install step would leave them
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    shim = bin_dir / "runner"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m runner "$@"\n')
    shim.chmod(0o755)
    output, summary = tmp_path / "output", tmp_path / "summary"
    inputs = {"film": "", "profile": "", "remote": "", "frozen": "true", "python-version": ""}
    outputs: dict[str, dict[str, str]] = {}
    for step in action["runs"]["steps"]:
        if step.get("id") not in ("film", "plan", "render"):
            continue
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "RUNNER_CACHE_DIR": str(tmp_path / "cache"),
            "RUNNER_TEMP": str(tmp_path),
            "GITHUB_OUTPUT": str(output),
            "GITHUB_STEP_SUMMARY": str(summary),
        }
        for name, value in step.get("env", {}).items():
            ref = re.fullmatch(
                r"\$\{\{ (inputs|steps)\.([\w-]+)(?:\.outputs\.([\w-]+))? \}\}", value
            )
            assert ref, value
            env[name] = inputs[ref[2]] if ref[1] == "inputs" else outputs[ref[2]][ref[3]]
        output.write_text("")
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (step["id"], done.stdout, done.stderr)
        outputs[step["id"]] = dict(
            line.split("=", 1) for line in output.read_text().splitlines() if line
        )
    assert outputs["film"] == {
        "manifest": "films/tiny/film.toml",
        "review": "films/tiny/out/review/",
        "artifact": "review-tiny",
    }
    assert outputs["plan"] == {"to-render": "2", "estimated-cost-usd": "0.0"}
    text = summary.read_text()
    assert "### runner plan: `films/tiny/film.toml` (profile: none)" in text
    assert "shots.a" in text and text.count("```") == 2
    assert outputs["render"]["film"] == "films/tiny/out/film.mp4"
    assert (repo / "films/tiny/out/film.mp4").is_file()  # --frozen still makes previz
