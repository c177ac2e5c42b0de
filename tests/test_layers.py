"""The folders are the layers, and imports point down: the pure film core imports nothing of
runner's but its leaf helpers; nothing imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runner

PACKAGE = Path(runner.__file__).parent
# layer -> the layers it may import (besides itself and the leaves)
ALLOWED = {
    "film": set[str](),
    "cache": {"film"},
    "media": set[str](),
    "backends": {"film", "media"},
    "run": {"film", "cache", "media", "backends"},
    "cli": {"film", "cache", "media", "backends", "run"},
}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runner"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("runner")}
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_its_layer_the_layers_below_and_the_leaves(path: Path) -> None:
    own = path.relative_to(PACKAGE).parts[0]
    allowed = ALLOWED[own] | {own}
    # A name outside every layer folder is a leaf (digest, errors, faults, __version__).
    wrong = sorted(name for name in imports(path) if layer(name) not in allowed | {None})
    assert wrong == [], f"{path.relative_to(PACKAGE)} imports upwards: {wrong}"


def test_every_module_sits_in_a_layer_folder_but_the_leaves() -> None:
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == {"__init__", "__main__", "digest", "errors", "faults"}
