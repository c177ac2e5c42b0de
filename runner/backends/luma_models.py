"""Luma's model table (Ray 2, Ray Flash 2), and how a shot's size and seconds become the
`aspect_ratio`, `resolution` and `duration` of a Dream Machine create. Pure: planning reads it
without the network or the lumaai SDK.

Luma prices video per million pixels generated, at 24 frames a second: a row's
`price_per_million_pixels` times the frame's pixels times 24 is its price per second.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from runner.backends.base import ShotRequest
from runner.film.model_table import ModelRow, Price

FPS = 24  # Luma renders (and bills) 24 frames a second
RATIOS: dict[str, tuple[int, int]] = {
    "16:9": (16, 9),
    "9:16": (9, 16),
    "1:1": (1, 1),
    "4:3": (4, 3),
    "3:4": (3, 4),
    "21:9": (21, 9),
    "9:21": (9, 21),
}
"""The aspect ratios the create takes (lumaai 1.21's `aspect_ratio`)."""
RESOLUTIONS: dict[str, int] = {"540p": 540, "720p": 720, "1080p": 1080, "4k": 2160}
"""The create's `resolution`, by the frame's short side. Assumed: Luma's docs name the tiers,
not their pixels; the short side is taken to be the tier's number (4k: 2160), the long side
follows the aspect ratio (16:9 at 540p: 960x540). The prices checked below agree for 16:9."""


def _size(ratio: tuple[int, int], short: int) -> str:
    w, h = ratio
    return f"{short * w // h}x{short}" if w >= h else f"{short}x{short * h // w}"


SIZES: dict[str, tuple[str, str]] = {
    _size(ratio, short): (name, res)
    for name, ratio in RATIOS.items()
    for res, short in RESOLUTIONS.items()
}
"""Frame size -> (aspect_ratio, resolution) as the create sends them."""

KeyframeSlot = Literal["frame0", "frame1"]
KeyframeType = Literal["image", "generation"]


class LumaRow(ModelRow):
    """A Luma model: the shared keys, its price per million pixels, and its keyframes."""

    # USD per million pixels generated at 24 fps; when set it prices every size (and wins
    # over price_per_second, which is then the 16:9 720p figure, for `plan`'s tables).
    price_per_million_pixels: Price | None = None
    # The keyframe slots (frame0: the first frame, frame1: the last) and what each takes: an
    # image URL, or a generation (an earlier Luma job: extend forward from frame0, backward
    # from frame1). An end frame is a frame1 image; extend is a frame0 generation.
    keyframes: dict[KeyframeSlot, tuple[KeyframeType, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _priced_per_second_too(self) -> LumaRow:
        """A row priced per pixel gets its 720p 16:9 price per second, so the shared
        checks (a paid row needs a price) hold."""
        if self.price_per_million_pixels is not None and self.price_per_second is None:
            per_second = per_million_pixels(self.price_per_million_pixels, 1280, 720)
            object.__setattr__(self, "price_per_second", per_second)
        return self

    def luma_price(self, width: int, height: int) -> float | None:
        """USD per second at this size: per pixel when the row says so, else the shared way."""
        if self.price_per_million_pixels is not None:
            return per_million_pixels(self.price_per_million_pixels, width, height)
        return self.price(width, height)


def per_million_pixels(price: float, width: int, height: int) -> float:
    return price * width * height * FPS / 1_000_000


NEW_ROW = LumaRow()
"""A model named in pyproject but not built in starts here."""
FIXED: dict[str, object] = {"remix": False, "seed": False, "negative_prompt": False}
FIXED |= {"reference_images": 0, "audio": False, "max_seed": None}
"""Keys the Dream Machine create has no field for (a row saying otherwise would have an input
dropped, silently, from a paid render)."""

# docs.lumalabs.ai/docs/video-generation and the lumaai 1.21 SDK's create: model "ray-2" |
# "ray-flash-2"; resolution 540p | 720p | 1080p | 4k; duration "5s" | "9s"; aspect_ratio
# 1:1, 16:9, 9:16, 4:3, 3:4, 21:9, 9:21; keyframes frame0 / frame1, each {"type": "image",
# "url"} or {"type": "generation", "id"}; no seed, no negative prompt, no audio (added audio is
# a separate paid call, not used). docs.lumalabs.ai/docs/errors: "Prompt is too long, maximum
# length is 5000 characters".
# Prices: Luma lists API video per million pixels at 24 fps. Ray 2: $0.0064, Ray Flash 2:
# $0.0022. Derived from Luma's list prices as mirrored by Comfy's API-node price table
# (Comfy-Org/docs tutorials/api-nodes/pricing.mdx): ray-2 5 s at 540p $0.40, 720p $0.71,
# 1080p $1.59, 4k $6.37 (9 s: 0.72, 1.27, 2.87, 11.47); ray-flash-2 5 s at 4k $2.19 (9 s:
# 3.94). 1280*720*24*5/1e6 * 0.0064 = 0.708, 3840*2160*24*5/1e6 * 0.0022 = 2.19: every figure
# agrees with the per-pixel price to the cent. Image-to-video is assumed to cost the same as
# text-to-video (the table lists image-to-video; Luma's docs do not price them apart).
_RAY: dict[str, Any] = {
    "sizes": tuple(SIZES),
    "seconds": (5.0, 9.0),
    "image": True,
    "last_frame": True,  # keyframes frame1: an image the clip ends on
    "extend": True,  # keyframes of type generation: continue an earlier Luma job
    "keyframes": {"frame0": ("image", "generation"), "frame1": ("image", "generation")},
    "max_prompt_chars": 5000,
}
BUILTIN: dict[str, LumaRow] = {
    "ray-2": LumaRow(**_RAY, price_per_million_pixels=0.0064),
    "ray-flash-2": LumaRow(**_RAY, price_per_million_pixels=0.0022),
}


def arguments(shot: ShotRequest) -> dict[str, Any]:
    """The create's body for the shot, without keyframes (the image's URL is added once it
    is uploaded). Its values are what `find` compares with a generation's `request` echo."""
    aspect, resolution = SIZES.get(f"{shot.width}x{shot.height}", ("16:9", "720p"))
    return {
        "model": shot.model,
        "prompt": shot.prompt,
        "aspect_ratio": aspect,
        "resolution": resolution,
        "duration": f"{round(shot.seconds)}s",
        "loop": False,
    }


def problem(shot: ShotRequest, row: LumaRow) -> str | None:
    """What Luma cannot send about a shot beyond the shared checks; None when it can."""
    size = f"{shot.width}x{shot.height}"
    if size not in SIZES:
        allowed = ", ".join(sorted(SIZES, key=lambda s: (SIZES[s][1], SIZES[s][0])))
        return f"size {size} has no Luma aspect ratio and resolution; allowed: {allowed}"
    if shot.seconds != round(shot.seconds):
        return f"seconds {shot.seconds:g} is not a whole number of seconds Luma can send"
    if shot.image is not None and "image" not in row.keyframes.get("frame0", ()):
        return f"luma model {shot.model} takes no first-frame image; remove `image`"
    if shot.end_image is not None and "image" not in row.keyframes.get("frame1", ()):
        return f"luma model {shot.model} takes no keyframe image in frame1; remove `end_image`"
    if shot.extend_of is not None and "generation" not in row.keyframes.get("frame0", ()):
        return f"luma model {shot.model} takes no generation in frame0; remove `extend`"
    return None
