"""The local cache: content-addressed blobs, an action cache and per-film state.

Layout under the cache root (`.cache/` by default):
    cas/ab/abcdef...        blobs by sha256, read-only once written
    actions/ab/<key>.json   node key -> result record (output digest, job id, cost, times)
    state/<film>.json       last recipes and failures per film, for `plan` reasons and `status`
    state/sends/<pool>.json when each recent create was sent (the provider's rate window)
    journal/<key>.json      creates sent and not yet stored (runner/run/journal.py)
    CACHE.json              the format of this layout
    tmp/                    work in progress; renamed into place only when complete
    tmp/run-<pid>-<r>/      one run's working folders; tmp/run-<pid>-<r>.lock held while it runs
    pending-push/<key>.json outputs recorded here that the team's cache does not have yet
    quarantine/<sha256>.<t> blobs that did not hash to their name, kept as evidence

Every write goes to a temporary file in the same filesystem and is renamed into place, so a
crash at any moment leaves either the old file or the complete new one, never half of one.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from runner.digest import Hashed, file_digest, is_sha256, stream_digest
from runner.errors import DiskFull, UserError

RECORD_VERSION = 1
CACHE_VERSION = 1  # the layout below; CACHE.json at the root says which
_OWN_TMP: dict[str, Path] = {}  # tmp/ -> this process's folder in it
_OWN_LOCKS: list[int] = []  # their lock files, open (and locked) until the process ends
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, data: bytes) -> None:
    """Write data to path via a flushed temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; files should look like any other
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        full = DiskFull.of(err, path.parent)
        if full is not None:
            raise full from None
        raise


def write_json(path: Path, value: Any) -> None:
    write_atomic(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any | None:
    """The JSON at path, or None when it is missing or unreadable (treated as not cached)."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def keys_in(folder: Path) -> list[str]:
    """The node keys a folder of `<key>.json` files names; a file whose name is not a digest
    is not ours and names nothing (it never becomes a path)."""
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json") if is_sha256(p.stem))


def checked_record(
    record: Any, key: str, where: object, error: type[Exception] = UserError
) -> dict[str, Any] | None:
    """An action record as read from anywhere (this cache, the team's): the record when it is
    one of `key`'s in this format, None when it is unreadable or another's, and `error` when a
    newer runner wrote it (its output may be a paid render: never read it as "not cached")."""
    if not isinstance(record, dict):
        return None
    version = record.get("version")
    if isinstance(version, int) and version > RECORD_VERSION:
        raise error(
            f"{where}: a cache record written by a newer runner (format {version}; this one "
            f"reads {RECORD_VERSION}); upgrade runner"
        )
    if version != RECORD_VERSION or record.get("key", key) != key:
        return None
    return record if is_sha256(record.get("output")) else None


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"
        self._cas = os.path.join(root, "cas")
        self._verified: set[str] = set()  # blobs this process hashed (or wrote) and found whole
        self._guard = threading.Lock()

    def check_format(self) -> None:
        """Mark the cache with its format on first use; refuse one a newer runner made."""
        marker = self.root / "CACHE.json"
        found = read_json(marker)
        version = found.get("version") if isinstance(found, dict) else None
        if isinstance(version, int) and version > CACHE_VERSION:
            raise UserError(
                f"{self.root}: a cache in format {version}, made by a newer runner (this one "
                f"reads format {CACHE_VERSION}); upgrade runner, or use another --cache-dir"
            )
        if version != CACHE_VERSION:
            write_json(marker, {"version": CACHE_VERSION, "what": "runner's render cache"})

    def blob(self, digest: str) -> Path:
        if not is_sha256(digest):  # the last guard: a digest read from disk is never a path
            raise ValueError(f"not a sha256 digest: {digest[:80]!r}")
        return self.root / "cas" / digest[:2] / digest

    def has_blob(self, digest: str) -> bool:
        # String paths: this runs once per node on every plan, and pathlib costs 10x.
        if not is_sha256(digest):
            return False
        return os.path.isfile(os.path.join(self._cas, digest[:2], digest))

    def put(self, src: Path, hashed: Hashed | None = None) -> str:
        """Move a finished file into the store (a rename, never a copy); returns its digest.
        src must be under tmp/. `hashed`: its digest and length, taken as its bytes were
        written (a download), so it is not read again; used only while its length still holds.

        A blob already there is kept only if it hashes to its name: a corrupt one is moved to
        quarantine/ and replaced, so making a node again heals it."""
        with open(src, "rb") as f:
            if hashed is not None and is_sha256(hashed.digest):
                same = os.fstat(f.fileno()).st_size == hashed.size
                digest = hashed.digest if same else stream_digest(f)
            else:
                digest = stream_digest(f)
            dest = self.blob(digest)
            if dest.is_file() and self.verify_blob(digest):
                src.unlink()
                return digest
            os.fsync(f.fileno())  # its bytes reach the disk before its name does
        dest.parent.mkdir(parents=True, exist_ok=True)
        src.chmod(0o444)  # blobs are immutable: a stray write must not corrupt the cache
        os.replace(src, dest)
        with self._guard:
            self._verified.add(digest)
        return digest

    def verify_blob(self, digest: str) -> bool:
        """True when the blob is here and hashes to its name. A blob that does not is moved to
        quarantine/ (False). Each blob is hashed once per process: reading it as an input to
        local work costs one hash, next to the decoding that follows."""
        with self._guard:
            if digest in self._verified and self.has_blob(digest):
                return True
        try:
            whole = file_digest(self.blob(digest)) == digest
        except (FileNotFoundError, IsADirectoryError):
            return False
        if not whole:
            self.quarantine(digest)
            return False
        with self._guard:
            self._verified.add(digest)
        return True

    def quarantine(self, digest: str) -> Path | None:
        """Move a blob aside to quarantine/ (not deleted: it may be evidence); its path there,
        or None when it was already gone."""
        dest = self.root / "quarantine" / f"{digest}.{time.time_ns()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with self._guard:
            self._verified.discard(digest)
            try:
                os.replace(self.blob(digest), dest)
            except FileNotFoundError:
                return None
        return dest

    def quarantined(self) -> list[Path]:
        folder = self.root / "quarantine"
        return sorted(folder.iterdir()) if folder.is_dir() else []

    def _action_path(self, key: str) -> Path:
        return self.root / "actions" / key[:2] / f"{key}.json"

    def record_damaged(self, key: str) -> bool:
        """A record file is there but is no readable record of key (truncated, say)."""
        return self._action_path(key).is_file() and self.read_record(key) is None

    def read_record(self, key: str) -> dict[str, Any] | None:
        """The record for key, whether or not its output is here (provenance reads these)."""
        record = checked_record(read_json(self._action_path(key)), key, self._action_path(key))
        if record is None:
            return None  # hand-edited or corrupt: not a record of this key's output
        return record

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The record for key, only when its output blob is still present."""
        record = self.read_record(key)
        if record is None or not self.has_blob(str(record.get("output", ""))):
            return None  # a record whose file is gone does not count as done
        return record

    def record(self, key: str, record: dict[str, Any]) -> None:
        """Save a result; call only after the output is verified and stored."""
        write_json(self._action_path(key), {**record, "version": RECORD_VERSION, "key": key})

    @contextmanager
    def node_lock(self, key: str) -> Iterator[None]:
        """Hold the lock of one node key: two runners on one cache never make a node twice.

        An flock: the kernel releases it when its holder dies, however it dies.
        """
        path = self.root / "locks" / key[:2] / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # -- outputs stored here but not yet in the team's cache --

    def mark_unpushed(self, key: str) -> None:
        """Remember that key's output must still reach the remote (before the journal lets go
        of the job: the output is then never on one disk without the runner knowing)."""
        write_json(self.root / "pending-push" / f"{key}.json", {"version": RECORD_VERSION})

    def mark_pushed(self, key: str) -> None:
        with suppress(FileNotFoundError):
            (self.root / "pending-push" / f"{key}.json").unlink()

    def unpushed(self) -> list[str]:
        """Keys whose output and record a run stored but could not push."""
        return keys_in(self.root / "pending-push")

    # -- scratch space --

    @contextmanager
    def workdir(self) -> Iterator[Path]:
        """A scratch folder in the cache's filesystem, removed afterwards.

        It lives under this process's own folder in tmp/, whose lock the process holds while
        it runs: a killed run's folders are removed by the next one (`sweep_tmp`)."""
        path = Path(tempfile.mkdtemp(dir=self.own_tmp()))
        try:
            yield path
        finally:
            _rmtree(path)

    def own_tmp(self) -> Path:
        """tmp/run-<pid>-<random>/, made once per process, its .lock held until exit.

        The lock is taken before the folder exists, so a sweeper that wins the race for a
        new lock finds no folder to remove."""
        own = _OWN_TMP.get(str(self.tmp))
        if own is not None and own.is_dir():
            return own
        self.tmp.mkdir(parents=True, exist_ok=True)
        fd, lock = tempfile.mkstemp(dir=self.tmp, prefix=f"run-{os.getpid()}-", suffix=".lock")
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the kernel however the process ends
        own = Path(lock).with_suffix("")
        own.mkdir()
        _OWN_TMP[str(self.tmp)] = own
        _OWN_LOCKS.append(fd)
        return own

    def sweep_tmp(self) -> list[Path]:
        """Remove the working folders of runs that are gone (their lock is free); a live
        run's folders are never touched. Returns what was removed."""
        removed = []
        for lock in sorted(self.tmp.glob("run-*.lock")):
            folder = lock.with_suffix("")
            if folder == _OWN_TMP.get(str(self.tmp)):
                continue
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its run is alive
            try:
                _rmtree(folder)
                lock.unlink(missing_ok=True)
                removed.append(folder)
            finally:
                os.close(fd)
        return removed

    @property
    def journal_dir(self) -> Path:
        return self.root / "journal"

    def blob_digests(self) -> list[str]:
        """Every blob this cache holds, by digest."""
        return sorted(p.name for p in (self.root / "cas").glob("*/*") if is_sha256(p.name))

    def record_keys(self) -> list[str]:
        """Every node key this cache holds a record file for (readable or not)."""
        found = (p.stem for p in (self.root / "actions").glob("*/*.json"))
        return sorted(key for key in found if is_sha256(key) or key.startswith("segment-"))

    def quarantine_record(self, key: str) -> None:
        """Move an unreadable record aside (it may hold a job id worth reading by hand)."""
        dest = self.root / "quarantine" / f"{key}.json.{time.time_ns()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        with suppress(FileNotFoundError):
            os.replace(self._action_path(key), dest)

    def state_path(self, film_id: str, suffix: str = "") -> Path:
        return self.root / "state" / f"{film_id}{suffix}.json"


class SegmentCache:
    """Assembly's conformed segments, cached in the same store under their own keys."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def lookup(self, key: str) -> Path | None:
        """A cached segment, verified (the join reads it): a corrupt one is quarantined and
        conformed again."""
        record = self.store.lookup(f"segment-{key}")
        if record is None or not self.store.verify_blob(str(record["output"])):
            return None
        return self.store.blob(record["output"])

    def save(self, key: str, path: Path) -> Path:
        tmp = self.store.own_tmp() / f"segment-{key}"
        shutil.move(path, tmp)
        digest = self.store.put(tmp)
        self.store.record(f"segment-{key}", {"kind": "segment", "output": digest})
        return self.store.blob(digest)


class StatCache:
    """Asset digests remembered by (size, mtime): cheap checks before hashing a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        loaded = read_json(path)
        entries = loaded.get("entries") if isinstance(loaded, dict) else None
        self.entries: dict[str, list[Any]] = entries if isinstance(entries, dict) else {}
        self.dirty = False

    def digest(self, file: Path) -> str:
        st = file.stat()
        entry = self.entries.get(str(file))
        if (
            isinstance(entry, list)
            and len(entry) == 3
            and entry[0] == st.st_size
            and entry[1] == st.st_mtime_ns
            and is_sha256(entry[2])
        ):
            return str(entry[2])
        digest = file_digest(file)
        self.entries[str(file)] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if self.dirty:
            write_json(self.path, {"version": RECORD_VERSION, "entries": self.entries})
            self.dirty = False


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
