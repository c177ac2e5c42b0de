"""The backends of one run, as a value: built once from pyproject's [tool.runner.backends]
tables and the environment, then passed to compilation, planning and execution.

Backend modules are imported only when a film uses them (start-up stays fast). The tables'
digest (secrets left out) is part of the compiled-graph cache key, so a price or a model row
changed in pyproject.toml shows in the very next plan.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from runner.backends.base import Backend
from runner.digest import key_of
from runner.media import SEGMENT_VERSION

__all__ = ["Backend", "Backends", "media_version", "names"]

# name -> "module:Class". A backend's constructor takes the scratch folder for its jobs and
# its table from pyproject.toml [tool.runner.backends.NAME] (connection overrides, capability
# and price tables for gateways); secrets in it are used, never written anywhere.
_BACKENDS = {
    "previz": "runner.backends.previz:PrevizBackend",
    "openai": "runner.backends.openai:OpenAIBackend",
    "veo": "runner.backends.veo:VeoBackend",
    "fal": "runner.backends.fal:FalBackend",
    "luma": "runner.backends.luma:LumaBackend",
    "runway": "runner.backends.runway:RunwayBackend",
}
_SECRET_KEYS = ("key", "secret", "token", "password", "credential")


def names() -> list[str]:
    return sorted(_BACKENDS)


class Backends:
    """Every backend a film may use, configured; each made on first use and then shared."""

    def __init__(self, config: dict[str, Any] | None = None, scratch: Path | None = None) -> None:
        self.config = dict(config or {})
        self.scratch = scratch or Path(".cache") / "tmp" / "backends"
        self._made: dict[str, Backend] = {}

    def names(self) -> list[str]:
        return names()

    @property
    def media(self) -> str:
        return media_version()

    def get(self, name: str) -> Backend:
        """The backend called `name`; KeyError when there is none."""
        backend = self._made.get(name)
        if backend is None:
            module_name, _, class_name = _BACKENDS[name].partition(":")
            cls = getattr(importlib.import_module(module_name), class_name)
            table = self.config.get(name, {})
            backend = cls(self.scratch / name, dict(table) if isinstance(table, dict) else table)
            self._made[name] = backend
        return backend

    @property
    def digest(self) -> str:
        """What compiling depends on: the tables without their secrets (never hashed)."""
        return key_of(_without_secrets(self.config))


def _without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_secrets(v)
            for k, v in value.items()
            if not any(word in str(k).lower() for word in _SECRET_KEYS)
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)  # a TOML date or time: hashed by its text


@cache
def media_version() -> str:
    """The pinned ffmpeg build, by its wheel's version, and the way the runner assembles:
    output bytes depend on both.

    Read from package metadata, not by running ffmpeg, so planning spawns no process.
    """
    return f"imageio-ffmpeg {metadata.version('imageio-ffmpeg')}, segments v{SEGMENT_VERSION}"
