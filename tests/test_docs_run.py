"""The README and every page of docs/ run as written, in order, on the bundled data.

Each page is read as a script: its shell blocks' ``tdaf ...`` lines (and ``python -m tdaf``)
run through :func:`tdaf.cli.main.main` and must exit 0, its ``python -c "..."`` lines and
its ``python`` blocks run in the same folder, in the order the page gives them, so a
command that reads a file a previous command or block should have written fails here when
the page is wrong (a picture that is never made, a checkpoint path that the training
command does not write, a flag that was renamed).

What is shrunk, and only that: training runs 1 epoch on 8 training and 4 validation
samples (``SHRINK_TRAIN``), evaluation reads 4 samples (``--subset``); the commands, their
flags, paths and data sets are the pages' own. Lines that need data or weights that are
not bundled (COCO, ImageNet, CIFAR folders, a ResNet-50 weights file) are skipped here;
``test_docs.py`` checks that the parser accepts them.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from tdaf.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = {p.name: p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}

# Pages that use what another page's commands made (the digits classifier of predict.md).
REQUIRES = {"attention.md": ["predict.md"], "export.md": ["predict.md"]}

# Markers of lines that need data or weights that are not bundled.
EXTERNAL = ("/data/", "~/data", "configs/tab", "configs/detection/coco_", "configs/pose/tab", "configs/video/tab",
            "runs/tab", ".pth")

SHRINK_TRAIN = ["--epochs", "1", "--warmup-epochs", "0", "--train-subset", "8", "--val-subset", "4",
                "--batch-size", "4", "--threads", "1", "--no-progress"]
SHRINK_EVAL = ["--subset", "4", "--no-progress"]


def sections(page: Path) -> list[list[tuple[str, str]]]:
    """The runnable steps of each ``##`` section of the page, in order: ("tdaf", command
    line), ("python", code). A reader may start at any section, so each runs on its own."""
    return [steps(part) for part in re.split(r"^(?=## )", page.read_text(), flags=re.M)]


def steps(text: str) -> list[tuple[str, str]]:
    """The runnable steps of a page's text in order."""
    out: list[tuple[str, str]] = []
    for tag, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if tag == "python":
            out.append(("python", body))
            continue
        if tag not in ("", "bash", "console"):
            continue
        transcript = any(line.startswith("$ ") for line in body.splitlines())
        for line in _shell_lines(body.replace("\\\n", " ")):
            if transcript and not line.startswith("$ "):
                continue  # a transcript's output
            line = line.removeprefix("$ ").split(" #")[0].strip()
            line = re.sub(r"^python -m tdaf ", "tdaf ", line)
            if line.startswith("python -c "):
                out.append(("python", shlex.split(line)[2]))
            elif line.startswith("tdaf ") and not re.search(r"\[|\.\.\.|\s[A-Z][A-Z_]{2,}\b", line):
                out.append(("tdaf", line.split(" > ")[0].split(" | ")[0]))
    return out


def _shell_lines(text: str) -> list[str]:
    """Lines, with a quoted argument that spans lines (``python -c "..."``) kept in one."""
    lines: list[str] = []
    for line in text.splitlines():
        if lines and _open_quote(lines[-1]):
            lines[-1] += "\n" + line
        else:
            lines.append(line)
    return lines


def _open_quote(line: str) -> bool:
    try:
        shlex.split(line)
    except ValueError:
        return True
    return False


def _argv(line: str) -> list[str]:
    argv = shlex.split(line)[1:]
    if argv[0] == "train":
        return argv + (["--no-progress"] if "--resume" in argv else SHRINK_TRAIN)
    if argv[0] == "eval":
        return argv + SHRINK_EVAL
    return argv


def run_steps(name: str, todo: list[tuple[str, str]], namespace: dict) -> list[str]:
    """Run the steps in the current folder; returns the command lines that ran."""
    ran: list[str] = []
    for kind, text in todo:
        if any(marker in text for marker in EXTERNAL):
            continue
        if kind == "python":
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(text, f"{name} example", "exec"), namespace)
            continue
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            code = main(_argv(text))
        assert code == 0, f"{name}: `{text}` exited {code}: {err.getvalue().strip()[-800:]}"
        ran.append(text)
    return ran


def run_page(name: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each section of ``name`` in a folder of its own under ``folder`` (a clone's top folder:
    ``configs/`` is there), after the pages it requires, which run once, whole, and whose
    files every section sees."""
    before = folder / "required"
    _clone_folder(before, [])
    monkeypatch.chdir(before)
    for required in REQUIRES.get(name, []):
        run_steps(required, steps(PAGES[required].read_text()), {"__name__": "__doc_example__"})
    ran: list[str] = []
    for i, todo in enumerate(sections(PAGES[name])):
        if not todo:
            continue
        here = folder / f"section{i}"
        _clone_folder(here, list(before.iterdir()))
        monkeypatch.chdir(here)
        ran += run_steps(name, todo, {"__name__": "__doc_example__"})
    return ran


def _clone_folder(folder: Path, links: list[Path]) -> None:
    folder.mkdir()
    for target in [ROOT / "configs", *links]:
        if not (folder / target.name).exists():
            (folder / target.name).symlink_to(target)


RUNNABLE = [name for name, page in PAGES.items()
            if any(k == "tdaf" and not any(m in t for m in EXTERNAL) for k, t in steps(page.read_text()))]


def test_the_pages_have_commands_to_run():
    assert {"README.md", "detection.md", "pose.md", "video.md", "predict.md", "attention.md",
            "export.md", "training.md"} <= set(RUNNABLE)


@pytest.mark.parametrize("name", RUNNABLE)
def test_page_runs_as_written(name, tmp_path, monkeypatch, tmp_path_factory):
    # The bundled sets are written once per session, where the pages say they go by default.
    monkeypatch.setenv("TDAF_DATA", str(tmp_path_factory.getbasetemp() / "tdaf-data"))
    ran = run_page(name, tmp_path, monkeypatch)
    assert ran, f"{name}: no command ran"
