"""The `runner` command: plan, render, review, pick, status, graph, show, export, schema, lint.

Exit codes: 0 success, 1 some node failed, 2 the user's input is wrong. Heavy modules are
imported inside the commands so `runner --help` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runner import __version__
from runner.cache.remote import RemoteError
from runner.errors import DiskFull, UserError, printable, scrub_urls, shown

if TYPE_CHECKING:
    from runner.run.project import Project

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--cache-dir", type=Path, help="local cache (default: $RUNNER_CACHE_DIR or <repo>/.cache)"
    )
    common.add_argument("--profile", help="apply [profiles.NAME] from the manifest")

    def film_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("film", nargs="?", type=Path, help="path of film.toml")

    parser = argparse.ArgumentParser(
        prog="runner", description="Declarative, incremental render runner for AI film."
    )
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", parents=[common], help="what would render, why, and the cost")
    film_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable plan (see README)")
    p.add_argument(
        "--diff",
        action="store_true",
        help="per changed shot, the recorded prompt and parameters against the new ones",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="plan only shard I of N, and show each shard's nodes, seconds and cost",
    )
    p.add_argument(
        "--target",
        metavar="NODE",
        action="append",
        help="plan only this shot (every take) or node and what it needs; may be repeated",
    )

    p = sub.add_parser("render", parents=[common], help="render what changed and assemble")
    film_arg(p)
    p.add_argument(
        "-k",
        "--keep-going",
        action="store_true",
        help="let independent nodes finish after a failure",
    )
    p.add_argument(
        "--rerender-expired",
        action="store_true",
        help="render again (and pay again for) shots whose provider content expired",
    )
    p.add_argument(
        "--resend-unconfirmed",
        action="store_true",
        help="send again creates that may have reached a provider which cannot list its jobs",
    )
    p.add_argument(
        "--frozen",
        action="store_true",
        help="fail, listing them, if any node would cost money or is not reproducible",
    )
    p.add_argument("--shard", metavar="I/N", help="render only shard I of N (CI matrix jobs)")
    p.add_argument(
        "--target",
        metavar="NODE",
        action="append",
        help="render only this shot (every take) or node, and what it needs; no film is "
        "assembled unless the target is `edit`; may be repeated",
    )
    p.add_argument(
        "--sign",
        action="store_true",
        help="also write out/FILM.signed.mp4 with C2PA content credentials (needs a key)",
    )
    p.add_argument(
        "--rerender",
        metavar="SHOT",
        action="append",
        default=[],
        help="render this shot again on purpose (a new take of it); may be repeated",
    )
    p.add_argument(
        "--no-review",
        action="store_true",
        help="do not write out/review/ (written after every render that changed something)",
    )

    p = sub.add_parser(
        "review", parents=[common], help="write out/review/index.html: the takes side by side"
    )
    film_arg(p)

    p = sub.add_parser("pick", parents=[common], help="set which take of a shot the film uses")
    p.add_argument("words", nargs="+", metavar="[FILM] SHOT N", help="shot id and take number")

    p = sub.add_parser("status", parents=[common], help="per node: cached, stale, missing, failed")
    film_arg(p)

    p = sub.add_parser("graph", parents=[common], help="print the DAG as mermaid or dot")
    film_arg(p)
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")

    p = sub.add_parser("cache", help="push, pull, verify or gc the caches")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in [
        ("push", "upload this film's renders the remote lacks"),
        ("pull", "download what film.lock names"),
        ("verify", "check that blobs, here and remote, hash to their names (--deep: decode)"),
        ("gc", "delete blobs no film.lock of any profile or branch references"),
    ]:
        a = actions.add_parser(action, parents=[common], help=text)
        film_arg(a)
        if action == "verify":
            a.add_argument(
                "--repair",
                action="store_true",
                help="quarantine what is corrupt and fetch or rebuild it (at no cost)",
            )
            a.add_argument(
                "--deep",
                action="store_true",
                help="also decode every video here from start to end (about 0.2 s per 4 s "
                "of 720p; renders are checked more cheaply when they arrive)",
            )
        if action == "gc":
            a.add_argument("--yes", action="store_true", help="delete (without it, only list)")
            a.add_argument(
                "--remote",
                action="store_true",
                help="the team's remote too (by the locks of every branch the repository knows)",
            )
            a.add_argument(
                "--grace",
                metavar="DAYS",
                type=float,
                default=7.0,
                help="keep whatever is younger than this (default 7 days)",
            )

    p = sub.add_parser("export", parents=[common], help="the cut as an editor's timeline")
    film_arg(p)
    p.add_argument(
        "--format",
        choices=["otio", "edl", "fcp7xml", "fcpxml"],
        default="otio",
        help="OpenTimelineIO (default), CMX 3600 EDL, FCP 7 XML (Premiere, Resolve) or FCPXML",
    )

    sub.add_parser("schema", parents=[common], help="the JSON Schema of film.toml, for editors")

    p = sub.add_parser("lint", parents=[common], help="the prompting guides' craft, as warnings")
    film_arg(p)
    p.add_argument("--strict", action="store_true", help="exit 1 when there is a warning")

    p = sub.add_parser("show", parents=[common], help="the exact prompt text a shot sends")
    p.add_argument("film", type=Path, help="path of film.toml")
    p.add_argument("shot", help="shot id")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except UserError as err:
        print(f"runner: error: {shown(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as err:
        print(f"runner: error: {shown(str(err))}", file=sys.stderr)
        return EXIT_FAILED
    except DiskFull as err:
        print(f"runner: error: {shown(str(err))}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `runner graph | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("runner: interrupted; finished nodes are cached", file=sys.stderr)
        return 130
    except OSError as err:
        full = DiskFull.of(err, args.cache_dir or Path.cwd())
        if full is None:
            return _internal(err)
        print(f"runner: error: {shown(str(full))}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as err:  # never a bare traceback: say what broke and how to see more
        return _internal(err)


def _internal(err: Exception) -> int:
    """A bug: say what broke and how to see more (RUNNER_DEBUG=1 re-raises it)."""
    if os.environ.get("RUNNER_DEBUG"):
        raise err
    why = shown(repr(err))
    print(f"runner: internal error: {why} (set RUNNER_DEBUG=1 for details)", file=sys.stderr)
    return EXIT_FAILED


def _open(args: argparse.Namespace) -> Project:
    from runner.run.project import Project, default_manifest

    return Project.open(args.film or default_manifest(), args.cache_dir, args.profile)


def cmd_plan(args: argparse.Namespace) -> int:
    from runner.cli import plan

    return plan.cmd_plan(_open(args), args)


def cmd_render(args: argparse.Namespace) -> int:
    from runner.cli.progress import Progress
    from runner.film import shard
    from runner.run.render import Options, render

    project = _open(args)
    options = Options(
        keep_going=args.keep_going,
        rerender_expired=args.rerender_expired,
        resend_unconfirmed=args.resend_unconfirmed,
        rerender=_shot_nodes(project, args.rerender),
        shard=shard.parse(args.shard) if args.shard else None,
        targets=project.graph.targets(args.target) if args.target else None,
        sign=args.sign,
    )
    if args.sign and options.shard is not None:
        raise UserError("--sign: a shard assembles no film to sign; sign the assembling render")
    if args.sign and not options.publishes:
        raise UserError("--sign: --target without `edit` assembles no film to sign")
    if options.targets is not None:
        upstream = project.graph.upstream(options.targets)
        shots = {n: project.graph.nodes[n].shot or {} for n in options.rerender}
        outside = sorted({str(shots[n]["shot"]) for n in shots if n not in upstream})
        if outside:
            raise UserError(
                f"--rerender {', '.join(outside)}: not among what --target renders; "
                f"add --target shots.{outside[0]}"
            )
    if args.frozen:  # guards money, not work: local, deterministic nodes are made
        plan = project.plan(options.rerender)
        wanted = None if options.targets is None else project.graph.upstream(options.targets)
        paid = [
            d
            for d in plan.to_render
            if (wanted is None or d.id in wanted)
            and (d.cost_usd > 0 or not project.graph.nodes[d.id].reproducible)
        ]
        if paid:
            for d in paid:
                why = shown("; ".join(d.reasons))
                print(
                    f"runner: would pay for {printable(d.id)} (${d.cost_usd:.2f}): {why}",
                    file=sys.stderr,
                )
            cost = sum(d.cost_usd for d in paid)
            print(
                f"runner: --frozen: {len(paid)} nodes would cost money or are not "
                f"reproducible (${cost:.2f}); nothing was rendered",
                file=sys.stderr,
            )
            return EXIT_FAILED
    with Progress(project.graph) as progress:
        result = render(project, options, progress, watch=progress.job_status)
    out = result.outcome
    cached = len(result.plan.decisions) - len(result.plan.to_render) + len(out.cached)
    print(
        f"{len(out.done)} rendered, {cached} cached, {len(out.failed)} failed, "
        f"{len(out.skipped)} skipped; spent ${result.spend_usd:.2f}",
        file=sys.stderr,
    )
    for nid, why in out.failed.items():
        print(f"runner: {printable(nid)} failed: {shown(why)}", file=sys.stderr)
    for nid, why in sorted(out.skipped.items()):
        print(f"runner: not rendered: {printable(nid)} ({shown(why)})", file=sys.stderr)
    for note in result.notes:
        print(f"runner: warning: {shown(note)}", file=sys.stderr)
    if result.film is not None:
        print(result.film)
    if result.signed is not None:
        print(result.signed)
    # After a render that changed something, or when no page shows this film yet.
    changed = bool(out.done or out.failed or out.skipped)
    changed = changed or not (project.out_dir / "review" / "index.html").is_file()
    # A --target run writes it too (the takes it made are what you look at next); a shard
    # does not (CI, no film).
    if changed and not args.no_review and options.shard is None and not result.interrupted:
        _write_review(project)
    if result.interrupted:
        return 130
    if not options.publishes:
        return EXIT_OK if out.ok else EXIT_FAILED
    return EXIT_OK if out.ok and result.film is not None else EXIT_FAILED


def _write_review(project: Project) -> None:
    """The review page after a render; a render's result never hangs on it."""
    from runner.run import review

    try:
        index = review.write(project, project.plan())
    except Exception as err:  # the film is made; the page is a view of it
        if os.environ.get("RUNNER_DEBUG"):
            raise
        print(f"runner: warning: review page not written: {shown(str(err))}", file=sys.stderr)
        return
    print(f"review: {index}", file=sys.stderr)


def cmd_review(args: argparse.Namespace) -> int:
    from runner.run import review

    print(review.write(_open(args)))
    return EXIT_OK


def cmd_pick(args: argparse.Namespace) -> int:
    from runner.cli.pick import pick
    from runner.run.project import default_manifest

    words = args.words
    if len(words) not in (2, 3):
        raise UserError("pick: give the shot and the take number: runner pick [FILM] SHOT N")
    film = Path(words[0]) if len(words) == 3 else default_manifest()
    shot, number = words[-2:]
    n = pick(film, shot, number)
    print(f"{film}: shots.{shot}.pick = {n}; `runner render` re-cuts the film")
    return EXIT_OK


def _shot_nodes(project: Project, shots: list[str]) -> frozenset[str]:
    """The node ids (every take) of the named shots."""
    nodes = {n.id: n.shot["shot"] for n in project.graph.nodes.values() if n.shot}
    unknown = sorted(set(shots) - set(nodes.values()))
    if unknown:
        raise UserError(f"--rerender: no shot named {', '.join(unknown)}")
    return frozenset(nid for nid, shot in nodes.items() if shot in shots)


def cmd_status(args: argparse.Namespace) -> int:
    from runner.film.explain import NEVER_RENDERED, describe_all

    project = _open(args)
    plan = project.plan()
    state = project.state()
    for d in plan.decisions.values():
        if d.id in state["failed"] and d.status != "cached":
            label, why = "failed", state["failed"][d.id]
        elif d.status == "cached":
            label, why = "cached", ""
        elif any(c.code == NEVER_RENDERED for c in d.causes):
            label, why = "missing", "never rendered"  # not in film.lock, nor built here
        else:
            label, why = "stale", "; ".join(describe_all(d.causes, text=True))
        print(f"{label:8} {printable(d.id):32} {printable(scrub_urls(why))}".rstrip())
    return EXIT_OK


def cmd_graph(args: argparse.Namespace) -> int:
    project = _open(args)
    nodes = project.graph.nodes.values()
    if args.format == "dot":
        print("digraph film {\n  rankdir=LR;")
        for n in nodes:
            print(f'  "{n.id}" [shape={"box" if n.kind == "shot" else "ellipse"}];')
            for dep in n.deps:
                print(f'  "{dep}" -> "{n.id}";')
        print("}")
    else:
        ids = {n.id: f"n{i}" for i, n in enumerate(nodes)}
        print("flowchart LR")
        for n in nodes:
            print(f'  {ids[n.id]}["{n.id}"]')
            for dep in n.deps:
                print(f"  {ids[dep]} --> {ids[n.id]}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    project = _open(args)
    shots = [n for n in project.graph.nodes.values() if n.shot and n.shot["shot"] == args.shot]
    if not shots:
        import difflib

        names = sorted({n.shot["shot"] for n in project.graph.nodes.values() if n.shot})
        close = difflib.get_close_matches(args.shot, names, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise UserError(
            f"{args.film}: no shot named `{args.shot}`{hint} (shots: {', '.join(names)})"
        )
    assert shots[0].shot is not None
    # The prompt's own line breaks stay; an escape sequence or NUL is shown, never obeyed.
    sys.stdout.write(printable(shots[0].shot["prompt"], keep="\n\t"))
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from runner.run.export import export

    print(export(_open(args), args.format))
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    from runner.cli.schema import schema_text

    sys.stdout.write(schema_text())
    return EXIT_OK


def cmd_lint(args: argparse.Namespace) -> int:
    from runner.cli.lint import cmd_lint as lint

    return lint(args)


def cmd_cache(args: argparse.Namespace) -> int:
    from runner.cli import cache as cache_cmd

    project = _open(args)
    if args.action == "push":
        print(f"pushed {len(cache_cmd.push(project))} blobs")
    elif args.action == "pull":
        print(f"pulled {len(cache_cmd.pull(project))} blobs")
    elif args.action == "verify":
        bad = cache_cmd.verify(project, repair=args.repair, deep=args.deep)
        for f in bad:
            fate = f": {f.fate}" if f.fate else ""
            if f.what == "video":
                print(f"undecodable: {f.where} video {f.name}: {printable(f.why)}{fate}")
            else:
                print(f"corrupt: {f.where} {f.what} {f.name}{fate}")
        blobs = sum(f.what == "blob" for f in bad)
        videos = sum(f.what == "video" for f in bad)
        records = len(bad) - blobs - videos
        deep = f", {videos} undecodable videos" if args.deep else ""
        print(f"{blobs} corrupt blobs, {records} damaged records{deep}")
        return EXIT_FAILED if videos or (bad and not args.repair) else EXIT_OK
    else:
        if args.grace < 0:
            raise UserError("cache gc --grace: a number of days, 0 or more")
        found = cache_cmd.gc(project, yes=args.yes, remote=args.remote, grace_days=args.grace)
        verb = "deleted" if args.yes else "would delete"
        for where, doomed in found.items():
            for digest in doomed.blobs:
                print(f"{verb} {where} {digest}")
        for where, doomed in found.items():
            print(
                f"{verb} {len(doomed.blobs)} {where} blobs ({doomed.bytes} bytes), "
                f"{doomed.paid} of them paid renders (${doomed.cost_usd:.2f})"
            )
        if not args.yes:
            print("run with --yes to delete")
    return EXIT_OK


_COMMANDS = {
    "plan": cmd_plan,
    "render": cmd_render,
    "review": cmd_review,
    "pick": cmd_pick,
    "status": cmd_status,
    "graph": cmd_graph,
    "show": cmd_show,
    "cache": cmd_cache,
    "export": cmd_export,
    "schema": cmd_schema,
    "lint": cmd_lint,
}


if __name__ == "__main__":
    sys.exit(main())
