"""Flags that several commands share, defined once so they are spelled, typed and
defaulted the same everywhere (``tests/test_cli.py`` walks every parser and checks)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ..data.checks import input_size_hw
from ..engine.distributed import resolve_device as _resolve_device
from ..errors import UserError

__all__ = [
    "add_device_arg", "resolve_device", "add_threads_arg", "apply_threads", "add_progress_arg", "add_amp_arg",
    "add_channels_last_arg", "add_input_size_arg", "input_size_hw", "add_overwrite_arg", "add_fold_bn_arg",
]

_BOOL = argparse.BooleanOptionalAction


def _default(value: Any, suppress: bool) -> Any:
    return argparse.SUPPRESS if suppress else value


def add_device_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, suppress: bool = False) -> None:
    p.add_argument("--device", default=_default("auto", suppress),
                   help="auto | cpu | cuda | cuda:N (default auto: the GPU if there is one, else the CPU)")


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as the trainer reads it (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
    try:
        return _resolve_device("auto" if name is None else name)
    except ValueError as e:
        raise UserError(f"--{e}") from None


def add_threads_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, suppress: bool = False) -> None:
    p.add_argument("--threads", type=int, default=_default(None, suppress), metavar="N",
                   help="CPU threads for torch (default: torch's choice)")


def apply_threads(n: int | None) -> None:
    if n is not None:
        if n < 1:
            raise UserError(f"--threads: got {n}; allowed: >= 1")
        torch.set_num_threads(n)


def add_progress_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, suppress: bool = False) -> None:
    """``--progress``: None (auto, the default) is a bar when stderr is a terminal and plain
    lines elsewhere (:func:`tdaf.io.progress.progress_bar`); True forces bars; False shows neither."""
    p.add_argument("--progress", action=_BOOL, default=_default(None, suppress),
                   help="progress on stderr: bars when it is a terminal, plain lines every few steps when it is a "
                   "file or a pipe (the default); --progress: bars wherever it goes; --no-progress: neither")


def add_amp_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, suppress: bool = False) -> None:
    p.add_argument("--amp", action=_BOOL, default=_default(False, suppress),
                   help="bf16 autocast (mixed precision; default off)")


def add_channels_last_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, suppress: bool = False) -> None:
    p.add_argument("--channels-last", action=_BOOL, default=_default(False, suppress),
                   help="channels-last memory format (default off)")


def add_fold_bn_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, extra: str = "",
                    suppress: bool = False) -> None:
    """``--fold-bn/--no-fold-bn`` (default on): run the inference form of the model
    (:func:`tdaf.fold_batchnorm`), as ``tdaf predict``, ``eval`` and ``export`` do."""
    p.add_argument("--fold-bn", action=_BOOL, default=_default(True, suppress),
                   help="fold every BatchNorm and multi-flow BatchNorm into the convolution before it after loading "
                   "the model (tdaf.fold_batchnorm, the inference form: fewer passes over the maps, outputs the "
                   "same to float rounding); default on, --no-fold-bn runs the model as trained" + extra)


def add_overwrite_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str,
                      suppress: bool = False) -> None:
    """``--overwrite``: replace existing files the command writes (never one of its inputs)."""
    p.add_argument("--overwrite", action=_BOOL, default=_default(False, suppress), help=help)


def add_input_size_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str,
                       suppress: bool = False) -> None:
    p.add_argument("--input-size", type=int, nargs="+", metavar=("H", "W"), default=_default(None, suppress),
                   help=help + " (one number: a square)")

