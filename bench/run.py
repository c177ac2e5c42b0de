"""`make bench`: start-up, no-op plan and render of big cached films, assembly of 100 clips.

`python bench/run.py assembly [CLIPS]` runs the assembly benchmark alone (bench/assembly.py).

Writes BENCHMARKS.md with the figures and the commands that produced them. Wall-clock
figures are the best of several runs on this machine; they are not asserted by the test suite.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "out"
RUNNER = [sys.executable, "-m", "runner"]


def best_of(runs: int, fn: Callable[[], object]) -> tuple[float, float]:
    """(best, median) wall seconds of fn over runs."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def sh(*args: str | Path, env: dict[str, str] | None = None) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, env=env)


def make_film(folder: Path, shots: int) -> Path:
    """A film of `shots` tiny previz shots; the edit cuts the first two."""
    lines = [
        "[film]",
        f'title = "Bench {shots}"',
        'size = "64x64"',
        "fps = 12",
        "[defaults]",
        "seconds = 1",
        "[style]",
        'look = "35mm, soft grain"',
        "[edit]",
        'sequence = ["s0", "s1"]',
        "loudness_lufs = -16",
    ]
    for i in range(shots):
        lines += [f"[shots.s{i}]", f'scene = "Bench shot number {i}: a lantern on the water."']
        if i % 10:
            lines.append(f'needs = ["s{i - i % 10}"]')  # chains of ten, like scenes
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "film.toml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def seed_cache(manifest: Path, cache: Path) -> None:
    """Make every node cached: render the edited shots for real, record the rest directly.

    Rendering 10,000 previz clips would take longer than the benchmark is worth; a cached
    node is a record plus a blob, whatever the blob holds, so the rest get small blobs.
    """
    sys.path.insert(0, str(ROOT))
    from runner.backends.previz import PrevizBackend
    from runner.film.plan import node_key
    from runner.run.project import Project

    project = Project.open(manifest, cache, None)
    store = project.store
    store.tmp.mkdir(parents=True, exist_ok=True)
    previz = PrevizBackend(store.tmp / "previz")
    digests: dict[str, str] = {}
    for node in project.graph.nodes.values():
        if node.kind != "shot":
            continue
        key = node_key(node, digests)
        tmp = store.tmp / "seed"
        if node.id in ("shots.s0", "shots.s1"):  # the edit's clips: real video
            previz.download(previz.submit(node.request(None)), tmp)
        else:
            tmp.write_bytes(f"seeded output of {node.id}\n".encode())
        digests[node.id] = store.put(tmp)
        store.record(key, {"node": node.id, "kind": "shot", "output": digests[node.id]})
    env = {**os.environ, "RUNNER_CACHE_DIR": str(cache)}
    sh(*RUNNER, "render", manifest, env=env)  # renders what is left for real, then assembles


def main() -> None:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rows: list[tuple[str, str, str, str]] = []

    best, median = best_of(10, lambda: sh(*RUNNER, "--help"))
    rows.append(("`runner --help` start-up", f"{best:.3f} s", f"{median:.3f} s", "<= 0.15 s"))

    for shots, target in ((1000, "0.25"), (10000, "1.5")):
        folder = WORK / f"film{shots}"
        manifest = make_film(folder, shots)
        cache = folder / "cache"
        seed_cache(manifest, cache)
        os.sync()  # let the seeding's writes reach the disk before timing anything
        time.sleep(2)
        env = {**os.environ, "RUNNER_CACHE_DIR": str(cache)}
        best, median = best_of(9, lambda m=manifest, e=env: sh(*RUNNER, "plan", m, env=e))
        rows.append(
            (
                f"no-op `runner plan`, {shots:,} shots",
                f"{best:.3f} s",
                f"{median:.3f} s",
                f"<= {target} s",
            )
        )
        best, median = best_of(3, lambda m=manifest, e=env: sh(*RUNNER, "render", m, env=e))
        rows.append(
            (f"no-op `runner render`, {shots:,} shots", f"{best:.3f} s", f"{median:.3f} s", "")
        )

    rows += previz_clip()
    rows += previz_cards_of_hostile_text()
    rows += assembly_of_100_clips()
    rows += makespan_100_hosted_shots()
    rows += pull_100_shots_from_the_remote()
    write_report(rows)


def previz_clip() -> list[tuple[str, str, str, str]]:
    """One previz clip (2 s, 320x180) rendered in this process, after a warm-up clip."""
    sys.path.insert(0, str(ROOT))
    from runner.backends.base import ShotRequest
    from runner.backends.previz import PrevizBackend

    backend = PrevizBackend(WORK / "previz")
    takes = iter(range(1, 1000))

    def clip() -> None:
        take = next(takes)
        shot = ShotRequest(
            film="Bench",
            shot="previz",
            take=take,
            model="previz",
            prompt="A lantern.",
            avoid=(),
            seconds=2.0,
            width=320,
            height=180,
            fps=24,
            seed=7,
        )
        backend.download(backend.submit(shot), WORK / "previz" / f"t{take}.mp4")

    clip()  # warm-up: the font and ffmpeg's first start
    best, median = best_of(5, clip)
    return [("previz clip, 2 s at 320x180", f"{best:.3f} s", f"{median:.3f} s", "< 1.0 s")]


def previz_cards_of_hostile_text() -> list[tuple[str, str, str, str]]:
    """One previz card (1280x720) drawn in this process for text that used to take minutes:
    one long word, a long shot id, a 5 MB one-word prompt, mixed scripts."""
    sys.path.insert(0, str(ROOT))
    from runner.backends.base import ShotRequest
    from runner.backends.previz import draw_card

    def card(prompt: str, shot: str = "river") -> Callable[[], object]:
        request = ShotRequest(
            film="Bench",
            shot=shot,
            take=1,
            model="previz",
            prompt=prompt,
            avoid=(),
            seconds=2.0,
            width=1280,
            height=720,
            fps=24,
            seed=7,
        )
        return lambda: draw_card(request)

    cases = [
        ("a 4,000-character word (was 81 s)", card("x" * 4_000)),
        ("a 20,000-character word (was > 300 s)", card("x" * 20_000)),
        ("a 2,000-character shot id (was 56 s)", card("A lantern.", shot="s" * 2_000)),
        ("a 5 MB one-word prompt (was a ValueError)", card("x" * 5_000_000)),
        ("mixed scripts and emoji, 2,000 characters", card("Mara नदी สะพาน نهر мост 🎬 " * 80)),
    ]
    card(cases[-1][0])()  # warm-up: fonts and cmaps load once
    rows = []
    for what, fn in cases:
        best, median = best_of(5, fn)
        rows.append((f"previz card, {what}", f"{best:.3f} s", f"{median:.3f} s", "< 0.1 s"))
    return rows


def assembly_of_100_clips(clips: int = 100) -> list[tuple[str, str, str, str]]:
    """Clips at the film's format (copied) and at another size (conformed), cold and warm,
    against the floor of a stream copy and one audio encode: bench/assembly.py."""
    sys.path.insert(0, str(ROOT))
    from bench import assembly

    return assembly.rows(WORK / "assembly", clips)


def makespan_100_hosted_shots() -> list[tuple[str, str, str, str]]:
    """The scheduler's makespan on 100 shots against the loopback OpenAI server (real SDK,
    real HTTP, jobs of 5 s standing in for minutes), against the lower bound
    max(critical path, total latency / concurrency, N / rpm)."""
    sys.path.insert(0, str(ROOT))
    from runner.run.project import Project
    from runner.run.render import Options, render
    from tests.servers.openai_server import OpenAIServer

    shots, job_seconds, concurrency, rpm = 100, 5.0, 10, 600
    folder = WORK / "hosted100"
    lines = [
        "[film]",
        'title = "Makespan"',
        'size = "160x90"',
        "fps = 24",
        "[defaults]",
        'backend = "openai"',
        'model = "sora-2"',
        'size = "1280x720"',
        "seconds = 4",
        "[limits.openai]",
        f"concurrency = {concurrency}",
        f"rpm = {rpm}",
        "[edit]",
        'sequence = ["s0"]',
    ]
    for i in range(shots):
        lines += [f"[shots.s{i}]", f'scene = "Makespan shot {i}."']
    folder.mkdir(parents=True)
    manifest = folder / "film.toml"
    manifest.write_text("\n".join(lines) + "\n")
    times: dict[str, float] = {}

    def report(event: str, node: str, detail: str) -> None:
        if node.startswith("shots.") and event == "done":
            times["last-done"] = time.time()

    with OpenAIServer(job_seconds=job_seconds, poll_after_ms=50) as server:
        os.environ["OPENAI_BASE_URL"] = server.base_url
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        project = Project.open(manifest, folder / "cache", None)
        result = render(project, Options(), report)
        assert result.outcome.ok, result.outcome.failed
        creates = len(server.creates)
        first_create = min(server.create_times)
    # From the first create the provider received (SDK import and client set-up excluded) to
    # the last shot downloaded, verified and stored.
    makespan = times["last-done"] - first_create
    bound = max(job_seconds, shots * job_seconds / concurrency, shots / rpm * 60.0)
    return [
        (
            f"makespan, {shots} hosted shots ({creates} creates), {job_seconds:g} s jobs, "
            f"concurrency {concurrency}, rpm {rpm}: lower bound {bound:.1f} s",
            f"{makespan:.1f} s",
            f"{makespan:.1f} s (one run)",
            f"<= 1.05x the bound: {makespan / bound:.3f}x",
        ),
    ]


def pull_100_shots_from_the_remote() -> list[tuple[str, str, str, str]]:
    """Pull a 100-shot film (2 MiB a shot) from a loopback S3 server into an empty cache,
    streaming, verifying each digest and installing atomically, against a raw read of the
    same bytes."""
    sys.path.insert(0, str(ROOT))
    from tests.test_remote import bench_pull

    result = bench_pull(WORK / "pull", shots=100, shot_bytes=2 << 20)
    return [
        (
            f"pull of a 100-shot film ({result['bytes'] >> 20} MiB) from loopback S3 (moto), "
            f"verified, into an empty cache; raw transfer of the same bytes: {result['raw_s']} s",
            f"{result['pull_s']} s",
            f"{result['pull_MBps']} MB/s vs raw {result['raw_MBps']} MB/s",
            "",
        )
    ]


def write_report(rows: list[tuple[str, str, str, str]]) -> None:
    cpu = os.cpu_count()
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`python bench/run.py`), which writes this file. Each figure is",
        "the wall time of the real command in a child process (Python start-up included), best",
        "and median of several runs. Big films are made by `bench/run.py`: tiny previz shots in",
        "chains of ten; the shots the edit uses are rendered for real, the rest of the cache is",
        "seeded with records and small blobs (a cached node is a record plus a blob).",
        "",
        f"Machine: {platform.machine()}, {cpu} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| what | best | median | target |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    report = ROOT / "BENCHMARKS.md"
    # The "## Test suite" section is measured by hand (`make test`'s time): keep it.
    old = report.read_text() if report.exists() else ""
    kept = old[old.index("## Test suite") :] if "## Test suite" in old else ""
    report.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    print("\n".join(lines))


def assembly_alone(clips: int) -> None:
    """`python bench/run.py assembly [CLIPS]`: the assembly rows only. At 100 clips they
    replace the assembly rows of BENCHMARKS.md; fewer clips only print (a quick check)."""
    WORK.mkdir(parents=True, exist_ok=True)
    rows = assembly_of_100_clips(clips)
    for row in rows:
        print(" | ".join(row))
    if clips != 100:
        return
    report = ROOT / "BENCHMARKS.md"
    lines = report.read_text().split("\n")
    old = [i for i, line in enumerate(lines) if line.startswith("| assembly of")]
    at = old[0] if old else 1 + next(i for i, ln in enumerate(lines) if ln.startswith("|---"))
    kept = [line for i, line in enumerate(lines) if i not in old]
    kept[at:at] = [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    report.write_text("\n".join(kept))


if __name__ == "__main__":
    if sys.argv[1:2] == ["assembly"]:
        assembly_alone(int(sys.argv[2]) if len(sys.argv) > 2 else 100)
    else:
        main()
