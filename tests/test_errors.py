"""Errors tell the truth: bad input is one line (exit 2), a bug in tdaf says it is one
(exit 1; ``-v`` prints its traceback)."""

from __future__ import annotations

import json

import pytest

import tdaf
from tdaf.cli.main import is_user_error, main
from tdaf.engine.config import TrainConfig, load_config_file
from tdaf.errors import UserError
from tdaf.io.files import safe_load
from tdaf.r2dns import StageNet

TINY = ["train", "--model", "resnet18_cifar", "--data", "digits", "--input-size", "8", "--train-subset", "8",
        "--val-subset", "8", "--batch-size", "4", "--epochs", "1", "--no-progress", "--no-tensorboard"]


def _internal_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug deep in a model's forward: Python's own kind of ValueError, not a refused input."""
    def forward(self, x):
        raise ValueError("not enough values to unpack (expected 3, got 2)")
    monkeypatch.setattr(StageNet, "forward", forward)


def test_an_internal_error_says_it_is_a_bug(monkeypatch, tmp_path, capsys):
    _internal_failure(monkeypatch)
    code = main([*TINY, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1, err
    assert "internal error" in err[0] and "bug in tdaf" in err[0] and "-v" in err[0]
    assert "not enough values to unpack" in err[0] and "Traceback" not in err[0]


def test_an_internal_error_under_verbose_prints_its_traceback(monkeypatch, tmp_path, capsys):
    _internal_failure(monkeypatch)
    code = main([*TINY, "-v", "--out", str(tmp_path / "run")])  # after the command, as users type it
    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback (most recent call last)" in err and "in forward" in err
    assert "ValueError: not enough values to unpack" in err
    assert err.strip().splitlines()[-1].startswith("tdaf train: internal error") and "bug in tdaf" in err


def test_verbose_goes_before_or_after_the_command():
    from tdaf.cli.main import build_parser
    parser = build_parser()
    assert parser.parse_args(["-v", "models"]).verbose and parser.parse_args(["models", "-v"]).verbose
    assert not parser.parse_args(["models"]).verbose


def test_a_non_value_error_is_a_bug_too(monkeypatch, tmp_path, capsys):
    def forward(self, x):
        raise KeyError("layer3")
    monkeypatch.setattr(StageNet, "forward", forward)
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 1
    assert "internal error: KeyError" in capsys.readouterr().err


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_a_bad_flag_stays_one_line_with_exit_2(verbose, tmp_path, capsys):
    code = main([*verbose, *TINY, "--threads", "0", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("tdaf train: error: ") and "threads: got 0" in err
    assert "Traceback" not in err and "bug" not in err


def test_a_file_system_refusal_names_the_file(monkeypatch, tmp_path, capsys):
    import tdaf.cli.train as train

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "config.yaml"))
    monkeypatch.setattr(train, "check_run_inputs", refuse)
    assert main([*TINY, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"tdaf train: error: Permission denied: {tmp_path / 'run' / 'config.yaml'}"


def test_the_shared_checks_raise_user_errors(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match="empty.pt is empty"):
        safe_load(tmp_path / "empty.pt", "--checkpoint")
    with pytest.raises(UserError, match="lr: got"):
        TrainConfig.from_dict({"lr": -1.0})
    (tmp_path / "bad.yaml").write_text("[1, 2]")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_config_file(tmp_path / "bad.yaml")
    with pytest.raises(UserError, match="only TDAF models take"):  # a model builder's refusal
        tdaf.create_model("resnet18_cifar", flows=3)
    assert issubclass(UserError, ValueError)  # `except ValueError` keeps catching it


def _raised(code: str, module: str, error: BaseException | None = None) -> BaseException:
    """The exception that ``code`` (the body of a function of ``module``) raises."""
    namespace = {"__name__": module}
    exec("def fail(error):\n    " + code + "\n", namespace)
    try:
        namespace["fail"](error)
    except BaseException as e:
        return e
    raise AssertionError("did not raise")


@pytest.mark.parametrize("code, module, error, user", [
    ("raise error", "tdaf.data.somewhere", UserError("anything the checks say"), True),
    # checks that still raise a plain ValueError: one naming a parameter or file first ...
    ("raise error", "tdaf.detection.data", ValueError("--data-dir: /x does not exist; expected ..."), True),
    ("raise error", "tdaf.video.data", ValueError("recipe: got 'x'; allowed: motion, kinetics"), True),
    ("raise error", "tdaf.data.cluttered", ValueError("train, val: got 0, 1; allowed: >= 1 sample each"), True),
    # ... or any raised by a command module
    ("raise error", "tdaf.cli.attention", ValueError("resnet18 has no TDAF attention"), True),
    ("raise error", "tdaf.video.predict", ValueError("no video found in x"), True),
    # a check of the library's own consistency, reached from a command: a bug
    ("raise error", "tdaf.layers.anar", ValueError("ANAR channels must be >= 1, got 0"), False),
    # raised by Python inside tdaf's code, even in a command module, even if it looked like a check
    ("a, b = [1]", "tdaf.cli.export", None, False),
    ("int('--x: y')", "tdaf.cli.train", None, False),
    # raised outside tdaf
    ("raise error", "numpy.core", ValueError("axis: out of range"), False),
    ("raise error", "tdaf.cli.train", json.JSONDecodeError("Expecting value", "", 0), False),
    ("raise error", "tdaf.cli.train", KeyError("x"), False),
    ("raise error", "tdaf.cli.train", RuntimeError("CUDA error: an illegal memory access"), False),
])
def test_what_counts_as_bad_input(code, module, error, user):
    assert is_user_error(_raised(code, module, error)) is user


def test_an_error_without_a_traceback_is_judged_by_its_class():
    assert is_user_error(UserError("x")) and not is_user_error(ValueError("--data-dir: x"))
