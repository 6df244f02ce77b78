"""``tdaf train``: train a model of any registered task with the paper's recipes (``tdaf eval``:
:mod:`tdaf.cli.eval`). The tasks, their data sets and default models in ``--help`` come from
the task and data set registries."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..data.registry import dataset_names, dataset_spec
from ..engine.checkpoint import load_checkpoint
from ..engine.config import (
    AMP_DTYPE_NAMES, MODEL_KEYS, OPTIMIZERS, SCHEDULES, TrainConfig, load_config_file, override,
)
from ..engine.task import get_task, task_for_config, task_names, with_task_defaults
from ..errors import UserError
from ..models import is_model
from ..engine.preflight import check_run_inputs
from ..engine.trainer import TrainingDiverged, Trainer
from ..layers.anar import ANAR_UPS
from ..r2dns import ATTENTION_INITS, SCRATCH_ATTENTION_INIT
from ._common import (
    add_amp_arg, add_channels_last_arg, add_device_arg, add_input_size_arg, add_progress_arg, add_threads_arg,
    input_size_hw,
)

log = logging.getLogger("tdaf.train")

_S = argparse.SUPPRESS
_BOOL = argparse.BooleanOptionalAction

TRAIN_NOTES = """\
Writes OUT/best.pt on a new best validation metric, then OUT/last.pt every epoch (both
atomically), OUT/metrics.csv, OUT/tb/ (TensorBoard) and OUT/config.yaml. Values: defaults <
--config file < flags; with --resume the checkpoint's config replaces the defaults, and flags
that would change the architecture or the data are refused. A flag that changes a setting
drops the file's settings that belong only to the old value (--schedule constant drops
milestones and gamma; --optimizer adam drops momentum and nesterov; --data drops the data
set's data-dir, recipe and input-size; --task drops the model, data and label smoothing; a
plain --model drops the TDAF settings; --epochs drops the milestones; --init-from drops
--pretrained and the other way round); a flag the run would not use is refused
(--milestones with --schedule cosine). --batch-size is the global batch over all
processes; the learning rate is lr x batch-size / lr-batch (the paper's 0.1 x batch/256).
A run that diverges (non-finite loss, weights, statistics or validation loss) stops with exit
status 1 before saving anything, leaving the last good checkpoints as they were.
"""


def _default_data(task: str) -> str:
    return get_task(task).defaults.get("data") or dataset_names(task)[0]


def _example_model(task: str) -> str:
    """The TDAF version of the task's default model (the default itself if it has none)."""
    model = get_task(task).defaults.get("model", "")
    return f"tdaf_{model}" if is_model(f"tdaf_{model}") else model


def _data_set_lines(task: str) -> list[str]:
    lines = []
    for name in dataset_names(task):
        spec = dataset_spec(name, task)
        marks = ("*" if name == _default_data(task) else "") + (" (--data-dir)" if spec.needs_dir else "")
        recipe = spec.defaults.get("recipe")
        size = spec.defaults.get("size")
        extra = ", ".join(([f"recipe {recipe}"] if recipe else []) + ([f"size {size}"] if size else []))
        lines.append(f"    {name}{marks}: {spec.help}" + (f" [{extra}]" if extra else ""))
    return lines


def train_epilog() -> str:
    """``tdaf train --help``'s epilog: every registered task with its data sets (from the
    registries) and example command lines per task."""
    lines = ["tasks (--task), their data sets (--data; * the default, (--data-dir) read from disk) and",
             "default models (--model):"]
    for task in task_names():
        lines.append(f"  {task}: default model {get_task(task).defaults.get('model', '-')}")
        lines += _data_set_lines(task)
    lines += ["", "examples:"]
    for task in task_names():
        bundled = [n for n in dataset_names(task) if not dataset_spec(n, task).needs_dir]
        on_disk = [n for n in dataset_names(task) if dataset_spec(n, task).needs_dir]
        lines.append(f"  {task}:")
        if bundled:
            lines.append(f"    tdaf train --task {task} --data {bundled[0]} --model {_example_model(task)} "
                         f"--epochs 2 --out runs/{task}")
        if on_disk:
            lines.append(f"    tdaf train --task {task} --data {on_disk[0]} --data-dir DIR --model "
                         f"{_example_model(task)} --out runs/{task}_{on_disk[0]}")
    lines += [
        "  any task:",
        "    tdaf train --config configs/tab2_cifar10_tdaf_resnet50_anar3.yaml --data-dir ~/data/cifar-10-batches-py",
        "    tdaf train --config configs/detection/digit_scenes_tdaf_fcos_resnet18_fpn.yaml --schedule constant",
        "    tdaf train --epochs 4 --resume runs/classification/last.pt   (the checkpoint holds the rest of the config)",
        "    torchrun --nproc-per-node 8 -m tdaf train --config ... (data-parallel; see docs/training.md)",
        "",
    ]
    return "\n".join(lines) + "\n" + TRAIN_NOTES


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a TDAF model or its baseline (one CPU, one GPU, or many processes)",
        description=f"Train a model of a task ({', '.join(task_names())}) with the recipes of the paper "
        "(§4.1-4.4; configs/ holds them per task): by default SGD, momentum 0.9, weight decay 1e-4, lr 0.1 x "
        "batch/256, a step schedule, each data set's augmentation recipe. A baseline and its TDAF model train "
        "with identical settings.",
        epilog=train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=_S,
    )
    p.add_argument("--config", metavar="YAML", help="a config file (see configs/); flags override its values")
    p.add_argument("--task", help=f"the task: {', '.join(task_names())} (default classification); it picks the "
                   "default model and data set (listed below)")
    g = p.add_argument_group("model")
    g.add_argument("--model", help="a registered model of the task (tdaf models lists them); default: "
                   + ", ".join(f"{t} {get_task(t).defaults.get('model', '-')}" for t in task_names()))
    g.add_argument("--flows", type=int, help="TDAF flows N (default 3)")
    g.add_argument("--anar", help="TDAF attention module: anar2 | anar3 | anar5 | anar7 (default anar3)")
    g.add_argument("--eta", type=float, help="half-scale residual of Eq. 5 (default 0.5)")
    g.add_argument("--downsample", help="TDAF downsampling between flows: avg | bilinear (default avg)")
    g.add_argument("--attention-init", choices=list(ATTENTION_INITS),
                   help="how the ANARs start: identity (the model computes its plain counterpart at step 0), random "
                   "(Kaiming fan-out: wide stages start with gates near 0 or 1), fan_in (Kaiming fan-in around the "
                   f"identity level: every ANAR layer learns from step 1), or auto (identity over trained weights, {SCRATCH_ATTENTION_INIT} from scratch; the default)")
    g.add_argument("--anar-min-width", type=int, metavar="C",
                   help="no ANAR layer narrower than C channels (default 8; 1: Table 1's c/8 .. c/32 exactly, which are "
                   "1-4 channels on a 32-128 channel backbone; ResNet-50 and wider are Table 1 either way)")
    g.add_argument("--anar-up", choices=list(ANAR_UPS),
                   help="ANAR's x2 up layers: deconv (Table 1's 4x4 stride-2 transposed conv, default) or resize "
                   "(bilinear x2, then a 3x3 conv)")
    g.add_argument("--pretrained", metavar="FILE", help="initialise the plain backbone from a local state dict")
    g.add_argument("--init-from", metavar="CKPT",
                   help="start from a trained model of the same task: its best.pt/last.pt (e.g. the plain model's, "
                   "for a TDAF model), or a state dict; copies every weight whose name and shape fit, fills each "
                   "flow's BatchNorm statistics, starts new ANARs as the identity (attention-init auto)")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="NAME",
                   help="a data set of the task: " + "; ".join(f"{t}: {', '.join(dataset_names(t))}"
                                                                for t in task_names())
                   + " (default: " + ", ".join(f"{t} {_default_data(t)}" for t in task_names()) + ")")
    g.add_argument("--data-dir", metavar="PATH",
                   help="the folder of a data set read from disk (marked (--data-dir) below; the layout each "
                   "expects is listed there); built-in data sets read none")
    add_input_size_arg(g, "training crop size (default: the data set's or the task's; square)", suppress=True)
    g.add_argument("--recipe", metavar="NAME",
                   help="training augmentation of the task (default: the data set's, listed below); see each "
                   "task's guide (docs/) for its recipes")
    g.add_argument("--train-subset", type=int, metavar="N", help="train on a fixed random subset of N images")
    g.add_argument("--val-subset", type=int, metavar="N", help="validate on a fixed random subset of N images")
    g.add_argument("--workers", type=int, help="data loader processes per training process (default: automatic)")
    g.add_argument("--strict", action=_BOOL, help="stop at the first unreadable input instead of skipping it (default off)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=list(OPTIMIZERS), help="sgd (the paper's, default), adam or adamw")
    g.add_argument("--epochs", type=int, help="epochs (default 10)")
    g.add_argument("--batch-size", type=int, help="global batch over all processes (default 64)")
    g.add_argument("--accum-steps", type=int, help="micro-batches accumulated per step in each process (default 1)")
    g.add_argument("--lr", type=float, help="learning rate at --lr-batch images per step (default 0.1)")
    g.add_argument("--lr-batch", type=int, help="the batch --lr refers to; lr scales linearly (default 256)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, help="weight decay (default 1e-4)")
    g.add_argument("--nesterov", action=_BOOL, help="Nesterov momentum (default off)")
    g.add_argument("--schedule", choices=list(SCHEDULES), help="lr schedule (default step)")
    g.add_argument("--milestones", type=int, nargs="+", metavar="EPOCH",
                   help="step schedule: epochs where lr is multiplied by --gamma (default 50%% and 75%% of --epochs)")
    g.add_argument("--gamma", type=float, help="step schedule factor (default 0.1)")
    g.add_argument("--warmup-epochs", type=float, help="linear lr warm-up (default 0)")
    g.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (default 0)")
    g.add_argument("--ema-decay", type=float, metavar="D",
                   help="keep an exponential moving average of the weights (timm's ModelEmaV3, e.g. 0.9998); it is "
                   "what is validated and saved (default off)")
    g.add_argument("--clip-grad-norm", type=float, metavar="MAX",
                   help="clip the gradients' global norm to MAX, and stop on a non-finite norm (default off)")
    g.add_argument("--attention-lr-scale", type=float, metavar="K",
                   help="the ANAR parameters learn at K x the learning rate (default 1)")
    g.add_argument("--attention-weight-decay", type=float, metavar="WD",
                   help="weight decay of the ANAR parameters (default: --weight-decay)")
    g.add_argument("--decay-norm-and-bias", action=_BOOL,
                   help="weight decay on BatchNorm affines and biases too (default on; --no-decay-norm-and-bias "
                   "leaves them out, as timm's param_groups_weight_decay does)")
    g.add_argument("--seed", type=int, help="seed of initialisation, data order and augmentation (default 0)")
    g = p.add_argument_group("execution")
    add_device_arg(g, suppress=True)
    add_threads_arg(g, suppress=True)
    add_amp_arg(g, suppress=True)
    g.add_argument("--amp-dtype", choices=list(AMP_DTYPE_NAMES),
                   help="with --amp: bf16 (default) or fp16 (for GPUs without bf16; the loss is scaled)")
    add_channels_last_arg(g, suppress=True)
    g.add_argument("--compile", action=_BOOL, help="torch.compile the model")
    g.add_argument("--overlap-flows", action=_BOOL,
                   help="on a CUDA device, run the extra flows and the ANARs on a second stream, concurrently "
                   "with the last flow (same results; default off)")
    g.add_argument("--out", metavar="DIR", help="output folder (default runs/train; with --resume: its folder)")
    g.add_argument("--resume", metavar="CKPT", help="continue a run from its last.pt")
    g.add_argument("--overwrite", action=_BOOL, help="start over in an --out folder that holds a checkpoint")
    g.add_argument("--eval-every", type=int, help="validate every N epochs (and after the last; default 1)")
    g.add_argument("--attention-monitor", action=_BOOL,
                   help="after every epoch, the attention statistics of a TDAF model on a fixed validation subset "
                   "(gate mean, spread, movement, focus on the object where the data say where it is, gradient "
                   "per flow and ANAR) in metrics.csv and TensorBoard, with pictures of the maps (default on)")
    add_progress_arg(g, suppress=True)
    g.add_argument("--tensorboard", action=_BOOL, help="TensorBoard events in OUT/tb (default on)")
    g.add_argument("--log-every", type=int, help="TensorBoard step scalars every N steps (default 20)")
    p.set_defaults(func=run_train)


# Settings of the machine, not of the run: a resumed run takes them from the command line only.
_NOT_RESUMED = ("resume", "out", "overwrite", "device", "workers", "threads", "progress")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < the --config file (and its bases) < flags given on the command line.

    With ``--resume``, the checkpoint's own config takes the place of the defaults, so a
    run continues with the flags ``--resume CKPT`` alone; flags that change the task, the
    model or the data are refused unless they repeat the checkpoint's values.
    """
    values: dict[str, Any] = {}
    source = "command line"
    file_source = None
    config = getattr(args, "config", None)
    if config:
        values = load_config_file(config)
        source = f"--config {config} (with flags)"
        file_source = f"--config {config}"
        TrainConfig.from_dict(values, file_source)  # report file errors against the file
    flags = {k: v for k, v in vars(args).items() if k in TrainConfig.keys()}
    if "input_size" in flags:
        h, w = input_size_hw(flags["input_size"])  # type: ignore[misc]
        if h != w:
            raise UserError(f"--input-size: got {h} {w}; training crops are square: give one number")
        flags["input_size"] = h
    values, dropped = override(values, flags)
    if dropped:  # say so: the run differs from the file in more than the flags given
        by_owner: dict[str, list[str]] = {}
        for key, owner in dropped.items():
            by_owner.setdefault(owner, []).append(key)
        log.info("%s: dropped %s (back to the defaults)", file_source, "; ".join(
            f"{', '.join(keys)}: set for the {owner} that --{owner.replace('_', '-')} {flags[owner]} replaces"
            for owner, keys in by_owner.items()))
    resume = values.get("resume")
    if resume:
        saved = load_checkpoint(resume, "--resume").get("config", {})
        for key in MODEL_KEYS:
            if key in values and saved.get(key) is not None and values[key] != saved[key]:
                raise UserError(
                    f"--{key.replace('_', '-')}: got {values[key]!r}, but {resume} was trained with "
                    f"{saved[key]!r}; a resumed run keeps the task, model and data of the run that wrote it "
                    f"(drop the flag, or start a new run in another --out folder)")
        values = {**{k: v for k, v in saved.items() if k in TrainConfig.keys() and k not in _NOT_RESUMED}, **values}
        if "out" not in values:
            values["out"] = str(Path(resume).expanduser().parent)
    cfg = TrainConfig.from_dict(values, source)
    try:  # a task refuses settings it cannot run with a ValueError naming them (Task.check_config)
        task = task_for_config(cfg)
        cfg = with_task_defaults(cfg, task)
        task.check_config(cfg, source)
    except UserError:
        raise
    except ValueError as e:
        raise UserError(str(e)) from e
    return cfg


def run_train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    check_run_inputs(Path(cfg.out).expanduser(), cfg, getattr(args, "config", None))
    try:
        Trainer(cfg).fit()
    except TrainingDiverged as e:
        print(f"tdaf train: error: {e}", file=sys.stderr)
        return 1
    return 0
