"""Every registered builder, in every task, is strict and takes its documented arguments.

The walk builds each model on the meta device (timm's factory argument ``device``): shapes
and settings without memory or initialisation, so all of them fit in seconds.
"""

from __future__ import annotations

import importlib

import pytest
import torch

import tdaf
from tdaf.models import _registry
from tdaf.r2dns import R2DNS, TDAF_DEFAULTS

TASKS = ("classification", "detection", "pose", "video")
MODELS = [(task, name) for task in TASKS for name in tdaf.list_models(task=task)]
PLAIN = [(task, name) for task, name in MODELS if not tdaf.model_cfg(name).get("tdaf", False)]

# The documented arguments of each task's builders (docs/models.md and the task pages), with
# what each must change in the model built.
DOCUMENTED = {
    "classification": dict(num_classes=7, drop_rate=0.1, global_pool="avg", in_chans=1),
    "detection": dict(num_classes=5, min_size=320, max_size=480, score_thresh=0.3, trainable_layers=5),
    "pose": dict(num_joints=5),
    "video": dict(num_classes=5, drop_rate=0.1),
}
TDAF_SETTINGS = dict(flows=2, eta=0.25, downsample="bilinear", attention_init="identity")


def _task_package(task: str):
    return importlib.import_module(f"tdaf.{task}")


def test_the_walk_covers_every_registered_model() -> None:
    assert len(MODELS) == len(tdaf.list_models()) >= 73
    assert {task for task, _ in MODELS} == set(TASKS)


@pytest.mark.parametrize("task,name", MODELS)
def test_builder_is_strict_and_exported_by_its_task(task: str, name: str) -> None:
    builder = getattr(_task_package(task), name)
    assert builder is _registry._MODELS[name]
    assert name in _task_package(task).__all__
    for call in (lambda **kw: tdaf.create_model(name, **kw), builder):
        with pytest.raises(TypeError, match=rf"{name}: .*unexpected keyword argument 'not_an_argument'"):
            call(not_an_argument=1, device="meta")
    # A typo of a TDAF setting is an unknown argument, with the right name as the hint.
    with pytest.raises(TypeError, match=r"'flow' \(did you mean 'flows'\?\)"):
        tdaf.create_model(name, flow=2, device="meta")


@pytest.mark.parametrize("task,name", PLAIN)
def test_plain_model_refuses_tdaf_settings_with_a_type_error(task: str, name: str) -> None:
    builder = getattr(_task_package(task), name)
    allowed = tdaf.model_cfg(name).get("tdaf_args", ())  # the multi-scale ablation takes flows, downsample
    for key, value in TDAF_DEFAULTS.items():
        if key in allowed:
            continue
        for call in (lambda **kw: tdaf.create_model(name, **kw), builder):
            with pytest.raises(TypeError, match=rf"{key}: .*{name!r}") as info:
                call(device="meta", **{key: value})
            # Also a ValueError: the command line reports bad settings in one line.
            assert isinstance(info.value, tdaf.ModelArgumentError) and isinstance(info.value, ValueError)


def _backbones(model: torch.nn.Module) -> list[R2DNS]:
    return [m for m in model.modules() if isinstance(m, R2DNS)]


@pytest.mark.parametrize("task,name", MODELS)
def test_documented_arguments_work(task: str, name: str) -> None:
    cfg = tdaf.model_cfg(name)
    kwargs = dict(DOCUMENTED[task])
    if cfg.get("tdaf"):
        kwargs.update(TDAF_SETTINGS)
        if task == "pose":
            kwargs["tdaf_backbone"] = True
    else:
        kwargs.update({k: TDAF_SETTINGS[k] for k in cfg.get("tdaf_args", ())})
    model = getattr(_task_package(task), name)(device="meta", dtype=torch.float64, **kwargs)
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
    assert model.pretrained_cfg["architecture"] == name
    if task in ("classification", "video"):
        assert model.num_classes == kwargs["num_classes"]
        assert model.get_classifier().out_features == kwargs["num_classes"]
    if task == "classification":
        assert model.in_chans == 1
    if task == "detection":
        assert model.score_thresh == 0.3 and model.transform.min_size == (320,) and model.transform.max_size == 480
        assert model.head.classification_head.num_classes == 5
    if task == "pose":
        assert model.final_layer.out_channels == 5
    r2dns = _backbones(model)
    if cfg.get("tdaf"):
        assert r2dns and all(r.flows == 2 and r.eta == 0.25 and r.down.mode == "bilinear" for r in r2dns)
        assert model.pretrained_cfg["flows"] == 2
        if task == "pose":
            assert len(r2dns) == 2  # the head and, with tdaf_backbone, the ResNet
    elif "flows" in cfg.get("tdaf_args", ()):
        assert [r.flows for r in r2dns] == [2] and not r2dns[0].has_attention
    else:
        assert not r2dns


def test_factory_dtype_must_be_floating() -> None:
    with pytest.raises(ValueError, match="dtype: got torch.int64"):
        tdaf.create_model("resnet18_cifar", device="meta", dtype=torch.int64)
