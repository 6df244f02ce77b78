"""``tdaf train``'s flags override a config consistently, and ``--help`` covers every task.

A flag that changes a setting drops the config's settings that belong only to the old value
(``--schedule constant`` drops the step schedule's milestones); a flag the run would not use
is refused; ``--help`` lists every registered task and data set, with examples that parse.
"""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import pytest

from tdaf.cli.main import build_parser, main
from tdaf.cli.train import config_from_args, train_epilog
from tdaf.data.registry import dataset_names
from tdaf.engine.config import TrainConfig, load_config_file
from tdaf.engine.task import get_task, task_names

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
DEFAULTS = TrainConfig()


def _cfg(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["train", *argv]))


def _yaml(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


def test_a_schedule_flag_drops_the_config_milestones(caplog):
    """The issue's command: the COCO config's milestones [16, 22] belong to its step schedule."""
    config = str(CONFIGS / "detection/coco_fcos_resnet50_fpn_2x.yaml")
    assert load_config_file(config)["milestones"] == [16, 22]
    with caplog.at_level(logging.INFO, logger="tdaf.train"):
        cfg = _cfg("--config", config, "--schedule", "constant", "--epochs", "2")
    assert (cfg.schedule, cfg.milestones, cfg.epochs) == ("constant", None, 2)
    assert cfg.lr == 0.01 and cfg.warmup_epochs == 0.07  # the rest of the file stays
    assert "milestones" in caplog.text and "--schedule constant" in caplog.text


def test_schedule_flag_drops_gamma_but_keeps_what_the_flags_give(tmp_path):
    config = _yaml(tmp_path, "step.yaml", "schedule: step\nepochs: 24\nmilestones: [16, 22]\ngamma: 0.5\n")
    cfg = _cfg("--config", config, "--schedule", "cosine")
    assert (cfg.milestones, cfg.gamma) == (None, DEFAULTS.gamma)
    cfg = _cfg("--config", config, "--epochs", "4", "--milestones", "3", "--gamma", "0.2")
    assert (cfg.milestones, cfg.gamma) == ([3], 0.2)  # flags of the same schedule are kept
    cosine = _yaml(tmp_path, "cosine.yaml", "schedule: cosine\nepochs: 24\n")
    cfg = _cfg("--config", cosine, "--schedule", "step", "--milestones", "10", "20")
    assert (cfg.schedule, cfg.milestones) == ("step", [10, 20])


def test_epochs_flag_drops_milestones_counted_in_the_old_epochs(tmp_path):
    config = _yaml(tmp_path, "run.yaml", "epochs: 24\nmilestones: [16, 22]\n")
    cfg = _cfg("--config", config, "--epochs", "8")
    assert cfg.milestones is None and cfg.step_milestones() == [4, 6]
    assert _cfg("--config", config).milestones == [16, 22]


def test_optimizer_flag_drops_sgd_settings(tmp_path):
    config = _yaml(tmp_path, "sgd.yaml", "optimizer: sgd\nmomentum: 0.8\nnesterov: true\nweight_decay: 5.0e-4\n")
    cfg = _cfg("--config", config, "--optimizer", "adamw")
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov) == ("adamw", DEFAULTS.momentum, False)
    assert cfg.weight_decay == 5e-4  # every optimizer uses it
    assert _cfg("--config", config).nesterov is True


def test_data_flag_drops_the_data_set_settings():
    config = str(CONFIGS / "tab2_cifar10_tdaf_resnet50_anar3.yaml")
    cfg = _cfg("--config", config, "--data", "digits")
    assert (cfg.data, cfg.recipe, cfg.input_size) == ("digits", None, None)  # digits' own recipe and size apply
    assert (cfg.model, cfg.flows, cfg.milestones) == ("tdaf_resnet50_cifar", 3, [82, 123])
    cfg = _cfg("--config", config, "--data", "digits", "--recipe", "cifar")
    assert cfg.recipe == "cifar"


def test_plain_model_flag_drops_the_tdaf_settings():
    config = str(CONFIGS / "tab2_cifar10_tdaf_resnet50_anar3.yaml")
    cfg = _cfg("--config", config, "--model", "resnet50_cifar")
    assert (cfg.model, cfg.flows, cfg.anar) == ("resnet50_cifar", None, None)
    cfg = _cfg("--config", config, "--model", "tdaf_resnet101_cifar")  # another TDAF model keeps them
    assert (cfg.flows, cfg.anar) == (3, "anar3")


def test_task_flag_drops_the_model_and_data_of_the_old_task():
    config = str(CONFIGS / "tab2_cifar10_tdaf_resnet50_anar3.yaml")
    cfg = _cfg("--config", config, "--task", "detection")
    detection = get_task("detection").defaults
    assert (cfg.model, cfg.data, cfg.recipe, cfg.input_size) == (detection["model"], detection["data"], None, None)
    assert cfg.flows is None  # the TDAF settings went with the classifier
    cfg = _cfg("--config", config, "--task", "detection", "--model", "tdaf_fcos_resnet18_fpn")
    assert (cfg.model, cfg.flows) == ("tdaf_fcos_resnet18_fpn", 3)


def test_init_from_and_pretrained_replace_each_other(tmp_path):
    config = _yaml(tmp_path, "ft.yaml", "pretrained: weights/resnet18.pth\nlr: 0.01\n")
    cfg = _cfg("--config", config, "--init-from", "runs/plain/best.pt")
    assert (cfg.init_from, cfg.pretrained, cfg.lr) == ("runs/plain/best.pt", None, 0.01)
    config = _yaml(tmp_path, "ft2.yaml", "init_from: runs/plain/best.pt\n")
    assert _cfg("--config", config, "--pretrained", "w.pth").init_from is None
    with pytest.raises(ValueError, match="give one of them"):  # both on one layer: still a contradiction
        _cfg("--pretrained", "w.pth", "--init-from", "runs/plain/best.pt")


def test_task_flag_drops_the_classifier_label_smoothing(tmp_path):
    config = _yaml(tmp_path, "cls.yaml", "label_smoothing: 0.1\nmodel: resnet18_cifar\n")
    cfg = _cfg("--config", config, "--task", "pose", "--data", "stick_figures", "--model", "simplebaseline_resnet18")
    assert cfg.label_smoothing == 0.0  # the pose task refuses label smoothing: it has no labels


def test_no_amp_drops_the_amp_dtype(tmp_path):
    config = _yaml(tmp_path, "amp.yaml", "amp: true\namp_dtype: fp16\n")
    assert _cfg("--config", config, "--no-amp").amp_dtype == DEFAULTS.amp_dtype
    assert _cfg("--config", config).amp_dtype == "fp16"


def test_a_base_file_is_overridden_the_same_way(tmp_path):
    _yaml(tmp_path, "base.yaml", "optimizer: sgd\nnesterov: true\nschedule: step\nepochs: 10\nmilestones: [5, 8]\n")
    child = _yaml(tmp_path, "child.yaml", "base: base.yaml\noptimizer: adam\nschedule: cosine\n")
    values = load_config_file(child)
    assert "milestones" not in values and "nesterov" not in values and values["epochs"] == 10


@pytest.mark.parametrize("argv, key", [
    (["--schedule", "cosine", "--milestones", "3"], "milestones"),
    (["--schedule", "constant", "--gamma", "0.5"], "gamma"),
    (["--optimizer", "adam", "--momentum", "0.5"], "momentum"),
    (["--optimizer", "adamw", "--nesterov"], "nesterov"),
])
def test_a_flag_the_run_would_not_use_is_refused_in_one_line(argv, key, capsys, tmp_path):
    code = main(["train", *argv, "--epochs", "4", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{key}: got" in err and "only with" in err
    assert not (tmp_path / "run").exists()


def test_a_config_file_with_a_setting_it_does_not_use_is_refused(tmp_path):
    config = _yaml(tmp_path, "bad.yaml", "schedule: cosine\nmilestones: [3]\nepochs: 4\n")
    with pytest.raises(ValueError, match=r"--config .*bad.yaml: milestones: got \[3\]; allowed: only with schedule"):
        _cfg("--config", config)


def test_every_config_still_loads_to_what_it_says():
    """The layering rule changes no bundled config: a child drops nothing its base set for it."""
    for path in sorted(CONFIGS.rglob("*.yaml")):
        values = load_config_file(path)
        cfg = TrainConfig.from_dict(values, str(path))
        text = path.read_text()
        for key in ("milestones", "momentum", "nesterov", "recipe", "flows"):
            if f"\n{key}:" in "\n" + text:
                assert key in values, (path, key)
        assert cfg.schedule in ("step", "cosine", "constant")


# ---------------------------------------------------------------- --help
def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    return capsys.readouterr().out


def test_train_help_names_every_task_and_every_registered_data_set(capsys):
    text = _train_help(capsys)
    assert "Train a classifier" not in text
    tasks = task_names()
    assert {"classification", "detection", "pose", "video"} <= set(tasks)
    epilog = train_epilog()
    for task in tasks:
        assert f"  {task}: default model {get_task(task).defaults['model']}" in epilog
        lines = epilog.splitlines()
        start = lines.index(next(line for line in lines if line.startswith(f"  {task}: default model")))
        section = [line.split(":")[0].split()[0].rstrip("*") for line in lines[start + 1:]
                   if line.startswith("    ")]
        section = section[:len(dataset_names(task))]
        for name in dataset_names(task):
            assert name in section, (task, name)
            assert name in text
        assert f"tdaf train --task {task} " in epilog  # an example per task
    assert all(t in text.split("usage:")[1].split("options:")[0] for t in tasks)  # the description names them


def test_train_help_examples_parse_to_valid_configs():
    lines = [line.strip() for line in train_epilog().splitlines() if line.strip().startswith("tdaf train --task")]
    assert {shlex.split(line)[3] for line in lines} == set(task_names())
    for line in lines:
        argv = shlex.split(line)
        cfg = _cfg(*argv[2:])
        assert cfg.task == argv[3] and cfg.data == argv[argv.index("--data") + 1]
