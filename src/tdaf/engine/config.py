"""Training configuration: defaults < YAML file(s) < command-line flags.

A YAML file holds the same keys as :class:`TrainConfig` (dashes or underscores), and may
name a ``base:`` file (relative to itself) whose keys it overrides. The configs under
``configs/`` use one base per recipe, so a baseline and its TDAF model share every
setting but the model (paper §4.1: "trained with identical optimization scheme").

Each layer overrides the one below it consistently (:func:`override`): a layer that changes
a setting drops the lower layers' settings that belong only to the old value (``schedule:
constant`` drops the step schedule's ``milestones`` and ``gamma``; ``optimizer: adam`` drops
SGD's ``momentum`` and ``nesterov``; another ``data`` drops the data set's folder, recipe and
input size; another ``task`` drops the model and data; a plain ``model`` drops the TDAF
settings; other ``epochs`` drop the milestones, which count epochs; ``init_from`` drops
``pretrained`` and the other way round), so they return to their defaults. A setting that
the final config does not use is refused unless it is the default.

The config is the same for every task; :meth:`TrainConfig.validate` checks what the
engine itself uses, and the task (``task:``) checks the model and data names
(:meth:`tdaf.engine.task.Task.check_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import UserError
from ..models import is_model, model_cfg
from ..r2dns import ATTENTION_INITS, TDAF_DEFAULTS

__all__ = ["TrainConfig", "load_config_file", "override", "SCHEDULES", "OPTIMIZERS", "MODEL_KEYS", "OWNED_KEYS"]

SCHEDULES = ("step", "cosine", "constant")
OPTIMIZERS = ("sgd", "adam", "adamw")
AMP_DTYPE_NAMES = ("bf16", "fp16")
# Keys that decide the architecture and the data of a run: a resumed run must keep them.
MODEL_KEYS = ("task", "model", "flows", "anar", "eta", "downsample", "anar_min_width", "anar_up", "data")

# The settings that mean something only for one value of another setting (schedule,
# optimizer, amp), for one kind of value (model: a TDAF model or a plain one), or for each
# value (ANY_VALUE: the task, the data set, the number of epochs). A higher layer that changes
# the setting drops them from the lower layers (see :func:`override`).
ANY_VALUE = "*"
_DATA_SET_KEYS = ("data_dir", "recipe", "input_size")  # the folder, augmentation and size of one data set
OWNED_KEYS: dict[str, dict[Any, tuple[str, ...]]] = {
    "schedule": {"step": ("milestones", "gamma"), "cosine": (), "constant": ()},
    "optimizer": {"sgd": ("momentum", "nesterov"), "adam": (), "adamw": ()},
    "amp": {True: ("amp_dtype",), False: ()},
    "model": {True: tuple(TDAF_DEFAULTS), False: ()},  # flows, anar, eta, downsample, attention_init
    # the task's model and data, and its loss's label smoothing
    "task": {ANY_VALUE: ("model", "data", "pretrained", "init_from", "label_smoothing", *_DATA_SET_KEYS)},
    "data": {ANY_VALUE: _DATA_SET_KEYS},
    "epochs": {ANY_VALUE: ("milestones",)},  # milestones are epoch numbers of one run length
}
# Settings that replace each other: one given in a higher layer drops the other from the lower ones.
ALTERNATIVE_KEYS = (("pretrained", "init_from"),)


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in every checkpoint)."""

    task: str = "classification"
    # model
    model: str | None = None  # None: the task's default
    flows: int | None = None
    anar: str | None = None
    eta: float | None = None
    downsample: str | None = None
    attention_init: str | None = None  # None: "auto" (identity over trained weights)
    anar_min_width: int | None = None  # None: the model's default (8); 1: Table 1's widths
    anar_up: str | None = None  # None: "deconv", Table 1's transposed convs
    pretrained: str | None = None
    init_from: str | None = None  # a trained model's weights to start from (engine/init_from.py)
    # data
    data: str | None = None  # None: the task's default
    data_dir: str | None = None
    input_size: int | None = None
    recipe: str | None = None
    train_subset: int | None = None
    val_subset: int | None = None
    workers: int | None = None
    strict: bool = False
    # optimisation (He et al. 2016, as the paper trains its baselines and TDAF models)
    optimizer: str = "sgd"
    epochs: int = 10
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 0.1
    lr_batch: int = 256
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    schedule: str = "step"
    milestones: list[int] | None = None
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    clip_grad_norm: float | None = None
    ema_decay: float | None = None
    # the attention's own optimisation: a learning-rate multiplier and weight decay for the
    # ANAR parameters (None: weight_decay), and no decay on BatchNorm affines and biases
    attention_lr_scale: float = 1.0
    attention_weight_decay: float | None = None
    decay_norm_and_bias: bool = True
    seed: int = 0
    # execution
    device: str = "auto"
    threads: int | None = None  # None: the cores left to torch after the loader workers
    amp: bool = False
    amp_dtype: str = "bf16"
    channels_last: bool = False
    compile: bool = False
    overlap_flows: bool = False
    out: str = "runs/train"
    resume: str | None = None
    overwrite: bool = False
    eval_every: int = 1
    attention_monitor: bool = True
    progress: bool = True
    tensorboard: bool = True
    log_every: int = 20

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Validated config from a mapping; unknown keys and wrong types are errors naming ``source``."""
        hints = typing.get_type_hints(cls)
        known = cls.keys()
        clean: dict[str, Any] = {}
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise UserError(f"{source}: unknown key {raw_key!r}{hint}; allowed: {', '.join(known)}")
            clean[key] = _coerce(key, value, hints[key], source)
        cfg = cls(**clean)
        cfg.validate(source)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def tdaf_kwargs(self) -> dict[str, Any]:
        """The TDAF settings given (``flows``, ``anar``, ``eta``, ``downsample``,
        ``attention_init``), as model-builder keyword arguments."""
        return {k: getattr(self, k) for k in TDAF_DEFAULTS if getattr(self, k) is not None}

    def merged(self, overrides: dict[str, Any], source: str = "command line") -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **overrides}, source)

    @property
    def base_lr(self) -> float:
        """The learning rate at this batch size: ``lr * batch_size / lr_batch`` (linear scaling)."""
        return self.lr * self.batch_size / self.lr_batch

    def step_milestones(self) -> list[int]:
        if self.milestones is not None:
            return sorted(self.milestones)
        return sorted({max(1, round(self.epochs * 0.5)), max(1, round(self.epochs * 0.75))})

    def validate(self, source: str = "config") -> None:
        def bad(key: str, allowed: str) -> UserError:
            return UserError(f"{source}: {key}: got {getattr(self, key)!r}; allowed: {allowed}")

        for key in ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "label_smoothing", "eta",
                    "clip_grad_norm", "ema_decay", "attention_lr_scale", "attention_weight_decay"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise bad(key, "a finite number")
        if not self.task:
            raise bad("task", "a registered task name")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", ", ".join(OPTIMIZERS))
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise bad("clip_grad_norm", "a number > 0, or null (no clipping)")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise bad("ema_decay", "a number in (0, 1), e.g. 0.9998, or null (no EMA)")
        if self.amp_dtype not in AMP_DTYPE_NAMES:
            raise bad("amp_dtype", ", ".join(AMP_DTYPE_NAMES))
        if self.schedule not in SCHEDULES:
            raise bad("schedule", ", ".join(SCHEDULES))
        if self.attention_init is not None and self.attention_init not in ATTENTION_INITS:
            raise bad("attention_init", ", ".join(ATTENTION_INITS))
        if self.init_from is not None and self.pretrained is not None:
            raise UserError(f"{source}: init_from, pretrained: give one of them (init_from copies a whole trained "
                            f"model, pretrained the plain backbone only); got {self.init_from!r} and "
                            f"{self.pretrained!r}")
        for key in ("epochs", "batch_size", "accum_steps", "lr_batch", "eval_every", "log_every"):
            if getattr(self, key) < 1:
                raise bad(key, "an integer >= 1")
        for key in ("input_size", "train_subset", "val_subset"):
            if getattr(self, key) is not None and getattr(self, key) < 1:
                raise bad(key, "an integer >= 1, or null")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", "an integer >= 1, or null (automatic)")
        if self.workers is not None and self.workers < 0:
            raise bad("workers", "an integer >= 0, or null (automatic)")
        if not self.lr > 0:
            raise bad("lr", "a number > 0")
        for key in ("momentum", "label_smoothing"):
            if not 0 <= getattr(self, key) < 1:
                raise bad(key, "a number in [0, 1)")
        if self.weight_decay < 0:
            raise bad("weight_decay", "a number >= 0")
        if self.attention_weight_decay is not None and self.attention_weight_decay < 0:
            raise bad("attention_weight_decay", "a number >= 0, or null (the weight_decay)")
        if not self.attention_lr_scale > 0:
            raise bad("attention_lr_scale", "a number > 0 (1: the learning rate of every other weight)")
        if self.anar_min_width is not None and self.anar_min_width < 1:
            raise bad("anar_min_width", "an integer >= 1, or null (1: Table 1's widths)")
        if not 0 < self.gamma <= 1:
            raise bad("gamma", "a number in (0, 1]")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise bad("warmup_epochs", f"a number in [0, epochs={self.epochs})")
        if self.milestones is not None and any(not 0 < m < self.epochs for m in self.milestones):
            raise bad("milestones", f"epochs strictly between 0 and epochs={self.epochs}")
        if self.batch_size % self.accum_steps:
            raise bad("batch_size", f"a multiple of accum_steps={self.accum_steps} (batch_size is the global batch)")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise bad("device", "auto, cpu, cuda or cuda:N")
        # A setting the run would ignore is a mistake in the command or the file, unless it is
        # the default (every saved config.yaml lists every key).
        defaults = TrainConfig()
        for owner in ("schedule", "optimizer"):
            used = OWNED_KEYS[owner][getattr(self, owner)]
            for key in {k for keys in OWNED_KEYS[owner].values() for k in keys} - set(used):
                if getattr(self, key) != getattr(defaults, key):
                    users = [v for v, keys in OWNED_KEYS[owner].items() if key in keys]
                    raise bad(key, f"only with {owner} {' or '.join(users)}; this run's {owner} is "
                              f"{getattr(self, owner)} (drop {key}, or set {owner})")


def _coerce(key: str, value: Any, hint: Any, source: str) -> Any:
    """Check a YAML/CLI value against the field's type (ints may stand for floats)."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional:
            return None
        raise UserError(f"{source}: {key}: got null; allowed: a value of type {_type_name(hint)}")
    base = next((a for a in args if a is not type(None)), hint) if isinstance(hint, types.UnionType) else hint
    origin = typing.get_origin(base)
    if origin is list:
        (item,) = typing.get_args(base)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{source}: {key}: got {value!r}; allowed: a list of {item.__name__}")
        return [_coerce(key, v, item, source) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{source}: {key}: got {value!r}; allowed: a mapping")
        return dict(value)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, os.PathLike)):
            return str(value)
    raise UserError(f"{source}: {key}: got {value!r} ({type(value).__name__}); allowed: {_type_name(hint)}")


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")


def load_config_file(path: str | os.PathLike[str], _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The keys of a YAML config, with its ``base:`` chain resolved (raw values, unvalidated)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"--config: file not found: {p}")
    if p.is_dir():
        raise UserError(f"--config: {p} is a folder; expected a YAML file (see configs/)")
    if p.resolve() in _seen:
        raise UserError(f"--config: {p}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config: {p} is not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(data, dict):
        raise UserError(f"--config: {p} must hold a mapping of keys to values, found {type(data).__name__}")
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise UserError(f"--config: {p}: base: got {base!r}; allowed: a path to another YAML file")
    parent = load_config_file(p.parent / base, (*_seen, p.resolve()))
    return override(parent, data)[0]


def _owner_kind(owner: str, value: Any) -> Any:
    """What :data:`OWNED_KEYS` ``[owner]`` is keyed by for ``value``: a model's kind (TDAF or
    plain; None for a name not registered), otherwise the value itself."""
    if owner == "model":
        return bool(model_cfg(value).get("tdaf")) if isinstance(value, str) and is_model(value) else None
    return value


def override(lower: dict[str, Any], upper: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """``upper``'s settings over ``lower``'s, and the keys of ``lower`` dropped, each with the
    setting in ``upper`` that dropped it. A key of ``lower`` is dropped when it belongs to
    the value of another setting that ``upper`` changes (:data:`OWNED_KEYS`; ``--schedule
    constant`` over a file with ``milestones`` drops them and the step schedule's ``gamma``)
    or when ``upper`` gives its alternative (:data:`ALTERNATIVE_KEYS`). ``upper``'s own
    settings are never dropped. Keys use underscores."""
    defaults = TrainConfig()
    dropped: dict[str, str] = {}
    for owner, owned in OWNED_KEYS.items():
        if owner not in upper:
            continue
        old, new = lower.get(owner, getattr(defaults, owner)), upper[owner]
        if owner == "data" and old is None:  # a data set named for the first time
            continue
        old_kind, new_kind = _owner_kind(owner, old), _owner_kind(owner, new)
        if old_kind == new_kind or (owner == "model" and None in (old_kind, new_kind)):
            continue  # the same value or kind (an unknown model name: the task's check reports it)
        belongs = list(owned.get(old_kind, owned.get(ANY_VALUE, ())))
        keep = set(owned.get(new_kind, ()))  # what the new value uses as well
        if owner == "task" and "model" not in upper:  # the old task's model goes, and its TDAF settings
            belongs += OWNED_KEYS["model"][True]
        for key in belongs:
            if key in lower and key not in upper and key not in keep and key not in dropped:
                dropped[key] = owner
    for pair in ALTERNATIVE_KEYS:
        for key, other in (pair, pair[::-1]):
            if upper.get(key) is not None and lower.get(other) is not None and other not in upper:
                dropped[other] = key
    return {**{k: v for k, v in lower.items() if k not in dropped}, **upper}, dropped
