"""A backend's model table: one schema for what each model accepts and costs, read the same way
for every backend's built-in rows and for `[tool.runner.backends.NAME] models` overrides, and
the one check of a shot against a row.

Pure: the planner checks a film against these rows without any network or backend module.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runner.errors import UserError

if TYPE_CHECKING:
    from runner.film.request import ShotRequest

DEFAULT_MAX_SECONDS = 60.0  # a row that lists no lengths and no maximum
HD_AREA = 1280 * 720  # above this many pixels `price_per_second_hd` applies
ALIASES = {"price": "price_per_second"}  # older spellings of a key, still read
SOURCE = "pyproject.toml"  # backend tables live in the film repository's
EXAMPLE = '{ sizes = ["1280x720"], seconds = [5, 10], price_per_second = 0.2 }'

Size = Annotated[str, Field(strict=True, pattern=r"^[1-9]\d*x[1-9]\d*$")]
Seconds = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Price = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]
Flag = Annotated[bool, Field(strict=True)]
Count = Annotated[int, Field(strict=True, ge=0)]
Resolution = Literal["480p", "720p", "1080p", "4k"]


class ModelRow(BaseModel):
    """What one model accepts and costs. Also the planner's `Capabilities`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sizes: tuple[Size, ...] = ()  # "WxH"; empty: any size
    seconds: tuple[Seconds, ...] = ()  # allowed lengths; empty: any length up to max_seconds
    max_seconds: Seconds = DEFAULT_MAX_SECONDS  # when not given: the longest of `seconds`
    price_per_second: Price | None = None  # USD; None: unknown, so a paid row cannot plan
    price_per_second_hd: Price | None = None  # above 1280x720, where the provider charges more
    prices: dict[Resolution, Price] = {}  # per resolution ("4k" = 0.6): before the two above
    audio: Flag = False  # the video has sound (and the price includes it)
    image: Flag = True  # takes a first-frame image
    last_frame: Flag = False  # takes a last-frame image
    reference_images: Count = 0  # how many reference images (a character, an object, a look)
    remix: Flag = False  # can edit an earlier job's video
    extend: Flag = False  # can continue an earlier job's video
    seed: Flag = False  # takes a seed
    max_seed: Count | None = None  # seeds run from 0 to this; None: any the backend sends
    negative_prompt: Flag = False  # `[style] avoid` goes to a field of its own, not the text
    max_prompt_chars: Annotated[int, Field(strict=True, gt=0)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _longest_by_default(cls, data: Any) -> Any:
        """A row that lists lengths but no maximum allows up to the longest of them."""
        if isinstance(data, Mapping) and data.get("max_seconds") is None:
            seconds = data.get("seconds")
            data = {k: v for k, v in data.items() if k != "max_seconds"}
            numbers = isinstance(seconds, list | tuple) and all(
                isinstance(s, int | float) and not isinstance(s, bool) for s in seconds
            )
            if numbers and seconds:
                data["max_seconds"] = max(seconds)
        return data

    def price(self, width: int, height: int) -> float | None:
        """USD per second at this size: per resolution, else above HD, else the base price."""
        price = self.prices.get(resolution(width, height))
        if price is None and width * height > HD_AREA:
            price = self.price_per_second_hd
        return self.price_per_second if price is None else price


Row = TypeVar("Row", bound=ModelRow)


def resolution(width: int, height: int) -> Resolution:
    """The resolution tier providers price by, from the frame's short side."""
    short = min(width, height)
    if short <= 720:
        return "480p" if short <= 480 else "720p"
    return "1080p" if short <= 1080 else "4k"


# -- the one check -----------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """What a row does not allow about a shot: the shot's key, its value as written, and why."""

    field: str  # "size", "seconds", "image", "references", "seed", "prompt", "remix", ...
    why: str
    value: str | None = None

    def __str__(self) -> str:
        return f"{self.field} {self.value} {self.why}" if self.value is not None else self.why

    def at(self, where: str) -> str:
        """The problem located at the shot's key, e.g. `film.toml: shots.a.seconds: 90 is ...`."""
        text = f"{self.value} {self.why}" if self.value is not None else self.why
        return f"{where}.{self.field}: {text}"


FEATURES = {"end_image": "last_frame", "extend": "extend", "remix": "remix"}
"""A shot's key -> the row's flag that allows it."""


def check(
    shot: ShotRequest,
    row: ModelRow,
    backend: str,
    tables: Mapping[str, Mapping[str, ModelRow]] | None = None,
) -> Problem | None:
    """The first thing `row` does not allow about `shot`; None when it allows all of it.
    `tables` (backend -> its rows), when given, name the models that have a missing feature."""
    model = f"{backend} model {shot.model}"
    size = f"{shot.width}x{shot.height}"
    if row.sizes and size not in row.sizes:
        allowed = ", ".join(row.sizes)
        return Problem("size", f"is not supported by {model}; allowed: {allowed}", size)
    seconds = f"{shot.seconds:g}"
    if shot.seconds <= 0:
        return Problem("seconds", "is not a length: give more than 0", seconds)
    if row.seconds and shot.seconds not in row.seconds:
        allowed = ", ".join(f"{s:g}" for s in row.seconds)
        return Problem("seconds", f"is not supported by {model}; allowed: {allowed}", seconds)
    if shot.seconds > row.max_seconds:
        why = f"is longer than {model} allows (at most {row.max_seconds:g}); split the shot"
        return Problem("seconds", why, seconds)
    if shot.image is not None and not row.image:
        return Problem("image", f"{model} takes no first-frame image; remove `image`")
    if len(shot.references) > row.reference_images:
        why = f"{model} takes {row.reference_images or 'no'} reference images; "
        return Problem("references", why + f"this shot gives {len(shot.references)}")
    if shot.seed is not None and row.max_seed is not None and not 0 <= shot.seed <= row.max_seed:
        return Problem("seed", f"is not from 0 to {row.max_seed} for {model}", str(shot.seed))
    if row.max_prompt_chars is not None and len(shot.prompt) > row.max_prompt_chars:
        why = (
            f"the compiled prompt has {len(shot.prompt)} characters; {model} takes at most "
            f"{row.max_prompt_chars}: shorten the shot's text, its characters' descriptions "
            "or [style]"
        )
        return Problem("prompt", why)
    if shot.remix_of is not None and not row.remix:
        return Problem("remix", f"{model} cannot remix a video" + _having("remix", tables))
    if shot.end_image is not None and not row.last_frame:
        why = f"{model} takes no last-frame image" + _having("end_image", tables)
        return Problem("end_image", why)
    if shot.extend_of is not None and not row.extend:
        return Problem("extend", f"{model} cannot extend a video" + _having("extend", tables))
    return None


def _having(key: str, tables: Mapping[str, Mapping[str, ModelRow]] | None) -> str:
    """ "; models that can: luma ray-2, ..." for a shot key, from every backend's table."""
    if tables is None:
        return ""
    flag = FEATURES[key]
    names = [
        f"{backend} {model}"
        for backend, rows in sorted(tables.items())
        for model, row in sorted(rows.items())
        if getattr(row, flag)
    ]
    return f"; models that can: {', '.join(names)}" if names else "; no model here can"


def words(shot: ShotRequest, row: ModelRow, backend: str) -> str | None:
    """`check`, as a backend's `check` answers: in words."""
    problem = check(shot, row, backend)
    return None if problem is None else str(problem)


def missing(backend: str, model: str, rows: Mapping[str, ModelRow], where: str) -> str | None:
    """Why `model` cannot be planned from the table (no row, or a row with no price)."""
    example = f'e.g. models = {{ "{model}" = {EXAMPLE} }}'
    row = rows.get(model)
    if row is None:
        known = ", ".join(sorted(rows)) or "none"
        return (
            f"model {model!r} is not in the {backend} backend's table (unknown {backend} model;"
            f" known: {known}); add a row to {where}, {example}"
        )
    if row.price_per_second is None:
        return f"model {model!r} has no price_per_second; add one to its row in {where}, {example}"
    return None


# -- rows from pyproject ------------------------------------------------------------------


def load(
    where: str,
    overrides: object,
    builtin: Mapping[str, Row],
    new: Row,
    *,
    sizes: Collection[str] | None = None,
    fixed: Mapping[str, object] | None = None,
    row_type: type[Row] | None = None,
) -> dict[str, Row]:
    """The built-in rows with `models` from the backend's pyproject table merged over them.

    A row for a built-in model changes only the keys it gives; a new model starts from `new`.
    `sizes`, when given, are the only sizes the backend can send; `fixed` are keys its
    protocol has no field for (a row saying otherwise would have an input dropped, silently,
    from a paid render); `row_type`, a ModelRow with a backend's own keys (default: `new`'s
    type). Errors name the table and the key path, like the manifest's.
    """
    kind = row_type or type(new)
    if not isinstance(overrides, Mapping):
        raise UserError(f"{SOURCE}: {where} models: expected a table of rows, e.g. {EXAMPLE}")
    table: dict[str, Row] = dict(builtin)
    for model, given in overrides.items():
        at = f"{SOURCE}: {where} models.{model}"
        if not isinstance(given, Mapping):
            raise UserError(f"{at}: expected a table, e.g. {EXAMPLE} (got {given!r})")
        given = {ALIASES.get(k, k): v for k, v in given.items()}
        base = table.get(model, new).model_dump()
        if "seconds" in given:
            base.pop("max_seconds")  # derived again from the new lengths unless given
        if "price_per_second" in given:
            base.pop("price_per_second_hd")  # one price given: it holds for every size
            base.pop("prices")
        try:
            row = kind.model_validate({**base, **given})
        except ValidationError as err:
            raise UserError(_explain(at, err, kind)) from None
        for key, value in (fixed or {}).items():
            if getattr(row, key) != value:
                raise UserError(f"{at}.{key}: this backend cannot send it; leave it out")
        bad = [s for s in row.sizes if sizes is not None and s not in sizes]
        if bad:
            allowed = ", ".join(sizes or ())
            raise UserError(f"{at}.sizes: {', '.join(bad)} cannot be sent; allowed: {allowed}")
        table[model] = row
    return table


def reject_unknown(table: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    """An unknown key in a backend's table is an error: a misspelt one would be ignored."""
    for key in table:
        if key not in allowed:
            hint = _did_you_mean(str(key), allowed)
            raise UserError(f"{SOURCE}: {where} {key}: unknown key{hint}")


def text_setting(table: Mapping[str, Any], key: str, where: str) -> str | None:
    """A backend table's optional string setting (a URL, a key): absent, or non-empty text."""
    value = table.get(key)
    if value is None or (isinstance(value, str) and value):
        return value
    # Never echo the value: it may be a key.
    raise UserError(f"{SOURCE}: {where} {key}: expected a non-empty string")


def seconds_setting(table: Mapping[str, Any], key: str, where: str, default: float) -> float:
    """A backend table's positive number of seconds (a timeout, a poll interval)."""
    value = table.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{SOURCE}: {where} {key}: expected a number of seconds, got {value!r}")
    return float(value)


def _did_you_mean(key: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (allowed: {', '.join(sorted(allowed))})"


_EXPECTED = {
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "bool_type": "expected true or false",
    "float_type": "expected a number",
    "int_type": "expected a whole number",
    "dict_type": "expected a table",
    "string_type": "expected a string",
    "string_pattern_mismatch": 'expected a size like "1280x720"',
}


def _explain(at: str, err: ValidationError, kind: type[ModelRow]) -> str:
    lines: list[str] = []
    for item in err.errors():
        path = ""
        for part in item["loc"]:
            if part == "[key]":
                continue
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        if item["type"] == "extra_forbidden":
            key = str(item["loc"][-1])
            message = "unknown key" + _did_you_mean(key, [*kind.model_fields, *ALIASES])
        else:
            message = _EXPECTED.get(item["type"], item["msg"])
            if not isinstance(item["input"], dict):
                message += f" (got {item['input']!r})"
        line = f"{at}{path}: {message}"
        if line not in lines:
            lines.append(line)
    return "\n".join(lines)
