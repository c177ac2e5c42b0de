"""Errors a user can cause (exit 2) and failures of a node (exit 1)."""

from __future__ import annotations

import re


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
