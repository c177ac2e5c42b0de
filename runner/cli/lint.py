"""`runner lint`: print the craft warnings of a film; exit 1 on any only with --strict."""

from __future__ import annotations

import argparse
import sys

from runner.errors import printable
from runner.film import lint, manifest
from runner.film.graph import shot_name
from runner.film.plan import CACHED
from runner.run.project import Project, default_manifest


def cmd_lint(args: argparse.Namespace) -> int:
    path = args.film or default_manifest()
    loaded = manifest.load(path)
    project = Project.open(path, args.cache_dir, args.profile)
    rendered: dict[str, int] = {}
    for d in project.plan().decisions.values():
        if d.kind == "shot" and d.status == CACHED:
            rendered[shot_name(d.id)] = rendered.get(shot_name(d.id), 0) + 1
    findings = lint.lint(loaded, args.profile, rendered)
    for finding in findings:
        print(f"{path}: warning: {printable(str(finding))}")
    s = "s" if len(findings) != 1 else ""
    print(f"{len(findings)} warning{s} in {len(loaded.shots)} shots", file=sys.stderr)
    return 1 if findings and args.strict else 0
