"""`runner review`: gather what the page shows and write `out/review/` beside the film.

The data comes from where the runner already keeps it: the plan (what is cached, what is
not and why), the action records (backend, model, cost, times), the build log's failures
and last run (runner/run/render.py writes them), and the blobs themselves. Clips and the film
are hard links to the cache's read-only blobs where the filesystem allows, else copies; poster
frames are made once per clip digest and kept in the cache like any node's output.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.cache.store import write_atomic
from runner.digest import key_of
from runner.errors import NodeFailed, shown
from runner.film.plan import CACHED, Plan
from runner.run import review_page as page
from runner.run.project import Project, find_root

POSTER_WIDTH = 480


def write(project: Project, plan: Plan | None = None) -> Path:
    """Write out/review/index.html and the files it shows; returns the page's path."""
    folder = project.out_dir / "review"
    folder.mkdir(parents=True, exist_ok=True)
    placed: set[Path] = set()
    built = collect(project, plan or project.plan(), folder, placed)
    index = folder / "index.html"
    write_atomic(index, page.build(built).encode())
    for sub in ("clips", "posters"):  # what an earlier page showed and this one does not
        for old in (folder / sub).glob("*") if (folder / sub).is_dir() else []:
            if old not in placed:
                old.unlink(missing_ok=True)
    if (folder / "film.mp4") not in placed:
        (folder / "film.mp4").unlink(missing_ok=True)
    return index


def collect(project: Project, plan: Plan, folder: Path, placed: set[Path]) -> page.Page:
    """The page's data; the files it names are placed in `folder` (and added to `placed`)."""
    from runner.film import manifest as manifest_module

    graph, outputs, store = project.graph, project.outputs, project.store
    loaded = manifest_module.load(project.manifest_path)
    state = project.state()
    last = state.get("last_run") if isinstance(state.get("last_run"), dict) else None
    rendered_last = set(last.get("rendered", [])) if last else set()
    where = _repo_path(project.manifest_path)

    takes: dict[str, list[str]] = {}
    for node in graph.nodes.values():
        if node.kind == "shot" and node.shot is not None:
            takes.setdefault(node.shot["shot"], []).append(node.id)
    cut = graph.cut_clips()
    cut_shots = list(dict.fromkeys(graph.nodes[nid].shot["shot"] for nid in cut))  # type: ignore[index]
    order = cut_shots + [name for name in loaded.shots if name not in cut_shots]

    def place(digest: str, sub: str, suffix: str) -> str | None:
        if not outputs.have(digest):
            return None
        dest = folder / sub / f"{digest[:24]}{suffix}"
        _link(store.blob(digest), dest)
        placed.add(dest)
        return f"{sub}/{dest.name}"

    clips = {
        nid: place(d.output, "clips", ".mp4")
        for nid, d in plan.decisions.items()
        if d.kind == "shot" and d.status == CACHED and d.output is not None
    }
    posters = _posters(project, [plan.decisions[n].output or "" for n, c in clips.items() if c])
    for rel in posters.values():
        placed.add(folder / rel)
    spend: dict[str, float] = {}
    shots: list[page.Shot] = []
    for name in order:
        nodes = takes.get(name, [])
        if not nodes:
            continue
        first = graph.nodes[nodes[0]]
        assert first.shot is not None
        shown_takes: list[page.Take] = []
        for number, nid in enumerate(nodes, start=1):
            d = plan.decisions[nid]
            record: dict[str, Any] = {}
            if d.key is not None:
                record = outputs.full_record(nid, d.key, "shot") if d.status == CACHED else {}
            clip = poster = None
            message = ""
            if d.status == CACHED and d.output is not None:
                status = page.RENDERED if nid in rendered_last else page.CACHED
                clip = clips.get(nid)
                poster = posters.get(d.output) if clip is not None else None
                usd = float(record.get("cost_usd") or 0.0)
                backend = str(record.get("backend") or first.pool)
                spend[backend] = round(spend.get(backend, 0.0) + usd, 4)
            elif nid in state.get("failed", {}):
                status, message = page.FAILED, shown(str(state["failed"][nid]))
            else:
                status, message = page.MISSING, "; ".join(d.reasons)
            shown_takes.append(
                page.Take(
                    node=nid,
                    number=number,
                    picked=loaded.shots[name].pick == number,
                    status=status,
                    pick_command=f"runner pick {where} {name} {number}",
                    message=message,
                    clip=clip,
                    poster=poster,
                    seconds_taken=_took(record),
                    cost_usd=record.get("cost_usd") if status != page.MISSING else None,
                )
            )
        shots.append(
            page.Shot(
                name=name,
                prompt=str(first.shot["prompt"]),
                backend=first.pool,
                model=str(first.shot["model"]),
                seconds=float(first.shot["seconds"]),
                in_cut=name in cut_shots,
                takes=shown_takes,
            )
        )

    film, note = _film(project, plan, folder, placed)
    return page.Page(
        title=graph.title,
        manifest=where,
        film=film,
        film_note=note,
        shots=shots,
        spend_by_backend=spend,
        last_run=_last_run(last),
    )


def _film(project: Project, plan: Plan, folder: Path, placed: set[Path]) -> tuple[str | None, str]:
    """The current cut when it is assembled, else the last published film, said so."""
    dest = folder / "film.mp4"
    d = plan.decisions["edit"]
    if d.status == CACHED and d.output is not None and project.outputs.have(d.output):
        _link(project.store.blob(d.output), dest)
        placed.add(dest)
        return "film.mp4", "The current cut."
    published = project.out_dir / f"{project.stem}.mp4"
    why = "; ".join(d.reasons) or "not assembled"
    if published.is_file():
        _link(published, dest, copy=True)  # out/ is the user's: a copy, never a shared inode
        placed.add(dest)
        return "film.mp4", f"An earlier cut: the current one is not assembled yet ({why})."
    return None, f"No cut is assembled yet ({why})."


def _posters(project: Project, clips: list[str]) -> dict[str, str]:
    """clip digest -> its poster frame under posters/, made once per clip digest (in batches)
    and kept in the cache; a clip ffmpeg cannot read gets none (it still plays)."""
    from runner.media import ffmpeg

    store = project.store
    folder = project.out_dir / "review" / "posters"

    def key(clip: str) -> str:
        return key_of(
            {"kind": "poster", "v": ffmpeg.POSTER_VERSION, "clip": clip, "width": POSTER_WIDTH}
        )

    made: dict[str, str] = {}
    for clip in clips:
        record = store.lookup(key(clip))
        if record is not None:
            made[clip] = str(record["output"])
    missing = sorted(set(clips) - set(made))
    if missing:
        with store.workdir() as work:
            pairs = [(store.blob(c), work / f"{c}.jpg") for c in missing]
            try:
                ffmpeg.make_posters(pairs, POSTER_WIDTH)
            except NodeFailed:  # one unreadable clip fails its batch: each alone, then
                for pair in pairs:
                    with contextlib.suppress(NodeFailed):
                        ffmpeg.make_posters([pair], POSTER_WIDTH)
            for clip, (_, jpeg) in zip(missing, pairs, strict=True):
                if jpeg.is_file():
                    made[clip] = store.put(jpeg)
                    store.record(key(clip), {"kind": "poster", "output": made[clip]})
    shown_posters: dict[str, str] = {}
    for clip, digest in made.items():
        dest = folder / f"{digest[:24]}.jpg"
        _link(store.blob(digest), dest)
        shown_posters[clip] = f"posters/{dest.name}"
    return shown_posters


def _link(src: Path, dest: Path, *, copy: bool = False) -> None:
    """dest holds src's bytes: a hard link where the filesystem allows, else a copy."""
    with contextlib.suppress(OSError):
        if os.path.samefile(src, dest) or (copy and _same_bytes(src, dest)):
            return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        if copy:
            raise OSError("copy asked for")
        os.link(src, tmp)
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _same_bytes(a: Path, b: Path) -> bool:
    sa, sb = a.stat(), b.stat()
    return sa.st_size == sb.st_size and sa.st_mtime_ns <= sb.st_mtime_ns


def _took(record: dict[str, Any]) -> float | None:
    try:
        started = datetime.fromisoformat(str(record["started"]))
        finished = datetime.fromisoformat(str(record["finished"]))
    except (KeyError, ValueError):
        return None
    return max(0.0, (finished - started).total_seconds())


def _last_run(last: dict[str, Any] | None) -> page.LastRun | None:
    if last is None:
        return None
    return page.LastRun(
        finished=str(last.get("finished", "")),
        rendered=[str(n) for n in last.get("rendered", [])],
        failed=[str(n) for n in last.get("failed", [])],
        skipped=[str(n) for n in last.get("skipped", [])],
        spend_usd=float(last.get("spend_usd") or 0.0),
    )


def _repo_path(path: Path) -> str:
    """The manifest as a command typed at the repository's root names it."""
    absolute = path.resolve()
    return absolute.relative_to(find_root(absolute.parent)).as_posix()
