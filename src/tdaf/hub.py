"""Weights the timm way: a folder of ``config.json`` + ``model.safetensors``.

:func:`save_for_hf` writes what ``timm.models.save_for_hf`` writes: ``config.json`` with
``architecture`` (the registered model name), ``num_classes``, ``num_features``,
``model_args`` (the builder arguments that rebuild it: the TDAF settings ``flows``,
``anar``, ``eta``, ``downsample``, ...), ``pretrained_cfg`` (input size, mean, std,
interpolation, classifier) and ``label_names``; and the whole state dict in
``model.safetensors``. The folder loads back with ``tdaf.create_model("local-dir:DIR")``
and, for classifiers (tdaf's image classifiers are timm models),
``timm.create_model("local-dir:DIR", pretrained=True)``; ``timm.models.push_to_hf_hub``
publishes the model (``hf-hub:`` names then load it the same way).

The dense tasks' models (FCOS detectors, SimpleBaseline pose models, 3D-ResNet video
models) are not in timm's registry, which holds image classifiers: their folder has the
same two files and the ``tdaf`` block (task, data meta), and loads through
``tdaf.create_model("local-dir:DIR")``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .engine.checkpoint import load_checkpoint, model_from_payload, state_dict_mismatch
from .errors import UserError
from .io.files import atomic_write_text, json_safe
from .models import create_model
from .models._registry import register_model_source
from .r2dns import TDAF_DEFAULTS

__all__ = ["save_for_hf", "load_from_folder", "LOCAL_DIR", "CONFIG_NAME", "WEIGHTS_NAME", "HF_FORMAT"]

LOCAL_DIR = "local-dir:"
CONFIG_NAME = "config.json"  # timm's names (timm.models._hub)
WEIGHTS_NAME = "model.safetensors"
HF_FORMAT = "tdaf-hf-1"
# Builder arguments that name files or starting states, not the architecture: a folder rebuilds without them.
_NOT_ARCHITECTURE = ("pretrained", "backbone_weights", "attention_init")
# timm's pretrained-config keys that describe where weights came from, not what they are.
_SOURCE_KEYS = ("file", "url", "hf_hub_id", "hf_hub_filename", "source", "state_dict")
# Data settings of a training run that a user of the weights needs (the eval transform, the labels).
_TUPLES = ("input_size", "mean", "std", "pool_size", "test_input_size", "min_input_size")
_META_KEYS = ("input_size", "mean", "std", "resize", "class_names", "categories", "keypoint_names", "data",
              "min_size", "max_size", "heatmap_stride", "clip_len")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _timm_cfg_keys() -> set[str]:
    from timm.models import PretrainedCfg

    return {f.name for f in dataclasses.fields(PretrainedCfg)}


def _model_args(model: nn.Module) -> dict[str, Any]:
    """The builder arguments of a model made by :func:`tdaf.create_model`, from its config:
    ``num_classes`` and the TDAF settings it records."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    args: dict[str, Any] = {k: cfg[k] for k in TDAF_DEFAULTS if k in cfg and k not in _NOT_ARCHITECTURE}
    if isinstance(getattr(model, "num_classes", None), int):
        args["num_classes"] = model.num_classes
    return args


def save_for_hf(
    model: nn.Module | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    model_args: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    task: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a model built by :func:`tdaf.create_model`, or the path of a ``tdaf
    train`` checkpoint) to the folder ``out`` as ``config.json`` + ``model.safetensors``,
    the layout of ``timm.models.save_for_hf``. ``model_name`` / ``model_args``: what
    rebuilds it (default: its ``pretrained_cfg``'s architecture, class count and TDAF
    settings; a checkpoint's own); ``meta``: its data settings (a checkpoint's: input
    size, mean, std, class names); ``task``: its task (default: its config's, else
    classification). Existing files are kept unless ``overwrite``; each file
    is written atomically, the config last. Returns ``out``."""
    if isinstance(model, (str, os.PathLike)):
        payload = load_checkpoint(model, "checkpoint")
        model, ckpt_meta = model_from_payload(payload, model)
        model_name = model_name or payload["model"]["name"]
        model_args = dict(payload["model"].get("kwargs", {})) if model_args is None else model_args
        meta = {**ckpt_meta, **(meta or {})}
        task = task or payload.get("task") or ckpt_meta.get("task")
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    name = model_name or cfg.get("architecture")
    if not name:
        raise UserError("model_name: the model records no architecture (pretrained_cfg['architecture']); give "
                        "the registered name that builds it")
    args = {k: v for k, v in (_model_args(model) if model_args is None else model_args).items()
            if k not in _NOT_ARCHITECTURE and v is not None}
    meta = dict(meta or {})
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out: {out} is a file; give a folder (it will hold {CONFIG_NAME} and {WEIGHTS_NAME})")
    config_path, weights_path = out / CONFIG_NAME, out / WEIGHTS_NAME
    existing = [p.name for p in (config_path, weights_path) if p.exists()]
    if existing and not overwrite:
        raise UserError(f"--out: {out} already holds {', '.join(existing)}; pass --overwrite to replace them, or "
                        f"choose another folder")
    out.mkdir(parents=True, exist_ok=True)

    # timm's PretrainedCfg takes its own fields only; tdaf's (family, flows, ...) go to the tdaf block.
    timm_keys = _timm_cfg_keys()
    pretrained_cfg = {k: v for k, v in cfg.items() if k in timm_keys and k not in _SOURCE_KEYS and v is not None}
    pretrained_cfg.pop("architecture", None)
    tdaf_cfg = {k: v for k, v in cfg.items() if k not in timm_keys and k != "tdaf_meta" and v is not None}
    for key in ("input_size", "mean", "std"):  # what the weights were trained on
        if meta.get(key) is not None:
            pretrained_cfg[key] = list(meta[key])
    num_classes = getattr(model, "num_classes", args.get("num_classes"))
    if isinstance(num_classes, int):
        pretrained_cfg["num_classes"] = num_classes
    config: dict[str, Any] = {"architecture": name}
    if isinstance(num_classes, int):
        config["num_classes"] = num_classes
    if isinstance(getattr(model, "num_features", None), int):
        config["num_features"] = model.num_features
    if args:
        config["model_args"] = args
    names = meta.get("class_names")
    if names and isinstance(num_classes, int) and len(names) == num_classes:
        config["label_names"] = list(names)
    config["pretrained_cfg"] = pretrained_cfg
    config["tdaf"] = {"format": HF_FORMAT, "task": task or cfg.get("task", "classification"), "cfg": tdaf_cfg,
                      "meta": {k: meta[k] for k in _META_KEYS if meta.get(k) is not None}}

    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = weights_path.with_name(f".{WEIGHTS_NAME}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, weights_path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_text(json.dumps(json_safe(_jsonable(config)), indent=2) + "\n", config_path)
    return out


def read_config(folder: str | os.PathLike[str], what: str = "local-dir") -> dict[str, Any]:
    """``folder``'s ``config.json``, checked: an ``architecture`` and a weights file."""
    folder = Path(folder).expanduser()
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: {folder} is not a folder (allowed: a folder of {CONFIG_NAME} + "
                                f"{WEIGHTS_NAME}, as written by tdaf export --format timm)")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {folder} has no {path.name} (allowed: a folder of {CONFIG_NAME} + "
                                    f"{WEIGHTS_NAME}, as written by tdaf export --format timm)")
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{what}: {config_path} is not JSON ({e})") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise UserError(f"{what}: {config_path} names no architecture (allowed: timm's config.json, with "
                        f"'architecture' and 'model_args')")
    if not isinstance(config.get("model_args", {}), dict):
        raise UserError(f"{what}: {config_path}: model_args: got {config['model_args']!r}; allowed: a mapping")
    return config


def load_from_folder(folder: str | os.PathLike[str], what: str = "local-dir", **kwargs: Any) -> nn.Module:
    """The model saved by :func:`save_for_hf` in ``folder``: built from its config's
    ``architecture`` and ``model_args`` (``kwargs`` override them, as in timm), then every
    weight loaded from ``model.safetensors`` (strictly: a missing, extra or mis-shaped
    tensor is an error naming the folder). Its ``pretrained_cfg`` is the config's, with
    ``file`` the folder; the data settings of its training run are in
    ``pretrained_cfg["tdaf_meta"]``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder).expanduser()
    config = read_config(folder, what)
    args = {**config.get("model_args", {}), **kwargs}
    model = create_model(config["architecture"], **args)
    try:
        state = load_file(str(folder / WEIGHTS_NAME))
    except (SafetensorError, OSError) as e:
        raise UserError(f"{what}: {folder / WEIGHTS_NAME} is not a safetensors file ({e})") from None
    problems = state_dict_mismatch(model.state_dict(), state)
    if problems:
        raise UserError(f"{what}: {folder / WEIGHTS_NAME} does not fit {config['architecture']} {args}: {problems}")
    with torch.no_grad():
        model.load_state_dict(state, strict=True)
    tdaf_block = config.get("tdaf", {}) if isinstance(config.get("tdaf"), dict) else {}
    saved = {k: tuple(v) if isinstance(v, list) and k in _TUPLES else v
             for k, v in dict(config.get("pretrained_cfg", {})).items()}
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **saved,
                            "architecture": config["architecture"], "file": str(folder), "source": "local-dir",
                            "tdaf_meta": dict(tdaf_block.get("meta", {}))}
    if hasattr(model, "default_cfg"):
        model.default_cfg = model.pretrained_cfg
    return model


register_model_source(LOCAL_DIR, load_from_folder)
