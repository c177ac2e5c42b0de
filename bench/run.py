"""`make bench`: start-up, no-op plans of big films, assembly, hosted shots' CPU and makespan.

Writes BENCHMARKS.md with the figures and the commands that produced them. Wall-clock
figures are the best of several runs on this machine; they are not asserted by the test suite.
`python bench/run.py SECTION ...` measures some sections alone and keeps the other rows;
`--small` checks that they run, at a small scale, and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
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


Row = tuple[str, str, str, str]  # what, best, median, target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sections",
        nargs="*",
        metavar="SECTION",
        help=f"what to measure (default: all): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--small",
        action="store_true",
        help="a small scale run that checks the benchmarks work; prints, writes nothing",
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.sections if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section {', '.join(unknown)} (sections: {', '.join(SECTIONS)})")
    chosen = args.sections or list(SECTIONS)
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    rows: list[Row] = []
    for name in chosen:
        measure = SECTIONS[name]
        rows += measure(small=True) if args.small and name in SCALED else measure()
    if args.small:
        print("\n".join(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows))
        return
    write_report(rows, None if not args.sections else chosen)


def start_up() -> list[Row]:
    best, median = best_of(10, lambda: sh(*RUNNER, "--help"))
    return [("`runner --help` start-up", f"{best:.3f} s", f"{median:.3f} s", "<= 0.15 s")]


def no_op_plans() -> list[Row]:
    """No-op `plan` and `render` of films of 1,000 and 10,000 cached shots."""
    rows = []
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
    return rows


def previz_clip() -> list[Row]:
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


def previz_cards_of_hostile_text() -> list[Row]:
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


def assembly_of_100_clips(clips: int = 100) -> list[Row]:
    """Clips at the film's format (copied) and at another size (conformed), cold and warm,
    against the floor of a stream copy and one audio encode: bench/assembly.py."""
    sys.path.insert(0, str(ROOT))
    from bench import assembly

    return assembly.rows(WORK / "assembly", clips)


def makespan_100_hosted_shots() -> list[Row]:
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


def verify_a_downloaded_clip() -> list[Row]:
    """CPU of checking one downloaded 4 s 720x1280 H.264/AAC clip (the loopback server's):
    the cheap check every download gets, and the full decode of `cache verify --deep`."""
    sys.path.insert(0, str(ROOT))
    from runner.media import ffmpeg
    from tests.servers.clips import mp4_bytes

    clip = WORK / "verify" / "clip.mp4"
    clip.parent.mkdir(parents=True)
    clip.write_bytes(mp4_bytes(4.0, "720x1280"))
    rows = []
    for deep, runs, what in ((False, 20, "cheap check"), (True, 5, "`--deep`: every frame")):
        ffmpeg.verify_video(clip, 4.0, deep=deep)  # warm-up: the page cache, ffmpeg's start
        spent = []
        for _ in range(runs):
            before = cpu_seconds()
            ffmpeg.verify_video(clip, 4.0, deep=deep)
            spent.append(cpu_seconds() - before)
        rows.append(
            (
                f"CPU to verify a downloaded 4 s 720x1280 clip, {what} (runner and ffmpeg)",
                f"{min(spent):.3f} s",
                f"{statistics.median(spent):.3f} s",
                "",
            )
        )
    return rows


def cpu_seconds() -> float:
    """CPU seconds (user and system) of this process and the children it waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def hosted_shots(small: bool = False) -> list[Row]:
    """150 hosted shots (4 s of 720x1280 each, distinct bytes) at concurrency 30 against the
    loopback OpenAI server, jobs of 2 s polled once a second as the server asks: the runner's
    CPU per shot (its own and its ffmpeg's: create, polls, download, verify, store, record),
    and the makespan from the first create to the last shot stored against the lower bound
    shots x job / concurrency. The server runs in a process of its own, so its CPU is not
    counted; the runner runs in this one (Python and SDK start-up are not counted: they are
    paid once a run, not once a shot). Shots only (`--shard 1/1`): no edit is assembled."""
    sys.path.insert(0, str(ROOT))
    import openai  # noqa: F401  (imports happen before the measure)

    from runner.media import ffmpeg
    from runner.run.project import Project
    from runner.run.render import Options, render

    shots, concurrency, job_seconds, poll_ms = (
        (30, 10, 2.0, 1000) if small else (150, 30, 2.0, 1000)
    )
    folder = WORK / f"hosted{shots}"
    lines = ["[film]", 'title = "Hosted"', 'size = "720x1280"', "fps = 24", "[defaults]"]
    lines += ['backend = "openai"', 'model = "sora-2"', 'size = "720x1280"', "seconds = 4"]
    lines += ["[limits.openai]", f"concurrency = {concurrency}"]
    for i in range(shots):
        lines += [f"[shots.s{i}]", f'scene = "Hosted shot {i}: a lantern on the river."']
    folder.mkdir(parents=True)
    manifest = folder / "film.toml"
    manifest.write_text("\n".join(lines) + "\n")
    serve = [sys.executable, "-m", "tests.servers.openai_server", "--unique"]
    serve += ["--job-seconds", str(job_seconds), "--poll-after-ms", str(poll_ms)]
    server = subprocess.Popen(
        [*serve, "--clip-size", "720x1280"],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None and server.stdout is not None
    done: list[float] = []
    try:
        os.environ["OPENAI_BASE_URL"] = server.stdout.readline().strip()
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        ffmpeg.ffmpeg_version()  # found and run once before the measure
        project = Project.open(manifest, folder / "cache", None)

        def report(event: str, node: str, detail: str) -> None:
            if event == "done":
                done.append(time.time())

        before = cpu_seconds()
        result = render(project, Options(shard=(1, 1)), report)
        spent = cpu_seconds() - before
    finally:
        server.stdin.close()
        seen = json.loads(server.stdout.readline() or "{}")
        server.wait()
    assert result.outcome.ok, result.outcome.failed
    makespan = max(done) - seen["first_create"]
    bound = max(job_seconds, shots * job_seconds / concurrency)
    per_shot = spent / shots
    return [
        (
            f"runner CPU per hosted 4 s 720x1280 shot ({shots} shots, {seen['creates']} "
            f"creates, concurrency {concurrency}, {job_seconds:g} s jobs polled every "
            f"{poll_ms} ms): {spent:.1f} s of CPU in all",
            f"{per_shot:.3f} s",
            f"{per_shot:.3f} s (one run)",
            f"<= 0.05 s: {per_shot / 0.05:.2f}x",
        ),
        (
            f"makespan of the same run, first create to last shot stored (most in flight: "
            f"{seen['in_flight_max']}): lower bound {bound:.1f} s",
            f"{makespan:.1f} s",
            f"{makespan:.1f} s (one run)",
            f"<= 1.5x the bound: {makespan / bound:.3f}x",
        ),
    ]


def pull_100_shots_from_the_remote() -> list[Row]:
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


SECTIONS: dict[str, Callable[..., list[Row]]] = {
    "startup": start_up,
    "plans": no_op_plans,
    "previz": previz_clip,
    "cards": previz_cards_of_hostile_text,
    "assembly": assembly_of_100_clips,
    "makespan": makespan_100_hosted_shots,
    "pull": pull_100_shots_from_the_remote,
    "verify": verify_a_downloaded_clip,
    "hosted": hosted_shots,
}
"""Each part of the benchmark, runnable alone: `python bench/run.py verify hosted`."""
SCALED = frozenset({"hosted"})  # sections that take `small=True` (`--small`)
OWN_ROWS = {
    "startup": ("`runner --help`",),
    "plans": ("no-op `runner",),
    "previz": ("previz clip",),
    "cards": ("previz card",),
    "assembly": ("assembly of 100 clips",),
    "makespan": ("makespan, 100 hosted",),
    "pull": ("pull of a 100-shot film",),
    "verify": ("CPU to verify a downloaded",),
    "hosted": ("runner CPU per hosted", "makespan of the same run"),
}
"""How each section's rows begin: a run of some sections replaces only their rows."""


def write_report(rows: list[Row], sections: list[str] | None = None) -> None:
    """BENCHMARKS.md with `rows`; when only some `sections` ran, the other sections' rows
    (and every hand-measured section below the table) are kept as they were."""
    cpu = os.cpu_count()
    report = ROOT / "BENCHMARKS.md"
    old = report.read_text() if report.exists() else ""
    machine = (
        f"Machine: {platform.machine()}, {cpu} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}."
    )
    if sections is not None:
        rows = _merged(old, rows, sections)
        found = re.search(r"^Machine: .*$", old, flags=re.MULTILINE)
        if found is not None:  # the other rows were measured then; say when these were
            earlier = found.group().split("; ")[0].rstrip(".")
            machine = f"{earlier}; {', '.join(sections)} {time.strftime('%Y-%m-%d')}."
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`python bench/run.py`), which writes this file. Each figure is",
        "the wall time of the real command in a child process (Python start-up included), best",
        "and median of several runs. Big films are made by `bench/run.py`: tiny previz shots in",
        "chains of ten; the shots the edit uses are rendered for real, the rest of the cache is",
        "seeded with records and small blobs (a cached node is a record plus a blob).",
        "`python bench/run.py SECTION ...` measures some parts alone",
        f"({', '.join(SECTIONS)}) and keeps the other rows.",
        "",
        machine,
        "",
        "| what | best | median | target |",
        "|---|---|---|---|",
        *[f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows],
        "",
    ]
    # The "## Test suite" section is measured by hand (`make test`'s time): keep it.
    kept = old[old.index("## Test suite") :] if "## Test suite" in old else ""
    report.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    print("\n".join(lines))


def _merged(old: str, rows: list[Row], sections: list[str]) -> list[Row]:
    """The table's rows as they were, with the rows of `sections` replaced by `rows` (at the
    place of the first one they replace, else at the end)."""
    mine = tuple(prefix for name in sections for prefix in OWN_ROWS[name])
    merged: list[Row] = []
    placed = False
    for line in old.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) != 4 or cells[0] in ("what", "---"):
            continue
        if cells[0].startswith(mine):
            if not placed:
                merged += rows
                placed = True
            continue
        merged.append((cells[0], cells[1], cells[2], cells[3]))
    return merged if placed else merged + rows


if __name__ == "__main__":
    main()
