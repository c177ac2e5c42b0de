"""`runner cache push | pull | verify | gc`: move a film's renders between this cache and the
team's, check them, and drop what no lock in the repository references."""

from __future__ import annotations

import os
from pathlib import Path

from runner.cache.lock import HEADER, Lock
from runner.cache.remote import Remote
from runner.digest import file_digest
from runner.errors import UserError
from runner.film.plan import CACHED
from runner.run.project import Project, find_root


def _remote(project: Project) -> Remote:
    if project.remote is None:
        raise UserError(
            'no remote cache: set [tool.runner] remote = "s3://bucket/prefix" in '
            "pyproject.toml, or RUNNER_REMOTE"
        )
    return project.remote


def _film_outputs(project: Project) -> dict[str, str]:
    """node key -> output digest, for every node of the film this cache has made."""
    outputs = {e.key: e.output for e in project.lock.entries.values()}
    for d in project.plan().decisions.values():
        if d.status == CACHED and d.key is not None and d.output is not None:
            outputs.setdefault(d.key, d.output)
    return outputs


def push(project: Project) -> list[str]:
    """Upload the film's outputs and records the remote lacks; returns what was uploaded."""
    remote, store = _remote(project), project.store
    outputs = _film_outputs(project)
    for key in store.unpushed():  # renders whose push failed, of any film on this cache
        record = store.lookup(key)
        if record is not None:
            outputs.setdefault(key, str(record["output"]))
    pushed = []
    for key, digest in sorted(outputs.items()):
        if not store.has_blob(digest):
            continue
        if remote.push_blob(digest, store):
            pushed.append(digest)
        record = store.read_record(key)
        if record is not None:
            remote.push_record(key, record)
        store.mark_pushed(key)
    return pushed


def pull(project: Project) -> list[str]:
    """Download what film.lock names and this cache lacks; returns what was pulled."""
    remote, store = _remote(project), project.store
    pulled = []
    for key, digest in sorted((e.key, e.output) for e in project.lock.entries.values()):
        if store.read_record(key) is None:
            remote.pull_record(key, store)
        if not store.has_blob(digest) and remote.pull_blob(digest, store):
            pulled.append(digest)
    return pulled


def verify(project: Project) -> list[str]:
    """Blobs, here or on the remote, whose bytes do not hash to their name."""
    store = project.store
    digests = set(_film_outputs(project).values())
    bad = [
        f"local {d}"
        for d in sorted(digests)
        if store.has_blob(d) and file_digest(store.blob(d)) != d
    ]
    if project.remote is not None:
        bad += [f"remote {d}" for d in project.remote.verify(sorted(digests))]
    return bad


def referenced(root: Path) -> set[str]:
    """Every output digest any film.lock in the repository names."""
    marker = HEADER.split("{", 1)[0]
    keep: set[str] = set()
    for path in root.rglob("*.lock"):
        if ".cache" in path.parts or ".venv" in path.parts:
            continue
        try:
            if not path.read_text(encoding="utf-8").startswith(marker):
                continue
        except (OSError, UnicodeDecodeError):
            continue
        keep |= {e.output for e in Lock.read(path).entries.values()}
    return keep


def gc(project: Project, *, yes: bool) -> tuple[list[str], list[str]]:
    """Blobs no lock references, here and on the remote; deleted only with yes=True."""
    keep = referenced(find_root(project.film_dir.resolve()))
    local = [digest for digest in project.store.blob_digests() if digest not in keep]
    remote = []
    if project.remote is not None:
        remote = sorted(project.remote.list_digests() - keep)
    if yes:
        for digest in local:
            os.unlink(project.store.blob(digest))
        if project.remote is not None and remote:
            project.remote.delete(remote)
    return local, remote
