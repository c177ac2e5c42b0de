"""A film on disk: its manifest, its compiled graph, its cache and its build log.

Compiling a manifest (pydantic validation, prompt composition) costs more than the whole no-op
plan may take, so the compiled graph is kept in the cache keyed by the manifest's bytes, the
profile and the runner's version, the way Python keeps .pyc files. The build log (ninja's
.ninja_log) remembers each node's last key and output, so a no-op plan reads one small file
instead of one record per node; the recipes behind those keys are read only to explain.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from runner.backends.registry import Backends
from runner.cache.lock import Lock
from runner.cache.outputs import Outputs
from runner.cache.remote import Remote, remote_from_config
from runner.cache.store import StatCache, Store, read_json, write_atomic, write_json
from runner.errors import TOO_DEEP, UserError
from runner.film.explain import Before, fingerprint
from runner.film.graph import Graph, Node
from runner.film.plan import Plan, make_plan

COMPILED_VERSION = 2  # 1 was a pickle: never read again, the cache is data, not code
STATE_VERSION = 2


def find_root(start: Path) -> Path:
    """The repository holding start (the folder with .git), else start itself."""
    for folder in [start, *start.parents]:
        if (folder / ".git").exists():
            return folder
    return start


def default_manifest() -> Path:
    """film.toml here, else the only films/*/film.toml."""
    here = Path("film.toml")
    if here.is_file():
        return here
    found = sorted(Path("films").glob("*/film.toml"))
    if len(found) == 1:
        return found[0]
    raise UserError("no film given: pass the path of a film.toml (e.g. films/NAME/film.toml)")


@dataclass
class Project:
    manifest_path: Path
    film_dir: Path
    store: Store
    graph: Graph
    profile: str | None
    film_id: str
    manifest_sha256: str
    backends: Backends = field(default_factory=Backends)

    @property
    def out_dir(self) -> Path:
        return self.film_dir / "out"

    @property
    def stem(self) -> str:
        return self.manifest_path.stem

    @property
    def lock(self) -> Lock:
        """film.lock beside the manifest, read once; its entries are this profile's."""
        if not hasattr(self, "_lock"):
            parsed = self.store.state_path(self.film_id, ".lock")
            path = self.manifest_path.with_suffix(".lock")
            self._lock = Lock.read(path, parsed, self.profile)
        return self._lock

    @property
    def outputs(self) -> Outputs:
        """Where each node's output comes from (lock, build log, this cache, the team's)."""
        if not hasattr(self, "_outputs"):
            built = {e["key"]: e["output"] for e in self.state()["built"].values()}
            self._outputs = Outputs(self.store, self.lock, self.remote, built)
        return self._outputs

    @property
    def remote(self) -> Remote | None:
        """The team cache ([tool.runner] remote or RUNNER_REMOTE), if there is one."""
        if not hasattr(self, "_remote"):
            self._remote = remote_from_config(self.tool_config(), os.environ)
        return self._remote

    @classmethod
    def open(
        cls,
        manifest_path: Path,
        cache_dir: Path | None,
        profile: str | None,
        backends: Backends | None = None,
    ) -> Project:
        """The film at manifest_path, compiled against `backends` (default: configured from
        the repository's pyproject.toml, with scratch space in the cache)."""
        if not manifest_path.is_file():
            raise UserError(f"{manifest_path}: no such file; pass the path of a film.toml")
        film_dir = manifest_path.parent
        given = "--cache-dir"
        if cache_dir is None:
            env = os.environ.get("RUNNER_CACHE_DIR")
            given = "RUNNER_CACHE_DIR" if env else "the default cache folder"
            cache_dir = Path(env) if env else find_root(film_dir.resolve()) / ".cache"
        # Absolute: ffmpeg runs in scratch folders, where a relative cache path names nothing.
        store = Store(cache_dir.absolute())
        try:
            store.check_format()
        except (NotADirectoryError, FileExistsError):
            raise UserError(
                f"{cache_dir} ({given}): is a file, or inside one, not a folder; point "
                "--cache-dir (or RUNNER_CACHE_DIR) at a folder, or move the file away"
            ) from None
        if backends is None:
            config = tool_config(film_dir).get("backends", {})
            backends = Backends(config if isinstance(config, dict) else {}, store.tmp / "backends")
        data = manifest_path.read_bytes()
        manifest_sha = hashlib.sha256(data).hexdigest()
        # State is keyed by the manifest's path in its repository: a moved checkout keeps it.
        absolute = manifest_path.resolve()
        in_repo = absolute.relative_to(find_root(absolute.parent)).as_posix()
        film_id = hashlib.sha256(in_repo.encode()).hexdigest()[:16]
        # Everything the compiled graph depends on: the manifest, the profile, the backends'
        # tables (prices, model rows) and the runner's own code.
        parts = [COMPILED_VERSION, source_digest(), profile, manifest_sha, backends.digest]
        parts.append(absolute.parent)  # compiled asset paths are absolute
        compiled_key = hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()
        compiled_path = store.state_path(film_id, ".graph")
        graph = _load_compiled(compiled_path, compiled_key)
        if graph is None:
            graph = _compile(manifest_path, profile, backends)
            compiled = {"version": COMPILED_VERSION, "key": compiled_key, "graph": graph.to_json()}
            write_atomic(compiled_path, json.dumps(compiled, separators=(",", ":")).encode())
            compiled_path.with_suffix(".pickle").unlink(missing_ok=True)  # format 1, unread
        return cls(manifest_path, film_dir, store, graph, profile, film_id, manifest_sha, backends)

    def tool_config(self) -> dict[str, Any]:
        """[tool.runner] from the pyproject.toml at the root of the film's repository."""
        return tool_config(self.film_dir)

    def credential_problems(self, node_ids: list[str]) -> dict[str, str]:
        """backend -> what it lacks to reach its provider, for the backends these nodes use
        (offline: configuration and environment only)."""
        pools = sorted({self.graph.nodes[n].pool for n in node_ids} - {"local", "previz"})
        problems = {name: self.backends.get(name).credentials_problem() for name in pools}
        return {name: problem for name, problem in problems.items() if problem}

    def state(self) -> dict[str, Any]:
        """The build log: {"built": {node: {"key", "output"}}, "failed": {node: message}},
        and "last_run" (what the last run that did anything rendered, failed and spent)."""
        state = read_json(self.store.state_path(self.film_id))
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            return {"version": STATE_VERSION, "built": {}, "failed": {}}
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        write_json(self.store.state_path(self.film_id), state)

    def recipes(self) -> LazyRecipes:
        return LazyRecipes(self.store.state_path(self.film_id, ".recipes"))

    def plan(self, force: frozenset[str] = frozenset()) -> Plan:
        """What renders and why. `force`: node ids to render again whatever is cached."""
        self.lock.check_kinds({nid: node.kind for nid, node in self.graph.nodes.items()})
        stats = StatCache(self.store.state_path("assets"))

        def asset_digest(node: Node) -> str:
            try:
                return stats.digest(asset_path(node, self.film_dir, self.manifest_path))
            except FileNotFoundError:
                raise UserError(
                    f"{self.manifest_path}: {node.id}.path: no file at {node.path}; "
                    "add the file or fix the path"
                ) from None

        outputs = self.outputs

        def refetchable(node: Node, key: str) -> bool:
            # A job id in the lock or a record is enough to say so; nothing is downloaded.
            if node.reproducible:
                return False
            known = outputs.known(node.id, key)
            return known is not None and known.job_id is not None

        plan = make_plan(
            self.graph,
            lookup=outputs.locate,
            asset_digest=asset_digest,
            previous=Previous(self.lock, self.recipes()),
            force=force,
            refetchable=refetchable,
        )
        stats.save()
        return plan


class Previous(Mapping[str, Before]):
    """What each node was last made from, to explain a change: film.lock's fields (the
    team's record, on every machine), else this machine's build history."""

    def __init__(self, lock: Lock, recipes: Mapping[str, dict[str, Any]]) -> None:
        self.lock = lock
        self.recipes = recipes

    def __getitem__(self, node_id: str) -> Before:
        entry = self.lock.entries.get(node_id)
        if entry is not None and entry.fields is not None:
            return Before(entry.fields, entry.key)
        recipe = self.recipes.get(node_id)
        fields = fingerprint(recipe) if recipe is not None else None
        if entry is None and fields is None:
            raise KeyError(node_id)
        return Before(fields, entry.key if entry is not None else None)

    def __iter__(self) -> Iterator[str]:
        return iter(set(self.lock.entries) | set(self.recipes))

    def __len__(self) -> int:
        return len(set(self.lock.entries) | set(self.recipes))


def asset_path(node: Node, film_dir: Path, manifest: Path) -> Path:
    """An asset's file, checked every time it is read or hashed: the path as it resolves
    now (a file swapped for a symlink after compiling, say) must stay inside the film folder."""
    assert node.path is not None
    real = os.path.realpath(node.path)
    root = os.path.realpath(film_dir)
    if os.path.commonpath([real, root]) != root:
        raise UserError(
            f"{manifest}: {node.id}.path: {node.path} now leads outside the film's folder "
            f"{film_dir} (a symlink?); copy the file into the folder instead"
        )
    return Path(real)


class LazyRecipes(Mapping[str, dict[str, Any]]):
    """The recipes last built per node, loaded on first use (a no-op plan never needs them)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._data: dict[str, dict[str, Any]] | None = None

    @property
    def data(self) -> dict[str, dict[str, Any]]:
        if self._data is None:
            loaded = read_json(self.path)
            self._data = loaded.get("recipes", {}) if isinstance(loaded, dict) else {}
        return self._data

    def __getitem__(self, node_id: str) -> dict[str, Any]:
        return self.data[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def save(self, changed: dict[str, dict[str, Any]]) -> None:
        if changed:
            write_json(self.path, {"version": STATE_VERSION, "recipes": {**self.data, **changed}})


def _load_compiled(path: Path, key: str) -> Graph | None:
    """The compiled graph if it was compiled from these bytes by this version, else None.

    Plain JSON, parsed, never unpickled: a crafted cache file is data, never code. Anything
    unreadable or of the wrong shape is compiled again, with no error."""
    try:
        saved = json.loads(path.read_bytes())
        if saved.get("version") != COMPILED_VERSION or saved.get("key") != key:
            return None
        graph = Graph.from_json(saved["graph"])
    except (OSError, ValueError, AttributeError, TypeError, KeyError, RecursionError):
        return None
    return graph if _well_formed(graph) else None


def _well_formed(graph: Graph) -> bool:
    """The shapes the planner relies on: a damaged file is compiled again, never half-used."""
    if not all(isinstance(v, int) for v in (graph.width, graph.height, graph.fps)):
        return False
    for nid, node in graph.nodes.items():
        if not (
            nid == node.id
            and isinstance(node.id, str)
            and isinstance(node.kind, str)
            and isinstance(node.pool, str)
            and isinstance(node.recipe, dict)
            and isinstance(node.inputs, dict)
            and all(dep in graph.nodes for dep in node.inputs.values())
            and isinstance(node.after, list)
            and all(dep in graph.nodes for dep in node.after)
            and isinstance(node.cost_usd, int | float)
            and (node.shot is None or isinstance(node.shot, dict))
            and (node.path is None or isinstance(node.path, str))
            and isinstance(node.digest, str)
        ):
            return False
    return isinstance(graph.limits, dict)


def _compile(manifest_path: Path, profile: str | None, backends: Backends) -> Graph:
    # Imported here: pydantic and the backends are only needed when the manifest changed.
    from runner.film import builder, manifest

    loaded = manifest.load(manifest_path)
    return builder.build(loaded, manifest_path.parent, profile, str(manifest_path), backends)


def tool_config(film_dir: Path) -> dict[str, Any]:
    """[tool.runner] from the pyproject.toml at the root of the film's repository."""
    path = find_root(film_dir.resolve()) / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, OSError, UnicodeDecodeError, RecursionError) as err:
        why = TOO_DEEP if isinstance(err, RecursionError) else err
        raise UserError(f"{path}: cannot read [tool.runner]: {why}") from None
    config = data.get("tool", {}).get("runner", {})
    return config if isinstance(config, dict) else {}


@cache
def source_digest() -> str:
    """A digest of the runner's own code: a compiled graph is reused only by the code that
    made it (the static __version__ does not change while the code does)."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()
