"""film.provenance.json: how every part of the film was made, and publishing the film.

The record is deterministic (no wall-clock time of this run, no absolute paths), so the same
inputs give the same record, the same digest in the MP4's metadata and the same film bytes.
It never holds a secret: it is built only from recipes and cache records, which hold none.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from runner import __version__
from runner.cache.store import write_atomic
from runner.digest import file_digest, key_of
from runner.errors import NodeFailed
from runner.film.plan import full_recipe, node_key
from runner.run.project import Project, find_root

PROVENANCE_VERSION = 1
TAG_VERSION = 2  # 2: a subtitle track keeps its language


def build(project: Project, digests: dict[str, str], git: dict[str, Any] | None) -> dict[str, Any]:
    graph = project.graph
    nodes: list[dict[str, Any]] = []
    spend = 0.0
    edit: dict[str, Any] = {}
    for node in graph.nodes.values():
        entry: dict[str, Any] = {
            "id": node.id,
            "kind": node.kind,
            "output_sha256": digests.get(node.id),
        }
        if node.id not in digests:  # outside the cut and not made (failed, skipped)
            nodes.append({**entry, "status": "not rendered"})
            continue
        if node.kind == "asset":
            assert node.path is not None
            entry["path"] = os.path.relpath(node.path, project.film_dir.resolve())
            nodes.append(entry)
            continue
        recipe = full_recipe(node, digests)
        key = node_key(node, digests)
        record = project.outputs.full_record(node.id, key, node.kind)
        entry["key"] = key
        entry["inputs"] = {
            role: {"node": dep, "sha256": digests[dep]} for role, dep in sorted(node.inputs.items())
        }
        if node.after:
            entry["after"] = [{"node": dep, "sha256": digests[dep]} for dep in node.after]
        if node.kind == "shot":
            request = dict(recipe["request"])
            entry["backend"] = recipe["backend"]
            entry["model"] = request.get("model")
            entry["prompt"] = request.pop("prompt", None)
            entry["parameters"] = request
            entry["job_id"] = record.get("job_id")
            entry["cost_usd"] = record.get("cost_usd", 0.0)
            spend += float(entry["cost_usd"] or 0.0)
            if record.get("trimmed"):  # an extension: what of the provider's video was cut
                entry["trimmed"] = record["trimmed"]
        elif node.kind in ("audio", "subtitles") or node.recipe.get("kind") == "mux":
            entry["parameters"] = {
                k: v for k, v in node.recipe.items() if k not in ("cuts", "kind", "v")
            }
            for name in ("argv", "measured", "gain_db", "ducked", "cues"):
                if name in record:
                    entry[name] = record[name]
        if node.kind in ("edit", "picture") and "cuts" in node.recipe:
            edit = {
                "ffmpeg": record.get("ffmpeg"),
                "argv": record.get("join_argv"),
                "segments": record.get("segments"),
                "cuts": node.recipe["cuts"],
                "clips": record.get("clips"),  # per cut: "copy" or "conform", and why
                "loudness_lufs": node.recipe["loudness_lufs"],
            }
        if not node.reproducible:  # when a paid render ran is provenance; when ffmpeg ran is not
            entry["started"] = record.get("started")
            entry["finished"] = record.get("finished")
        nodes.append(entry)
    return {
        "version": PROVENANCE_VERSION,
        "runner": __version__,
        "manifest": {"path": _repo_path(project.manifest_path), "sha256": project.manifest_sha256},
        "profile": project.profile,
        "git": git,
        "film": {
            "title": graph.title,
            "size": f"{graph.width}x{graph.height}",
            "fps": graph.fps,
            "edit_sha256": digests["edit"],
        },
        "spend_usd": round(spend, 4),
        "assembly": edit,
        "nodes": nodes,
    }


def publish(project: Project, digests: dict[str, str]) -> tuple[Path, Path]:
    """Write out/<stem>.provenance.json and out/<stem>.mp4 (the edit tagged with its digest)."""
    from runner.media import assemble

    store = project.store
    text = _record_text(project, digests)
    prov_sha = hashlib.sha256(text).hexdigest()
    out = project.out_dir
    film = out / f"{project.stem}.mp4"
    prov = out / f"{project.stem}.provenance.json"
    tag_key = key_of({"kind": "tag", "v": TAG_VERSION, "edit": digests["edit"], "prov": prov_sha})
    tagged = store.lookup(tag_key)
    digest = str(tagged["output"]) if tagged is not None else None
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(prov, text)
    _publish_subtitles(project, digests)
    if digest is not None and _published(film, digest):
        return film, prov  # a no-op render reads nothing more than this
    # About to copy it: a tagged film that does not hash to its name is quarantined, made again.
    if digest is None or not store.verify_blob(digest):
        if not project.outputs.have(digests["edit"], verify=True):
            raise NodeFailed(
                "edit: its output was corrupt and is moved to quarantine; run `runner render` "
                "again to assemble it again"
            )
        with store.workdir() as work:
            dest = work / "film.mp4"
            assemble.tag(store.blob(digests["edit"]), dest, f"runner-provenance-sha256:{prov_sha}")
            digest = store.put(dest)
        store.record(tag_key, {"kind": "tag", "output": digest})
    # A name of its own: two renders of one film may publish at the same moment.
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{film.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(store.blob(digest), tmp)  # a copy: editing out/ never touches it
        os.chmod(tmp, 0o644)
        os.replace(tmp, film)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return film, prov


def _publish_subtitles(project: Project, digests: dict[str, str]) -> None:
    """out/<stem>.srt and .vtt from the subtitles node; gone when the film has none."""
    from runner.media import soundtrack

    out = project.out_dir
    srt, vtt = out / f"{project.stem}.srt", out / f"{project.stem}.vtt"
    if "subtitles" not in digests:
        srt.unlink(missing_ok=True)
        vtt.unlink(missing_ok=True)
        return
    node = project.graph.nodes["subtitles"]
    if not project.outputs.have(digests["subtitles"], verify=True):
        raise NodeFailed(
            "subtitles: its output was corrupt and is moved to quarantine; run "
            "`runner render` again to make it again"
        )
    cues = soundtrack.read_cues(project.store.blob(digests["subtitles"]))
    fps = node.recipe["fps"]
    write_atomic(srt, soundtrack.srt(cues, fps).encode())
    write_atomic(vtt, soundtrack.vtt(cues, fps, node.recipe["language"]).encode())


def _published(film: Path, digest: str) -> bool:
    """out/ already holds exactly these bytes."""
    try:
        return film.is_file() and file_digest(film) == digest
    except OSError:
        return False


def _record_text(project: Project, digests: dict[str, str]) -> bytes:
    """The provenance record's bytes, cached under everything it is made from.

    Building it reads every node's cache record; a no-op render of a big film skips that.
    """
    store = project.store
    git = _git(project.manifest_path)
    parts = {
        nid: (node_key(node, digests) if node.kind != "asset" else digests[nid])
        if nid in digests
        else None  # not made in this run: a shot outside the cut that failed, say
        for nid, node in project.graph.nodes.items()
    }
    key = key_of(
        {
            "kind": "provenance",
            "v": PROVENANCE_VERSION,
            "runner": __version__,
            "manifest": [_repo_path(project.manifest_path), project.manifest_sha256],
            "profile": project.profile,
            "git": git,
            "nodes": parts,
        }
    )
    cached = store.lookup(key)
    if cached is not None:
        text = store.blob(cached["output"]).read_bytes()
        if hashlib.sha256(text).hexdigest() == cached["output"]:
            return text
        store.quarantine(cached["output"])  # corrupt: kept aside, built again
    record = build(project, digests, git)
    text = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
    with store.workdir() as work:
        (work / "provenance.json").write_bytes(text)
        digest = store.put(work / "provenance.json")
    store.record(key, {"kind": "provenance", "output": digest})
    return text


def _repo_path(path: Path) -> str:
    root = find_root(path.resolve().parent)
    return path.resolve().relative_to(root).as_posix()


def _git(manifest: Path) -> dict[str, Any] | None:
    folder = manifest.resolve().parent
    if not (find_root(folder) / ".git").exists():
        return None
    try:
        commit = _run_git(folder, "rev-parse", "HEAD")
        dirty = _run_git(folder, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)}


def _run_git(folder: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(folder), *args], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()
