"""Progress that a log file can hold: bars on a terminal, plain lines elsewhere, nothing when off."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tdaf.io.progress import PlainProgress, progress_bar, track, use_bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_is_a_bar_on_a_terminal_and_plain_lines_elsewhere(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert use_bars(None, _Terminal()) is True
    assert use_bars(None, io.StringIO()) is None  # a file or a pipe: plain lines
    assert use_bars(True, io.StringIO()) is True  # --progress forces the bars
    assert use_bars(False, _Terminal()) is False
    monkeypatch.setenv("RANK", "1")  # torchrun's other processes show nothing
    assert use_bars(None, _Terminal()) is False
    with pytest.raises(TypeError, match="progress: got 'yes'"):
        use_bars("yes")  # type: ignore[arg-type]


def test_forced_bar_is_tqdm_and_off_is_silent(caplog):
    from tqdm import tqdm

    stream = io.StringIO()
    bar = progress_bar(3, desc="x", enabled=True, file=stream)
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in stream.getvalue()  # what a terminal gets
    with caplog.at_level(logging.INFO, logger="tdaf.progress"):
        off = progress_bar(10, desc="x", enabled=False, file=_Terminal())
        for _ in range(10):
            off.update(1)
        off.set_postfix(loss="1.0")
        off.write("said")
        off.close()
    assert caplog.records == []


def test_plain_lines_every_n_updates_and_at_close_with_the_postfix_figures(caplog):
    with caplog.at_level(logging.INFO, logger="tdaf.progress"):
        bar = progress_bar(10, desc="epoch 1/2", unit="step", file=io.StringIO(), every=4)
        assert isinstance(bar, PlainProgress)
        for i in range(10):
            bar.update(1)
            bar.set_postfix(loss=f"{1 / (i + 1):.4f}", lr="0.1", refresh=False)
        bar.close()
        bar.close()  # a second close adds nothing
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" step")[0] for line in lines] == ["epoch 1/2: 4/10", "epoch 1/2: 8/10", "epoch 1/2: 10/10"]
    assert "(40%)" in lines[0] and "loss=0.2500, lr=0.1" in lines[0] and "loss=0.1250" in lines[1]
    assert "loss=0.1000" in lines[2]  # each line has the figures of its own step
    assert "step/s" in lines[0] and all("\r" not in line for line in lines)


def test_default_every_is_about_four_lines_per_loop(caplog):
    with caplog.at_level(logging.INFO, logger="tdaf.progress"):
        assert list(track(range(100), desc="eval", unit="batch", file=io.StringIO())) == list(range(100))
        list(track(iter(range(250)), desc="stream", file=io.StringIO()))  # no length: every 100, then the end
    counts = [r.getMessage().split(" ")[1] for r in caplog.records]
    assert counts == ["25/100", "50/100", "75/100", "100/100", "100", "200", "250"]
    with pytest.raises(ValueError, match="every: got 0"):
        PlainProgress(10, every=0)


def _tdaf(argv: list[str], cwd: Path, log: Path) -> int:
    """Run ``tdaf argv`` with stdout and stderr in one file, as ``make demo > log.txt 2>&1`` does."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    with log.open("w") as f:
        return subprocess.run([sys.executable, "-m", "tdaf", *argv], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                              env=env, timeout=600).returncode


def test_a_command_whose_output_is_a_file_writes_plain_lines(classification_run, tmp_path):
    """``tdaf eval`` and ``tdaf predict`` with their default progress, into a file: no carriage
    return, a progress line with the counts."""
    data, ckpt = classification_run
    log = tmp_path / "log.txt"
    assert _tdaf(["eval", "--checkpoint", str(ckpt), "--workers", "0", "--batch-size", "1"], tmp_path, log) == 0
    text = log.read_text()
    assert "\r" not in text and "eval: 6/6 batch (100%)" in text, text
    folder = next((data / "val").iterdir())
    assert _tdaf(["predict", "--checkpoint", str(ckpt), str(folder), "--json"], tmp_path, log) == 0
    text = log.read_text()
    assert "\r" not in text and "predict: 2/2 img (100%)" in text, text


def test_the_main_job_into_a_file_writes_plain_lines(tmp_path):
    """``make demo > log.txt 2>&1``: training's step and validation progress as plain lines."""
    log = tmp_path / "log.txt"
    argv = ["demo", "--out", str(tmp_path / "demo"), "--seeds", "1", "--epochs", "1", "--train-subset", "16",
            "--val-subset", "8", "--batch-size", "8"]
    assert _tdaf(argv, tmp_path, log) == 0
    text = log.read_text()
    assert "\r" not in text, text[:2000]
    assert "epoch 1/1: 2/2 step (100%)" in text and "val 1: " in text and "verdict" in text, text[-2000:]
