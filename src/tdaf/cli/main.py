"""``tdaf`` entry point: one sub-command per module of this package.

Each command module defines ``register(subparsers)``, which adds its parser(s) with
``set_defaults(func=...)``; ``func(args)`` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from tdaf_cli import COMMANDS, top_level_parser

from ..io.optional import MissingDependency

# Sub-command modules (each registers one or more commands; the console script's
# tdaf_cli.COMMANDS lists the commands and their help for the fast `tdaf --help`).
COMMAND_MODULES = ("models", "profile", "train", "eval", "demo", "predict", "attention", "export")


class UserError(Exception):
    """An error caused by the user's input: printed as one line, exit status 2."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send), handled like Ctrl-C: files being written
    are finished or removed, then the command stops with status 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser, sub = top_level_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(f"tdaf.cli.{name}").register(sub)
    order = [name for name, _ in COMMANDS]
    sub._choices_actions.sort(key=lambda a: order.index(a.dest) if a.dest in order else len(order))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, MissingDependency) as e:
        print(f"tdaf {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (permissions, a full disk, ...): say where
        where = f": {e.filename}" if e.filename else ""
        print(f"tdaf {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"tdaf {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"tdaf {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
