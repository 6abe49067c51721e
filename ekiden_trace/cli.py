"""Command line: argument parsing and output only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ekiden_trace.errors import EkidenError, describe_failure
from ekiden_trace.ops.interrupts import Interrupted, aborting_on_signals

USAGE_ERROR = 64
DROPS_STATE = 9
NEEDS_TRANSFORMER = 10
PARTIAL_FAILURE = 12
DEBUG_ENV = "EKIDEN_TRACE_DEBUG"  # set: an unexpected error shows its traceback

if TYPE_CHECKING:
    from ekiden_trace.ops.tree import TreeOutcome
    from ekiden_trace.ops.update import UpdateReport


class _Parser(argparse.ArgumentParser):
    """argparse, exiting with USAGE_ERROR (not 2, which means an unusable binary here)."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def _include_dir() -> Path:
    """Where ekiden.h lives: the repository's probes/ or the installed include dir."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "probes", Path(sys.prefix) / "include" / "ekiden"):
        if (candidate / "ekiden.h").exists():
            return candidate
    raise EkidenError("ekiden.h is not installed next to ekiden-trace; reinstall the package.")


def _cmd_cflags(_args: argparse.Namespace) -> int:
    print(f"-I{_include_dir()}")
    return 0


def _cmd_points(args: argparse.Namespace) -> int:
    from ekiden_trace.binary.program import Program
    from ekiden_trace.render import points_json, points_text

    program = Program(args.binary)
    if args.json:
        print(_json_text(points_json(program)))
    else:
        sys.stdout.write(points_text(program))
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ekiden_trace.ops.inspect import InspectOptions, inspect
    from ekiden_trace.render import snapshot_json, snapshot_text

    options = InspectOptions(point=args.point, now=args.now, timeout=args.timeout)
    snapshot = inspect(args.pid, options)
    if args.json:
        print(_json_text(snapshot_json(snapshot)))
    else:
        sys.stdout.write(snapshot_text(snapshot))
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from ekiden_trace.binary.program import Program
    from ekiden_trace.plan.planner import plan_update
    from ekiden_trace.plan.transformers import load_transformers
    from ekiden_trace.render import plan_json, plan_text

    plan = plan_update(Program(args.old), Program(args.new), load_transformers(args.xform))
    if args.json:
        print(_json_text(plan_json(plan)))
    else:
        sys.stdout.write(plan_text(plan))
    if not plan.ok:
        return NEEDS_TRANSFORMER
    return DROPS_STATE if plan.unacknowledged else 0


def _cmd_attach(args: argparse.Namespace) -> int:
    from ekiden_trace.ops.tree import update_tree
    from ekiden_trace.ops.update import RolledBack, UpdateOptions, update

    options = UpdateOptions(
        new=args.new,
        args=args.args,
        point=args.point,
        xform=args.xform,
        timeout=args.timeout,
        force=args.force,
        allow_drop=args.allow_drop,
    )
    if args.tree:
        return _print_tree(update_tree(args.pid, options, args.leave_unupdatable), args.json)
    try:
        report = update(args.pid, options)
    except RolledBack as failure:
        print(f"ekiden-trace: {failure}", file=sys.stderr)
        _print_report(failure.report, args.json)
        return failure.exit_code
    _print_report(report, args.json)
    return 0


def _json_text(data: object) -> str:
    """JSON for people (indented), or on one line when stdout is systemd's journal, which
    records each line as an entry of its own."""
    return json.dumps(data, indent=None if _on_journal() else 2)


def _on_journal() -> bool:
    """True when stdout is the journal: JOURNAL_STREAM names its device and inode."""
    try:
        info = os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{info.st_dev}:{info.st_ino}"


def _print_report(report: UpdateReport, as_json: bool) -> None:
    from ekiden_trace.render import report_json, report_text

    if as_json:
        print(_json_text(report_json(report)))
    else:
        sys.stdout.write(report_text(report))


def _print_tree(outcomes: list[TreeOutcome], as_json: bool) -> int:
    from ekiden_trace.render import tree_json, tree_text

    if as_json:
        print(_json_text(tree_json(outcomes)))
    else:
        sys.stdout.write(tree_text(outcomes))
    failed = sum(o.error is not None and not o.left for o in outcomes)
    if failed:  # each error is in the report, once
        print(
            f"ekiden-trace: {failed} of {len(outcomes)} processes were not updated.",
            file=sys.stderr,
        )
    return PARTIAL_FAILURE if failed else 0


def _cmd_recover(args: argparse.Namespace) -> int:
    from ekiden_trace.ops.recover import recover

    done = recover(args.pid)
    if done.rolled_back:
        print(f"process {done.pid}: rolled back to {done.old} with its state")
    else:
        print(f"process {done.pid}: not in the middle of an update; nothing to recover")
    return 0


def _cmd_guard(_args: argparse.Namespace) -> int:
    from ekiden_trace.ops.guardian import run_guardian

    return run_guardian()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(
        prog="ekiden-trace",
        description="Update a running C program to its next version by state transfer.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    cflags = sub.add_parser("cflags", help="print the -I flag that finds ekiden.h")
    cflags.set_defaults(run=_cmd_cflags)

    points = sub.add_parser("points", help="list the marks of a binary")
    points.add_argument("binary", help="a binary built with ekiden.h and -g")
    points.add_argument("--json", action="store_true", help="print JSON")
    points.set_defaults(run=_cmd_points)

    inspect = sub.add_parser("inspect", help="show the tagged state of a live process")
    inspect.add_argument("pid", type=int)
    inspect.add_argument("--json", action="store_true", help="print JSON")
    inspect.add_argument("--point", help="wait for this update point (default: any)")
    inspect.add_argument(
        "--now",
        action="store_true",
        help="read wherever the process is, without waiting for a point",
    )
    inspect.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for an update point (default 10)",
    )
    inspect.set_defaults(run=_cmd_inspect)

    diff = sub.add_parser("diff", help="how the state of OLD maps onto NEW (no process touched)")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--xform", help="a transformer file (Python)")
    diff.add_argument("--json", action="store_true", help="print JSON")
    diff.set_defaults(run=_cmd_diff)

    attach = sub.add_parser("attach", help="update a live process to a new version")
    attach.add_argument("pid", type=int)
    attach.add_argument("--new", required=True, help="the new version's binary")
    attach.add_argument(
        "--args",
        nargs=argparse.REMAINDER,
        help="arguments for the new version (default: the old argv)",
    )
    attach.add_argument("--point", help="update only at this update point")
    attach.add_argument("--xform", help="a transformer file (Python)")
    attach.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for each update point (default 10)",
    )
    attach.add_argument(
        "--tree", action="store_true", help="also update every descendant running the same binary"
    )
    attach.add_argument(
        "--leave-unupdatable",
        action="store_true",
        help="with --tree: leave processes that cannot exec the new version (chrooted) on "
        "their old version, and succeed",
    )
    attach.add_argument(
        "--force",
        action="store_true",
        help="accept a new binary writable by others or owned by another user",
    )
    attach.add_argument(
        "--allow-drop",
        action="store_true",
        help="update even if v1 state that no transformer file acknowledges is dropped",
    )
    attach.add_argument("--json", action="store_true", help="print the report as JSON")
    attach.set_defaults(run=_cmd_attach)

    recover = sub.add_parser(
        "recover", help="roll back a process left in the middle of an update by a dead tool"
    )
    recover.add_argument("pid", type=int)
    recover.set_defaults(run=_cmd_recover)

    # Internal commands start with "_", like the guardian of one update (see guard.py). A
    # parser without help is not listed under the commands, and the metavar leaves it out
    # of the usage line.
    guard = sub.add_parser("_guard")
    guard.set_defaults(run=_cmd_guard)
    sub.metavar = "{" + ",".join(name for name in sub.choices if not name.startswith("_")) + "}"
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ekiden-trace` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "now", False) and args.point:
        parser.error("--now and --point exclude each other")
    if getattr(args, "leave_unupdatable", False) and not args.tree:
        parser.error("--leave-unupdatable goes with --tree")
    try:
        with aborting_on_signals():
            return args.run(args)
    except Interrupted as exc:
        print(f"ekiden-trace: {exc}; the target was released as it was.", file=sys.stderr)
        return exc.exit_code
    except EkidenError as exc:
        print(f"ekiden-trace: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:  # a bug: still one sentence for the user, never a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"ekiden-trace: {describe_failure(exc)}; this is a bug of ekiden-trace "
            f"(set {DEBUG_ENV}=1 to see where it happened).",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
