"""Backends by name, imported only when a film uses them (start-up stays fast)."""

from __future__ import annotations

import importlib
from functools import cache
from importlib import metadata
from pathlib import Path

from runner.backends.base import Backend, Capabilities

__all__ = ["Backend", "Capabilities", "get", "media_version", "names"]

# name -> "module:Class"; a backend's constructor takes the scratch folder for its jobs.
_BACKENDS = {
    "previz": "runner.backends.previz:PrevizBackend",
}
_scratch: Path = Path(".cache") / "tmp"


def names() -> list[str]:
    return sorted(_BACKENDS)


def set_scratch(path: Path) -> None:
    """Where backends write jobs in progress (inside the cache, so renames are atomic)."""
    global _scratch
    _scratch = path
    get.cache_clear()


@cache
def get(name: str) -> Backend:
    """The backend called `name`; KeyError when there is none."""
    module_name, _, class_name = _BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(_scratch / name)
    return backend


@cache
def media_version() -> str:
    """The pinned ffmpeg build, by its wheel's version: output bytes depend on it.

    Read from package metadata, not by running ffmpeg, so planning spawns no process.
    """
    return f"imageio-ffmpeg {metadata.version('imageio-ffmpeg')}"
