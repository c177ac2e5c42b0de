"""Backends by name, imported only when a film uses them (start-up stays fast)."""

from __future__ import annotations

import importlib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from runner.backends.base import Backend, Capabilities

__all__ = ["Backend", "Capabilities", "get", "media_version", "names"]

# name -> "module:Class". A backend's constructor takes the scratch folder for its jobs and
# its table from pyproject.toml [tool.runner.backends.NAME] (connection overrides, capability
# and price tables for gateways); secrets in it are used, never written anywhere.
_BACKENDS = {
    "previz": "runner.backends.previz:PrevizBackend",
    "openai": "runner.backends.openai:OpenAIBackend",
    "veo": "runner.backends.veo:VeoBackend",
}
_scratch: Path = Path(".cache") / "tmp"
_config: dict[str, Any] = {}


def names() -> list[str]:
    return sorted(_BACKENDS)


def configure(scratch: Path, config: dict[str, Any]) -> None:
    """Where backends write jobs in progress (inside the cache, so renames are atomic), and
    the [tool.runner.backends] tables."""
    global _scratch, _config
    _scratch = scratch
    _config = config
    get.cache_clear()


@cache
def get(name: str) -> Backend:
    """The backend called `name`; KeyError when there is none."""
    module_name, _, class_name = _BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = cls(_scratch / name, dict(_config.get(name, {})))
    return backend


@cache
def media_version() -> str:
    """The pinned ffmpeg build, by its wheel's version: output bytes depend on it.

    Read from package metadata, not by running ffmpeg, so planning spawns no process.
    """
    return f"imageio-ffmpeg {metadata.version('imageio-ffmpeg')}"
