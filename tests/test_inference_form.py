"""The inference form (tdaf.inference.fold_batchnorm): every BatchNorm and MFBN folded into
the convolution before it, with the model's outputs and attention maps, on every task's
models. Every norm first gets random statistics (different per flow) and affine values:
at their start they are the identity and any fold would pass."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops.misc import FrozenBatchNorm2d

import tdaf
from tdaf.inference import FlowFoldedConv, batchnorm_layers, fold_batchnorm
from tdaf.layers.mfbn import FLOW_NORMS
from tdaf.r2dns import R2DNS, StageNet

NORMS = (_BatchNorm, FrozenBatchNorm2d) + FLOW_NORMS


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, NORMS) and getattr(m, "running_var", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.3)
    return model


def _norms(model: nn.Module) -> int:
    return sum(isinstance(m, NORMS) for m in model.modules())


def _max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference, checked against 3e-5 of the output's scale (float32 rounding through
    a deep net with random statistics: measured up to 1.1e-5 on the attention maps; a wrong
    fold is off by far more)."""
    assert a.shape == b.shape
    error = (a - b).abs().max().item()
    assert error <= 3e-5 * max(b.abs().max().item(), 1e-6), (error, b.abs().max().item())
    return error


def _check(model: nn.Module, x: torch.Tensor, **kwargs) -> tuple[nn.Module, float]:
    """Fold ``model`` (eval mode), compare outputs and recorded attention maps, count norms."""
    model = _randomize(model).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _norms(model) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing left unfolded
        folded = fold_batchnorm(model, **kwargs)
    assert _norms(folded) == 0 and batchnorm_layers(folded) == []
    assert folded is not model and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert _norms(model) > 0 and not folded.training
    has_r2dns = any(isinstance(m, R2DNS) for m in model.modules())
    attention = any(isinstance(m, R2DNS) and m.has_attention for m in model.modules())

    def record(m: nn.Module) -> contextlib.AbstractContextManager:
        return tdaf.record_attention(m) if has_r2dns else contextlib.nullcontext({})

    with torch.no_grad(), record(model) as maps, record(folded) as folded_maps:
        expected, got = model(x), folded(x)
    error = _max_error(got, expected)
    assert maps.keys() == folded_maps.keys() and (len(maps) > 0) == attention
    for key in maps:
        _max_error(folded_maps[key], maps[key])
    return folded, error


CIFAR = (2, 3, 32, 32)


@pytest.mark.parametrize("name, kwargs", [
    ("tdaf_resnet18_cifar", {}),
    ("tdaf_resnet18_w32", {}),
    ("tdaf_resnet18_w32", dict(flows=1)),
    ("tdaf_resnet18_w32", dict(anar_up="resize", anar_min_width=8)),
    ("tdaf_resnet18_w32", dict(anar="anar7")),  # down path and skip connections (conv + BN)
    ("tdaf_mobilenetv1", dict(flows=3)),  # depthwise ANAR: grouped transposed convs (its default: 2 flows)
    ("resnet18_cifar", {}),  # a plain model: plain BatchNorm
])
def test_classifiers_fold_to_the_same_outputs(name: str, kwargs: dict) -> None:
    torch.manual_seed(0)
    init = {} if name == "resnet18_cifar" else dict(attention_init="random")
    model = tdaf.create_model(name, num_classes=5, **init, **kwargs)
    folded, _ = _check(model, torch.randn(*CIFAR))
    flows = folded.backbone.flows
    per_flow = [m for m in folded.modules() if isinstance(m, FlowFoldedConv)]
    assert bool(per_flow) == (flows > 1)
    if flows > 1:  # the backbone rescales the earlier flows; the ANARs hold a copy per flow
        assert any(any(m.rescaled) for m in per_flow)
        anar_convs = [m for g in folded.backbone.attention for m in g.modules() if isinstance(m, FlowFoldedConv)]
        assert anar_convs and all(not any(m.rescaled[1:]) and len(m.convs) >= 1 for m in anar_convs)
        assert max(len(m.convs) for m in anar_convs) == 2  # g_1 gates flows 2 and 3


def test_copies_fold_per_flow_and_hold_more_weights() -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_w32", num_classes=5, attention_init="random")
    copies, _ = _check(model, torch.randn(*CIFAR), shared="copies")
    rescale = fold_batchnorm(model)
    # stage 1 runs in every flow: one folded weight per flow, or the last flow's and two rescaled
    first = [m for m in copies.backbone.stages[0].modules() if isinstance(m, FlowFoldedConv)]
    assert first and all(len(m.convs) == 3 and not any(m.rescaled) for m in first)
    first = [m for m in rescale.backbone.stages[0].modules() if isinstance(m, FlowFoldedConv)]
    assert first and all(len(m.convs) == 1 and m.rescaled == (True, True, False) for m in first)

    def n(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    assert abs(n(rescale) / n(model) - 1) < 0.005 and n(copies) / n(model) > 1.2
    with pytest.raises(ValueError, match="shared: got 'both'; allowed: rescale, copies"):
        fold_batchnorm(model, shared="both")


def test_detector_folds_to_the_same_features_heads_and_detections() -> None:
    torch.manual_seed(0)
    for kwargs in ({}, dict(frozen_bn=True)):  # MFBN and FrozenMultiFlowBatchNorm
        model = tdaf.create_model("tdaf_fcos_resnet18_fpn", num_classes=3, min_size=64, max_size=64,
                                  score_thresh=0.0, attention_init="random", **kwargs)
        model = _randomize(model).eval()
        folded = fold_batchnorm(model)
        assert _norms(folded) == 0
        assert any(isinstance(m, nn.GroupNorm) for m in folded.modules())  # GroupNorm is not folded
        x = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
        with torch.no_grad(), tdaf.record_attention(model) as maps, tdaf.record_attention(folded) as folded_maps:
            images, _ = model.transform(x)
            a, b = model.backbone(images.tensors), folded.backbone(images.tensors)
            for k in a:
                _max_error(b[k], a[k])
            ha, hb = model.head(list(a.values())), folded.head(list(b.values()))
            for k in ha:
                _max_error(hb[k], ha[k])
            da, db = model(x), folded(x)
        assert maps and maps.keys() == folded_maps.keys()
        for one, other in zip(da, db):
            assert len(one["boxes"]) > 0 and torch.equal(one["labels"], other["labels"])
            _max_error(other["scores"], one["scores"])
            _max_error(other["boxes"], one["boxes"])


def test_pose_model_folds_its_transposed_convs_per_flow() -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_simplebaseline_resnet18", num_joints=5, attention_init="random")
    assert isinstance(model.backbone, StageNet) and isinstance(model.head, R2DNS)
    folded, _ = _check(model, torch.randn(2, 3, 64, 48))
    head = [m for m in folded.head.stages.modules() if isinstance(m, FlowFoldedConv)]
    assert head and all(isinstance(m.convs[0], nn.ConvTranspose2d) for m in head)


def test_video_model_folds_to_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_r3d_resnet10_w16", num_classes=5, attention_init="random")
    folded, _ = _check(model, torch.randn(2, 3, 16, 32, 32))
    assert any(isinstance(m, FlowFoldedConv) and isinstance(m.convs[0], nn.Conv3d) for m in folded.modules())


def test_training_mode_is_refused() -> None:
    model = tdaf.create_model("tdaf_resnet18_w32", num_classes=5)
    with pytest.raises(ValueError, match=r"training mode .* call model.eval\(\) first"):
        fold_batchnorm(model)
    model.eval()
    model.backbone.stages[0].train()
    with pytest.raises(ValueError, match="training mode"):
        fold_batchnorm(model)


def test_a_model_of_nan_weights_folds_to_nan_outputs() -> None:
    # `tdaf eval` folds by default, and reports a diverged checkpoint's NaN loss: the check
    # while folding compares only where the model's own outputs are finite.
    model = tdaf.create_model("tdaf_resnet18_w32", num_classes=5).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
        folded = fold_batchnorm(model)
        assert batchnorm_layers(folded) == [] and folded(torch.randn(1, 3, 32, 32)).isnan().all()


class _ReadTwice(nn.Module):
    """A convolution whose output a residual reads besides its BatchNorm: cannot be folded."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


def test_what_cannot_be_folded_stays_with_a_warning() -> None:
    torch.manual_seed(0)
    stages = [
        nn.Sequential(nn.ConvTranspose2d(3, 6, 4, stride=2, padding=1, groups=3, bias=True),  # grouped, with bias
                      nn.BatchNorm2d(6, affine=False), nn.ReLU()),
        _ReadTwice(6),
        nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.BatchNorm2d(8)),  # after a ReLU
        nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8, track_running_stats=False)),  # batch statistics
    ]
    model = nn.Sequential(StageNet(stages, [6, 6, 8, 8], [0.5, 1, 2, 1]))
    model.append(nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4)))  # outside the backbone
    model = _randomize(model).eval()
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(UserWarning, match="3 BatchNorm layer") as caught:
        folded = fold_batchnorm(model)
    message = str(caught[0].message)
    assert "0.stages.1.bn (the output of the convolution before it is also read elsewhere)" in message
    assert "0.stages.2.2 (its input is not always the output of one convolution)" in message
    assert "0.stages.3.1 (it has no running statistics" in message
    assert batchnorm_layers(folded) == ["0.stages.1.bn", "0.stages.2.2", "0.stages.3.1"]
    assert isinstance(folded[0].stages[0][1], nn.Identity) and isinstance(folded[1][1], nn.Identity)
    with torch.no_grad():
        # model(x) works on a list: run the stages, then the outside Sequential on the last map
        def run(m: nn.Module) -> torch.Tensor:
            return m[1](m[0](x)[-1])

        _max_error(run(folded), run(model))


def test_flow_of_folded_convs_follows_r2dns() -> None:
    torch.manual_seed(0)
    model = _randomize(tdaf.create_model("tdaf_resnet18_w32", num_classes=5)).eval()
    folded = fold_batchnorm(model)
    per_flow = [m for m in folded.modules() if isinstance(m, FlowFoldedConv)]
    seen = set()
    handles = [m.register_forward_pre_hook(lambda m, a: seen.add(m.flow)) for m in per_flow]
    with torch.no_grad():
        folded(torch.randn(*CIFAR))
    for h in handles:
        h.remove()
    assert seen == {0, 1, 2} and all(m.flow == 2 for m in per_flow)  # R2DNS ends on the last flow
    assert tdaf.fold_batchnorm is fold_batchnorm
