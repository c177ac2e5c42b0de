"""fal's model table: one row per endpoint id, and how a shot's size and seconds become that
endpoint's own input fields. Pure: planning reads it without the network or fal-client.

A new fal model is one row in `[tool.runner.backends.fal] models`: the keys every backend's
rows take, plus how its endpoint spells the length (`duration`), whether it takes
`aspect_ratio`, `resolution` and `generate_audio`, whether it needs a first frame, and the
fields of its last frame (`last_frame_field`) and of the video it extends (`video_field`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from runner.backends.base import ShotRequest
from runner.film.model_table import Flag, ModelRow

SIZES: dict[str, tuple[str, str]] = {
    "1280x720": ("16:9", "720p"),
    "720x1280": ("9:16", "720p"),
    "1920x1080": ("16:9", "1080p"),
    "1080x1920": ("9:16", "1080p"),
    "832x480": ("16:9", "480p"),
    "480x832": ("9:16", "480p"),
}
"""Frame sizes fal's video endpoints render, as (aspect_ratio, resolution) on the wire."""


class FalRow(ModelRow):
    """A fal endpoint: what it accepts and costs, and the shape of its input."""

    # How `seconds` is sent: "suffixed" "8s" (Veo), "plain" "5" (Kling), or "frames":
    # num_frames at `frames_per_second` (Wan: 16 * seconds + 1 frames).
    duration: Literal["suffixed", "plain", "frames"] = "plain"
    frames_per_second: Annotated[int, Field(strict=True, gt=0)] = 16
    aspect_ratio: Flag = True  # sends aspect_ratio ("16:9", "9:16") from the shot's size
    resolution: Flag = False  # sends resolution ("720p", "1080p", "480p")
    generate_audio: Flag = False  # sends generate_audio = true (audio is in the price)
    image_required: Flag = False  # an image-to-video endpoint: `image_url` is required
    # The endpoint's last-frame field (Kling: "tail_image_url"); giving it sets `last_frame`.
    last_frame_field: str | None = None
    # The endpoint's input video field (an extend endpoint: "video_url"); giving it sets
    # `extend`, and the endpoint then takes only extensions.
    video_field: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _fields_say_what_it_takes(cls, data: Any) -> Any:
        """A row naming the field of a feature has the feature (one key, not two)."""
        if isinstance(data, Mapping):
            data = dict(data)
            for field, flag in (("last_frame_field", "last_frame"), ("video_field", "extend")):
                if data.get(field) is not None:
                    data[flag] = True
                elif data.get(flag):
                    raise ValueError(f"{flag} needs `{field}`: the endpoint's input field for it")
        return data


NEW_ROW = FalRow()
"""A model named in pyproject but not built in starts here."""
FIXED: dict[str, object] = {"remix": False, "reference_images": 0}
"""Keys fal's queue protocol (as this backend speaks it) has no field for."""

_VEO_SIZES = ("1280x720", "720x1280", "1920x1080", "1080x1920")
_VEO: dict[str, Any] = {
    "sizes": _VEO_SIZES,
    "seconds": (4.0, 6.0, 8.0),
    "duration": "suffixed",
    "resolution": True,
    "generate_audio": True,
    "audio": True,
}
# fal.ai/models/fal-ai/veo3 (llms.txt): aspect_ratio 16:9 | 9:16, duration 4s | 6s | 8s,
# resolution 720p | 1080p, negative_prompt, seed, generate_audio; "$0.20 (audio off) or $0.40
# (audio on)" per second. fal-ai/veo3/fast: the same inputs, "$0.10 (audio off) or $0.15
# (audio on)". The image-to-video endpoints (fal's schema as mirrored by docs.kkiai.com):
# image_url required, aspect_ratio, duration, resolution, generate_audio; no seed or
# negative_prompt listed. Their prices are assumed to be the text-to-video ones. No prompt
# limit is stated on the pages read: none assumed.
_VEO_T2V = _VEO | {"image": False, "seed": True, "negative_prompt": True}
_VEO_I2V = _VEO | {"image_required": True}
# fal.ai/models/fal-ai/kling-video/v2.1/master/image-to-video (llms.txt): duration "5" | "10",
# negative_prompt, cfg_scale; "For 5s video your request will cost $1.40. For every
# additional second you will be charged $0.28" ($0.28/s). The text-to-video endpoint is
# assumed to match (fal's Kling 2.0 master text-to-video page: the same price, aspect_ratio).
# Sizes assumed 1080p (fal's page gives no resolution); no seed, no audio, no prompt limit
# stated. The i2v endpoint takes no aspect_ratio (it follows the image).
_KLING = {
    "sizes": ("1920x1080", "1080x1920"),
    "seconds": (5.0, 10.0),
    "price_per_second": 0.28,
    "negative_prompt": True,
}
# fal.ai/models/fal-ai/wan/v2.2-a14b/image-to-video (llms.txt): num_frames 17..161,
# frames_per_second 4..60 (default 16), resolution 480p | 580p | 720p, aspect_ratio, seed,
# negative_prompt; "$0.08 per video second for 720p, ... $0.04 ... for 480p. Video seconds are
# calculated at 16 frames per second". Text-to-video assumed to match (the a14b lora and
# video-to-video pages list the same inputs and prices). 580p is not offered (no frame size is
# documented for it); 1..10 s at 16 fps is 17..161 frames.
_WAN = {
    "sizes": ("1280x720", "720x1280", "832x480", "480x832"),
    "seconds": tuple(float(s) for s in range(1, 11)),
    "price_per_second": 0.08,
    "prices": {"480p": 0.04, "720p": 0.08},
    "duration": "frames",
    "resolution": True,
    "seed": True,
    "negative_prompt": True,
}
# fal.ai/models/fal-ai/veo3.1/extend-video and /fast/extend-video (llms.txt): "Extend
# Veo-Created Videos up to 30 seconds"; prompt, video_url (required), aspect_ratio auto |
# 16:9 | 9:16, duration (default "7s"), negative_prompt, resolution (default "720p"); fast:
# "$0.10 (audio off) or $0.15 (audio on)" per second. The full endpoint is assumed to cost
# what Veo 3.1 does ($0.40/s with audio). Only 7 s and 720p are assumed to be accepted.
_VEO_EXTEND = _VEO | {
    "sizes": ("1280x720", "720x1280"),
    "seconds": (7.0,),
    "image": False,
    "negative_prompt": True,
    "video_field": "video_url",
}
BUILTIN: dict[str, FalRow] = {
    "fal-ai/veo3": FalRow(**_VEO_T2V, price_per_second=0.40),
    "fal-ai/veo3/fast": FalRow(**_VEO_T2V, price_per_second=0.15),
    "fal-ai/veo3/image-to-video": FalRow(**_VEO_I2V, price_per_second=0.40),
    "fal-ai/veo3/fast/image-to-video": FalRow(**_VEO_I2V, price_per_second=0.15),
    "fal-ai/kling-video/v2.1/master/text-to-video": FalRow(**_KLING, image=False),
    "fal-ai/kling-video/v2.1/master/image-to-video": FalRow(
        **_KLING, image_required=True, aspect_ratio=False, last_frame_field="tail_image_url"
    ),
    "fal-ai/wan/v2.2-a14b/text-to-video": FalRow(**_WAN, image=False),
    "fal-ai/wan/v2.2-a14b/image-to-video": FalRow(**_WAN, image_required=True),
    "fal-ai/veo3.1/extend-video": FalRow(**_VEO_EXTEND, price_per_second=0.40),
    "fal-ai/veo3.1/fast/extend-video": FalRow(**_VEO_EXTEND, price_per_second=0.15),
}


def arguments(shot: ShotRequest, row: FalRow) -> dict[str, Any]:
    """The endpoint's input for the shot, without the image (`image_url` is added once the
    image is uploaded). Key order and values are what `find` compares with fal's history."""
    aspect, resolution = SIZES.get(f"{shot.width}x{shot.height}", ("16:9", "720p"))
    args: dict[str, Any] = {"prompt": shot.prompt}
    seconds = round(shot.seconds)
    if row.duration == "suffixed":
        args["duration"] = f"{seconds}s"
    elif row.duration == "plain":
        args["duration"] = str(seconds)
    else:
        args["num_frames"] = round(shot.seconds * row.frames_per_second) + 1
        args["frames_per_second"] = row.frames_per_second
    if row.aspect_ratio:
        args["aspect_ratio"] = aspect
    if row.resolution:
        args["resolution"] = resolution
    if row.generate_audio:
        args["generate_audio"] = row.audio
    if row.negative_prompt and shot.avoid:
        args["negative_prompt"] = ", ".join(shot.avoid)
    if row.seed and shot.seed is not None:
        args["seed"] = shot.seed
    return args


def problem(shot: ShotRequest, row: FalRow) -> str | None:
    """What the fal-specific keys of a row do not allow about a shot (the shared ones are
    checked by model_table); None when they allow it."""
    size = f"{shot.width}x{shot.height}"
    if (row.aspect_ratio or row.resolution) and size not in SIZES:
        return f"size {size} has no aspect ratio and resolution fal can send"
    if row.video_field is not None and shot.extend_of is None:
        return (
            f"fal model {shot.model} is an extend endpoint: give the shot `extend = "
            '{ shot = "..." }` (the video it continues), or use a text-to-video endpoint'
        )
    if row.image_required and shot.image is None:
        return (
            f"fal model {shot.model} is an image-to-video endpoint: give the shot an `image` "
            "(a first frame), or use the model's text-to-video endpoint"
        )
    return None
