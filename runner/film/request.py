"""What a shot asks of a backend, and what a model accepts: plain data the film layer builds
and checks (compiling needs a backend's tables, never its network)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pydantic is imported only when a table is read, not for a no-op plan
    from runner.film.model_table import ModelRow

    Capabilities = ModelRow
    """What a model accepts (and costs): a row of the backend's model table."""


@dataclass(frozen=True)
class ShotRequest:
    """Everything a backend needs to render one take of one shot."""

    film: str  # the film's title
    shot: str  # the shot id, e.g. "river"
    take: int  # 1-based take index
    model: str
    prompt: str  # the compiled prompt text, exactly as sent
    avoid: tuple[str, ...]  # exclusions, for backends with a negative-prompt field
    seconds: float
    width: int
    height: int
    fps: int
    seed: int | None
    image: Path | None = None  # first-frame reference, when the shot has one
    remix_of: str | None = None  # the shot whose video this one edits (`remix`)
    references: tuple[Path, ...] = ()  # reference images (a character, an object, a look)
    end_image: Path | None = None  # the clip's last frame, when the shot has `end_image`
    extend_of: str | None = None  # the shot whose video this one continues (`extend`)
    extend_from: float = 0.0  # seconds: where the continued video ends (previz's timecode)
    extend_job: str | None = None  # the provider's job id of the video continued
    extend_video: Path | None = None  # that video, for providers that take it as input


def __getattr__(name: str) -> Any:
    """`Capabilities` (a model table's row), loaded on first use: importing it loads pydantic."""
    if name == "Capabilities":
        from runner.film.model_table import ModelRow

        return ModelRow
    raise AttributeError(name)


class Models(Protocol):
    """What compiling asks of a backend: its tables and request shape, all offline."""

    name: str
    default_model: str  # used when neither the shot, its profile nor [defaults] names one

    def capabilities(self, model: str) -> Capabilities: ...

    def rows(self) -> Mapping[str, Capabilities]:
        """Every model of the backend's table, by name (to say which have a feature)."""
        ...

    def price_per_second(self, model: str, width: int, height: int) -> float: ...

    def check(self, shot: ShotRequest) -> str | None:
        """What the backend cannot render about this shot, in words; None when it can."""
        ...

    def request(self, shot: ShotRequest) -> dict[str, Any]:
        """The JSON-able part of the shot that changes the output: it goes into the node key."""
        ...


class Catalog(Protocol):
    """The backends a film may use, by name, and the pinned media build its edit depends on."""

    @property
    def media(self) -> str: ...

    def get(self, name: str) -> Models:
        """The backend called `name`; KeyError when there is none."""
        ...

    def names(self) -> list[str]: ...
