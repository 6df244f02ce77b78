"""The README and the user guide are runnable as written: every Python example runs (in a
fresh folder, the blocks of a page in order), and every ``tdaf`` command line in them is
accepted by the real parser (flags and values; the heavy runs themselves are not repeated)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

from tdaf.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(page: Path, lang: str) -> list[str]:
    """The bodies of the fenced blocks whose language tag matches ``lang`` (every block is
    paired first, so a block of another language never swallows the next one)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", page.read_text(), flags=re.S | re.M)
    return [body for tag, body in blocks if re.fullmatch(lang, tag)]


def _command_lines(page: Path) -> list[str]:
    """``tdaf ...`` lines of the shell blocks and transcripts (``$ tdaf ...``; continuations
    joined, comments dropped; synopsis lines with ``[...]`` left out), and the command after
    ``torchrun ... -m tdaf``."""
    lines = []
    for block in _blocks(page, "(?:bash|console|)"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip().removeprefix("$ ")
            if " -m tdaf " in line:
                line = "tdaf " + line.split(" -m tdaf ", 1)[1]
            line = line.split(" > ")[0].split(" | ")[0]
            synopsis = any(c in line for c in "[|") or "..." in line or re.search(r"\s[A-Z][A-Z_]{2,}\b", line)
            if line.startswith("tdaf ") and not synopsis:
                lines.append(line)
    return lines


PYTHON_PAGES = [p for p in PAGES if _blocks(p, "python")]
COMMANDS = [(p.name, line) for p in PAGES for line in _command_lines(p)]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__doc_example__"}
    for block in _blocks(page, "python"):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(block, f"{page.name} example", "exec"), namespace)


def test_there_are_command_lines_to_check():
    assert len(COMMANDS) >= 15 and any(line.startswith("tdaf train") for _, line in COMMANDS)


@pytest.mark.parametrize("page, line", COMMANDS, ids=[f"{p}: {l[:60]}" for p, l in COMMANDS])
def test_command_lines_parse(page, line):
    argv = shlex.split(os.path.expandvars(line.replace("$NODE_RANK", "0")))[1:]
    parser = build_parser()
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:
            if e.code not in (0, None):  # --help / --version exit 0
                pytest.fail(f"{page}: `{line}` is not accepted: {err.getvalue().strip().splitlines()[-1]}")
            return
    assert isinstance(args, argparse.Namespace) and args.command
