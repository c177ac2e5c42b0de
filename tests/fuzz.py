"""Random and hostile films (manifest, lock, assets, repository config) from a seed.

A seeded generator, not hypothesis: a failing case is reproduced by its seed alone
(`RUNNER_FUZZ_SEED=N`), and the generator knows which values are hostile for this runner
(inf, 1e308, 2**63, 100,000-character words, deep nesting, path escapes, emoji, NUL).
"""

from __future__ import annotations

import json
import math
import random
import string
from pathlib import Path
from typing import Any

from tests.films import gen

PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478"
    "9c63f8cfc0000003010100c9fe92ef0000000049454e44ae426082"
)
WORDS = ["lantern", "river", "Mara", "dusk", "мост", "नदी", "สะพาน", "نهر", "灯笼", "🎬", "👨‍👩‍👧"]


def hostile_scalar(rng: random.Random) -> Any:
    """One value a careless parser or layout would choke on."""
    return rng.choice(
        [
            0,
            -1,
            1,
            2**63,
            -(2**63),
            2**64 + 1,
            1e308,
            -1e308,
            5e-324,
            math.inf,
            -math.inf,
            math.nan,
            "",
            " ",
            "x" * rng.choice([300, 5_000, 100_001]),
            "\x00\x01\x1b[31m",
            "../../../etc/passwd",
            "/etc/passwd",
            "🎬" * 50,
            "a\u202eb",
            True,
            1.5,
            "1280x720",
            "0x0",
            "99999x99999",
            "assets.ghost",
            [],
            {},
        ]
    )


def text(rng: random.Random) -> str:
    """Prose, a long single word, or mixed scripts."""
    kind = rng.randrange(4)
    if kind == 0:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, 40)))
    if kind == 1:
        return "".join(rng.choice(string.ascii_letters) for _ in range(rng.choice([50, 4_000])))
    if kind == 2:
        return (
            "\n".join(text(rng) for _ in range(rng.randrange(1, 4))) if rng.random() < 0.5 else ""
        )
    return rng.choice(WORDS) * rng.randrange(1, 200)


def seconds(rng: random.Random) -> Any:
    return rng.choice([0.5, 1, 1.0, 2, 0.04]) if rng.random() < 0.93 else hostile_scalar(rng)


def manifest(rng: random.Random, mild: bool = False) -> dict[str, Any]:
    """A manifest: mostly plausible, with hostile values in random places."""
    shots = [f"s{i}" for i in range(rng.randrange(1, 5))]
    data: dict[str, Any] = {
        "film": {
            "title": text(rng) or "t" if rng.random() < 0.95 else hostile_scalar(rng),
            "size": rng.choice(["64x64", "96x64", "320x180"]),
        },
        "defaults": {"seconds": seconds(rng)},
        "shots": {},
    }
    if rng.random() < 0.3:
        data["film"]["fps"] = rng.choice([1, 24, 25, 120] * 5 + [0, 10**9])
    if rng.random() < 0.3:
        data["characters"] = {"mara": {"description": text(rng)}}
    if rng.random() < 0.3:
        path = rng.choice(
            ["a.png", "a.png", "a.png", "missing.png", "../a.png", "/etc/hostname", "bad.png"]
        )
        data["assets"] = {"ref": {"path": path}}
    for i, shot in enumerate(shots):
        body: dict[str, Any] = {}
        if rng.random() < 0.5:
            body["prompt"] = text(rng)
        else:
            body["scene"] = text(rng)
            if rng.random() < 0.3:
                body["actions"] = [text(rng) for _ in range(rng.randrange(3))]
            if rng.random() < 0.2:
                body["dialogue"] = [{"who": rng.choice(["mara", "lee"]), "line": text(rng)}]
            if "characters" in data and rng.random() < 0.5:
                body["cast"] = [rng.choice(["mara", "mara", "ghost"])]
        if i and rng.random() < 0.3:
            body["needs"] = [rng.choice(shots if rng.random() < 0.1 else shots[:i])]
        if i and rng.random() < 0.2:
            body["image"] = {"shot": rng.choice(shots[:i]), "frame": "last"}
        if "assets" in data and rng.random() < 0.3:
            if rng.random() < 0.5:
                body["image"] = "assets.ref"
            else:
                body["references"] = ["assets.ref"]
        if i and rng.random() < 0.1:
            body = {"remix": {"shot": rng.choice(shots), "prompt": text(rng)}}
        if rng.random() < 0.2:
            body["takes"] = rng.randrange(1, 4)
            body["pick"] = rng.randrange(1, body["takes"] + (2 if rng.random() < 0.1 else 1))
        if rng.random() < 0.2:
            body["seed"] = rng.choice([0, 7, 2**31, -1, 2**63])
        if rng.random() < 0.1:
            body["size"] = rng.choice(["64x64", "65x64", "7680x7680", "x"])
        data["shots"][shot] = body
    if rng.random() < 0.5:
        sequence: list[Any] = []
        for _ in range(rng.randrange(1, 4)):
            cut: dict[str, Any] = {"shot": rng.choice([*shots, *shots, *shots, "ghost"])}
            if rng.random() < 0.5:
                cut["start"] = (
                    rng.choice([0, 0.25, 0.5, 3.0]) if rng.random() < 0.7 else seconds(rng)
                )
            if rng.random() < 0.5:
                cut["end"] = rng.choice([0.5, 0.75, 5.0]) if rng.random() < 0.7 else seconds(rng)
            if rng.random() < 0.5:
                cut["transition"] = {"kind": "crossfade", "seconds": seconds(rng)}
            sequence.append(cut if rng.random() < 0.8 else cut["shot"])
        data["edit"] = {"sequence": sequence}
    if rng.random() < 0.2:
        data["limits"] = {
            "previz": {"concurrency": rng.choice([1, 2, 9]), "rpm": rng.choice([1, 60, 60, 60, 0])}
        }
    for _ in range(0 if mild else rng.choice([0, 0, 0, 0, 0, 0, 1, 3])):
        _poison(rng, data)
    return data


def _poison(rng: random.Random, data: dict[str, Any]) -> None:
    """Replace, add or delete one key somewhere in data."""
    node: Any = data
    while isinstance(node, dict) and node and rng.random() < 0.7:
        key = rng.choice(list(node))
        if not isinstance(node[key], dict):
            break
        node = node[key]
    if not isinstance(node, dict):
        return
    action = rng.randrange(3)
    if action == 0 and node:
        node[rng.choice(list(node))] = hostile_scalar(rng)
    elif action == 1:
        node[rng.choice(["secnds", "promt", "x", "needs", "takes"])] = hostile_scalar(rng)
    elif node:
        del node[rng.choice(list(node))]


def toml(value: Any, top: bool = True) -> str:
    """TOML for data: one `key = {inline table}` line per top-level key."""
    if top:
        return "".join(f"{json.dumps(k)} = {toml(v, False)}\n" for k, v in value.items())
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v, False) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v, False)}" for k, v in value.items()) + "}"


def garble(rng: random.Random, raw: str) -> str:
    """Damage TOML text: cut it, splice in bytes, or nest something hundreds deep."""
    kind = rng.randrange(4)
    if kind == 0:
        return raw[: rng.randrange(len(raw) + 1)]
    if kind == 1:
        at = rng.randrange(len(raw) + 1)
        return (
            raw[:at]
            + rng.choice(['"', "[", "]]", "=", "\x00", "\ufeff", "{", "\n[[x]]"])
            + raw[at:]
        )
    if kind == 2:
        depth = rng.choice([50, 500, 3_000])
        return raw + f"deep = {'[' * depth}{']' * depth}\n"
    return raw + "\n" + raw  # every key defined twice


def lock(rng: random.Random, node_ids: list[str]) -> str:
    """film.lock: well formed with hostile entries, or damaged text."""
    digest = "".join(rng.choice("0123456789abcdef") for _ in range(64))
    nodes: dict[str, Any] = {}
    for node in rng.sample(node_ids, k=min(len(node_ids), rng.randrange(1, 4))):
        entry: dict[str, Any] = {"key": digest, "output": digest, "kind": "shot"}
        if rng.random() < 0.5:
            entry[rng.choice(["key", "output", "kind", "job_id", "seconds", "cost_usd", "x"])] = (
                hostile_scalar(rng)
            )
        nodes[node] = entry
    data: dict[str, Any] = {"version": rng.choice([1, 1, 1, 2, "1", -1]), "nodes": nodes}
    if rng.random() < 0.2:
        data["nodes"] = hostile_scalar(rng)
    raw = toml(data)
    return garble(rng, raw) if rng.random() < 0.3 else raw


def film(root: Path, seed: int, mild: bool = False) -> Path:
    """Write case `seed` under root; returns the manifest's path. `mild`: no poisoned keys
    or damaged text, so more cases get as far as rendering."""
    rng = random.Random(seed)
    data = manifest(rng, mild)
    raw = toml(data)
    if not mild and rng.random() < 0.1:
        raw = garble(rng, raw)
    files: dict[str, str | bytes] = {"film.toml": raw, "a.png": PNG_1x1, "bad.png": b"not a png"}
    if rng.random() < 0.3:
        shots = list(data.get("shots", {})) if isinstance(data.get("shots"), dict) else []
        ids = [f"shots.{s}" for s in shots] + ["edit", "assets.ref", "shots.ghost"]
        files["film.lock"] = lock(rng, ids)
    if rng.random() < 0.1:
        config = {"tool": {"runner": {"backends": {"previz": hostile_scalar(rng)}}}}
        files["pyproject.toml"] = garble(rng, toml(config)) if rng.random() < 0.5 else toml(config)
    gen(root, files)
    (root / ".git").mkdir(exist_ok=True)  # the film's repository stops here
    return root / "film.toml"
