"""One command line: the fast ``tdaf --help``, and the same flags spelled, typed and
defaulted the same way in every command."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import pytest

from tdaf.cli import _commands
from tdaf.cli.main import build_parser

PARSER = build_parser()
SUB = next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction))
COMMANDS = dict(SUB.choices)

# Flags that mean the same thing wherever they appear.
SHARED = ("--device", "--threads", "--progress", "--amp", "--channels-last", "--input-size", "--json", "--strict",
          "--checkpoint", "--model", "--workers", "--overwrite", "--fold-bn")


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def test_the_static_command_list_is_exactly_the_real_commands():
    assert [name for name, _ in _commands.COMMANDS] == [a.dest for a in SUB._choices_actions]
    real_help = {a.dest: a.help for a in SUB._choices_actions}
    assert dict(_commands.COMMANDS) == real_help
    assert PARSER.description == _commands.DESCRIPTION


@pytest.mark.parametrize("argv, status, shown", [(["--help"], 0, "predict"), ([], 2, "train"),
                                                 (["--version"], 0, "tdaf ")])
def test_top_level_help_and_version_do_not_import_torch(argv, status, shown):
    code = ("import sys, contextlib, io, tdaf_cli\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            f"    status = tdaf_cli.main({argv!r})\n"
            f"assert status == {status} and {shown!r} in out.getvalue(), (status, out.getvalue())\n"
            "print('torch' in sys.modules, 'tdaf' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"


def test_the_console_script_hands_every_command_to_tdaf_cli_main(capsys):
    import tdaf_cli
    assert tdaf_cli.main(["models", "resnet18_cifar"]) == 0
    assert "resnet18_cifar" in capsys.readouterr().out


def test_the_package_does_not_import_the_console_script():
    from pathlib import Path
    package = Path(_commands.__file__).resolve().parent.parent
    importers = [p for p in package.rglob("*.py") if re.search(r"^\s*(import|from) tdaf_cli\b", p.read_text(), re.M)]
    assert importers == []


@pytest.mark.parametrize("flag", SHARED)
def test_shared_flags_are_the_same_everywhere(flag):
    seen = {name: _options(p)[flag] for name, p in COMMANDS.items() if flag in _options(p)}
    assert seen, flag
    kinds = {name: (type(a).__name__, a.nargs, getattr(a.type, "__name__", a.type), tuple(a.choices or ()))
             for name, a in seen.items()}
    assert len(set(kinds.values())) == 1, kinds
    defaults = {name: a.default for name, a in seen.items() if a.default is not argparse.SUPPRESS}
    assert len(set(map(repr, defaults.values()))) <= 1, defaults


def test_every_command_that_computes_takes_threads_and_device_where_it_picks_one():
    for name, parser in COMMANDS.items():
        opts = _options(parser)
        if name != "models":
            assert "--threads" in opts, name
        if name in ("train", "eval", "demo", "predict", "attention", "profile"):
            assert "--device" in opts, name
        if name in ("train", "eval", "demo", "predict", "attention"):
            assert "--progress" in opts and "--no-progress" in opts, name
    assert _options(COMMANDS["eval"])["--device"].default == "auto"


def test_the_inference_commands_fold_batchnorm_by_default_and_train_does_not():
    for name in ("eval", "predict", "export"):
        opts = _options(COMMANDS[name])
        assert opts["--fold-bn"].default is True and "--no-fold-bn" in opts, name
        assert "float rounding" in opts["--fold-bn"].help, name
    assert "--format timm" in _options(COMMANDS["export"])["--fold-bn"].help
    assert "--fold-bn" not in _options(COMMANDS["train"])  # training's validation runs the model it trains


def test_models_lists_the_registry(capsys):
    from tdaf.cli.main import main

    assert main(["models", "tdaf_resnet50*", "--json"]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["tdaf_resnet50", "tdaf_resnet50_cifar"]
    assert rows[0]["tdaf"] and rows[0]["pair"] == "resnet50" and rows[0]["task"] == "classification"
    assert main(["models", "nothing_like_this*"]) == 2
