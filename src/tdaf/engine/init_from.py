"""``tdaf train --init-from FILE``: start a model from another trained model's weights.

The usual case is a TDAF model started from its trained plain counterpart: every weight
whose name and shape fit is copied (backbone, neck, head), each MFBN gets the plain
BatchNorm's statistics in every flow, and the ANARs, which the plain model does not have,
start as the identity (``attention_init`` auto), so the TDAF model computes the plain
model at step 0 and training starts from its accuracy.

This is neither ``--resume`` (which continues a run, its optimizer and schedule included)
nor ``--pretrained`` (the plain backbone only, given to the model builder in
torchvision/timm layout). ``FILE`` is a tdaf checkpoint of the same task (``best.pt`` /
``last.pt``), a TDAF checkpoint with the same flows and ANAR, or a state dict: in tdaf's
own names, or a torchvision/timm ResNet (``conv1``, ``bn1``, ``layer1..4``, ``fc``, also
under a prefix such as torchvision FCOS's ``backbone.body.``). A task may adapt another
task's weights (:meth:`tdaf.engine.task.Task.adapt_init_state`: the video task inflates a
2D checkpoint to 3D). Everything loads with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..io.files import load_state_dict_file, safe_load
from ..layers.mfbn import FLOW_NORMS, _per_flow_statistics
from ..models._pretrained import PretrainedLayoutError
from ..models._registry import register_own_layout_loader
from ..r2dns import R2DNS, resolve_attention_init
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint

__all__ = ["init_from", "InitFromReport", "resnet_layout", "read_weights", "load_in_own_names"]

log = logging.getLogger("tdaf.train")

_STATS = ("running_mean", "running_var", "num_batches_tracked")
_SHOWN = 4


@dataclass
class InitFromReport:
    """What :func:`init_from` did: model keys copied from the file, keys whose plain
    BatchNorm statistics were copied into every flow (also in ``copied``), model keys that
    start new, file keys left unused, and how each R2DNS's attention starts."""

    path: str
    source: str
    what: str = "--init-from"
    copied: list[str] = field(default_factory=list)
    per_flow: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    shape_differs: list[str] = field(default_factory=list)
    attention: dict[str, str] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as log lines (counts and the first few names of each group)."""
        out = [f"{self.what} {self.path} ({self.source}): copied {_count(self.copied)}"
               + (f", of which {len(self.per_flow)} BatchNorm statistics into every flow" if self.per_flow else "")]
        if self.new:
            out.append(f"  starts new: {_count(self.new)}")
        if self.shape_differs:
            out.append(f"  starts new because the shape differs (file vs model): {_names(self.shape_differs)}")
        if self.unused:
            out.append(f"  in the file, not in the model: {_count(self.unused)}")
        for name, how in self.attention.items():
            out.append(f"  attention of {name or 'the model'}: {how}")
        return out


def _names(items: list[str]) -> str:
    return ", ".join(items[:_SHOWN]) + (f", ... ({len(items)} in all)" if len(items) > _SHOWN else "")


def _count(keys: list[str]) -> str:
    """``N tensors (module, module, ...)``: the tensors' modules, in order, the first few."""
    modules = list(dict.fromkeys(k.rsplit(".", 1)[0] for k in keys))
    return f"{len(keys)} tensors" + (f" in {len(modules)} modules ({_names(modules)})" if keys else "")


# --------------------------------------------------------------------------- layouts
_RESNET_PART = re.compile(r"^(?:[^.]+\.)*?(?P<part>conv1|bn1|layer(?P<n>\d))\.(?P<rest>.+)$")


def resnet_layout(state: dict[str, torch.Tensor], own: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """A torchvision/timm ResNet state dict (``conv1``, ``bn1``, ``layer1..4``, ``fc``, under
    any prefix such as ``backbone.body.``) in the names of a tdaf model whose backbone
    stages are ResNet stages (``<prefix>stages.0.conv1``, ``stages.0.layer1``,
    ``stages.1`` = ``layer2``, ...); other keys keep their names. None when the model has
    no such stages or the file no such keys."""
    prefixes = sorted({k[: -len("stages.0.conv1.weight")] for k in own if k.endswith("stages.0.conv1.weight")})
    if len(prefixes) != 1:
        return None
    (prefix,) = prefixes
    out: dict[str, torch.Tensor] = {}
    renamed = 0
    for key, value in state.items():
        m = _RESNET_PART.match(key)
        if m and ".stages." not in "." + key:  # (a key in tdaf's names keeps them)
            n = m.group("n")
            stage = "stages.0." + m.group("part") if n in (None, "1") else f"stages.{int(n) - 1}"
            key, renamed = f"{prefix}{stage}.{m.group('rest')}", renamed + 1
        elif key.startswith("fc.") and "head.fc." + key[3:] in own:
            key, renamed = "head." + key, renamed + 1
        out[key] = value
    return out if renamed else None


# --------------------------------------------------------------------------- reading
def read_weights(path: str | os.PathLike[str], what: str) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """``(state dict, checkpoint or None)`` of a tdaf checkpoint or a bare state dict."""
    obj = safe_load(path, what)
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        ckpt = load_checkpoint(path, what)
        return dict(ckpt["state_dict"]), ckpt
    return load_state_dict_file(path, what), None


def _flow_norms(model: nn.Module) -> dict[str, int]:
    """``{state-dict prefix: flows}`` of every MFBN in ``model``."""
    return {name + "." if name else "": m.flows for name, m in model.named_modules() if isinstance(m, FLOW_NORMS)}


def _fill_flows(state: dict[str, torch.Tensor], norms: dict[str, int], own: dict[str, torch.Tensor]) -> list[str]:
    """Copy plain BatchNorm statistics (``(C,)``, a scalar count) into every flow of the
    MFBNs they meet; returns the keys filled."""
    filled = []
    for prefix, flows in norms.items():
        before = {k: state[prefix + k].dim() for k in _STATS if prefix + k in state}
        _per_flow_statistics(state, prefix, flows)  # running_mean / running_var: (C,) -> (flows, C)
        key = prefix + "num_batches_tracked"
        if key in own and key in state and state[key].dim() == 0:
            state[key] = state[key].expand(flows).clone()
        filled += [prefix + k for k, dim in before.items() if state[prefix + k].dim() != dim and prefix + k in own]
    return filled


def _fits(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> int:
    return sum(k in own and tuple(v.shape) == tuple(own[k].shape) and not k.endswith("num_batches_tracked")
               for k, v in state.items())


# --------------------------------------------------------------------------- the entry point
def init_from(
    model: nn.Module,
    path: str | os.PathLike[str],
    task: Any = None,
    attention_init: str | None = None,
    what: str = "--init-from",
    adapt: Callable[[dict[str, torch.Tensor], nn.Module, str | None], dict[str, torch.Tensor] | None] | None = None,
) -> InitFromReport:
    """Copy into ``model`` every weight of ``path`` whose name and shape fit (see the module
    doc), then start the attention of each R2DNS whose ANARs were not copied as
    ``attention_init`` resolves over trained weights ("auto", None: the identity;
    "identity" and "random" apply to every R2DNS, copied ANARs included). Logs and returns
    an :class:`InitFromReport`.

    ``task`` (a :class:`~tdaf.engine.task.Task`) names the model's task: a checkpoint of
    another task is refused unless ``task.adapt_init_state`` (or ``adapt``) takes it.
    ValueError (naming ``what`` and the file) for another task's checkpoint, a file where
    nothing fits, and a TDAF checkpoint whose flows or ANARs clash with the model's.
    """
    state, ckpt = read_weights(path, what)
    own = model.state_dict()
    task_name = getattr(task, "name", None)
    source_task = ckpt.get("task") if ckpt is not None else None
    source_model = ckpt["model"]["name"] if ckpt is not None else None
    source = (f"a {source_task or 'tdaf'} checkpoint of {source_model}" if ckpt is not None
              else f"a state dict of {len(state)} tensors")
    if adapt is None:
        adapt = task.adapt_init_state if task is not None else (lambda s, m, t: s)
    adapted = adapt(state, model, source_task)
    if adapted is None:
        raise UserError(
            f"{what}: {path} is a {source_task} checkpoint ({source_model}); this run's task is {task_name}: "
            f"--init-from takes a checkpoint of the same task (or a state dict)")
    norms = _flow_norms(model)
    # The file's own names first; a torchvision/timm ResNet layout when more keys fit that way.
    candidates = [adapted]
    renamed = resnet_layout(state, own)
    if renamed is not None:
        again = adapt(renamed, model, source_task)
        if again is not None:
            candidates.append(again)
    best = max(candidates, key=lambda s: _fits(_filled_copy(s, norms, own), own))
    state = dict(best)
    per_flow = _fill_flows(state, norms, own)
    shapes = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)}
    _refuse_clashes(path, what, model, state, own, shapes, ckpt)
    fitted = {k: v for k, v in state.items() if k in own and k not in shapes}
    if not any(not k.endswith("num_batches_tracked") for k in fitted):
        file_keys = _names(list(state)) if state else "none"
        raise UserError(
            f"{what}: nothing in {path} fits {_model_name(model)}: no tensor with a name and shape of the model "
            f"(file keys: {file_keys}; model keys: {_names(list(own))}). {what} takes a checkpoint of this "
            f"task's plain model or a state dict in its names (or a torchvision/timm ResNet's)")
    with torch.no_grad():
        model.load_state_dict(fitted, strict=False)
    report = InitFromReport(
        path=str(path), source=source, what=what, copied=[k for k in own if k in fitted],
        per_flow=[k for k in per_flow if k in fitted],
        new=[k for k in own if k not in fitted and not _counter_only(k, own, fitted)],
        unused=[k for k in state if k not in own],
        shape_differs=[f"{k} {a} vs {b}" for k, (a, b) in shapes.items()],
    )
    report.attention = _start_attention(model, fitted, attention_init)
    for line in report.lines():
        log.info("%s", line)
    if report.shape_differs:
        log.warning("%s: %d tensors of %s do not fit the model's shapes and start new: %s", what,
                    len(report.shape_differs), path, _names(report.shape_differs))
    return report


def _filled_copy(state: dict[str, torch.Tensor], norms: dict[str, int], own: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    copy = dict(state)
    _fill_flows(copy, norms, own)
    return copy


def _counter_only(key: str, own: dict[str, Any], fitted: dict[str, Any]) -> bool:
    """A BatchNorm batch counter whose statistics were copied (old files carry none)."""
    return key.endswith("num_batches_tracked") and key[: -len("num_batches_tracked")] + "running_mean" in fitted


def _model_name(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture", type(model).__name__))


def _attention_prefixes(model: nn.Module) -> dict[str, R2DNS]:
    """``{state-dict prefix of the R2DNS's ANARs: R2DNS}``."""
    return {(name + "." if name else "") + "attention.": m for name, m in model.named_modules() if isinstance(m, R2DNS)}


def _refuse_clashes(path: Any, what: str, model: nn.Module, state: dict[str, torch.Tensor], own: dict[str, Any],
                    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]], ckpt: dict[str, Any] | None) -> None:
    """A TDAF checkpoint (per-flow statistics, ANARs) that does not fit the model's flows or
    ANARs: copying the rest would leave statistics or attention silently half-initialised."""
    stats = [k for k in shapes if k.rsplit(".", 1)[-1] in _STATS]
    attention = []
    for prefix in _attention_prefixes(model):
        mine = [k for k in own if k.startswith(prefix)]
        theirs = [k for k in state if k.startswith(prefix)]
        if theirs and (set(mine) != set(theirs) or any(k in shapes for k in theirs)):
            attention += [k for k in theirs if k in shapes or k not in own] + [k for k in mine if k not in state]
    if not stats and not attention:
        return
    settings = ""
    if ckpt is not None:
        kwargs = ckpt["model"].get("kwargs", {})
        given = {k: kwargs[k] for k in ("flows", "anar", "eta") if k in kwargs}
        settings = f" ({ckpt['model']['name']}{' ' + str(given) if given else ''})"
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mine = {k: cfg[k] for k in ("flows", "anar") if k in cfg}
    shown = [f"{k} {shapes[k][0]} vs {shapes[k][1]}" if k in shapes else k for k in stats + attention]
    raise UserError(
        f"{what}: {path}{settings} holds per-flow statistics or ANARs that do not fit {_model_name(model)} "
        f"{mine or '(a plain model)'}: {_names(shown)}. --init-from copies a plain model into a TDAF one, or a "
        f"TDAF model with the same flows and ANAR")


def _start_attention(model: nn.Module, fitted: dict[str, Any], attention_init: str | None) -> dict[str, str]:
    """Start each R2DNS's ANARs: "auto" keeps copied ANARs and starts the others as the
    identity (over trained weights); "identity" / "random" apply to every R2DNS."""
    explicit = attention_init not in (None, "auto")
    mode = resolve_attention_init(attention_init, from_trained=True)
    done: dict[str, str] = {}
    for prefix, r2dns in _attention_prefixes(model).items():
        name = prefix[: -len("attention.")].rstrip(".")
        if not r2dns.has_attention:
            continue
        copied = any(k.startswith(prefix) for k in fitted)
        if copied and not explicit:
            done[name] = "copied from the file (ANARs trained with it)"
            continue
        r2dns.init_attention(mode)
        done[name] = (f"{mode}" + (" (auto: new ANARs over trained weights; every gate 1 - eta, the model "
                                   "computes the copied network at step 0)" if mode == "identity" else "")
                      + (" (replacing the file's ANARs)" if copied else ""))
    return done


def load_in_own_names(model: nn.Module, path: str | os.PathLike[str], attention_init: str | None,
                      refused: Exception) -> None:
    """``pretrained`` in tdaf's own layout, loaded by :func:`tdaf.init_from` (the loader of
    ``tdaf train --init-from``): a state dict of a tdaf model, plain or TDAF, or a tdaf
    checkpoint; its BatchNorm statistics go into every flow and new ANARs start as the
    identity under ``attention_init="auto"``, so a TDAF model computes the plain one at
    step 0. As strict as the torchvision/timm layout: every weight but the ANARs (and a
    classifier of another class count) must come from the file, and nothing in the file
    may be left over. ``refused`` (the torchvision/timm layout's error) is raised when the
    file holds none of the model's names."""
    state, _ = read_weights(path, "pretrained")
    own = model.state_dict()
    if not any(k in own for k in state):
        raise refused
    report = init_from(model, path, attention_init=attention_init, what="pretrained")
    classifier = str((getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head.fc"))
    resized = {k.split(" ", 1)[0] for k in report.shape_differs}
    missing = [k for k in report.new if ".attention." not in "." + k
               and not (k in resized and k.startswith(classifier + "."))]
    problems = [f"{label}: {', '.join(keys[:4])}{f', ... ({len(keys)} in all)' if len(keys) > 4 else ''}"
                for label, keys in (("missing keys", missing), ("unexpected keys", report.unused)) if keys]
    if problems:
        architecture = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
        raise PretrainedLayoutError(
            f"pretrained: {path} does not fit {architecture} in tdaf's own names (a state dict or checkpoint of "
            f"the plain model or of a TDAF one), nor in torchvision or timm layout: {'; '.join(problems)}")


register_own_layout_loader(load_in_own_names)
