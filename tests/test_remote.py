"""The team cache over a real S3 server on loopback (moto) and over a shared folder (file://)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner import cli
from runner.cache.remote import (
    Remote,
    RemoteCorrupt,
    RemoteError,
    RemoteMissing,
    remote_from_config,
)
from runner.cache.store import Store
from runner.errors import UserError
from runner.run.claim import Claims
from tests.films import MINIMAL, gen
from tests.servers.gcs_server import GCSServer, gcs_env
from tests.servers.s3_server import ACCESS_KEY, SECRET_KEY, S3Server, s3_env


@dataclass
class Team:
    """A remote cache and a way to reach its raw bytes behind the runner's back."""

    url: str
    server: S3Server | None
    folder: Path | None
    gcs: GCSServer | None = None

    def remote(self) -> Remote:
        return Remote(self.url)

    def overwrite(self, relpath: str, data: bytes) -> None:
        if self.gcs is not None:
            self.gcs.fs().pipe_file(f"{self.gcs.bucket}/{self.gcs.prefix}/{relpath}", data)
        elif self.server is not None:
            key = f"{self.server.prefix}/{relpath}"
            self.server.client().put_object(Bucket=self.server.bucket, Key=key, Body=data)
        else:
            assert self.folder is not None
            path = self.folder / relpath
            path.chmod(0o644)
            path.write_bytes(data)

    def lose_answers(self, count: int) -> None:
        """The store writes the next uploads but its answers never reach the client."""
        if self.gcs is not None:
            self.gcs.lose_answers(count)
        else:
            assert self.server is not None, "a shared folder has no answers to lose"
            self.server.lose_answers(count)

    def read(self, relpath: str) -> bytes:
        if self.gcs is not None:
            return bytes(self.gcs.fs().cat_file(f"{self.gcs.bucket}/{self.gcs.prefix}/{relpath}"))
        if self.server is not None:
            key = f"{self.server.prefix}/{relpath}"
            obj = self.server.client().get_object(Bucket=self.server.bucket, Key=key)
            return bytes(obj["Body"].read())
        assert self.folder is not None
        return (self.folder / relpath).read_bytes()


@pytest.fixture(params=["s3", "gs", "file"])
def team(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Team]:
    tmp_path: Path = request.getfixturevalue("tmp_path")
    if request.param == "gs":  # a GCS emulator on loopback, through gcsfs
        with GCSServer() as gcs:
            gcs_env(monkeypatch, gcs)
            yield Team(gcs.url, None, None, gcs)
    elif request.param == "s3":
        with S3Server() as server:
            s3_env(monkeypatch, server)
            yield Team(server.url, server, None)
    else:
        folder = tmp_path / "shared-cache"
        folder.mkdir()
        yield Team(folder.as_uri(), None, folder)


def store_with(root: Path, *contents: bytes) -> tuple[Store, list[str]]:
    """A local store holding the given blobs; their digests in order."""
    store = Store(root)
    store.tmp.mkdir(parents=True, exist_ok=True)
    digests = []
    for i, data in enumerate(contents):
        src = store.tmp / f"blob-{i}"
        src.write_bytes(data)
        digests.append(store.put(src))
    return store, digests


def blob_path(digest: str) -> str:
    return f"cas/{digest[:2]}/{digest}"


def test_push_then_pull_into_an_empty_store_gives_identical_bytes(
    team: Team, tmp_path: Path
) -> None:
    big = os.urandom(9 << 20)  # more than one streaming chunk, and a multipart upload on S3
    mine, digests = store_with(tmp_path / "mine", b"shot one", big)
    remote = team.remote()
    assert [remote.push_blob(d, mine) for d in digests] == [True, True]

    theirs = Store(tmp_path / "theirs")
    assert all(team.remote().pull_blob(d, theirs) for d in digests)
    for d in digests:
        assert theirs.blob(d).read_bytes() == mine.blob(d).read_bytes()
        assert not os.access(theirs.blob(d), os.W_OK) or os.geteuid() == 0
        assert theirs.blob(d).stat().st_mode & 0o777 == 0o444
    # No partial download left behind (the run's own folder and its lock stay while it lives).
    assert [p for p in theirs.tmp.rglob("*") if p.is_file() and p.suffix != ".lock"] == []


def test_has_tells_pushed_from_absent(team: Team, tmp_path: Path) -> None:
    store, [digest] = store_with(tmp_path / "s", b"take 3")
    remote = team.remote()
    assert not remote.has(digest)
    remote.push_blob(digest, store)
    assert remote.has(digest)
    assert not remote.has("0" * 64)


def test_pulling_an_absent_blob_or_record_answers_false_or_none(team: Team, tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    remote = team.remote()
    assert remote.pull_blob("ab" * 32, store) is False
    assert remote.pull_record("cd" * 32, store) is None
    assert not store.has_blob("ab" * 32)


def test_records_round_trip_and_make_the_teammate_s_lookup_hit(team: Team, tmp_path: Path) -> None:
    mine, [digest] = store_with(tmp_path / "mine", b"approved take")
    key = "k" * 2 + "0" * 62
    record = {"output": digest, "job": "veo-op-17", "model": "veo-3", "cost": 1.2}
    remote = team.remote()
    remote.push_blob(digest, mine)
    remote.push_record(key, record)

    theirs = Store(tmp_path / "theirs")
    pulled = team.remote().pull_record(key, theirs)
    assert pulled == {**record, "version": 1, "key": key}
    assert theirs.lookup(key) is None  # the record alone is not a result: its blob is missing
    team.remote().pull_blob(digest, theirs)
    assert theirs.lookup(key) == pulled


def test_a_record_of_an_unknown_version_is_not_used(team: Team, tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    key = "ee" * 32
    team.remote().push_record(key, {"output": "aa" * 32})
    team.overwrite(f"actions/ee/{key}.json", b'{"version": 0, "output": "' + b"a" * 64 + b'"}')
    assert team.remote().pull_record(key, store) is None
    # A newer runner's record may stand for a paid render: refused, never read as "absent".
    team.overwrite(f"actions/ee/{key}.json", b'{"version": 99, "output": "' + b"a" * 64 + b'"}')
    with pytest.raises(RemoteError, match="newer runner"):
        team.remote().pull_record(key, store)
    assert not (store.root / "actions").exists()


def test_a_tampered_remote_blob_is_refused_on_pull_and_reported_by_verify(
    team: Team, tmp_path: Path
) -> None:
    mine, [good, bad] = store_with(tmp_path / "mine", b"good shot", b"shot to be tampered with")
    remote = team.remote()
    remote.push_blob(good, mine)
    remote.push_blob(bad, mine)
    team.overwrite(blob_path(bad), b"evil bytes")

    theirs = Store(tmp_path / "theirs")
    with pytest.raises(RemoteCorrupt, match=bad):
        team.remote().pull_blob(bad, theirs)
    assert not theirs.has_blob(bad)
    # Not even a temporary (only the run's own lock, which lives while the process does).
    assert not any(p.is_file() and p.suffix != ".lock" for p in theirs.root.rglob("*"))
    assert remote.verify() == [bad]
    assert remote.verify([good]) == []
    assert remote.has(bad)  # write-once: a push does not repair it, verify + delete does
    assert remote.push_blob(bad, mine) is False


def test_two_writers_of_one_digest_both_succeed_and_the_blob_is_intact(
    team: Team, tmp_path: Path
) -> None:
    data = os.urandom(6 << 20)
    stores = [store_with(tmp_path / f"writer{i}", data) for i in range(2)]
    digest = stores[0][1][0]
    barrier = threading.Barrier(2)
    results: list[bool] = []
    errors: list[BaseException] = []

    def push(store: Store) -> None:
        remote = team.remote()
        remote.has(digest)  # connect first, so the two uploads race each other
        barrier.wait()
        try:
            results.append(remote.push_blob(digest, store))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=push, args=(s,)) for s, _ in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == 2 and any(results)
    assert team.read(blob_path(digest)) == data
    assert team.remote().verify([digest]) == []
    if team.folder is not None:  # no temporaries left behind in the shared folder
        assert [p.name for p in (team.folder / "cas" / digest[:2]).iterdir()] == [digest]


def test_a_second_push_of_a_digest_does_not_upload(team: Team, tmp_path: Path) -> None:
    store, [digest] = store_with(tmp_path / "s", b"once")
    remote = team.remote()
    assert remote.push_blob(digest, store) is True
    assert remote.push_blob(digest, store) is False
    assert team.remote().push_blob(digest, store) is False


def test_list_digests_and_delete_for_cache_gc(team: Team, tmp_path: Path) -> None:
    store, digests = store_with(tmp_path / "s", b"a", b"b", b"c")
    remote = team.remote()
    assert remote.list_digests() == set()
    for d in digests:
        remote.push_blob(d, store)
    remote.push_record("ab" * 32, {"output": digests[0]})
    assert remote.list_digests() == set(digests)  # records are not blobs

    remote.delete([digests[0], digests[1], "ff" * 32])  # an absent digest is no error
    assert remote.list_digests() == {digests[2]}
    assert not remote.has(digests[0])


def test_pushing_a_damaged_local_blob_is_refused(team: Team, tmp_path: Path) -> None:
    store, [digest] = store_with(tmp_path / "s", b"pristine")
    store.blob(digest).chmod(0o644)
    store.blob(digest).write_bytes(b"bit rot")
    with pytest.raises(RemoteCorrupt):
        team.remote().push_blob(digest, store)
    assert not team.remote().has(digest)


def test_of_machines_creating_one_claim_at_once_exactly_one_wins(team: Team) -> None:
    name = "ab" * 32 + ".json"
    remotes = [team.remote() for _ in range(4)]
    for remote in remotes:
        assert remote.claims_supported
        remote.read_claim(name)  # connect first, so the creates race each other
    barrier = threading.Barrier(len(remotes))
    won: list[int] = []

    def create(i: int) -> None:
        barrier.wait()
        if remotes[i].create_claim(name, f"runner {i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(len(remotes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1
    assert remotes[0].read_claim(name) == f"runner {won[0]}".encode()
    remotes[0].write_claim(name, b"heartbeat")  # the holder rewrites its claim
    assert remotes[1].read_claim(name) == b"heartbeat"
    assert not remotes[1].create_claim(name, b"late")
    remotes[0].delete_claim(name)
    assert remotes[1].read_claim(name) is None
    assert remotes[1].create_claim(name, b"next")  # released: the next one may claim it


@pytest.mark.parametrize("team", ["s3", "gs"], indirect=True)
def test_a_claim_created_but_whose_answer_was_lost_is_held_not_waited_on(
    team: Team, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gcsfs and botocore re-send a create answered 503; the store refuses the copy (412),
    although the first one landed. The runner reads the claim back and knows it as its own."""
    remote = team.remote()
    remote.read_claim("x")  # connected: the next upload is the claim's
    answers: list[bool] = []
    create = remote.create_claim

    def recorded(name: str, data: bytes) -> bool:
        answers.append(create(name, data))
        return answers[-1]

    monkeypatch.setattr(remote, "create_claim", recorded)

    def never(seconds: float) -> None:
        raise AssertionError("waited on its own claim")

    claims = Claims(remote, sleep=never)
    key = "cd" * 32
    team.lose_answers(1)
    try:
        taken = claims.acquire(key, "shots.a", ready=lambda: False, stopping=lambda: False)
        assert taken is not None and taken.previous is None
        assert answers == [False]  # the client's retry was refused: the store kept the first
        claim = json.loads(team.read(f"claims/{key[:2]}/{key}.json"))
        assert claim["run"] == claims.me["run"] and claim["node"] == "shots.a"
        claims.release(key)
        assert remote.read_claim(f"{key}.json") is None
    finally:
        claims.close()


def test_the_gcs_server_refuses_a_second_conditional_create_as_gcs_does() -> None:
    """The emulator alone overwrites; tests/servers/gcs_server.py makes it honour
    ifGenerationMatch, so the claim tests above cannot pass by a silent overwrite."""
    with GCSServer() as gcs:
        fs = gcs.fs()
        path = f"{gcs.bucket}/claims/one"
        fs.pipe_file(path, b"first", mode="create")  # gcsfs: ifGenerationMatch=0
        with pytest.raises(FileExistsError):
            fs.pipe_file(path, b"second", mode="create")
        assert fs.cat_file(path) == b"first"
        generation = int(fs.info(path)["generation"])

        def upload(data: bytes, match: int) -> int:  # a one-request media upload, by hand
            query = urllib.parse.urlencode(
                {"uploadType": "media", "name": "claims/one", "ifGenerationMatch": match}
            )
            url = f"{gcs.endpoint}/upload/storage/v1/b/{gcs.bucket}/o?{query}"
            try:
                with urllib.request.urlopen(urllib.request.Request(url, data, method="POST")):
                    return 200
            except urllib.error.HTTPError as err:
                return err.code

        assert upload(b"stale", generation + 1) == 412  # overwrite only if unchanged
        assert fs.cat_file(path) == b"first"
        assert upload(b"fresh", generation) == 200
        assert fs.cat_file(path) == b"fresh"


def test_remote_from_config_env_wins_over_pyproject() -> None:
    config = {"remote": "s3://team/film-cache"}
    env_remote = remote_from_config(config, {"RUNNER_REMOTE": "file:///mnt/shared/cache"})
    assert env_remote is not None and env_remote.url == "file:///mnt/shared/cache"
    from_pyproject = remote_from_config(config, {})
    assert from_pyproject is not None and from_pyproject.url == "s3://team/film-cache"
    assert remote_from_config({}, {}) is None
    assert remote_from_config(config, {"RUNNER_REMOTE": ""}) is None  # turned off, e.g. in CI
    with pytest.raises(UserError, match="remote must be a URL"):
        remote_from_config({"remote": 42}, {})


def test_storage_options_can_point_at_an_s3_compatible_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with S3Server() as server:
        s3_env(monkeypatch)  # credentials from the environment, no endpoint there
        options = {"client_kwargs": {"endpoint_url": server.endpoint}}
        remote = remote_from_config({"remote": server.url, "remote_options": options}, {})
        assert remote is not None
        store, [digest] = store_with(tmp_path / "s", b"via options")
        assert remote.push_blob(digest, store) is True
        assert remote.has(digest)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, so no other test or
    server (pytest-xdist runs several at once) can take it while this test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_an_unreachable_endpoint_gives_a_clear_error_without_secrets(
    closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_env(monkeypatch)
    endpoint = f"http://127.0.0.1:{closed_port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    # One attempt, not botocore's default five with backoff (8-10 s of waiting on a closed
    # port): the same connection error reaches the same message, only sooner.
    options = {
        "key": ACCESS_KEY,
        "secret": SECRET_KEY,
        "config_kwargs": {"retries": {"max_attempts": 1}},
    }
    remote = Remote("s3://team-bucket/film-cache", options)
    with pytest.raises(RemoteError) as info:
        remote.has("ab" * 32)
    message = str(info.value)
    assert "s3://team-bucket/film-cache" in message
    assert "cannot reach the bucket" in message and endpoint in message  # the connection failed
    assert "endpoint" in message and "\n" not in message
    assert SECRET_KEY not in message and SECRET_KEY not in repr(info.value.__cause__)


def test_a_missing_bucket_or_folder_is_named_with_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with S3Server() as server:
        s3_env(monkeypatch, server)
        store, [digest] = store_with(tmp_path / "s", b"x")
        # A URL that names nothing is the user's setting to fix: a usage error (exit 2).
        with pytest.raises(RemoteMissing, match=r"bucket 'no-such-bucket'.*create the bucket"):
            Remote("s3://no-such-bucket/cache").push_blob(digest, store)
    missing = tmp_path / "not-mounted"
    with pytest.raises(RemoteMissing, match="does not exist; mount the shared drive"):
        Remote(missing.as_uri()).push_blob(digest, store)
    assert not missing.exists()  # never creates a share that is not there
    film = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    monkeypatch.setenv("RUNNER_REMOTE", missing.as_uri())
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["plan", str(film)]) == 2


def test_credentials_in_the_url_never_reach_a_message(tmp_path: Path) -> None:
    remote = Remote("sftp://alice:hunter22@127.0.0.1:1/cache")
    assert "hunter22" not in repr(remote) and "hunter22" not in remote.display_url


# --- benchmark helpers, for bench/run.py (not tests) ---------------------------------------


def pull_time(remote: Remote, digests: Iterable[str], store: Store, jobs: int = 1) -> float:
    """Seconds to pull (stream, verify, install) the digests into store, jobs at a time."""
    from concurrent.futures import ThreadPoolExecutor

    todo = list(digests)
    start = time.perf_counter()
    if jobs <= 1:
        for d in todo:
            remote.pull_blob(d, store)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda d: remote.pull_blob(d, store), todo))
    return time.perf_counter() - start


def raw_time(remote: Remote, digests: Iterable[str], jobs: int = 1) -> float:
    """Seconds to fetch the same bytes with plain fsspec reads: no hashing, no local writes."""
    from concurrent.futures import ThreadPoolExecutor

    fs = remote._connect()
    paths = [remote._blob(d) for d in digests]
    start = time.perf_counter()
    if jobs <= 1:
        for p in paths:
            fs.cat_file(p)
    else:
        with ThreadPoolExecutor(jobs) as pool:
            list(pool.map(fs.cat_file, paths))
    return time.perf_counter() - start


def bench_pull(
    root: Path, shots: int = 100, shot_bytes: int = 2 << 20, jobs: int = 1
) -> dict[str, Any]:
    """Push a film's worth of shots to a loopback S3 server, then time pull vs raw transfer."""
    with S3Server() as server:
        options = {
            "key": ACCESS_KEY,
            "secret": SECRET_KEY,
            "client_kwargs": {"endpoint_url": server.endpoint, "region_name": "us-east-1"},
        }
        remote = Remote(server.url, options)
        source, digests = store_with(
            root / "source", *(os.urandom(shot_bytes) for _ in range(shots))
        )
        for d in digests:
            remote.push_blob(d, source)
        raw = raw_time(remote, digests, jobs)
        pulled = pull_time(remote, digests, Store(root / "empty"), jobs)
    total = shots * shot_bytes
    return {
        "shots": shots,
        "bytes": total,
        "jobs": jobs,
        "pull_s": round(pulled, 3),
        "raw_s": round(raw, 3),
        "pull_MBps": round(total / pulled / 1e6, 1),
        "raw_MBps": round(total / raw / 1e6, 1),
    }
