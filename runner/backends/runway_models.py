"""Runway's model table: one row per model id, and the create body a shot becomes. Pure:
planning reads it without the network or the runwayml SDK.

Runway bills in credits, $0.01 each; a row's `price_per_second` is its credits per second
times that. A new Runway model is one row in `[tool.runner.backends.runway] models`: the keys
every backend's rows take, plus which frame sizes it renders without an image
(`text_sizes`), whether it needs one (`image_required`), whether it takes a last frame
(`last_frame`; `last_position` is read as it) and whether it is asked for audio (`audio_field`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import model_validator

from runner.backends.base import ShotRequest
from runner.film.model_table import Flag, ModelRow, Size

CREDIT_USD = 0.01  # docs.dev.runwayml.com (pricing): API credits are bought at $0.01 each
MAX_SEED = 4294967295  # Runway's API reference: seed is an integer 0..4294967295 (assumed:
# the SDK's types say only `int`)


class RunwayRow(ModelRow):
    """A Runway model: what it accepts and costs, and the shape of its create."""

    text_sizes: tuple[Size, ...] = ()  # sizes it renders from text alone; empty: all `sizes`
    image_required: Flag = False  # image-to-video only (gen4_turbo): a first frame is needed
    audio_field: Flag = False  # sends `audio` (= the row's `audio`): the price depends on it
    # `last_frame` (shared): promptImage takes {"position": "last"} besides the first frame.

    @model_validator(mode="before")
    @classmethod
    def _last_position_is_last_frame(cls, data: Any) -> Any:
        """`last_position`, this table's first name for `last_frame`, is still read."""
        if isinstance(data, Mapping) and "last_position" in data:
            data = dict(data)
            data["last_frame"] = data.pop("last_position")
        return data


NEW_ROW = RunwayRow()
"""A model named in pyproject but not built in starts here."""
FIXED: dict[str, object] = {"remix": False, "extend": False, "reference_images": 0}
"""Keys this backend has no field for."""


def credits(per_second: float) -> float:
    """USD per second for a price in Runway credits per second."""
    return round(per_second * CREDIT_USD, 6)


# The SDK (runwayml 5.24.0, resources/text_to_video.py and image_to_video.py) gives each
# model's fields and ratios: gen4.5 takes 1280:720 and 720:1280 from text, and four more
# ratios with an image, a duration "from 2 to 10" whole seconds and a seed, no audio field and
# no negative prompt; promptImage position "first" only. promptText is "up to 1000
# characters" on every model. Credits: Runway's API pricing as copied in its API reference
# skill (skillspool.org, "Cost (credits/sec)"): gen4.5 12, gen4_turbo 5.
_GEN4_RATIOS = ("1280x720", "720x1280", "1104x832", "960x960", "832x1104", "1584x672")
_GEN4: dict[str, Any] = {
    "sizes": _GEN4_RATIOS,
    "seconds": tuple(float(s) for s in range(2, 11)),
    "seed": True,
    "max_seed": MAX_SEED,
    "max_prompt_chars": 1000,
}
# veo3.1 / veo3.1_fast (the SDK): ratios 1280:720, 720:1280, 1080:1920, 1920:1080 from text
# and image; duration 4, 6 or 8; `audio`, `negativePrompt`, seed; promptImage position
# "first" or "last" ("does not support generating with only a last frame"): an end frame is
# sent as [{uri, position: "first"}, {uri, position: "last"}]. Credits: "20-40"
# and "10-15" per second (the same pricing copy); the higher figure is taken as with audio,
# as Vertex prices Veo 3.1 ($0.40/s, $0.15/s Fast, with audio). Audio is asked for.
_VEO: dict[str, Any] = {
    "sizes": ("1280x720", "720x1280", "1920x1080", "1080x1920"),
    "seconds": (4.0, 6.0, 8.0),
    "seed": True,
    "max_seed": MAX_SEED,
    "negative_prompt": True,
    "audio": True,
    "audio_field": True,
    "last_frame": True,
    "max_prompt_chars": 1000,
}
BUILTIN: dict[str, RunwayRow] = {
    "gen4.5": RunwayRow(**_GEN4, text_sizes=("1280x720", "720x1280"), price_per_second=credits(12)),
    # Image-to-video only (POST /v1/image_to_video; the SDK's text_to_video has no gen4_turbo).
    "gen4_turbo": RunwayRow(**_GEN4, image_required=True, price_per_second=credits(5)),
    "veo3.1": RunwayRow(**_VEO, price_per_second=credits(40)),
    "veo3.1_fast": RunwayRow(**_VEO, price_per_second=credits(15)),
}


def endpoint(shot: ShotRequest) -> str:
    """Where the create goes: image_to_video with a first frame, else text_to_video."""
    return "image_to_video" if shot.image is not None else "text_to_video"


def body(shot: ShotRequest, row: RunwayRow) -> dict[str, Any]:
    """The create's fields as the SDK's `create` takes them, without the image (added as a
    data URI when sent). What the node key hashes and what the server receives."""
    args: dict[str, Any] = {
        "model": shot.model,
        "prompt_text": shot.prompt,
        "ratio": f"{shot.width}:{shot.height}",
        "duration": round(shot.seconds),
    }
    if row.seed and shot.seed is not None:
        args["seed"] = shot.seed
    if row.negative_prompt and shot.avoid:
        args["negative_prompt"] = ", ".join(shot.avoid)
    if row.audio_field:
        args["audio"] = row.audio
    return args


def problem(shot: ShotRequest, row: RunwayRow) -> str | None:
    """What the Runway keys of a row do not allow about a shot (the shared ones are checked
    by model_table); None when they allow it."""
    size = f"{shot.width}x{shot.height}"
    if row.image_required and shot.image is None:
        return (
            f"runway model {shot.model} is image-to-video only: give the shot an `image` (a "
            "first frame), or use gen4.5 or veo3.1"
        )
    if shot.end_image is not None and shot.image is None:
        return (
            f"runway model {shot.model} needs a first frame to end on a last one: give the "
            "shot an `image` too"
        )
    if shot.image is None and row.text_sizes and size not in row.text_sizes:
        allowed = ", ".join(row.text_sizes)
        return (
            f"size {size} needs a first frame on runway model {shot.model}; from text alone "
            f"it renders {allowed}"
        )
    return None
