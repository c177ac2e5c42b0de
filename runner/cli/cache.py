"""`runner cache push | pull | verify | gc`: move a film's renders between this cache and the
team's, check them, and drop what no lock in the repository references."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from runner.cache.remote import Remote
from runner.cli.gc import Doomed
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
    outputs = {e.key: e.output for e in project.lock.all_entries()}  # every profile's
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


@dataclass
class Finding:
    """Something in a cache that is not what its name says, and what --repair did about it."""

    where: str  # "local" or "remote"
    what: str  # "blob", "record", or "video" (hashes to its name, does not decode: --deep)
    name: str  # the digest or the node key
    fate: str = ""
    why: str = ""  # what is wrong, when the kind of finding does not say it all


def verify(project: Project, *, repair: bool = False, deep: bool = False) -> list[Finding]:
    """Every blob, here and on the remote, that does not hash to its name, and every action
    record here that cannot be read; with deep, every video here that does not decode from
    start to end. With repair: a corrupt blob is moved to quarantine/ and fetched again (the
    team's remote, else its provider by job id, at no cost) or left for the next render to
    make again; a damaged record is rebuilt from what is known."""
    store = project.store
    found = [
        Finding("local", "blob", d)
        for d in store.blob_digests()
        if file_digest(store.blob(d)) != d  # not verify_blob: that quarantines unasked
    ]
    if deep:
        corrupt = {f.name for f in found}
        found += [
            Finding("local", "video", d, why=why)
            for d in store.blob_digests()
            if d not in corrupt and (why := _undecodable(store.blob(d)))
        ]
    found += [Finding("local", "record", k) for k in store.record_keys() if store.record_damaged(k)]
    if project.remote is not None:
        found += [Finding("remote", "blob", d) for d in project.remote.verify()]
    if repair:
        nodes: dict[str, str] = {}
        if any(f.what == "record" for f in found):  # node key -> node id, to rebuild records
            plan = project.plan().decisions.values()
            nodes = {d.key: d.id for d in plan if d.key is not None}
            nodes |= {e.key: node for node, e in project.lock.entries.items()}
        for finding in found:
            finding.fate = _repair(project, finding, nodes)
    return found


def _undecodable(blob: Path) -> str:
    """Why a blob that is a video does not decode from start to end ("" when it does, or is
    no video: frames, provenance, audio)."""
    from runner.errors import NodeFailed
    from runner.media import ffmpeg, mp4

    if not mp4.is_mp4(blob):
        return ""
    try:
        ffmpeg.verify_video(blob, None, deep=True)
    except NodeFailed as err:
        return str(err).removeprefix(f"{blob}: ")
    return ""


def _repair(project: Project, finding: Finding, nodes: dict[str, str]) -> str:
    store, outputs = project.store, project.outputs
    if finding.what == "video":  # its bytes are the recorded ones: fetching them again is no cure
        return "left as it is; render its shot again on purpose (--rerender) if it is unusable"
    if finding.where == "remote":
        assert project.remote is not None
        if not store.verify_blob(finding.name):
            return "no good copy here; push one from a cache that has it"
        project.remote.replace_blob(finding.name, store)
        return "replaced by this cache's copy (the bad one moved to the remote's quarantine/)"
    if finding.what == "record":
        return _repair_record(project, finding.name, nodes.get(finding.name))
    store.quarantine(finding.name)
    if outputs.have(finding.name):
        return "moved to quarantine/; pulled again from the team's remote"
    for source, job_id, backend in _jobs_behind(project, finding.name):
        if _refetch(project, finding.name, job_id, backend):
            where = f"{backend} by the job id in {source}"
            return f"moved to quarantine/; fetched again from {where}, at no cost"
    return "moved to quarantine/; the next `runner render` that needs it makes it again"


def _jobs_behind(project: Project, digest: str) -> list[tuple[str, str, str]]:
    """(where it was found, job id, backend) of the provider jobs that made a blob."""
    jobs = [
        ("film.lock", e.job_id, e.backend)
        for e in project.lock.entries.values()
        if e.output == digest and e.job_id and e.backend
    ]
    for key in project.store.record_keys():
        record = project.store.read_record(key) or {}
        if record.get("output") == digest and record.get("job_id") and record.get("backend"):
            jobs.append(("its record", str(record["job_id"]), str(record["backend"])))
    return [(w, str(j), str(b)) for w, j, b in jobs]


def _refetch(project: Project, digest: str, job_id: str, backend_name: str) -> bool:
    """Download a job's video again; stored whatever it is (never lose a paid render), True
    when it is the blob we lost."""
    from runner.backends.base import BackendError

    try:
        backend = project.backends.get(backend_name)
    except (KeyError, UserError):
        return False
    with project.store.workdir() as work:
        dest = work / "video.mp4"
        try:
            received = backend.download(job_id, dest)
        except BackendError:
            return False
        return project.store.put(dest, received) == digest


def _repair_record(project: Project, key: str, node: str | None) -> str:
    if node is not None:
        kind = project.graph.nodes[node].kind if node in project.graph.nodes else ""
        record = project.outputs.full_record(node, key, kind)
        if record:
            source = record.get("repaired_from", "the team's remote")
            return f"rebuilt from {source}"
    project.store.quarantine_record(key)
    return "moved to quarantine/ (nothing knows it); the next render makes its node again"


def gc(project: Project, *, yes: bool, remote: bool, grace_days: float) -> dict[str, Doomed]:
    """What no lock of any profile, branch or commit names, older than the grace period:
    here, and on the team's remote only with `remote`; deleted only with yes=True."""
    from runner.cli import gc as rules

    root = find_root(project.film_dir.resolve())
    grace_s, now, store = grace_days * 86400, time.time(), project.store
    keep = rules.working_tree(root) | rules.in_use(store, grace_s, now)
    paid = rules.costs(store)
    local = rules.doomed(
        rules.local_blobs(store), keep | rules.history(root, every_ref=False), paid, grace_s, now
    )
    found = {"local": local}
    if remote:
        team = _remote(project)
        listed = {
            d: (int(info.get("size") or 0), rules.remote_time(info))
            for d, info in team.list_blobs().items()
        }
        found["remote"] = rules.doomed(
            listed, keep | rules.history(root, every_ref=True), paid, grace_s, now
        )
    if yes:
        rules.delete_local(store, local.blobs)
        for path in rules.old_quarantine(store, grace_s, now):
            path.unlink(missing_ok=True)
        if remote and found["remote"].blobs:
            _remote(project).delete(found["remote"].blobs)
    return found
