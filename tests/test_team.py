"""The team workflow end to end: film.lock, a shared remote cache on a real S3-protocol server
(moto on loopback), a GCS emulator or a shared folder, --frozen, shards, and two runners on one
cache."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from runner.digest import file_digest
from tests.films import Checkout, gen, lock_nodes
from tests.servers.gcs_server import GCSServer, gcs_env
from tests.servers.openai_server import OpenAIServer
from tests.servers.s3_server import S3Server, s3_env

KEY = "sk-team-SECRET-77"


def hosted_film(shots: int) -> str:
    lines = [
        "[film]",
        'title = "Team"',
        'size = "160x90"',
        "fps = 24",
        "[defaults]",
        'backend = "openai"',
        'size = "1280x720"',
        "seconds = 4",
        "[limits.openai]",
        "concurrency = 3",
    ]
    if shots > 2:
        # Every shot renders and is locked; the cut joins two, so each render's audio encode
        # stays short (a join is a join).
        lines += ["[edit]", 'sequence = ["s0", "s1"]']
    for i in range(shots):
        lines += [f"[shots.s{i}]", f'scene = "Team shot {i}."']
    return "\n".join(lines) + "\n"


def previz_film(shots: int) -> str:
    lines = [
        "[film]",
        'title = "Shards"',
        'size = "64x64"',
        "fps = 12",
        "[defaults]",
        "seconds = 1",
    ]
    for i in range(shots):
        lines += [f"[shots.s{i}]", f'scene = "Shard shot {i}."']
        if i % 3:
            lines.append(f'needs = ["s{i - 1}"]')
    return "\n".join(lines) + "\n"


@pytest.fixture
def openai_server() -> Iterator[OpenAIServer]:
    with OpenAIServer(job_seconds=0.2, poll_after_ms=50) as server:
        server.unique_videos = True  # like a hosted model: every render differs
        yield server


@pytest.fixture(params=["s3", "shared-folder"])
def remote_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    if request.param == "s3":
        with S3Server() as server:
            s3_env(monkeypatch, server)
            yield server.url
    elif request.param == "gs":  # a GCS emulator on loopback, in this process
        with GCSServer() as gcs:
            gcs_env(monkeypatch, gcs)
            yield gcs.url
    else:
        (tmp_path / "shared").mkdir()
        yield (tmp_path / "shared").as_uri()


class Member(Checkout):
    """One teammate: a clone of the film folder, a cache of their own, the team's remote."""

    def __init__(self, root: Path, remote: str | None, server: OpenAIServer | None) -> None:
        env = {} if remote is None else {"RUNNER_REMOTE": remote}
        if server is not None:
            env |= {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": KEY}
        super().__init__(root / "film" / "film.toml", root / "cache", env)
        self.root = root


def rendered(result: subprocess.CompletedProcess[str]) -> list[str]:
    return sorted(re.findall(r"\] done\s+(\S+)", result.stderr))


def clone(src: Member, root: Path, remote: str | None, server: OpenAIServer | None) -> Member:
    """What a teammate or CI has after `git clone`: the manifest and its lock, nothing else."""
    (root / "film").mkdir(parents=True)
    for name in ("film.toml", "film.lock"):
        shutil.copy(src.manifest.parent / name, root / "film" / name)
    return Member(root, remote, server)


def test_a_teammate_gets_the_byte_identical_film_without_rendering_or_paying(
    tmp_path: Path, remote_url: str, openai_server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", remote_url, openai_server)
    gen(alice.root / "film", {"film.toml": hosted_film(4)})
    assert alice.run("render").returncode == 0
    assert len(openai_server.creates) == 4
    lock = tomllib.loads(alice.manifest.with_suffix(".lock").read_text())
    assert lock["version"] == 3
    nodes = lock["profiles"]["default"]["nodes"]
    assert sorted(nodes) == ["edit", "shots.s0", "shots.s1", "shots.s2", "shots.s3"]
    assert nodes["shots.s0"]["job_id"].startswith("video_")
    assert nodes["shots.s0"]["cost_usd"] == pytest.approx(0.4)

    bob = clone(alice, tmp_path / "bob", remote_url, openai_server)
    result = bob.run("render")
    assert result.returncode == 0, result.stderr
    assert rendered(result) == []
    assert len(openai_server.creates) == 4  # nothing paid twice
    assert (bob.manifest.parent / "out" / "film.mp4").read_bytes() == (
        alice.manifest.parent / "out" / "film.mp4"
    ).read_bytes()


def test_a_locked_paid_shot_missing_from_every_cache_is_fetched_again_from_its_provider(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    openai_server.unique_videos = True  # each job its own bytes: the refetch must get these
    alice = Member(tmp_path / "alice", None, openai_server)
    gen(alice.root / "film", {"film.toml": hosted_film(2)})
    assert alice.run("render").returncode == 0
    bob = clone(alice, tmp_path / "bob", None, openai_server)  # no remote: nothing to pull
    plan = bob.run("plan")
    assert plan.stdout.count("fetched again from openai by job id, at no cost") == 2
    assert "estimated cost $0.00" in plan.stdout
    result = bob.run("render")
    assert result.returncode == 0, result.stderr
    assert len(openai_server.creates) == 2  # fetched by job id, not bought again
    assert "spent $0.00" in result.stderr
    # The same clips and the same cut: the lock (outputs by digest, the edit's too) is unchanged.
    lock = bob.manifest.with_suffix(".lock")
    assert lock.read_text() == alice.manifest.with_suffix(".lock").read_text()
    edit = lock_nodes(lock)["edit"]["output"]
    assert (tmp_path / "bob" / "cache" / "cas" / edit[:2] / edit).is_file()


def test_a_locked_paid_shot_its_provider_no_longer_has_is_not_rendered_silently(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, openai_server)
    gen(alice.root / "film", {"film.toml": hosted_film(2)})
    assert alice.run("render").returncode == 0
    for job_id in list(openai_server.jobs):
        openai_server.expire(job_id)
    bob = clone(alice, tmp_path / "bob", None, openai_server)
    result = bob.run("render")
    assert result.returncode == 1
    assert "no longer has job" in result.stderr and "--rerender" in result.stderr
    assert len(openai_server.creates) == 2
    again = bob.run("render", "--rerender", "s0", "--rerender", "s1")
    assert again.returncode == 0, again.stderr
    assert len(openai_server.creates) == 4


def test_rerender_makes_a_new_take_on_purpose_and_the_lock_follows(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, openai_server)
    gen(alice.root / "film", {"film.toml": hosted_film(2)})
    assert alice.run("render").returncode == 0
    lock_path = alice.manifest.with_suffix(".lock")
    before = lock_nodes(lock_path)
    result = alice.run("render", "--rerender", "s1")
    assert result.returncode == 0
    assert rendered(result) == ["edit", "shots.s1"]
    after = lock_nodes(lock_path)
    assert after["shots.s0"] == before["shots.s0"]
    assert after["shots.s1"]["output"] != before["shots.s1"]["output"]
    assert len(openai_server.creates) == 3


def test_a_tampered_remote_blob_is_refused_and_never_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with S3Server() as s3:
        s3_env(monkeypatch, s3)
        alice = Member(tmp_path / "alice", s3.url, None)
        gen(alice.root / "film", {"film.toml": previz_film(2)})
        assert alice.run("render").returncode == 0
        lock = lock_nodes(alice.manifest.with_suffix(".lock"))
        digest = lock["edit"]["output"]  # the one blob a teammate needs
        s3.client().put_object(
            Bucket=s3.bucket, Key=f"{s3.prefix}/cas/{digest[:2]}/{digest}", Body=b"tampered"
        )
        bob = clone(alice, tmp_path / "bob", s3.url, None)
        result = bob.run("render")
    assert result.returncode == 0, result.stderr
    assert "refused" in result.stderr
    # Assembly is deterministic: the refused film was made again from the shots, byte for byte.
    assert rendered(result) == ["edit"]
    for blob in (bob.root / "cache" / "cas").rglob("*"):
        if blob.is_file():
            assert file_digest(blob) == blob.name
    assert (bob.manifest.parent / "out" / "film.mp4").read_bytes() == (
        alice.manifest.parent / "out" / "film.mp4"
    ).read_bytes()


def test_frozen_fails_before_paying_and_makes_a_re_cut(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, openai_server)
    film = hosted_film(3).replace("[shots.s1]\n", "[shots.s1]\ntakes = 2\npick = 1\n")
    gen(alice.root / "film", {"film.toml": film})
    assert alice.run("render", "--frozen").returncode == 1  # nothing rendered yet
    assert alice.run("render").returncode == 0
    assert len(openai_server.creates) == 4
    assert alice.run("render", "--frozen").returncode == 0
    # A re-cut (another take) is local work: --frozen makes it, and the plan names the pick.
    alice.manifest.write_text(alice.manifest.read_text().replace("pick = 1", "pick = 2"))
    assert "pick changed: shots.s1.take1 -> shots.s1.take2" in alice.run("plan").stdout
    result = alice.run("render", "--frozen")
    assert result.returncode == 0, result.stderr
    assert rendered(result) == ["edit"]
    alice.manifest.write_text(alice.manifest.read_text().replace("Team shot 2.", "Shot two."))
    result = alice.run("render", "--frozen")
    assert result.returncode == 1
    assert "would pay for shots.s2 ($0.40): prompt changed" in result.stderr
    assert "edit" not in result.stderr  # not paid, not the reason to fail
    assert len(openai_server.creates) == 4


def test_shards_render_every_node_exactly_once_and_a_final_run_assembles(
    tmp_path: Path,
) -> None:
    ci = Member(tmp_path / "ci", (tmp_path / "remote").as_uri(), None)
    (tmp_path / "remote").mkdir()
    gen(ci.root / "film", {"film.toml": previz_film(9)})
    made: list[str] = []
    for i in (1, 2, 3):
        job = Member(tmp_path / f"shard{i}", ci.env["RUNNER_REMOTE"], None)
        job.manifest = ci.manifest
        result = job.run("render", "--shard", f"{i}/3")
        assert result.returncode == 0, result.stderr
        made += rendered(result)
    assert sorted(made) == sorted(f"shots.s{i}" for i in range(9))
    final = ci.run("render")
    assert final.returncode == 0, final.stderr
    assert rendered(final) == ["edit"]


def test_two_runners_on_one_cache_make_each_shot_once(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    openai_server.job_seconds = 0.5
    one = Member(tmp_path / "one", None, openai_server)
    gen(one.root / "film", {"film.toml": hosted_film(6)})
    first, second = one.start(), one.start()
    for proc in (first, second):
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert len(openai_server.creates) == 6
    for blob in (one.root / "cache" / "cas").rglob("*"):
        if blob.is_file():
            assert file_digest(blob) == blob.name


def test_cache_push_pull_verify_and_gc(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    alice = Member(tmp_path / "alice", None, None)
    gen(alice.root / "film", {"film.toml": previz_film(2)})
    assert alice.run("render").returncode == 0
    alice.env["RUNNER_REMOTE"] = remote.as_uri()
    locked = set(
        re.findall(r'output = "([0-9a-f]{64})"', alice.manifest.with_suffix(".lock").read_text())
    )
    assert len(locked) == 3  # two shots and the cut
    pushed = alice.run("cache", "push")
    assert pushed.returncode == 0 and "pushed 3 blobs" in pushed.stdout, pushed.stdout
    on_remote = {p.name: p for p in (remote / "cas").rglob("*") if p.is_file()}
    assert set(on_remote) == locked
    assert all(file_digest(blob) == name for name, blob in on_remote.items())
    assert "pushed 0 blobs" in alice.run("cache", "push").stdout  # the remote has them all
    assert alice.run("cache", "verify").returncode == 0
    bob = clone(alice, tmp_path / "bob", remote.as_uri(), None)
    pulled = bob.run("cache", "pull")
    assert pulled.returncode == 0 and "pulled 3 blobs" in pulled.stdout
    # gc lists what no lock references (segments, tagged films) and deletes only with --yes.
    listing = alice.run("cache", "gc", "--grace", "0")
    assert "would delete" in listing.stdout and "--yes" in listing.stdout
    assert not any(d in listing.stdout for d in locked)
    assert alice.run("cache", "gc", "--grace", "0", "--yes").returncode == 0
    cas = alice.root / "cache" / "cas"
    assert {p.name for p in cas.rglob("*") if p.is_file()} == locked


def no_credentials(member: Member) -> Member:
    """A pull request's CI job: no provider key and no remote (the gateway's URL is a
    variable, not a secret, so it is there)."""
    for name in ("OPENAI_API_KEY", "RUNNER_REMOTE"):
        member.env.pop(name, None)
    return member


def test_a_fresh_clone_explains_a_prompt_edit_from_the_lock_alone(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, openai_server)
    gen(alice.root / "film", {"film.toml": hosted_film(3)})
    assert alice.run("render").returncode == 0
    fields = lock_nodes(alice.manifest.with_suffix(".lock"))["shots.s1"]
    assert fields["fields"]["seconds"] == "4" and fields["fields"]["model"] == "sora-2"
    assert fields["fields"]["prompt"].startswith("sha256:")  # a digest: long and private

    ci = no_credentials(clone(alice, tmp_path / "ci", None, openai_server))
    ci.manifest.write_text(ci.manifest.read_text().replace("Team shot 1.", "Shot one."))
    result = ci.run("plan", "--json")
    assert result.returncode == 0, result.stderr
    nodes = {n["id"]: n for n in json.loads(result.stdout)["nodes"]}
    assert nodes["shots.s1"]["causes"] == [{"code": "field_changed", "field": "prompt"}]
    assert nodes["shots.s1"]["reasons"] == ["prompt changed"]
    for nid in ("shots.s0", "shots.s2"):  # locked, in no cache: fetched by job id, free
        assert nodes[nid]["reasons"][0] == "locked output not in any cache"
        assert [c["code"] for c in nodes[nid]["causes"]] == ["locked_elsewhere", "refetch_free"]
    assert nodes["edit"]["status"] == "blocked"
    assert {c["code"] for c in nodes["edit"]["causes"]} == {"waits_for"}
    assert not any("never rendered" in n["reasons"] for n in nodes.values())

    # Without a record of the old request, --diff names the fields film.lock's digests say.
    diff = ci.run("plan", "--diff")
    assert "shots.s1 (recorded)" in diff.stdout and "prompt changed: film.lock" in diff.stdout


def test_the_text_plan_prices_each_shot_and_diff_shows_the_changed_words(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, openai_server)
    film = hosted_film(3).replace('title = "Team"', 'title = "Team"\nbudget_usd = 5')
    gen(alice.root / "film", {"film.toml": film})
    assert alice.run("render").returncode == 0
    text = alice.manifest.read_text().replace("Team shot 1.", "Shot one, at night.")
    alice.manifest.write_text(text.replace("[shots.s2]", "[shots.s2]\nseconds = 8"))
    result = alice.run("plan", "--diff")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"render\s+shots\.s1\s+openai\s+sora-2\s+4s\s+\$0\.40\s+prompt changed", out)
    assert re.search(
        r"render\s+shots\.s2\s+openai\s+sora-2\s+8s\s+\$0\.80\s+seconds changed: 4 -> 8", out
    )
    assert re.search(r"blocked\s+edit\s+local.*after shots\.s1", out)
    assert re.search(r"openai\s+2 to render\s+12 s\s+\$1\.20", out)
    assert "estimated cost $1.20" in out
    assert "spent so far on this film: $1.20 (film.lock)" in out
    assert "budget $5.00: $3.80 left, $2.60 after this plan" in out
    assert "[-Team shot 1.-] {+Shot one, at night.+}" in out
    assert re.search(r"^-.*Team shot 1\.$", out, re.M) and re.search(r"^\+.*at night\.$", out, re.M)
    assert "seconds: 4 -> 8" in out


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_gc_from_a_default_checkout_keeps_the_final_profiles_and_other_branches_renders(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    remote = (tmp_path / "shared").as_uri()
    (tmp_path / "shared").mkdir()
    alice = Member(tmp_path / "alice", remote, openai_server)
    film = hosted_film(2).replace('backend = "openai"', 'backend = "previz"')
    film += '[profiles.final]\nbackend = "openai"\n'
    gen(alice.root / "film", {"film.toml": film})
    git(alice.root, "init", "-q", "-b", "main")
    assert alice.run("render", "--profile", "final").returncode == 0
    assert alice.run("cache", "push", "--profile", "final").returncode == 0
    assert alice.run("render").returncode == 0  # the default profile, previz
    git(alice.root, "add", "-A", "film")
    git(alice.root, "commit", "-q", "-m", "both profiles")
    # An unmerged branch renders a new shot (previz, free) and commits its lock.
    git(alice.root, "checkout", "-q", "-b", "idea")
    with (alice.manifest).open("a") as f:
        f.write('[shots.s9]\nscene = "An idea."\n')
    assert alice.run("render").returncode == 0
    idea = lock_nodes(alice.manifest.with_suffix(".lock"))["shots.s9"]["output"]
    git(alice.root, "commit", "-q", "-am", "idea")
    git(alice.root, "checkout", "-q", "main")
    assert alice.run("render").returncode == 0  # main's film, the default profile
    gc = alice.run("cache", "gc", "--grace", "0", "--remote", "--yes")
    assert gc.returncode == 0, gc.stderr
    assert "0 of them paid renders" in gc.stdout
    assert (alice.root / "cache" / "cas" / idea[:2] / idea).is_file()
    bob = clone(alice, tmp_path / "bob", remote, openai_server)
    plan = bob.run("plan", "--profile", "final", "--json")
    assert json.loads(plan.stdout)["to_render"] == 0, plan.stdout
    assert len(openai_server.creates) == 2


@pytest.mark.parametrize("remote_url", ["s3", "gs", "shared-folder"], indirect=True)
def test_two_machines_sharing_only_the_remote_pay_once_for_each_node(
    tmp_path: Path, remote_url: str, openai_server: OpenAIServer
) -> None:
    openai_server.job_seconds = 0.5  # long enough that both runners want every shot at once
    alice = Member(tmp_path / "alice", remote_url, openai_server)
    bob = Member(tmp_path / "bob", remote_url, openai_server)
    for member in (alice, bob):
        gen(member.root / "film", {"film.toml": hosted_film(3)})
    runs = [alice.start(), bob.start()]
    for proc in runs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert len(openai_server.creates) == 3  # one create per shot, across both machines
    assert (alice.root / "film" / "out" / "film.mp4").read_bytes() == (
        bob.root / "film" / "out" / "film.mp4"
    ).read_bytes()
    fs, root = fsspec.core.url_to_fs(remote_url, skip_instance_cache=True)
    assert fs.find(f"{root}/claims") == []  # every claim let go once its render was pushed


def test_a_stale_claim_is_taken_over_and_the_job_it_names_resumed_not_bought_again(
    tmp_path: Path, openai_server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, openai_server)  # the runner that died, in effect
    gen(alice.root / "film", {"film.toml": hosted_film(2)})
    assert alice.run("render").returncode == 0
    locked = lock_nodes(alice.manifest.with_suffix(".lock"))
    shared = tmp_path / "shared"
    for node in ("shots.s0", "shots.s1"):  # its claims: no heartbeat for an hour
        key = locked[node]["key"]
        claim = {"version": 1, "key": key, "node": node, "host": "ci-gone", "pid": 4242,
                 "run": "dead", "job_id": locked[node]["job_id"], "claimed_at": time.time() - 3600,
                 "refreshed_at": time.time() - 3600}  # fmt: skip
        gen(shared / "claims" / key[:2], {f"{key}.json": json.dumps(claim)})
    bob = Member(tmp_path / "bob", shared.as_uri(), openai_server)
    gen(bob.root / "film", {"film.toml": hosted_film(2)})
    result = bob.run("render")
    assert result.returncode == 0, result.stderr
    assert len(openai_server.creates) == 2  # the claimed jobs were downloaded, not bought again
    mine = lock_nodes(bob.manifest.with_suffix(".lock"))
    assert [mine[n]["output"] for n in ("shots.s0", "shots.s1")] == [
        locked[n]["output"] for n in ("shots.s0", "shots.s1")
    ]
    assert not [p for p in (shared / "claims").rglob("*") if p.is_file()]
