"""The ``tdaf`` console script.

``tdaf``, ``tdaf --help`` and ``tdaf --version`` are answered here, from a static list of
the commands, without importing torch (which takes seconds); every other command line
goes to :func:`tdaf.cli.main.main`. ``tests/test_cli.py`` checks that this list matches the
real parser.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

__all__ = ["main", "COMMANDS", "DESCRIPTION", "top_level_parser"]

DESCRIPTION = ("Top-Down Attention Framework (TDAF) for PyTorch CNNs: build, profile, train, evaluate, visualise "
               "and export TDAF models and their plain baselines, for every task of the paper.")

# (command, one-line help), in the order --help lists them.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("models", "list the registered models (plain and TDAF), by task"),
    ("profile", "parameters, GMACs and latency of a model (and its plain baseline)"),
    ("train", "train a TDAF model or its baseline (one CPU, one GPU, or many processes)"),
    ("eval", "evaluate a checkpoint on a data set split (the metrics of its task)"),
    ("demo", "main job: ResNet-18 vs TDAF-ResNet-18 on cluttered digits over seeds, with an interval"),
    ("predict", "predictions of a trained model for images (top-k labels of a classifier)"),
    ("attention", "draw a TDAF model's attention maps over images (paper Fig. 3b/c)"),
    ("export", "export a model to ONNX or TorchScript and check it against PyTorch"),
)


def _version() -> str:
    try:
        return version("tdaf")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def top_level_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    """The ``tdaf`` parser without its commands' options (``tdaf.cli.main`` adds them)."""
    parser = argparse.ArgumentParser(prog="tdaf", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"tdaf {_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "--version"):
        parser, sub = top_level_parser()
        for name, text in COMMANDS:
            sub.add_parser(name, help=text)
        if not args:
            parser.print_help()
            return 2
        parser.parse_args(args[:1])  # prints the help or the version and exits
    from tdaf.cli.main import main as run  # torch and the models load here

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
