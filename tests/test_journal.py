"""The submit journal never takes an entry it cannot read for "no entry": that would send a
paid create again. Garbage, a directory or a newer format stop the node with what to do; a
damaged send time is repaired from the file's own time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner.run.journal import JOURNAL_VERSION, Journal, JournalError

KEY = "ab" * 32


@pytest.fixture
def journal(tmp_path: Path) -> Journal:
    j = Journal(tmp_path / "journal")
    j.sending(KEY, "shots.a", "openai")
    return j


def entry_path(journal: Journal) -> Path:
    return journal.root / f"{KEY}.json"


def test_an_entry_round_trips_with_its_job_id(journal: Journal) -> None:
    journal.submitted(KEY, "video_1")
    entry = journal.get(KEY)
    assert entry is not None and entry["job_id"] == "video_1" and entry["node"] == "shots.a"
    assert journal.job_ids() == ["video_1"] and journal.pending() == [KEY]


@pytest.mark.parametrize(
    "content",
    [b"\x00\xff\xfe binary", b"[1, 2]", b'{"job_id": "video_1"}', b'{"version": "1"}'],
)
def test_an_unreadable_entry_stops_its_node_instead_of_reading_as_none(
    journal: Journal, content: bytes
) -> None:
    entry_path(journal).write_bytes(content)
    with pytest.raises(JournalError, match="may have been paid for") as err:
        journal.get(KEY)
    assert str(entry_path(journal)) in str(err.value) and "delete the file" in str(err.value)
    assert journal.job_ids() == []  # the other nodes' bookkeeping goes on


def test_a_directory_in_place_of_an_entry_is_a_clear_error(journal: Journal) -> None:
    entry_path(journal).unlink()
    entry_path(journal).mkdir()
    with pytest.raises(JournalError, match="cannot be read"):
        journal.get(KEY)


def test_an_entry_from_a_newer_runner_asks_for_an_upgrade(journal: Journal) -> None:
    data = json.loads(entry_path(journal).read_text())
    entry_path(journal).write_text(json.dumps({**data, "version": JOURNAL_VERSION + 1}))
    with pytest.raises(JournalError, match="newer runner"):
        journal.get(KEY)


@pytest.mark.parametrize("sent_at", ["abc", None, True, float("nan")])
def test_a_damaged_send_time_is_repaired_from_the_files_time(
    journal: Journal, sent_at: object
) -> None:
    data = json.loads(entry_path(journal).read_text())
    entry_path(journal).write_text(json.dumps({**data, "sent_at": sent_at}))
    os.utime(entry_path(journal), (1_700_000_000, 1_700_000_000))
    entry = journal.get(KEY)
    assert entry is not None and entry["sent_at"] == 1_700_000_000


def test_only_digest_named_files_are_entries(journal: Journal) -> None:
    (journal.root / "../../escape.json").resolve().write_text("{}")
    (journal.root / "notes.json").write_text("{}")
    assert journal.pending() == [KEY]
