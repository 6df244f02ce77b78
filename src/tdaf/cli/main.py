"""``tdaf`` entry point: one sub-command per module of this package.

Each command module defines ``register(subparsers)``, which adds its parser(s) with
``set_defaults(func=...)``; ``func(args)`` returns the exit status.

Errors tell the truth: bad input (a :class:`tdaf.errors.UserError`, a missing optional
package, a file the file system refuses) is one line naming the parameter or file, exit
status 2; any other exception is a bug in tdaf: one line that says so (``-v``: the
traceback), exit status 1.
"""

from __future__ import annotations

import argparse
import dis
import importlib
import logging
import re
import signal
import sys
import traceback

from ..errors import UserError
from ..io.optional import MissingDependency
from ._commands import COMMANDS, top_level_parser

__all__ = ["main", "build_parser", "UserError", "is_user_error", "COMMAND_MODULES"]

# Sub-command modules (each registers one or more commands; _commands.COMMANDS lists the
# commands and their help for the fast `tdaf --help`).
COMMAND_MODULES = ("models", "profile", "train", "eval", "demo", "predict", "attention", "export")

# Checks that do not raise UserError yet still raise a plain ValueError on purpose (a raise
# statement in tdaf's code); such an error is bad input when it comes from a command module
# (whose checks are of the user's input) or when its message names what it refuses first: a
# flag, a setting or a file (``--data-dir: ...``, ``recipe: got ...``, ``image: x.png is ...``).
# A ValueError that Python, numpy or torch raise, in their code or in tdaf's ("not enough
# values to unpack", "invalid literal for int()"), is a bug.
_PARAMETER_FIRST = re.compile(r"^(--[\w-]+[:\s]|[\w.~/\\-]+(, [\w.-]+)*: )")
_COMMAND_MODULE = re.compile(r"^tdaf\.(cli|\w+\.(task|predict|evaluate))(\.|$)")
_RAISE = dis.opmap["RAISE_VARARGS"]

class Terminated(KeyboardInterrupt):
    """SIGTERM (what schedulers and ``kill`` send), handled like Ctrl-C: files being written
    are finished or removed, then the command stops with status 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def build_parser() -> argparse.ArgumentParser:
    parser, sub = top_level_parser()
    for name in COMMAND_MODULES:
        importlib.import_module(f"tdaf.cli.{name}").register(sub)
    for command in sub.choices.values():  # `tdaf train -v ...` as well as `tdaf -v train ...`
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log debug messages, and print the traceback of an internal error")
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
    except OSError as e:  # the file system said no (permissions, a full disk, ...): say where
        if e.strerror is None or not e.filename:  # raised with a message of its own (``--config: file not found``)
            print(f"tdaf {args.command}: error: {e}", file=sys.stderr)
        else:
            print(f"tdaf {args.command}: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 2
    except Exception as e:
        if is_user_error(e):
            print(f"tdaf {args.command}: error: {e}", file=sys.stderr)
            return 2
        return _internal_error(args, e)
    except Terminated:
        print(f"tdaf {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"tdaf {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` reports bad input (one line, exit 2) rather than a bug in tdaf."""
    if isinstance(e, (UserError, MissingDependency)):
        return True
    if type(e) is not ValueError:
        return False
    module = _raised_by_tdaf(e)
    return module is not None and bool(_COMMAND_MODULE.match(module) or _PARAMETER_FIRST.match(str(e)))


def _raised_by_tdaf(e: BaseException) -> str | None:
    """The tdaf module whose ``raise`` statement raised ``e``; None when ``e`` was raised
    elsewhere or by an operation (a call into Python, numpy or torch, an unpacking, ...)."""
    tb = e.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    if not (module == "tdaf" or module.startswith("tdaf.")):
        return None
    return module if tb.tb_frame.f_code.co_code[tb.tb_lasti] == _RAISE else None


def _internal_error(args: argparse.Namespace, e: BaseException) -> int:
    """A bug, not bad input: the traceback under -v, otherwise one line that says what it is."""
    what = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else '(no message)'}"
    if args.verbose:
        traceback.print_exception(e, file=sys.stderr)
        print(f"tdaf {args.command}: internal error (a bug in tdaf, not in your input); please report it with "
              f"the traceback above", file=sys.stderr)
    else:
        print(f"tdaf {args.command}: internal error: {what}. This is a bug in tdaf, not in your input; please "
              f"report it (rerun with -v for the traceback)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
