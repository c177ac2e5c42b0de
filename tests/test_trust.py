"""Trust nothing on disk: a flipped bit anywhere in the cache is found and healed at no cost,
no code runs from the cache, asset paths are checked whenever they are read, and secrets in
URLs and control characters in user text never reach a message or a file."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.backends.base import Transient
from runner.backends.openai import OpenAIBackend
from runner.cache import store as store_module
from runner.cache.lock import Lock
from runner.cache.store import Store
from runner.cli.main import main
from runner.digest import Hashed, file_digest
from runner.errors import UserError, printable, scrub_urls
from tests.films import MINIMAL, gen, lock_nodes
from tests.servers.openai_server import OpenAIServer
from tests.test_openai_backend import shot
from tests.test_team import Member, hosted_film

SECRET_PW, SECRET_Q = "PW-hunter2", "Q-api-9f3e"


def flip_a_bit(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def blob(member: Member, digest: str) -> Path:
    return member.root / "cache" / "cas" / digest[:2] / digest


def locked(member: Member) -> dict[str, dict[str, object]]:
    return lock_nodes(member.manifest.with_suffix(".lock"))


def quarantined(member: Member) -> list[Path]:
    folder = member.root / "cache" / "quarantine"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# -- a flipped bit is found and healed ------------------------------------------------------


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(job_seconds=0.1, poll_after_ms=20) as s:
        s.unique_videos = True  # like a hosted model: a clip lost is only got back by job id
        yield s


def test_a_flipped_bit_in_a_paid_clip_is_healed_by_the_next_render_that_reads_it(
    tmp_path: Path, server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, server)
    gen(alice.root / "film", {"film.toml": hosted_film(2)})
    assert alice.run("render").returncode == 0
    clip = str(locked(alice)["shots.s0"]["output"])
    flip_a_bit(blob(alice, clip))
    # Re-assembly reads the clip: it is checked, quarantined and fetched again by job id.
    alice.manifest.write_text(hosted_film(2) + '[edit]\nsequence = ["s1", "s0"]\n')
    result = alice.run("render")
    assert result.returncode == 0, result.stderr
    assert len(server.creates) == 2  # nothing bought again
    assert "spent $0.00" in result.stderr
    assert file_digest(blob(alice, clip)) == clip
    assert locked(alice)["shots.s0"]["output"] == clip
    [evidence] = quarantined(alice)
    assert evidence.name.startswith(clip)


def test_cache_verify_finds_a_flipped_bit_anywhere_and_repair_heals_it_at_no_cost(
    tmp_path: Path, server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, server)
    gen(alice.root / "film", {"film.toml": hosted_film(2)})
    assert alice.run("render").returncode == 0
    clip = str(locked(alice)["shots.s1"]["output"])
    flip_a_bit(blob(alice, clip))
    # A segment of the cut: no lock names it, verify must still check it.
    segment = next(
        json.loads(p.read_text())["output"]
        for p in (alice.root / "cache" / "actions" / "se").glob("segment-*.json")
    )
    flip_a_bit(blob(alice, segment))
    found = alice.run("cache", "verify")
    assert found.returncode == 1
    assert f"corrupt: local blob {clip}" in found.stdout
    assert f"corrupt: local blob {segment}" in found.stdout
    assert "2 corrupt blobs" in found.stdout

    repaired = alice.run("cache", "verify", "--repair")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "fetched again from openai by the job id" in repaired.stdout
    assert len(server.creates) == 2
    assert file_digest(blob(alice, clip)) == clip
    assert len(quarantined(alice)) == 2
    assert "0 corrupt blobs" in alice.run("cache", "verify").stdout
    # The segment is conformed again by the next render that needs it.
    alice.manifest.write_text(hosted_film(2) + "[edit]\nloudness_lufs = -20\n")
    assert alice.run("render").returncode == 0
    assert file_digest(blob(alice, segment)) == segment or not blob(alice, segment).exists()
    assert len(server.creates) == 2


def test_a_truncated_record_is_rebuilt_from_the_lock_and_keeps_its_job_id(
    tmp_path: Path, server: OpenAIServer
) -> None:
    alice = Member(tmp_path / "alice", None, server)
    gen(alice.root / "film", {"film.toml": hosted_film(2)})
    assert alice.run("render").returncode == 0
    entry = locked(alice)["shots.s0"]
    key = str(entry["key"])
    record = alice.root / "cache" / "actions" / key[:2] / f"{key}.json"
    record.write_bytes(record.read_bytes()[:40])  # a half-written record
    alice.manifest.write_text(hosted_film(2) + '[edit]\nsequence = ["s1", "s0"]\n')
    result = alice.run("render")
    assert result.returncode == 0, result.stderr
    provenance = json.loads((alice.manifest.parent / "out" / "film.provenance.json").read_text())
    [node] = [n for n in provenance["nodes"] if n["id"] == "shots.s0"]
    assert node["job_id"] == entry["job_id"]
    assert json.loads(record.read_text())["job_id"] == entry["job_id"]
    assert locked(alice)["shots.s0"]["job_id"] == entry["job_id"]
    assert len(server.creates) == 2


def test_store_put_replaces_a_blob_that_does_not_hash_to_its_name(tmp_path: Path) -> None:
    store = Store(tmp_path / "cache")
    (store.own_tmp() / "a").write_bytes(b"the good clip")
    digest = store.put(store.own_tmp() / "a")
    flip_a_bit(store.blob(digest))
    again = Store(tmp_path / "cache")  # another run: nothing verified yet
    (again.own_tmp() / "b").write_bytes(b"the good clip")
    assert again.put(again.own_tmp() / "b") == digest
    assert file_digest(again.blob(digest)) == digest
    assert len(again.quarantined()) == 1


def test_store_put_names_a_download_by_the_digest_taken_as_it_arrived(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "cache")
    src = store.own_tmp() / "a"
    src.write_bytes(b"the downloaded clip")
    received = Hashed(file_digest(src), src.stat().st_size)
    monkeypatch.setattr(store_module, "stream_digest", lambda _f: pytest.fail("read again"))
    assert store.put(src, received) == received.digest
    assert not src.exists() and file_digest(store.blob(received.digest)) == received.digest


def test_store_put_hashes_again_a_file_whose_length_changed_since_it_was_hashed(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "cache")
    src = store.own_tmp() / "a"
    src.write_bytes(b"the downloaded clip, and bytes written after it was hashed")
    stale = Hashed(hashlib.sha256(b"the downloaded clip").hexdigest(), 19)
    digest = store.put(src, stale)
    assert digest != stale.digest and file_digest(store.blob(digest)) == digest


# -- no code runs from the cache ------------------------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_state_file_runs_no_code_and_a_damaged_one_is_rebuilt(tmp_path: Path) -> None:
    film = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    cache = tmp_path / "cache"
    assert main(["plan", str(film), "--cache-dir", str(cache)]) == 0
    [compiled] = (cache / "state").glob("*.graph.*")
    film_id = compiled.name.split(".")[0]
    marker = tmp_path / "pwned"
    for path in (cache / "state").glob(f"{film_id}.graph.*"):
        path.write_text('{"version": 2, "key": "x", "graph": {"nodes": 5}}')
    # The old format's file: a pickle that runs a command when loaded.
    (cache / "state" / f"{film_id}.graph.pickle").write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["plan", str(film), "--cache-dir", str(cache)]) == 0
    assert main(["status", str(film), "--cache-dir", str(cache)]) == 0
    assert not marker.exists()


# -- paths and names ------------------------------------------------------------------------


def test_an_asset_swapped_for_a_symlink_after_compiling_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = MINIMAL + '[assets.ref]\npath = "assets/ref.png"\n'
    manifest = manifest.replace(
        'scene = "Riverbank at dusk."', 'scene = "R."\nimage = "assets.ref"'
    )
    film = gen(tmp_path / "film", {"film.toml": manifest, "assets/ref.png": b"png"}) / "film.toml"
    cache = tmp_path / "cache"
    assert main(["plan", str(film), "--cache-dir", str(cache)]) == 0
    outside = gen(tmp_path, {"secret.txt": "not the film's"}) / "secret.txt"
    ref = film.parent / "assets" / "ref.png"
    ref.unlink()
    ref.symlink_to(outside)
    capsys.readouterr()
    assert main(["plan", str(film), "--cache-dir", str(cache)]) == 2
    assert "outside the film's folder" in capsys.readouterr().err


def test_secrets_in_a_base_url_reach_no_message(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://user:{SECRET_PW}@127.0.0.1:{port}/v1?api-key={SECRET_Q}"
    backend = OpenAIBackend(tmp_path / "jobs", {"base_url": url, "api_key": "sk-test-key"})
    with pytest.raises(Transient) as err:
        backend.submit(shot())
    assert "127.0.0.1" in str(err.value)
    assert SECRET_PW not in str(err.value) and SECRET_Q not in str(err.value)


def test_status_never_shows_a_secret_url_a_state_file_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    film = gen(tmp_path / "film", {"film.toml": MINIMAL}) / "film.toml"
    cache = tmp_path / "cache"
    assert main(["plan", str(film), "--cache-dir", str(cache)]) == 0
    [compiled] = (cache / "state").glob("*.graph.*")
    state = cache / "state" / f"{compiled.name.split('.')[0]}.json"
    why = f"connection to http://u:{SECRET_PW}@gw/v1?api-key={SECRET_Q} failed"
    state.write_text(json.dumps({"version": 2, "built": {}, "failed": {"shots.river": why}}))
    capsys.readouterr()
    assert main(["status", str(film), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "failed" in out and "http://***@gw/v1?api-key=***" in out
    assert SECRET_PW not in out and SECRET_Q not in out


def test_url_scrubbing_and_control_characters() -> None:
    text = f"GET https://a:{SECRET_PW}@h.example/x?key={SECRET_Q}&alt=media#f then s3://b/p"
    assert scrub_urls(text) == "GET https://***@h.example/x?key=***&alt=***#f then s3://b/p"
    assert printable("a\x1b[2Jb\x00c\nd") == "a\\x1b[2Jb\\x00c\\nd"
    assert printable("line\nnext\tcol", keep="\n\t") == "line\nnext\tcol"


def test_show_escapes_terminal_controls_in_a_prompt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = MINIMAL.replace('scene = "Riverbank at dusk."', 'prompt = "Dusk.\\u001b[2J\\u0000"')
    film = gen(tmp_path / "film", {"film.toml": manifest}) / "film.toml"
    assert main(["show", str(film), "river", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x00" not in out
    assert "Dusk.\\x1b[2J\\x00" in out


# -- the lock's types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("version = 1\nnodes = 5\n", "nodes: expected a table"),
        (
            'version = 1\n[nodes.edit]\nkey = "' + "a" * 64 + '"\noutput = 5\nkind = "edit"\n',
            "output: not a sha256 digest",
        ),
    ],
)
def test_wrong_types_in_the_lock_are_clear_errors(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "film.lock"
    path.write_text(text)
    with pytest.raises(UserError, match=says):
        Lock.read(path)
