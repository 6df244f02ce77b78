"""tdaf installs beside a user's own torch: ranges in the package, exact pins only for CI and `make`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*([<>=!~].*)?$", line.split("#")[0].strip())
        if m:
            out[m.group(1).lower()] = (m.group(2) or "").strip()
    return out


def test_the_package_states_ranges_and_pins_nothing_exactly():
    deps = _pins(PYPROJECT["dependencies"])
    assert {"torch", "torchvision", "timm", "numpy"} <= set(deps)
    for name, spec in deps.items():
        assert "==" not in spec, f"{name} is pinned exactly ({spec}); pins belong in constraints.txt"
        assert spec.startswith(">="), f"{name} needs a lower bound ({spec!r})"
    assert "<" in deps["timm"] and "<" in deps["torch"]  # major versions we have not tested


def test_constraints_pin_the_machines_torch_and_every_dependency():
    pins = _pins((ROOT / "constraints.txt").read_text().splitlines())
    assert pins["torch"] == "==2.14.1" and pins["torchvision"] == "==0.29.1"
    extras = PYPROJECT["optional-dependencies"]
    wanted = set(_pins(PYPROJECT["dependencies"])) | {
        name for group, reqs in extras.items() if group not in ("all", "dev") for name in _pins(reqs)}
    assert {n.replace("_", "-") for n in wanted} - {n.replace("_", "-") for n in pins} == set()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_features_that_need_a_package_have_an_extra_and_a_license_exists():
    extras = PYPROJECT["optional-dependencies"]
    for extra, package in (("demo", "scikit-learn"), ("viz", "matplotlib"), ("tb", "tensorboard"),
                           ("export", "onnx"), ("coco", "pycocotools"), ("video", "av")):
        assert package in _pins(extras[extra]), (extra, package)
    assert "MIT License" in (ROOT / "LICENSE").read_text() and PYPROJECT["license"] == "MIT"
