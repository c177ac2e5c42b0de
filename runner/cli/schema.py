"""`runner schema`: film.toml's JSON Schema, for editors (taplo, Even Better TOML).

Generated from the pydantic models that validate the manifest, so the two cannot drift; then
made to read as TOML does: TOML has no null, so optional keys are simply absent, and the
checks the runner makes in code (the size's shape, ids, "assets.NAME" references, the backend
names) are written out as patterns and enums. Draft 7, the newest that taplo's validator
fully supports. schema/film.schema.json is this, committed.
"""

from __future__ import annotations

import json
from typing import Any

from runner.backends.registry import names
from runner.film.manifest import ID_PATTERN, Manifest

SCHEMA_ID = "https://runner.invalid/schema/film.schema.json"
SIZE = r"^\d+x\d+$"
ASSET_REF = r"^assets\.[A-Za-z0-9_][A-Za-z0-9_-]*$"


def schema() -> dict[str, Any]:
    raw = Manifest.model_json_schema(ref_template="#/definitions/{model}")
    raw["definitions"] = raw.pop("$defs")
    found: dict[str, Any] = _toml(raw)
    defs = found["definitions"]
    backends = {"enum": names()}
    for model in ("Settings", "Shot"):
        props = defs[model]["properties"]
        props["backend"].update(backends)
        props["size"]["pattern"] = SIZE
    defs["FilmInfo"]["properties"]["size"]["pattern"] = SIZE
    shot = defs["Shot"]["properties"]
    shot["references"]["items"]["pattern"] = ASSET_REF
    for option in shot["image"]["anyOf"]:
        if option.get("type") == "string":
            option["pattern"] = ASSET_REF
    props = found["properties"]
    props["limits"]["propertyNames"] = backends
    for key in ("profiles", "characters", "assets", "shots"):
        props[key]["propertyNames"] = {"pattern": ID_PATTERN}
        props[key].pop("patternProperties", None)
        props[key]["additionalProperties"] = {"$ref": f"#/definitions/{_model(raw, key)}"}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "$id": SCHEMA_ID,
        **{k: v for k, v in found.items() if k != "title"},
        "title": "film.toml (runner)",
    }


def schema_text() -> str:
    """The schema as committed: indented, keys in pydantic's order, a final newline."""
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


def _model(raw: dict[str, Any], key: str) -> str:
    """The model a table of tables holds (`shots` -> Shot)."""
    prop = raw["properties"][key]
    ref = prop.get("additionalProperties") or next(iter(prop["patternProperties"].values()))
    return str(ref["$ref"]).rsplit("/", 1)[1]


def _toml(node: Any) -> Any:
    """Drop the null branches (TOML has no null) and null defaults; one-line descriptions;
    a description beside a reference kept (draft 7 reads nothing beside a $ref)."""
    if isinstance(node, list):
        return [_toml(x) for x in node if x != {"type": "null"}]
    if not isinstance(node, dict):
        return node
    out = {k: _toml(v) for k, v in node.items()}
    if isinstance(out.get("description"), str):
        out["description"] = " ".join(out["description"].split())
    if "default" in out:
        out["default"] = _no_nulls(out["default"])
        if out["default"] is None:
            del out["default"]
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 1:
        del out["anyOf"]
        out = {**options[0], **out}
    if "$ref" in out and len(out) > 1:  # draft 7 ignores a $ref's siblings (the description)
        out["allOf"] = [{"$ref": out.pop("$ref")}]
    return out


def _no_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_nulls(v) for k, v in value.items() if v is not None}
    return value
