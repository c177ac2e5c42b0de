"""`runner export`: the cut as an editor's timeline, with the shots it uses as stable files.

The cut is the edit node's recipe (the builder's one reading of [edit], picks included) laid
out by assembly's own frame arithmetic (`assemble.spans`), so the timeline and the film cannot
disagree. Each clip's media is a hard link (else a copy) of its cached output, under
out/media/ named by shot and take: the names stay put while the bytes behind them change only
when a take does.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from runner.digest import file_digest
from runner.errors import UserError
from runner.film.graph import shot_name
from runner.film.plan import CACHED
from runner.media import assemble, timeline
from runner.run.project import Project


def export(project: Project, fmt: str) -> Path:
    """Write out/<stem><suffix> for `fmt` (a timeline.FORMATS key); returns its path."""
    graph = project.graph
    edit = graph.cut  # the node holding the cuts (under the sound layers: "picture")
    plan = project.plan()
    cuts = edit.recipe["cuts"]
    missing = []
    for cut in cuts:
        d = plan.decisions[edit.inputs[cut["clip"]]]
        if d.status != CACHED or d.output is None or not project.outputs.have(d.output):
            missing.append(d.id)
    if missing:
        raise UserError(
            f"{project.manifest_path}: the edit uses {', '.join(dict.fromkeys(missing))}, "
            f"not rendered yet; run `runner render {project.manifest_path}` first, then export"
        )
    clips, shots = [], []
    media = project.out_dir / "media"
    for cut in cuts:
        nid = edit.inputs[cut["clip"]]
        d = plan.decisions[nid]
        assert d.output is not None and d.key is not None
        node = graph.nodes[nid]
        blob = project.outputs.blob(d.output)
        clips.append(assemble.Clip(blob, d.output, cut["start"], cut["end"], cut["crossfade_in"]))
        shot = node.shot or {}
        name = shot_name(nid) if nid.count(".") == 1 else f"{shot_name(nid)} take {shot['take']}"
        file = media / f"{shot_name(nid)}.take{shot.get('take', 1)}{blob.suffix or '.mp4'}"
        _place(blob, d.output, file)
        meta = {
            "node": nid,
            "key": d.key,
            "prompt": shot.get("prompt"),
            "shot": shot_name(nid),
            "take": shot.get("take", 1),
            "backend": node.pool,
            "model": shot.get("model"),
            "sha256": d.output,
            "trim": {"start": cut["start"], "end": cut["end"]},
        }
        shots.append((name, file, meta))
    spans = assemble.spans(clips, width=graph.width, height=graph.height, fps=graph.fps)
    timed = [timeline.Shot(n, f, span, m) for (n, f, m), span in zip(shots, spans, strict=True)]
    film_meta = {
        "manifest": project.manifest_path.name,
        "manifest_sha256": project.manifest_sha256,
        "profile": project.profile,
        "size": f"{graph.width}x{graph.height}",
        "fps": graph.fps,
    }
    made = timeline.build(graph.title, graph.fps, timed, film_meta)
    if timeline.CUTS_ONLY[fmt]:
        dropped = timeline.cuts_only(made)
        if dropped:
            s = "s" if dropped != 1 else ""
            print(
                f"runner: warning: {fmt} holds cuts only: {dropped} crossfade{s} became a cut "
                "at the middle of the dissolve (the film's length is kept); export otio or "
                "fcp7xml to keep them",
                file=sys.stderr,
            )
    dest = project.out_dir / f"{project.stem}{timeline.FORMATS[fmt][1]}"
    timeline.write(made, fmt, dest)
    return dest


def _place(blob: Path, digest: str, dest: Path) -> None:
    """dest holds blob's bytes: kept when it already does, else a hard link, else a copy."""
    if dest.is_file():
        if os.path.samefile(dest, blob):
            return
        if dest.stat().st_size == blob.stat().st_size and file_digest(dest) == digest:
            return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(blob, tmp)
    except OSError:  # another filesystem, or links not allowed: a copy
        shutil.copyfile(blob, tmp)
    tmp.replace(dest)
