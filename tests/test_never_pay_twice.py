"""Money already spent is never spent again: the runner killed at each named point, a clip
lost from the cache, a refusal with paid jobs in flight, Ctrl-C, two renders at once, and a
hostile lock. Creates are counted on the loopback server's side (its ledger)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import faults
from runner.cache.store import Store
from runner.run import job
from tests.films import Checkout, gen, lock_nodes
from tests.servers.openai_server import OpenAIServer
from tests.test_hosted_render import Project, film

PRICE = 0.40  # sora-2, 4 s at $0.10 a second


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(job_seconds=0.3, poll_after_ms=50) as s:
        yield s


def spent(stderr: str) -> float:
    match = re.search(r"spent \$(\d+\.\d\d)", stderr)
    assert match, stderr
    return float(match.group(1))


def journal(p: Project) -> list[Path]:
    return sorted((p.root / "cache" / "journal").glob("*.json"))


def wait_for(predicate: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# Every point this hosted film passes; mid-push needs a remote and has its own test below.
FILM_POINTS = tuple(p for p in faults.POINTS if p != "mid-push")


@pytest.mark.parametrize("point", FILM_POINTS)
def test_killed_at_each_named_point_the_rerun_buys_each_shot_exactly_once(
    tmp_path: Path, server: OpenAIServer, point: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.normalise_prompts = True  # echoes prompts as a gateway may: `find` must still match
    p = Project(tmp_path, server, film(6, limits="concurrency = 3"))
    p.env["RUNNER_KILL_AT"] = point
    killed = p.run("render")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    del p.env["RUNNER_KILL_AT"]
    # The rerun (in this process) looks for an unconfirmed create once more when it would have
    # landed: 10 s after it was sent at a provider, far more than this loopback server needs
    # to make a job of a request that reached it before the kill.
    monkeypatch.setattr(job, "ARRIVAL_SETTLE", 2.0)
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 6
    assert sorted(c["prompt"].split("\n")[0] for c in server.creates) == [
        f"Shot number {i}: a lantern on the river." for i in range(6)
    ]
    assert journal(p) == []  # every entry was resolved, none left to reorder a node forever


def test_an_entry_whose_output_was_recorded_is_cleared_by_the_next_run(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(2, limits="concurrency = 1"))
    p.env["RUNNER_KILL_AT"] = "recorded"
    assert p.run("render").returncode == -signal.SIGKILL
    recorded = [
        j for j in journal(p) if (p.root / "cache" / "actions" / j.name[:2] / j.name).is_file()
    ]
    assert len(recorded) == 1  # its record is written, its entry not yet cleared
    del p.env["RUNNER_KILL_AT"]
    assert p.run("render").returncode == 0
    assert journal(p) == [] and len(server.creates) == 2


@pytest.mark.parametrize("then", [("render",), ("cache", "push")])
def test_a_render_killed_before_its_push_is_pushed_by_the_next_render_or_cache_push(
    tmp_path: Path, server: OpenAIServer, then: tuple[str, ...]
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    p = Project(tmp_path, server, film(1))
    p.env["RUNNER_REMOTE"] = remote.as_uri()
    p.env["RUNNER_KILL_AT"] = "cleared"  # the journal let go: only the pending list knows
    assert p.run("render").returncode == -signal.SIGKILL
    [pending] = (p.root / "cache" / "pending-push").glob("*.json")
    key = pending.stem
    output = json.loads((p.root / "cache" / "actions" / key[:2] / f"{key}.json").read_text())
    assert not any(remote.rglob("cas/*/*"))
    del p.env["RUNNER_KILL_AT"]
    assert p.run(*then).returncode == 0
    assert (remote / "cas" / output["output"][:2] / output["output"]).is_file()
    assert (remote / "actions" / key[:2] / f"{key}.json").is_file()
    assert list((p.root / "cache" / "pending-push").glob("*.json")) == []
    assert len(server.creates) == 1


def test_killed_mid_push_the_rerun_pushes_the_rest_and_buys_nothing(
    tmp_path: Path, server: OpenAIServer
) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    p = Project(tmp_path, server, film(2, limits="concurrency = 1"))
    p.env["RUNNER_REMOTE"] = remote.as_uri()
    p.env["RUNNER_KILL_AT"] = "mid-push"
    assert p.run("render").returncode == -signal.SIGKILL
    assert len(list(remote.rglob("cas/*/*"))) == 1 and not any(remote.rglob("actions/*/*"))
    bought = len(server.creates)  # s1 may be sent while s0 is stored and pushed
    del p.env["RUNNER_KILL_AT"]
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 2
    assert spent(result.stderr) == pytest.approx((2 - bought) * PRICE)
    # Every record this cache holds for the film, and each one's blob, is on the remote.
    lock = lock_nodes(p.manifest.with_suffix(".lock"))
    for entry in lock.values():
        key, output = entry["key"], entry["output"]
        assert (remote / "actions" / key[:2] / f"{key}.json").is_file(), entry
        assert (remote / "cas" / output[:2] / output).is_file(), entry
    assert list((p.root / "cache" / "pending-push").glob("*.json")) == []


def test_killed_mid_assembly_the_rerun_makes_the_byte_identical_film(tmp_path: Path) -> None:
    toml = "\n".join(
        ['[film]\ntitle = "Cut"\nsize = "160x90"\nfps = 12\n[defaults]\nseconds = 1']
        + [f'[shots.s{i}]\nscene = "Assembly shot {i}."' for i in range(4)]
    )
    killed = Checkout(gen(tmp_path / "a", {"film.toml": toml}) / "film.toml", tmp_path / "ca")
    clean = Checkout(gen(tmp_path / "b", {"film.toml": toml}) / "film.toml", tmp_path / "cb")
    killed.env["RUNNER_KILL_AT"] = "mid-assembly"
    assert killed.run("render").returncode == -signal.SIGKILL
    segments = list((tmp_path / "ca" / "actions").glob("*/segment-*.json"))
    assert len(segments) >= 2  # the first piece's video and audio are cached, not the film
    assert not (tmp_path / "a" / "out" / "film.mp4").exists()
    del killed.env["RUNNER_KILL_AT"]
    assert killed.run("render").returncode == 0
    assert clean.run("render").returncode == 0
    film_a = (tmp_path / "a" / "out" / "film.mp4").read_bytes()
    assert film_a == (tmp_path / "b" / "out" / "film.mp4").read_bytes()


def test_a_clip_deleted_from_the_cache_comes_back_from_its_provider_for_free(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.unique_videos = True  # another create would give other bytes
    p = Project(tmp_path, server, film(2))
    assert p.run("render").returncode == 0
    clip = lock_nodes(p.manifest.with_suffix(".lock"))["shots.s1"]
    blob = p.root / "cache" / "cas" / clip["output"][:2] / clip["output"]
    blob.unlink()
    plan = json.loads(p.run("plan", "--json").stdout)
    reasons = {n["id"]: n["reasons"] for n in plan["nodes"]}
    assert reasons["shots.s1"] == [
        "locked output not in any cache",
        "fetched again from openai by job id, at no cost",
    ]
    assert plan["estimated_cost_usd"] == 0
    result = p.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 2 and spent(result.stderr) == 0
    assert blob.is_file()  # the same bytes, by digest


def test_a_refusal_finishes_the_paid_jobs_in_flight_before_exiting(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.job_seconds = 1.5
    server.refuse("number 3:", after=0.4)  # the others are accepted before this answer
    p = Project(tmp_path, server, film(5, limits="concurrency = 4"))
    result = p.run("render")
    assert result.returncode == 1
    assert "finishing 3 paid jobs in flight, then stopping" in result.stderr
    assert "safety system" in result.stderr
    assert len(server.creates) == 3  # s4 was never sent
    lock = lock_nodes(p.manifest.with_suffix(".lock"))
    stored = {
        nid
        for nid, e in lock.items()
        if (p.root / "cache" / "cas" / e["output"][:2] / e["output"]).is_file()
    }
    assert stored == {"shots.s0", "shots.s1", "shots.s2"}
    assert spent(result.stderr) == pytest.approx(3 * PRICE)


def test_the_spend_a_run_reports_is_what_the_provider_billed_for_that_run(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(3))
    first = p.run("render")
    assert spent(first.stderr) == pytest.approx(len(server.creates) * PRICE)
    p.manifest.write_text(p.manifest.read_text().replace("Shot number 2:", "Shot two:"))
    second = p.run("render")
    assert len(server.creates) == 4 and spent(second.stderr) == pytest.approx(PRICE)


def test_two_renders_of_one_film_at_once_both_succeed_and_share_the_bill(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(4, limits="concurrency = 4"))
    procs = [p.start(), p.start()]
    outs = [proc.communicate(timeout=120)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    assert len(server.creates) == 4
    assert sum(spent(err) for err in outs) == pytest.approx(4 * PRICE)
    assert not any("Traceback" in err or "internal error" in err for err in outs)


def test_first_ctrl_c_stops_new_creates_and_stores_the_paid_jobs(
    tmp_path: Path, server: OpenAIServer
) -> None:
    server.job_seconds = 60.0  # in flight until the runner has said it stops (no race on load)
    p = Project(tmp_path, server, film(6, limits="concurrency = 2"))
    proc = p.start()
    wait_for(lambda: len(server.creates) == 2 and len(journal(p)) == 2)
    wait_for(lambda: all("job_id" in json.loads(j.read_text()) for j in journal(p)))
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    said = []
    for line in proc.stderr:
        said.append(line)
        if "no new creates" in line:
            break
    with server.lock:  # now the two paid jobs finish
        for job in server.jobs.values():
            job.duration = 0.0
    err = "".join(said) + proc.stderr.read()  # to the end (communicate could skip buffered text)
    proc.wait(timeout=60)
    assert proc.returncode == 130, err
    assert "no new creates; finishing 2 paid jobs in flight" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert len(server.creates) == 2 and journal(p) == []
    lock = lock_nodes(p.manifest.with_suffix(".lock"))
    assert {"shots.s0", "shots.s1"} <= set(lock)


def node_jobs(tmp_path: Path) -> Any:
    """The run's NodeJobs for a small previz film, as render makes it."""
    from runner.run.execute import NodeJobs
    from runner.run.project import Project as RunnerProject
    from tests.films import MINIMAL

    manifest = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    project = RunnerProject.open(manifest, tmp_path / "cache", None)
    return NodeJobs(project.graph, project.plan(), project.store, 2, outputs=project.outputs)


def test_the_schedulers_wait_never_blocks_the_main_thread_for_good(tmp_path: Path) -> None:
    """Python runs a signal's handler on the main thread, and a Ctrl-C the kernel hands to
    another thread wakes the main thread's wait only when that wait ends. Reproduced: with
    60 s jobs in flight, a first Ctrl-C now and then went unheard until they finished
    (test_first_ctrl_c_stops_new_creates_and_stores_the_paid_jobs hit its hang guard)."""
    import threading

    jobs = node_jobs(tmp_path)
    try:
        waited = threading.Thread(target=jobs.wait, args=(None,), daemon=True)
        waited.start()  # nothing will complete: only the wait's own bound can end it
        waited.join(timeout=10)
        assert not waited.is_alive(), "the scheduler's wait blocks with no bound"
    finally:
        jobs.close()


def test_the_first_ctrl_c_takes_no_lock_the_thread_it_interrupts_may_hold(tmp_path: Path) -> None:
    """The handler runs on the main thread between any two bytecodes, also while that thread
    holds the run's spent lock or sits inside the completion queue's get: a handler that
    waits on such a lock hangs the run for good. Here another thread holds every lock the
    main thread can hold there."""
    import threading

    from runner.run.interrupt import Interrupts

    jobs = node_jobs(tmp_path)
    held = [jobs._spent_lock, *([jobs._done.mutex] if hasattr(jobs._done, "mutex") else [])]
    handler = Interrupts(jobs.stop_sending, jobs.paid_in_flight)
    for lock in held:
        lock.acquire()
    try:
        ran = threading.Thread(target=handler._handle, args=(signal.SIGINT, None), daemon=True)
        ran.start()
        ran.join(timeout=5)
        assert not ran.is_alive(), "the Ctrl-C handler waits on a lock the main thread holds"
    finally:
        for lock in held:
            lock.release()
        jobs.close()
    assert jobs.stopping.is_set()
    assert jobs._done.get(timeout=1) is None  # the scheduler's wait is woken (Empty if not)


def test_second_ctrl_c_exits_at_once_leaving_the_jobs_journaled(
    tmp_path: Path, server: OpenAIServer
) -> None:
    # Jobs of a minute: the first Ctrl-C waits for them, the second must not. The bound is
    # far from both (a loaded machine takes seconds to exit, never a minute).
    server.job_seconds = 60.0
    p = Project(tmp_path, server, film(3, limits="concurrency = 2"))
    proc = p.start()
    wait_for(lambda: len(server.creates) == 2 and len(journal(p)) == 2)
    wait_for(lambda: all("job_id" in json.loads(j.read_text()) for j in journal(p)))
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = proc.communicate(timeout=40)
    assert time.monotonic() - started < 20  # at once, not after the minute-long jobs
    assert proc.returncode == 130, err
    assert "2 paid jobs journaled" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert not _processes_mentioning(str(p.root / "cache"))  # no ffmpeg outlives it
    with server.lock:  # the provider finishes the two jobs; the third is made quickly
        for job in server.jobs.values():
            job.duration = 0.3
    server.job_seconds = 0.3
    assert p.run("render").returncode == 0
    assert len(server.creates) == 3  # the two journaled jobs were resumed, not bought again


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_lock_digest_that_is_a_path_is_refused_and_the_file_never_sent(
    tmp_path: Path, server: OpenAIServer
) -> None:
    chained = '[shots.s1]\nimage = { shot = "s0", frame = "last" }\n'
    toml = film(1) + chained.replace("[shots.s1]", '[shots.s1]\nscene = "It rises."')
    p = Project(tmp_path, server, toml)
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for any provider")
    lock = p.manifest.with_suffix(".lock")
    lock.write_text(
        "version = 1\n"
        '[nodes."frames.s0.last"]\n'
        f'key = "{"0" * 64}"\n'
        f'output = "../../../../../../../../..{secret}"\n'
        'kind = "frame"\n'
    )
    for command in ("plan", "render"):
        result = p.run(command)
        assert result.returncode == 2, result.stderr
        assert "frames.s0.last" in result.stderr and "output" in result.stderr
        assert "not a sha256 digest" in result.stderr and "film.lock" in result.stderr
    assert server.create_attempts == []


def test_a_killed_runs_working_folders_are_swept_and_a_live_runs_are_not(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    script = (
        "import sys, time; from pathlib import Path; from runner.cache.store import Store\n"
        "own = Store(Path(sys.argv[1])).own_tmp(); (own / 'part.mp4').write_bytes(b'x' * 1000)\n"
        "print(own, flush=True); time.sleep(float(sys.argv[2]))\n"
    )
    argv = [sys.executable, "-c", script, str(store.root)]
    live = subprocess.Popen([*argv, "30"], stdout=subprocess.PIPE, text=True)
    dead = subprocess.Popen([*argv, "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout is not None and dead.stdout is not None
        live_dir, dead_dir = (
            Path(live.stdout.readline().strip()),
            Path(dead.stdout.readline().strip()),
        )
        dead.kill()
        dead.wait()
        removed = store.sweep_tmp()
        assert removed == [dead_dir]
        assert not dead_dir.exists() and (live_dir / "part.mp4").is_file()
    finally:
        live.kill()
        live.wait()


def test_a_garbled_journal_entry_stops_its_shot_instead_of_buying_it_again(
    tmp_path: Path, server: OpenAIServer
) -> None:
    p = Project(tmp_path, server, film(1))
    p.env["RUNNER_KILL_AT"] = "job-journaled"
    assert p.run("render").returncode == -signal.SIGKILL
    [entry] = journal(p)
    entry.write_bytes(b"\x00\x01 not json")
    del p.env["RUNNER_KILL_AT"]
    result = p.run("render")
    assert result.returncode == 1
    assert "shots.s0" in result.stderr and "may have been paid for" in result.stderr
    assert str(entry) in result.stderr
    assert len(server.creates) == 1
