"""The team cache: the local store's blobs and action records, shared through fsspec.

The remote mirrors the local layout under its URL (DVC shares its cache the same way):
    <url>/cas/ab/<sha256>          blobs, write-once by digest, verified on every read
    <url>/actions/ab/<key>.json    node key -> result record, versioned like the local one
    <url>/claims/ab/<key>.json     who is rendering a paid node now (runner/run/claim.py)

A blob is written once and never changed, so two writers of the same digest both succeed with
the same bytes. A reader never sees half a blob: an object store's PUT is atomic, and on a
shared folder the blob is written to a temporary name and renamed into place. Bytes from a
remote are trusted only after they hash to their name. fsspec and its backends (s3fs, gcsfs)
are imported on first use, so `runner --help` does not pay for them. Credentials come from
each store's usual environment and config files; they are never written or printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from runner import faults
from runner.cache.store import RECORD_VERSION, Store, checked_record
from runner.digest import file_digest, is_sha256
from runner.errors import UserError, scrub_urls

ENV_VAR = "RUNNER_REMOTE"
CHUNK = 8 << 20  # one GET per 8 MiB when streaming a blob
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_SECRET_OPTIONS = {"secret", "token", "key", "password", "session_token", "account_key"}


class RemoteError(Exception):
    """The remote cache cannot be used: unreachable, no permission, bucket missing."""


class RemoteMissing(RemoteError, UserError):
    """The remote's URL names no bucket or folder: the user's setting is wrong (exit 2)."""


class RemoteCorrupt(RemoteError):
    """A remote blob does not hash to its name; its bytes are never stored or used."""


class Remote:
    """A team cache shared through fsspec: s3://bucket/prefix, gs://bucket/prefix, file:///mnt/shared/cache."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.protocol = urlsplit(url).scheme.lower() or "file"
        self.display_url = _USERINFO.sub("", self.url).split("?")[0]
        self._fs: Any = None
        self._root = ""
        self._ready = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Remote({self.display_url!r})"

    # --- blobs ---------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        fs = self._connect()
        try:
            if self.protocol in ("s3", "s3a"):  # one HEAD; fs.exists also lists on a miss
                fs.call_s3("head_object", **_bucket_key(self._blob(digest)))
                return True
            return bool(fs.exists(self._blob(digest)))
        except FileNotFoundError:
            return False
        except Exception as err:
            self._fail("look up a blob", err)

    def pull_blob(self, digest: str, store: Store) -> bool:
        """Download a blob into the local store, hashing as it streams; False when absent."""
        _check_digest(digest)
        if store.has_blob(digest):
            return True
        self._connect()
        fd, tmp = tempfile.mkstemp(dir=store.own_tmp(), prefix="pull-")
        try:
            with os.fdopen(fd, "wb") as out:
                got = self._stream(self._blob(digest), out.write)
                if got is None:
                    return False
                if got != digest:
                    raise RemoteCorrupt(
                        f"remote cache {self.display_url}: blob {digest} holds bytes that hash "
                        f"to {got}; refused. Run `runner cache verify` and delete it remotely"
                    )
                out.flush()
                os.fsync(out.fileno())
            # Verified while reading: install it as Store.put would, without hashing twice.
            dest = store.blob(digest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
            return True
        finally:
            with suppress(FileNotFoundError):
                os.unlink(tmp)

    def push_blob(self, digest: str, store: Store) -> bool:
        """Upload a local blob the remote lacks (never overwrite); True if uploaded."""
        _check_digest(digest)
        src = store.blob(digest)
        if self.has(digest):
            return False
        if not src.is_file():
            raise FileNotFoundError(f"no local blob {digest} to push ({src})")
        if file_digest(src) != digest:  # never spread a damaged local blob to the team
            raise RemoteCorrupt(f"local blob {src} does not hash to its name; not pushed")
        self._write(self._blob(digest), src=src)
        faults.point("mid-push")  # the caller pushes the record next
        return True

    def replace_blob(self, digest: str, store: Store) -> None:
        """Overwrite a remote blob that does not hash to its name with a verified local copy;
        the bad bytes are moved to <url>/quarantine/ first (evidence, not deleted)."""
        _check_digest(digest)
        src = store.blob(digest)
        if file_digest(src) != digest:
            raise RemoteCorrupt(f"local blob {src} does not hash to its name; not pushed")
        fs = self._connect()
        try:
            fs.mv(self._blob(digest), f"{self._root}/quarantine/{digest}.{os.urandom(4).hex()}")
        except FileNotFoundError:
            pass
        except Exception as err:
            self._fail("move a corrupt blob aside", err)
        self._write(self._blob(digest), src=src)

    def verify(self, digests: Iterable[str] | None = None) -> list[str]:
        """Digests whose remote bytes do not hash to their name (absent ones are skipped)."""
        self._connect()
        bad = []
        for digest in sorted(self.list_digests() if digests is None else digests):
            got = self._stream(self._blob(digest), lambda _chunk: None)
            if got is not None and got != digest:
                bad.append(digest)
        return bad

    def list_digests(self) -> set[str]:
        fs = self._connect()
        try:
            paths = fs.find(f"{self._root}/cas")
        except FileNotFoundError:
            return set()
        except Exception as err:
            self._fail("list blobs", err)
        found = set()
        for path in paths:
            parent, _, name = str(path).rstrip("/").rpartition("/")
            if is_sha256(name) and parent.endswith(f"/{name[:2]}"):
                found.add(name)  # temporaries of unfinished uploads are not blobs
        return found

    def list_blobs(self) -> dict[str, dict[str, Any]]:
        """Every blob with its listing details (size, modified time), for `cache gc`."""
        fs = self._connect()
        try:
            found = fs.find(f"{self._root}/cas", detail=True)
        except FileNotFoundError:
            return {}
        except Exception as err:
            self._fail("list blobs", err)
        blobs = {}
        for path, info in found.items():
            parent, _, name = str(path).rstrip("/").rpartition("/")
            if is_sha256(name) and parent.endswith(f"/{name[:2]}"):
                blobs[name] = dict(info)
        return blobs

    def delete(self, digests: Iterable[str]) -> None:
        """Remove blobs from the remote, for `cache gc`; missing ones are not an error."""
        fs = self._connect()
        paths = [self._blob(d) for d in digests if _check_digest(d)]
        if not paths:
            return
        try:
            if self.protocol in _OBJECT_STORES:
                fs.rm(paths)  # one bulk request per 1000 keys; absent keys are fine
            else:
                for path in paths:
                    with suppress(FileNotFoundError):
                        fs.rm_file(path)
        except Exception as err:
            self._fail("delete blobs", err)

    # --- action records ------------------------------------------------------------------

    def pull_record(self, key: str, store: Store) -> dict[str, Any] | None:
        """The remote record for a node key, saved into the local store; None when absent."""
        fs = self._connect()
        try:
            data = fs.cat_file(self._record(key))
        except FileNotFoundError:
            return None
        except Exception as err:
            self._fail("read a record", err)
        try:
            loaded = json.loads(data)
        except ValueError:
            return None  # unreadable counts as not cached, as in the local store
        where = f"remote cache {self.display_url}: the record of {key}"
        record = checked_record(loaded, key, where, RemoteError)
        if record is None:
            return None
        store.record(key, record)
        return {**record, "version": RECORD_VERSION, "key": key}

    def push_record(self, key: str, record: dict[str, Any]) -> None:
        """Publish a record; the last writer of a key wins (the lock file picks the bytes)."""
        self._connect()
        value = {**record, "version": RECORD_VERSION, "key": key}
        data = (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()
        self._write(self._record(key), data=data)

    # --- claims --------------------------------------------------------------------------

    @property
    def claims_supported(self) -> bool:
        """This store can create a file only if it is absent (S3, GCS, a shared folder)."""
        return self.protocol in ("s3", "s3a", "gs", "gcs", "file", "local")

    def create_claim(self, name: str, data: bytes) -> bool:
        """Create claims/<name> only if nothing is there; False when something is.
        S3's conditional PUT (If-None-Match: *), GCS's (ifGenerationMatch=0) and a hard link on
        a folder are atomic: of two machines creating one name at once, exactly one succeeds.
        gcsfs and botocore re-send a create whose answer was lost (a 5xx, a dropped connection),
        and the store refuses the copy: False may mean this caller's own create landed."""
        fs = self._connect()
        path = self._claim(name)
        try:
            if self.protocol in ("gs", "gcs"):
                try:
                    fs.pipe_file(path, data, mode="create")  # 412 -> FileExistsError
                except FileExistsError:
                    return False
                return True
            if self.protocol in ("s3", "s3a"):
                try:
                    fs.call_s3("put_object", **_bucket_key(path), Body=data, IfNoneMatch="*")
                except FileExistsError:
                    return False
                except OSError as err:  # 409: another conditional write of this name raced
                    if "ConditionalRequestConflict" in str(err) or "Precondition" in str(err):
                        return False
                    raise
                return True
            parent = path.rsplit("/", 1)[0]
            os.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.tmp-{os.urandom(8).hex()}"
            _copy_synced(None, data, tmp)
            try:
                os.link(tmp, path)  # fails if the name exists; readers never see part of it
            except FileExistsError:
                return False
            finally:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
            return True
        except Exception as err:
            self._fail("create a claim", err)

    def read_claim(self, name: str) -> bytes | None:
        fs = self._connect()
        try:
            return bytes(fs.cat_file(self._claim(name)))
        except FileNotFoundError:
            return None
        except Exception as err:
            self._fail("read a claim", err)

    def write_claim(self, name: str, data: bytes) -> None:
        """Replace a claim held or just taken over (a heartbeat, a job id)."""
        self._connect()
        self._write(self._claim(name), data=data)

    def delete_claim(self, name: str) -> None:
        fs = self._connect()
        try:
            fs.rm_file(self._claim(name))
        except FileNotFoundError:
            pass
        except Exception as err:
            self._fail("release a claim", err)

    # --- plumbing ------------------------------------------------------------------------

    def _blob(self, digest: str) -> str:
        return f"{self._root}/cas/{digest[:2]}/{digest}"

    def _record(self, key: str) -> str:
        return f"{self._root}/actions/{key[:2]}/{key}.json"

    def _claim(self, name: str) -> str:
        return f"{self._root}/claims/{name[:2]}/{name}"

    def _connect(self) -> Any:
        """The filesystem, made on first use, after checking the root is there."""
        with self._lock:
            if not self._ready:
                self._fs, self._root = self._open_fs()
                self._check_root()
                self._ready = True
        return self._fs

    def _open_fs(self) -> tuple[Any, str]:
        try:
            import fsspec
        except ImportError:
            raise RemoteError(
                f"remote cache {self.display_url}: fsspec is not installed; "
                "run `pip install fsspec`"
            ) from None
        options = dict(self.storage_options)
        if self.protocol in _OBJECT_STORES:
            # Always ask the store: another teammate may have pushed since we last listed.
            options.setdefault("use_listings_cache", False)
            options.setdefault("skip_instance_cache", True)
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **options)
        except ImportError:
            package = _PACKAGES.get(self.protocol, f"the fsspec backend for {self.protocol}://")
            raise RemoteError(
                f"remote cache {self.display_url}: {self.protocol}:// needs {package}; "
                f"run `pip install {package}`"
            ) from None
        except (ValueError, TypeError) as err:
            raise RemoteMissing(
                f"remote cache {self.display_url}: not a usable URL ({self._scrub(err)}); "
                f"set {ENV_VAR} or [tool.runner] remote to s3://, gs:// or file:// URL"
            ) from None
        return fs, str(root).rstrip("/")

    def _check_root(self) -> None:
        """Fail early and clearly when the bucket or shared folder is missing or unreachable."""
        if self.protocol in ("file", "local"):
            if not os.path.isdir(self._root):
                raise RemoteMissing(
                    f"remote cache {self.display_url}: folder {self._root} does not exist; "
                    "mount the shared drive or create the folder"
                )
            return
        bucket = self._root.split("/", 1)[0]
        try:
            if self.protocol in ("s3", "s3a"):
                self._fs.call_s3("head_bucket", Bucket=bucket)
            else:
                self._fs.info(bucket)
        except FileNotFoundError as err:  # no such bucket: the URL is wrong
            raise RemoteMissing(
                f"remote cache bucket {bucket!r} of {self.display_url}: not found "
                f"({self._scrub(err)}); create the bucket, or fix the URL in {ENV_VAR} / "
                "[tool.runner] remote"
            ) from None
        except Exception as err:
            self._fail("reach the bucket", err, bucket=bucket)

    def _stream(self, path: str, sink: Any) -> str | None:
        """Feed a remote file to sink in chunks; its sha256, or None when it is absent."""
        h = hashlib.sha256()
        try:
            with self._fs.open(path, "rb", block_size=CHUNK, cache_type="none") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    sink(chunk)
        except FileNotFoundError:
            return None
        except Exception as err:
            self._fail("read a blob", err)
        return h.hexdigest()

    def _write(self, path: str, *, src: Path | None = None, data: bytes = b"") -> None:
        """Put a file or bytes at path so that no reader ever sees part of it."""
        fs = self._fs
        try:
            if self.protocol in _OBJECT_STORES:  # a PUT appears whole or not at all
                if src is not None:
                    fs.put_file(str(src), path)
                else:
                    fs.pipe_file(path, data)
                return
            parent = path.rsplit("/", 1)[0]
            fs.makedirs(parent, exist_ok=True)
            tmp = f"{parent}/.tmp-{os.urandom(8).hex()}"
            try:
                if self.protocol in ("file", "local"):
                    _copy_synced(src, data, tmp)
                elif src is not None:
                    fs.put_file(str(src), tmp)
                else:
                    fs.pipe_file(tmp, data)
                if self.protocol in ("file", "local"):
                    os.replace(tmp, path)  # two writers of one digest both land whole bytes
                else:
                    fs.mv(tmp, path)
            except BaseException:
                with suppress(Exception):
                    fs.rm_file(tmp)
                raise
        except Exception as err:
            self._fail("write", err)

    def _fail(self, action: str, err: BaseException, bucket: str = "") -> NoReturn:
        """Raise a one-line RemoteError: what failed, where, and how to fix it; no secrets."""
        if isinstance(err, RemoteError):
            raise err
        where = f"bucket {bucket!r} of " if bucket else ""
        reason = self._scrub(err) or type(err).__name__
        name = type(err).__name__
        if isinstance(err, FileNotFoundError):
            hint = "create the bucket, or fix the URL in RUNNER_REMOTE / [tool.runner] remote"
            reason = f"not found ({reason})"
        elif isinstance(err, PermissionError) or "AccessDenied" in name or "Forbidden" in reason:
            hint = "check which credentials are in use and that they may read and write there"
        elif "Credential" in name or "credential" in reason.lower():
            hint = _credential_hint(self.protocol)
        else:
            hint = "check the network and the endpoint"
            if self.protocol in ("s3", "s3a"):
                hint += " (AWS_ENDPOINT_URL_S3 for S3-compatible stores)"
        raise RemoteError(
            f"remote cache {where}{self.display_url}: cannot {action}: {reason}; {hint}"
        ) from None

    def _scrub(self, err: BaseException) -> str:
        """The error's text on one line, with any credential we know of blanked out."""
        text = scrub_urls(" ".join(str(err).split()))
        text = _USERINFO.sub("***@", text)
        secrets = [os.environ.get(name, "") for name in _SECRET_ENV]
        secrets += [str(v) for k, v in _flatten(self.storage_options) if k in _SECRET_OPTIONS]
        for secret in secrets:
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text[:300]


def remote_from_config(tool_config: Mapping[str, Any], env: Mapping[str, str]) -> Remote | None:
    """The team cache: RUNNER_REMOTE wins over [tool.runner] remote; None when neither.

    RUNNER_REMOTE set to an empty string turns a configured remote off (for CI or offline work).
    """
    if ENV_VAR in env:
        url = env[ENV_VAR].strip()
        return Remote(url) if url else None
    configured = tool_config.get("remote")
    if configured is None:
        return None
    if not isinstance(configured, str) or not configured.strip():
        raise UserError(
            '[tool.runner] remote must be a URL string, e.g. remote = "s3://bucket/film-cache"'
        )
    options = tool_config.get("remote_options", {})
    if not isinstance(options, dict):
        raise UserError("[tool.runner] remote_options must be a table of fsspec options")
    return Remote(configured.strip(), options)


def _check_digest(digest: str) -> bool:
    if not is_sha256(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return True


def _bucket_key(path: str) -> dict[str, str]:
    bucket, _, key = path.partition("/")
    return {"Bucket": bucket, "Key": key}


def _copy_synced(src: Path | None, data: bytes, dest: str) -> None:
    """Copy to a local path and fsync, so a rename after it never publishes empty bytes."""
    with open(dest, "xb") as out:
        if src is None:
            out.write(data)
        else:
            with open(src, "rb") as f:
                while chunk := f.read(CHUNK):
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.chmod(dest, 0o444)


def _flatten(options: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    for k, v in options.items():
        if isinstance(v, Mapping):
            yield from _flatten(v)
        else:
            yield str(k).lower(), v


def _credential_hint(protocol: str) -> str:
    if protocol in ("gs", "gcs"):
        return "set GOOGLE_APPLICATION_CREDENTIALS or run `gcloud auth application-default login`"
    return "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or ~/.aws/credentials"
