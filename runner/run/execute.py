"""Making nodes: render shots on their backends, extract frames, assemble the edit.

`NodeJobs` is the scheduler's Jobs for real work: each job runs on a bounded pool of worker
threads and reports back through a queue; a job waiting on its provider is parked, holding no
thread. A node's key is computed when its inputs are known; its success is recorded only after
its output is verified and stored (doit's rule).
"""

from __future__ import annotations

import heapq
import itertools
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner import faults
from runner.backends.base import BackendError, Expired, JobStatus
from runner.backends.registry import Backends
from runner.cache.outputs import Outputs
from runner.cache.remote import Remote, RemoteError
from runner.cache.store import RECORD_VERSION, SegmentCache, Store
from runner.digest import Hashed
from runner.errors import DiskFull, NodeFailed, UserError
from runner.film.graph import Graph, Node, shot_name
from runner.film.plan import Plan, full_recipe, node_key
from runner.run.claim import Claims, Taken
from runner.run.job import PoolPause, SendAgain, ShotJob, Steps
from runner.run.journal import Journal, JournalError
from runner.run.project import asset_path
from runner.run.ratelimit import SendWindow
from runner.run.scheduler import RELEASED, Released, Retry

REFETCH_ATTEMPTS = 4  # downloads of a recorded job before giving up for this run (all free)
# Threads running nodes' work: downloads and verification, and local renders (one a core).
MAX_THREADS = max(16, os.cpu_count() or 1)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


WAKE_EVERY = 0.25  # seconds: the longest the scheduler's wait blocks the main thread


class NodeJobs:
    """Runs graph nodes in threads; completions come back through wait()."""

    def __init__(
        self,
        graph: Graph,
        plan: Plan,
        store: Store,
        workers: int,
        *,
        rerender_expired: bool = False,
        resend_unconfirmed: bool = False,
        gates: dict[str, SendWindow] | None = None,
        outputs: Outputs,
        force: frozenset[str] = frozenset(),
        remote: Remote | None = None,
        backends: Backends | None = None,
        film_dir: Path | None = None,
        manifest: Path | None = None,
        claims: Claims | None = None,
        watch: Callable[[str, JobStatus], None] | None = None,
    ) -> None:
        self.graph = graph
        self.film_dir = film_dir  # assets must resolve inside it whenever they are read
        self.manifest = manifest or Path("film.toml")
        self.backends = backends or Backends(scratch=store.tmp / "backends")
        self.store = store
        self.journal = Journal(store.journal_dir)
        self.rerender_expired = rerender_expired
        self.resend_unconfirmed = resend_unconfirmed
        self.gates = gates or {}
        self.outputs = outputs
        self.force = force
        self.remote = remote
        self.claims = claims  # paid renders claimed on the remote (runner/run/claim.py)
        self.watch = watch  # each poll's answer per node: the live view's progress
        self.digests: dict[str, str] = {
            d.id: d.output for d in plan.decisions.values() if d.output is not None
        }
        self.records: dict[str, dict[str, Any]] = {}
        self.recipes: dict[str, dict[str, Any]] = {}
        self.spent: dict[str, float] = {}  # node -> what this run's accepted creates cost
        self._spent_lock = threading.Lock()
        self._in_flight: set[str] = set()  # nodes with a paid job not yet stored
        self.stopping = threading.Event()  # set: no job sends another create
        # Completions; None only wakes the scheduler (see stop_sending). A SimpleQueue: its put
        # is reentrant, safe from the Ctrl-C handler, which runs on the main thread between
        # any two bytecodes, also while that thread is inside a get holding a Queue's mutex
        # (a Queue's put there waits on that mutex forever: a first Ctrl-C hung the run).
        self._done: queue.SimpleQueue[tuple[str, str | Retry | Released | None] | None] = (
            queue.SimpleQueue()
        )
        # Threads run nodes' work; a job waiting on its provider is parked and holds none, so
        # their number stays bounded whatever the pools' concurrency.
        threads = max(1, min(workers, MAX_THREADS))
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="node")
        self._parked = Parked()

    def close(self) -> None:
        self._parked.close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self.claims is not None:
            self.claims.close()

    def stop_sending(self) -> None:
        """No new creates from now on; jobs already sent are polled, downloaded and stored.
        Wakes the scheduler's wait so it stops starting nodes too. Called from the Ctrl-C
        handler: it takes no lock the interrupted main thread may hold (nothing waits on
        `stopping`, so its set never waits; the queue's put is reentrant)."""
        self.stopping.set()
        self._done.put(None)

    def paid_in_flight(self) -> int:
        """Jobs a provider has accepted (this run or a killed one) that are not stored yet.
        Read without the lock (len of a set is one step under the GIL): the Ctrl-C handler
        asks, and the main thread it interrupts may hold that lock."""
        return len(self._in_flight)

    def _paid(self, node: Node) -> None:
        with self._spent_lock:
            self.spent[node.id] = self.spent.get(node.id, 0.0) + node.cost_usd
            self._in_flight.add(node.id)

    def _refunded(self, node: Node) -> None:
        """The provider refunded the node's failed job: it no longer counts as spent."""
        with self._spent_lock:
            self.spent[node.id] = max(0.0, self.spent.get(node.id, 0.0) - node.cost_usd)

    def tidy_journal(self) -> None:
        """Clear entries whose output is already recorded here: the run that made it died
        between its record and its clear. Left alone they would reorder the node forever."""
        for key in self.journal.pending():
            if self.store.lookup(key) is not None:
                self.journal.clear(key)

    def push_pending(self) -> None:
        """Push what earlier runs stored but could not push (they said so and noted it)."""
        if self.remote is None:
            return
        for key in self.store.unpushed():
            record = self.store.lookup(key)
            if record is None:
                self.store.mark_pushed(key)  # nothing here to push any more
                continue
            self._push(key, record, str(record.get("node", key)))

    def recipe(self, node_id: str) -> tuple[str, dict[str, Any]]:
        node = self.graph.nodes[node_id]
        recipe = full_recipe(node, self.digests)
        self.recipes[node_id] = recipe
        return node_key(node, self.digests), recipe

    def journaled(self, node_id: str) -> bool:
        """A previous run sent this node's create (its key is known only once inputs are)."""
        node = self.graph.nodes[node_id]
        if node.kind != "shot" or any(dep not in self.digests for dep in node.deps):
            return False
        try:
            return self.journal.get(node_key(node, self.digests)) is not None
        except JournalError:
            return True  # first, so its node reports the problem early

    def fresh(self, node_id: str) -> bool:
        """True when the node's output is already cached, now that its inputs are known."""
        key, _ = self.recipe(node_id)
        return node_id not in self.force and self._adopt(node_id, key)

    def _adopt(self, node_id: str, key: str) -> bool:
        """Take the node's output from the lock, this cache or the team's, if any has it."""
        output = self.outputs.locate(node_id, key)
        if output is None or not self.outputs.have(output):
            return False
        try:
            journaled = (self.journal.get(key) or {}).get("job_id")
        except JournalError:
            journaled = None
        kind = self.graph.nodes[node_id].kind
        record = self.outputs.full_record(
            node_id, key, kind, output=output, job_id=str(journaled) if journaled else None
        )
        self.digests[node_id] = output
        self.records[node_id] = {**record, "key": key, "output": output}
        return True

    def have(self, node_id: str) -> bool:
        """The node's output is (or can be made) local."""
        return node_id in self.digests and self.outputs.have(self.digests[node_id])

    def start(self, node_id: str) -> None:
        self._pool.submit(self._step, node_id, self._steps(node_id))

    def wait(self, timeout: float | None) -> tuple[str, str | Retry | Released | None] | None:
        """The next completion, or None after `timeout` (or sooner: a wake-up). The main
        thread never blocks longer than WAKE_EVERY: a Ctrl-C the kernel delivers to another
        thread only interrupts the main thread's wait when the wait ends, and the handler
        must run at once (reproduced: a first Ctrl-C with 60 s jobs in flight was not heard)."""
        timeout = WAKE_EVERY if timeout is None else min(timeout, WAKE_EVERY)
        try:
            return self._done.get(timeout=timeout)
        except queue.Empty:
            return None

    def _step(self, node_id: str, steps: Steps[str | Retry | None]) -> None:
        """Run a node until it waits (it is parked, its thread freed) or ends (reported)."""
        try:
            wait = next(steps)
        except StopIteration as end:
            self._done.put((node_id, end.value))
            return
        self._parked.after(wait, lambda: self._pool.submit(self._step, node_id, steps))

    def _steps(self, node_id: str) -> Steps[str | Retry | None]:
        """Make a node; returns None on success, else what went wrong, for the scheduler."""
        result: str | Retry | None = None
        try:
            yield from self._make(self.graph.nodes[node_id])
        except (NodeFailed, UserError, RemoteError) as err:  # e.g. a trim past a clip's end
            result = str(err)
        except PoolPause as err:
            result = Retry(str(err), err.after)
        except SendAgain as err:
            result = Retry(str(err), limited=False)
        except Exception as err:  # a bug or an environment problem: report, don't hang
            full = DiskFull.of(err, self.store.root)
            if full is not None:
                result = str(full)
            else:
                result = f"internal error: {traceback.format_exception_only(err)[-1].strip()}"
        with self._spent_lock:
            self._in_flight.discard(node_id)
        return result

    def _make(self, node: Node) -> Steps[None]:
        key, recipe = self.recipe(node.id)
        with self.store.node_lock(key):  # another runner on this cache may be making it
            if node.id not in self.force:
                if self._adopt(node.id, key):
                    self.journal.clear(key)  # a run that died after its record left it
                    return
                # A paid, unrepeatable render is never made again silently: fetch it again
                # from its provider by job id (free), else say how to pay for it on purpose.
                # Local work and previz are deterministic: making them again gives the bytes.
                if not node.reproducible:
                    known = self.outputs.known(node.id, key)
                    if known is not None:
                        yield from self._refetch(node, key, known.output, known.job_id)
                        return
                    if self.claims is not None and node.kind == "shot":
                        yield from self._make_claimed(node, key, recipe, self.claims)
                        return
            yield from self._make_locked(node, key, recipe)

    def _make_claimed(
        self, node: Node, key: str, recipe: dict[str, Any], claims: Claims
    ) -> Steps[None]:
        """A paid render with a team cache: claimed on the remote first, so that a runner on
        another machine waits for this one's output instead of paying for the node too."""
        try:
            taken = claims.acquire(
                key, node.id, lambda: self._adopt(node.id, key), self.stopping.is_set
            )
        except RemoteError as err:  # the remote is down: work as without one, and say so
            print(f"runner: warning: {node.id} rendered unclaimed: {err}", file=sys.stderr)
            yield from self._make_locked(node, key, recipe)
            return
        if taken is None:  # another runner made it and pushed it: adopted
            self.journal.clear(key)
            return
        pushed = False
        try:
            self._resume_claimed(node, key, taken)
            pushed = yield from self._make_locked(
                node, key, recipe, lambda job: claims.note_job(key, job)
            )
        finally:
            if pushed or not self._paid_here(key):
                claims.release(key)
            else:  # a paid job not pushed yet: the claim expires and its taker resumes the job
                claims.abandon(key)

    def _resume_claimed(self, node: Node, key: str, taken: Taken) -> None:
        """A claim taken over from a dead runner: journal the job it names (resumed, free), or
        that a create may have left when it was made (reconciled with the provider first)."""
        previous = taken.previous
        if previous is None or self.journal.get(key) is not None:
            return  # a claim of our own, or our own journal already names the job
        job_id = previous.get("job_id")
        if isinstance(job_id, str) and job_id:
            self.journal.submitted(key, job_id)
            return
        claimed_at = previous.get("claimed_at")
        sent_at = float(claimed_at) if isinstance(claimed_at, int | float) else 0.0
        self.journal.sending(key, node.id, node.pool, sent_at=sent_at)

    def _paid_here(self, key: str) -> bool:
        """A paid job of this key is journaled here, or its output is recorded only here."""
        try:
            return self.journal.get(key) is not None or self.store.read_record(key) is not None
        except JournalError:
            return True

    def _refetch(self, node: Node, key: str, output: str, job_id: str | None) -> Steps[None]:
        """Download a paid render again by its job id; its bytes must be the recorded ones."""
        from runner.media import ffmpeg

        again = f"render it again on purpose (and pay again) with --rerender {shot_name(node.id)}"
        if job_id is None:
            raise NodeFailed(
                f"{node.id}: film.lock names its output, but no cache has it and no provider "
                f"job id is recorded; run `runner cache pull`, or {again}"
            )
        backend = self.backends.get(node.pool)
        problem = ""
        with self.store.workdir() as work:
            dest = work / "video.mp4"
            received: Hashed | None = None
            for attempt in range(REFETCH_ATTEMPTS):
                try:
                    received = backend.download(job_id, dest)
                    ffmpeg.verify_video(dest, None)  # whole, not cut short
                    break
                except Expired as err:
                    raise NodeFailed(
                        f"{node.id}: no cache has its output and {backend.name} no longer has "
                        f"job {job_id} ({err}); {again}"
                    ) from None
                except (BackendError, NodeFailed) as err:
                    problem = str(err)
                    dest.unlink(missing_ok=True)
                    yield min(4.0, 0.5 * 2**attempt)
            else:
                raise NodeFailed(
                    f"{node.id}: fetching job {job_id} again from {backend.name} failed "
                    f"({problem}); run again to retry (free)"
                )
            if "extend" in node.inputs:  # cut as when it was made: the same bytes
                cut = self._cut_repeat(node, dest, self._input(node, "extend"), work, {})
                received = received if cut == dest else None  # a cut is other bytes
                dest = cut
            # Kept whatever it is: a paid render is never lost.
            digest = self.store.put(dest, received)
        if digest != output:
            raise NodeFailed(
                f"{node.id}: {backend.name} served job {job_id} with other bytes than the "
                f"recorded ones (sha256 {digest[:12]}, recorded {output[:12]}); they are kept "
                f"in the cache; run `runner cache pull` for the recorded bytes, or {again}"
            )
        record = self.store.read_record(key) or {
            "node": node.id,
            "kind": node.kind,
            "job_id": job_id,
            "backend": node.pool,
            "model": (node.shot or {}).get("model"),
            "cost_usd": node.cost_usd,
        }
        record = {**record, "output": digest}
        self.store.record(key, record)
        self.records[node.id] = {**record, "key": key}
        self.digests[node.id] = digest
        self.journal.clear(key)
        if self.remote is not None:
            self.store.mark_unpushed(key)
            self._push(key, record, node.id)

    def _make_locked(
        self,
        node: Node,
        key: str,
        recipe: dict[str, Any],
        on_job: Callable[[str], None] = lambda _job_id: None,
    ) -> Steps[bool]:
        """Make, store and record the node; True when it is on the team's remote too."""
        started = time.monotonic()
        record: dict[str, Any] = {"node": node.id, "kind": node.kind, "started": _now()}
        hashed: Hashed | None = None  # a download's digest, taken as it arrived
        with self.store.workdir() as work:
            if node.kind == "shot":
                output, hashed = yield from self._shot(node, key, work, record, on_job)
            elif node.kind == "frame":
                output = self._frame(node, work)
            elif node.kind == "edit" and node.recipe["kind"] == "mux":
                output = self._mux(node, work, record)
            elif node.kind in ("edit", "picture"):
                output = self._edit(node, work, record)
            elif node.kind == "audio" and node.recipe["kind"] == "music":
                output = self._music(node, work, record)
            elif node.kind == "audio":
                output = self._mix(node, work, record)
            elif node.kind == "subtitles":
                output = self._subtitles(node, work, record)
            else:
                raise NodeFailed(f"{node.id}: nothing to make for a {node.kind} node")
            digest = self.store.put(output, hashed)
            faults.point("stored")
        record.update(
            output=digest,
            finished=_now(),
            seconds_taken=round(time.monotonic() - started, 3),
            recipe=recipe,
        )
        self.store.record(key, record)
        faults.point("recorded")
        self.records[node.id] = {**record, "key": key}
        self.digests[node.id] = digest
        # The journal lets go of the job only now that a record names its output; with a
        # team cache, only once the push is noted as pending (see runner/journal.py).
        if self.remote is not None:
            self.store.mark_unpushed(key)
        if node.kind == "shot":
            self.journal.clear(key)
            faults.point("cleared")
        if self.remote is not None:  # at once: a crash must never lose a paid render
            return self._push(key, record, node.id)
        return False

    def _push(self, key: str, record: dict[str, Any], node_id: str) -> bool:
        """Push a blob and its record; on failure it stays pending for the next run."""
        assert self.remote is not None
        try:
            self.remote.push_blob(str(record["output"]), self.store)
            self.remote.push_record(key, {**record, "version": RECORD_VERSION, "key": key})
        except RemoteError as err:
            print(
                f"runner: warning: {node_id} is cached here but not pushed: {err}; the next "
                "render or `runner cache push` pushes it",
                file=sys.stderr,
            )
            return False
        self.store.mark_pushed(key)
        return True

    def _input(self, node: Node, role: str) -> Path:
        upstream = self.graph.nodes[node.inputs[role]]
        if upstream.kind == "asset":  # assets live in the film's folder, not the cache
            assert upstream.path is not None
            if self.film_dir is None:
                return Path(upstream.path)
            return asset_path(upstream, self.film_dir, self.manifest)
        digest = self.digests[upstream.id]
        if not self.outputs.have(digest, verify=True):  # read now: its bytes must be its name
            raise NodeFailed(
                f"{node.id}: the output of {upstream.id} is in no cache (or was corrupt and "
                "moved to quarantine); run again to make or fetch it again, at no cost"
            )
        return self.store.blob(digest)

    def _shot(
        self,
        node: Node,
        key: str,
        work: Path,
        record: dict[str, Any],
        on_job: Callable[[str], None],
    ) -> Steps[tuple[Path, Hashed | None]]:
        from runner.media import ffmpeg

        backend = self.backends.get(node.pool)
        image = self._input(node, "image") if "image" in node.inputs else None
        refs = tuple(self._input(node, r) for r in sorted(node.inputs) if r.startswith("ref"))
        extra: dict[str, Any] = {}
        if "end_image" in node.inputs:
            extra["end_image"] = self._input(node, "end_image")
        if "extend" in node.inputs:
            extra["extend_video"] = self._input(node, "extend")
            extra["extend_job"] = self._job_id(node.inputs["extend"], "extend", needed=False)
        request = node.request(image, refs, **extra)
        record.update(backend=node.pool, model=request.model)
        # Hosted models round lengths; allow a frame and a little more, never a wrong shot.
        tolerance = max(0.25, 2.0 / request.fps)
        dest = work / "video.mp4"
        lengths = [request.seconds]
        if request.extend_video is not None:  # a provider may give back source + new part
            lengths.append(ffmpeg.probe(request.extend_video).duration + request.seconds)

        def verify(path: Path) -> object:
            info = ffmpeg.verify_video(path, None)
            if all(abs(info.duration - length) > tolerance for length in lengths):
                expected = " or ".join(f"{length:.3f}" for length in lengths)
                raise NodeFailed(
                    f"{path}: lasts {info.duration:.3f} s, expected {expected} s (±{tolerance} s)"
                )
            return info

        def paid(job_id: str) -> None:
            self._paid(node)
            on_job(job_id)  # named in the node's claim at once

        job = ShotJob(
            node.id,
            key,
            backend,
            request,
            self.journal,
            verify=verify,
            rerender_expired=self.rerender_expired,
            resend_unconfirmed=self.resend_unconfirmed,
            gate=self.gates.get(node.pool, SendWindow(None)),
            on_provider_done=lambda: self._done.put((node.id, RELEASED)),
            on_paid=paid,
            on_refunded=lambda: self._refunded(node),
            may_send=lambda: not self.stopping.is_set(),
            remix_source=self._job_id(node.inputs["remix"]) if "remix" in node.inputs else None,
            on_status=lambda status: self.watch(node.id, status) if self.watch else None,
        )
        resumed = (self.journal.get(key) or {}).get("job_id")
        if resumed:
            with self._spent_lock:  # a killed run's job, resumed: paid, in flight
                self._in_flight.add(node.id)
            on_job(str(resumed))
        record["job_id"] = yield from job.steps(dest)
        record["cost_usd"] = node.cost_usd
        if request.extend_video is not None:
            cut = self._cut_repeat(node, dest, request.extend_video, work, record)
            if cut != dest:
                return cut, None  # other bytes than the download: hashed when stored
        return dest, job.received

    def _cut_repeat(
        self, node: Node, video: Path, source: Path, work: Path, record: dict[str, Any]
    ) -> Path:
        """An extension's output is only its new part: what the provider gave back of the
        source it continued (Veo returns source + extension in one file) is cut away, and
        the record says how much. Deterministic, so a video fetched again cuts the same."""
        from runner.media import ffmpeg

        assert node.shot is not None
        seconds, fps = float(node.shot["seconds"]), int(node.shot["fps"])
        tolerance = max(0.25, 2.0 / fps)
        if ffmpeg.probe(video).duration <= seconds + tolerance:
            return video  # the provider sent the new part alone
        repeated = ffmpeg.probe(source).duration
        out = work / "extension.mp4"
        ffmpeg.run(ffmpeg.trim_head_args(source=str(video), seconds=repeated, out=str(out)))
        ffmpeg.verify_video(out, seconds, tolerance=tolerance)
        record["trimmed"] = {
            "head_seconds": round(repeated, 3),
            "source": node.inputs["extend"],
            "why": "the provider's video repeats the source it extends",
        }
        return out

    def _job_id(self, node_id: str, what: str = "remix", *, needed: bool = True) -> str | None:
        """The provider's job id behind a shot's cached output (what a remix edits, or an
        extension continues); None when none is recorded and it is not `needed`."""
        record = self.records.get(node_id) or self.store.lookup(
            node_key(self.graph.nodes[node_id], self.digests)
        )
        if not record or not record.get("job_id"):
            if not needed:
                return None
            raise NodeFailed(f"{node_id}: no provider job id is recorded for it; cannot {what} it")
        return str(record["job_id"])

    def _frame(self, node: Node, work: Path) -> Path:
        from runner.media import ffmpeg

        dest = work / "frame.png"
        if node.recipe.get("frame") == "first":
            ffmpeg.extract_first_frame(self._input(node, "video"), dest)
        else:
            ffmpeg.extract_last_frame(self._input(node, "video"), dest)
        if not dest.is_file() or dest.stat().st_size == 0:
            raise NodeFailed(f"{node.id}: ffmpeg wrote no frame")
        return dest

    def _edit(self, node: Node, work: Path, record: dict[str, Any]) -> Path:
        from runner.media import assemble

        clips = [
            assemble.Clip(
                path=self._input(node, cut["clip"]),
                digest=self.digests[node.inputs[cut["clip"]]],
                start=cut["start"],
                end=cut["end"],
                crossfade_in=cut["crossfade_in"],
            )
            for cut in node.recipe["cuts"]
        ]
        dest = work / "film.mp4"
        result = assemble.assemble(
            clips,
            width=node.recipe["width"],
            height=node.recipe["height"],
            fps=node.recipe["fps"],
            loudness_lufs=node.recipe["loudness_lufs"],
            dest=dest,
            cache=SegmentCache(self.store),
            workdir=work,
            lossless_audio=node.recipe.get("audio") == "alac",
        )
        record.update(
            ffmpeg=result.ffmpeg_version,
            join_argv=result.join_argv,
            segments=result.segments,
            clips=result.clips,
        )
        return dest

    # --- sound and words over the cut (runner/media/soundtrack.py) -------------------------

    def _placed(self, node: Node) -> list[Any]:
        """Where each cut of the film sits, from its clips as the assembly cuts them."""
        from runner.media import assemble, soundtrack

        clips = [
            assemble.Clip(
                path=self._input(node, cut["clip"]),
                digest=self.digests[node.inputs[cut["clip"]]],
                start=cut["start"],
                end=cut["end"],
                crossfade_in=cut["crossfade_in"],
            )
            for cut in node.recipe["cuts"]
        ]
        return soundtrack.placement(clips, node.recipe["fps"])

    def _voices(self, node: Node, placed: list[Any]) -> list[tuple[Path, int, float]]:
        """Each voice-over: its file, the film frame it starts at, and how long it runs (s)."""
        from runner.media import ffmpeg, soundtrack

        fps = node.recipe["fps"]
        out = []
        for vo in node.recipe["voiceovers"]:
            frame = soundtrack.voice_frame(placed[vo["cut"]], vo["at"], fps)
            path = self._input(node, vo["input"])
            info = ffmpeg.probe(path)
            if not info.has_audio:
                raise NodeFailed(f"{node.id}: {node.inputs[vo['input']]} has no audio stream")
            out.append((path, frame, info.duration))
        return out

    def _music(self, node: Node, work: Path, record: dict[str, Any]) -> Path:
        from runner.media import ffmpeg, soundtrack

        recipe, fps = node.recipe, node.recipe["fps"]
        placed = self._placed(node)
        spans = []
        for line in recipe["spoken"]:
            frames = soundtrack.span(placed[line["cut"]], line["at"], line["until"], fps)
            if frames is not None:
                spans.append(soundtrack.seconds(frames, fps))
        spans += [(f / fps, f / fps + length) for _, f, length in self._voices(node, placed)]
        music = self._input(node, "music")
        if not ffmpeg.probe(music).has_audio:
            raise NodeFailed(f"{node.id}: {node.inputs['music']} has no audio stream")
        dest = work / "music.wav"
        record["argv"] = soundtrack.music_stem(
            music,
            fps=fps,
            frames=soundtrack.film_frames(placed),
            start=recipe["start"],
            fade=recipe["fade"],
            gain_db=recipe["gain_db"],
            duck_db=recipe["duck_db"],
            spans=sorted(spans),
            dest=dest,
        )
        record["ducked"] = [[round(a, 4), round(b, 4)] for a, b in sorted(spans)]
        return dest

    def _mix(self, node: Node, work: Path, record: dict[str, Any]) -> Path:
        from runner.media import ffmpeg, soundtrack

        recipe, fps = node.recipe, node.recipe["fps"]
        placed = self._placed(node)
        voices, ducks = [], []
        for vo, (path, frame, length) in zip(
            recipe["voiceovers"], self._voices(node, placed), strict=True
        ):
            voices.append(ffmpeg.Voice(str(path), soundtrack.samples(frame, fps)))
            ducks.append((frame / fps, frame / fps + length, float(vo["duck_db"])))
        dest = work / "mix.m4a"
        result = soundtrack.mix(
            self._input(node, "picture"),
            self._input(node, "music") if "music" in node.inputs else None,
            voices,
            ducks,
            frames=soundtrack.film_frames(placed),
            fps=fps,
            loudness_lufs=recipe["loudness_lufs"],
            dest=dest,
            workdir=work,
        )
        record.update(
            argv=result.argv,
            measured={
                "integrated_lufs": result.integrated_lufs,
                "true_peak": result.true_peak_dbtp,
            },
            gain_db=result.gain_db,
        )
        return dest

    def _subtitles(self, node: Node, work: Path, record: dict[str, Any]) -> Path:
        import json

        from runner.media import soundtrack

        fps = node.recipe["fps"]
        cues = soundtrack.cues(self._placed(node), node.recipe["lines"], fps)
        dest = work / "cues.json"
        data = {
            "version": 1,
            "fps": fps,
            "language": node.recipe["language"],
            "cues": [
                {"first": c.first, "last": c.last, "text": c.text, "who": c.who} for c in cues
            ],
        }
        dest.write_text(json.dumps(data, sort_keys=True, indent=1) + "\n", encoding="utf-8")
        record["cues"] = len(cues)
        return dest

    def _mux(self, node: Node, work: Path, record: dict[str, Any]) -> Path:
        from runner.media import soundtrack

        recipe = node.recipe
        srt = None
        if "subtitles" in node.inputs:
            srt = work / "cues.srt"
            cues = soundtrack.read_cues(self._input(node, "subtitles"))
            srt.write_text(soundtrack.srt(cues, recipe["fps"]), encoding="utf-8")
        picture = self._input(node, "picture")
        dest = work / "film.mp4"
        record["argv"] = soundtrack.mux(
            picture,
            self._input(node, "audio") if "audio" in node.inputs else None,
            srt,
            language=recipe["language"],
            burn=recipe["subtitles"] == "burn",
            fps=recipe["fps"],
            height=recipe["height"],
            dest=dest,
            workdir=work,
        )
        return dest


class Parked:
    """Nodes waiting (on a provider, or to retry), each handed back to the thread pool when
    its wait is over: one thread for all of them, however many there are."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[], object]]] = []
        self._order = itertools.count()  # equal times keep their order; fns never compare
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def after(self, seconds: float, resume: Callable[[], object]) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="parked", daemon=True)
                self._thread.start()
            due = time.monotonic() + max(0.0, seconds)
            heapq.heappush(self._due, (due, next(self._order), resume))
            self._cond.notify()

    def close(self) -> None:
        """Stop waking nodes (the run is over: nothing is parked, or it is being dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _, _, resume = heapq.heappop(self._due)
            with suppress(RuntimeError):  # the pool shut down: the run is over
                resume()
