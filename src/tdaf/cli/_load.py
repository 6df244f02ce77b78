"""Model loading shared by ``tdaf predict``, ``tdaf attention`` and ``tdaf export``:
a trained checkpoint (``--checkpoint``) or a registered, untrained model (``--model``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ..engine.checkpoint import load_checkpoint, model_from_payload
from ..engine.task import Task, get_task
from ..models import create_model, model_cfg
from ..r2dns import R2DNS

__all__ = ["LoadedModel", "add_model_args", "load_model"]


@dataclass
class LoadedModel:
    """A model in eval mode and what the commands need to know about it."""

    model: nn.Module
    meta: dict[str, Any]
    name: str
    trained: bool
    source: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    def task_object(self) -> Task:
        """The model's task (``tdaf.engine.task``), found through the task registry."""
        return get_task(self.task, f"{self.source}: task")()

    @property
    def r2dns(self) -> R2DNS | None:
        """The model's R2DNS (also the attention-free one of the multi-scale ablation) as its
        task finds it, or None."""
        return self.task_object().attention_r2dns(self.model)

    @property
    def is_classifier(self) -> bool:
        return isinstance(getattr(self.model, "num_classes", None), int) and self.model.num_classes > 0

    def describe(self) -> str:
        r = self.r2dns
        tdaf = f", {r.anar_name or 'no attention'}, {r.flows} flows" if r is not None else ""
        return f"{self.name}{tdaf} ({self.source})"


def add_model_args(p: argparse.ArgumentParser, allow_name: bool = True) -> None:
    """``--checkpoint CKPT`` (a file written by ``tdaf train``) or ``--model NAME`` (+ its options)."""
    g = p.add_argument_group("model")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", metavar="CKPT", help="a tdaf checkpoint written by `tdaf train`")
    if not allow_name:
        return
    src.add_argument("--model", metavar="NAME",
                     help="a registered model name, untrained (random weights: for testing the pipeline only)")
    g.add_argument("--num-classes", type=int, default=None, help="with --model: classifier size (default: the model's)")
    g.add_argument("--flows", type=int, default=None, help="with --model (tdaf_ models): number of flows N (default 3)")
    g.add_argument("--anar", default=None, help="with --model (tdaf_ models): anar2 | anar3 | anar5 | anar7 (default anar3)")


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model named by ``--checkpoint`` or ``--model`` (eval mode, on the CPU)."""
    ckpt = getattr(args, "checkpoint", None)
    if ckpt:
        for opt in ("num_classes", "flows", "anar"):
            if getattr(args, opt, None) is not None:
                raise ValueError(
                    f"--{opt.replace('_', '-')}: only with --model; a checkpoint already fixes the architecture"
                )
        payload = load_checkpoint(ckpt, "--checkpoint")
        model, meta = model_from_payload(payload, ckpt, "--checkpoint")
        return LoadedModel(model=model, meta=meta, name=str(meta.get("model_name", "?")), trained=True,
                           source=f"checkpoint {ckpt}", kwargs=dict(meta.get("model_kwargs", {})),
                           task=str(payload.get("task") or meta.get("task") or "classification"))
    name = args.model
    cfg = model_cfg(name)
    kwargs = {k: v for k in ("num_classes", "flows", "anar") if (v := getattr(args, k, None)) is not None}
    model = create_model(name, **kwargs).eval()
    meta = {
        "input_size": list(cfg.get("input_size", (3, 224, 224))),
        "mean": list(cfg.get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": list(cfg.get("std", IMAGENET_DEFAULT_STD)),
        "resize": None,
        "class_names": None,
        "model_name": name,
        "model_kwargs": kwargs,
    }
    return LoadedModel(model=model, meta=meta, name=name, trained=False, source="untrained", kwargs=kwargs,
                       task=str(cfg.get("task", "classification")))
