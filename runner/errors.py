"""Errors a user can cause (exit 2) and failures of a node (exit 1)."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

TOO_DEEP = "tables or arrays nested too deeply to read (hundreds of levels); flatten them"


class UserError(Exception):
    """Bad input: the message says what, where and how to fix it. Exit code 2."""


class NodeFailed(Exception):
    """A node could not be produced (backend refusal, ffmpeg failure, bad output)."""


# -- what may be shown: one place for every message, state file, record and log --

_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s'\"<>`]+")
_USERINFO = re.compile(r"^([^/?#]*://)[^/?#@]*@")
_QUERY_VALUE = re.compile(r"=[^&#]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def scrub_url(url: str) -> str:
    """The URL with its userinfo and every query value blanked: `http://u:pw@h/v1?key=s`
    shows as `http://***@h/v1?key=***`."""
    url = _USERINFO.sub(r"\1***@", url)
    base, sep, rest = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = rest.partition("#")
    return f"{base}?{_QUERY_VALUE.sub('=***', query)}{hash_sep}{fragment}"


def scrub_urls(text: str) -> str:
    """Every URL in text scrubbed (see scrub_url)."""
    return _URL.sub(lambda m: scrub_url(m.group(0)), text)


def printable(text: str, keep: str = "") -> str:
    """User text safe for a terminal: control characters (ANSI escapes, NUL, newlines in an
    id) shown as escapes, except those in `keep` (e.g. the newlines of a prompt)."""
    return _CONTROL.sub(lambda m: m.group(0) if m.group(0) in keep else _escape(m.group(0)), text)


def shown(text: str) -> str:
    """A message as it may reach a terminal, a log or a file: URLs scrubbed, controls escaped
    (its own line breaks kept)."""
    return printable(scrub_urls(text), keep="\n")


def _escape(char: str) -> str:
    return repr(char)[1:-1]


class DiskFull(Exception):
    """No space left on the device holding `folder`: one line naming it and what was free."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            free = f"{_size(shutil.disk_usage(folder).free)} free"
        except OSError:
            free = "free space unknown"
        super().__init__(
            f"{folder}: no space left on the device ({free}); free some space or point "
            "--cache-dir at a larger disk, then run again (nothing half-written was kept)"
        )

    @staticmethod
    def of(err: BaseException, folder: Path) -> DiskFull | None:
        """A DiskFull for an ENOSPC/EDQUOT OSError (named by its file, else `folder`)."""
        if isinstance(err, DiskFull):
            return err
        if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            return None
        if err.filename:
            named = Path(str(err.filename))
            folder = named if named.is_dir() else named.parent
        return DiskFull(folder)


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"
