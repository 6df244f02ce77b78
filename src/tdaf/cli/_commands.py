"""The ``tdaf`` command list and top-level parser, importing nothing but the standard library.

:func:`tdaf.cli.main.main` builds the full parser on this one (every command module adds
its own options). ``tdaf``, ``tdaf --help`` and ``tdaf --version`` are answered from here
alone (:func:`answer_without_commands`), so they do not wait seconds for torch and the models:
the ``tdaf`` console script (``src/tdaf_cli.py``) loads this file without the ``tdaf`` package,
whose ``__init__`` registers every task and model. ``tests/test_cli.py`` checks that the list
matches the real parser.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

__all__ = ["COMMANDS", "DESCRIPTION", "top_level_parser", "answer_without_commands"]

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
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log debug messages, and print the traceback of an internal error")
    return parser, parser.add_subparsers(dest="command", metavar="COMMAND")


def answer_without_commands(args: list[str]) -> int | None:
    """The exit status of ``tdaf`` with no arguments, ``--help`` or ``--version`` (answered
    from the static list); None for every other command line."""
    if args and args[0] not in ("-h", "--help", "--version"):
        return None
    parser, sub = top_level_parser()
    for name, text in COMMANDS:
        sub.add_parser(name, help=text)
    if not args:
        parser.print_help()
        return 2
    try:
        parser.parse_args(args[:1])  # prints the help or the version
    except SystemExit as e:
        return int(e.code or 0)
    return 0
