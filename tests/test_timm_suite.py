"""timm's own model tests (``tests/test_models.py`` of timm's source distribution) on the
``tdaf_`` models registered in timm, markers forward, backward, cfg and features.

The source distribution is not part of tdaf and nothing is downloaded here: point
``TDAF_TIMM_SDIST`` at timm's ``.tar.gz`` (or at its unpacked folder), which
``make timm-sdist`` fetches with pip into ``build/timm_sdist/``; without it these tests
skip. By default the cfg checks (on the meta device, fast) run on every ``tdaf_`` model
and the forward/backward/features checks on one small model; ``TDAF_TIMM_FULL=1``
(``make timm-tests``) runs all four markers on every ``tdaf_`` model (about 11 minutes on
2 CPU cores).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import timm

SRC = Path(__file__).resolve().parents[1] / "src"
SDIST = os.environ.get("TDAF_TIMM_SDIST", "")
FULL = os.environ.get("TDAF_TIMM_FULL", "") not in ("", "0")

pytestmark = pytest.mark.skipif(
    not SDIST, reason="TDAF_TIMM_SDIST not set (timm's source distribution; `make timm-sdist` fetches it)"
)


def _timm_tests(tmp: Path) -> Path:
    """A folder with timm's ``pyproject.toml`` (its pytest markers) and ``tests/``, but not
    its sources: ``import timm`` must find the installed timm, which tdaf registers into."""
    src = Path(SDIST)
    if not src.exists():
        pytest.fail(f"TDAF_TIMM_SDIST: {src} does not exist")
    if src.is_dir():
        root = tmp / src.name
        shutil.copytree(src / "tests", root / "tests")
        shutil.copy(src / "pyproject.toml", root / "pyproject.toml")
    else:
        with tarfile.open(src) as tar:
            members = [m for m in tar.getmembers()
                       if re.fullmatch(r"[^/]+/(pyproject\.toml|tests/.*)", m.name) and (m.isfile() or m.isdir())]
            tar.extractall(tmp, members=members, filter="data")
        root = next(tmp.iterdir())
    version = re.search(r"timm-([\d.]+)", root.name)
    if version and version.group(1) != timm.__version__:
        pytest.fail(f"TDAF_TIMM_SDIST: {src} is timm {version.group(1)}, the installed timm is {timm.__version__}")
    tests = root / "tests" / "test_models.py"
    if not tests.is_file():
        pytest.fail(f"TDAF_TIMM_SDIST: {src} has no tests/test_models.py")
    return root


def _run(root: Path, markers: str, select: str) -> dict[str, int]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "pytest", "tests/test_models.py", "-p", "tdaf", "-m", markers, "-k", select,
           "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning", "--tb=line"]
    # Run from the copy, which has no timm sources that would shadow the installed timm.
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=3 * 3600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", summary)}
    assert counts.get("failed", 0) == 0 and counts.get("error", 0) + counts.get("errors", 0) == 0, (
        proc.stdout[-6000:] + proc.stderr[-2000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    return counts


def test_timm_model_tests_pass_on_tdaf_models(tmp_path: Path) -> None:
    root = _timm_tests(tmp_path)
    if FULL:
        counts = _run(root, "forward or backward or cfg or features", "tdaf_")
        assert counts["passed"] >= 4 * 23
    else:
        assert _run(root, "cfg", "tdaf_")["passed"] >= 23
        assert _run(root, "forward or backward or features", "tdaf_resnet18_cifar")["passed"] == 3
