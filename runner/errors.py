"""Errors a user can cause (exit 2) and failures of a node (exit 1)."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what, where and how to fix it. Exit code 2."""


class NodeFailed(Exception):
    """A node could not be produced (backend refusal, ffmpeg failure, bad output)."""
