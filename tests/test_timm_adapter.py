"""Any timm CNN as a TDAF backbone: ``tdaf_timm/<name>`` on models the paper never tried."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

import tdaf
from tdaf.layers import MultiFlowBatchNorm


# name -> channels of the stages (timm's feature levels at reduction >= 4)
MODELS = {
    "resnet26d": [256, 512, 1024, 2048],
    "regnety_002": [24, 56, 152, 368],
    "efficientnet_b0": [24, 40, 112, 320],
    "convnext_atto": [40, 80, 160, 320],
}


@pytest.mark.parametrize("name", list(MODELS))
def test_timm_cnn_as_tdaf_backbone(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = timm.create_model(name, num_classes=5)
    ref.train()
    with torch.no_grad():  # BatchNorm statistics that differ from their init
        ref(torch.randn(2, 3, 64, 64) * 2 + 0.5)
    ref.eval()
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path)
    x = torch.randn(2, 3, 64, 64)

    # One flow, loaded from the timm model's file: exactly the timm model.
    one = tdaf.create_model(f"tdaf_timm/{name}", flows=1, num_classes=5, pretrained=path).eval()
    plain = tdaf.create_model(f"timm/{name}", num_classes=5, pretrained=path).eval()
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(one(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in ref.parameters())

    # Stages at timm's feature levels with reduction >= 4 (C2..C5), strides from the reductions.
    info = [f for f in ref.feature_info if f["reduction"] >= 4]
    model = tdaf.create_model(f"tdaf_timm/{name}", num_classes=5, pretrained=path)
    assert model.backbone.channels == MODELS[name] == [f["num_chs"] for f in info]
    assert model.backbone.strides == [4, 2, 2, 2]
    assert len(model.backbone.attention) == 3 and model.backbone.flows == 3
    assert model.pretrained_cfg["baseline"] == f"timm/{name}"
    norms = [m for m in model.backbone.stages.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, MultiFlowBatchNorm)]
    mfbn = [m for m in model.backbone.stages.modules() if isinstance(m, MultiFlowBatchNorm)]
    assert not norms and not any(isinstance(m, BatchNormAct2d) for m in model.backbone.modules())
    if name == "convnext_atto":
        assert not mfbn  # LayerNorm: shared by all flows, nothing for MFBN to replace
    else:  # every BatchNorm of the timm model is MFBN in the stages, or plain in the head (run once)
        in_head = sum(isinstance(m, nn.BatchNorm2d) and not isinstance(m, MultiFlowBatchNorm)
                      for m in model.head.modules())
        assert len(mfbn) + in_head == sum(isinstance(m, nn.BatchNorm2d) for m in ref.modules())
        assert all(m.flows == 3 for m in mfbn)
    model.train()
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    stages = model.forward_stages(x)
    assert [s.shape[1] for s in stages] == MODELS[name]
    assert [s.shape[-1] for s in stages] == [16, 8, 4, 2]


def test_efficientnet_neck_stays_in_the_head() -> None:
    """What forward_features runs after the last level (conv_head, bn2) is part of the head,
    run once on the last flow, with its activation kept."""
    model = tdaf.create_model("tdaf_timm/efficientnet_b0", num_classes=3)
    assert list(model.head.neck._modules) == ["conv_head", "bn2"]
    assert isinstance(model.head.neck.bn2, BatchNormAct2d)
    assert model.num_features == 1280 and model.get_classifier().in_features == 1280
    assert model.backbone.stages[-1][-1].__class__.__name__ != "Identity"
    assert model.pretrained_cfg["classifier"] == "head.model.classifier"
    model.reset_classifier(7)
    assert model.num_classes == 7 and model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


@pytest.mark.parametrize("name, why", [
    ("vit_tiny_patch16_224", "at least 2 feature levels with increasing reductions"),
    ("hrnet_w18_small", "feature level 'stage1' is not a module of its top-level chain"),
])
def test_timm_models_without_sequential_stages_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=rf"timm model '{name}' cannot be used as a TDAF backbone: it cannot be "
                                         rf"split into sequential stages \(.*{why}"):
        tdaf.create_model(f"tdaf_timm/{name}")


def test_timm_adapter_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"stage_levels: got \[7\]; allowed: indices into the 5 feature levels"):
        tdaf.create_model("tdaf_timm/regnety_002", stage_levels=[7])
    with pytest.raises(ValueError, match="flows: got 5"):
        tdaf.create_model("tdaf_timm/regnety_002", flows=5)
    # All five levels (the stem at reduction 2 too) when asked.
    assert tdaf.create_model("tdaf_timm/regnety_002", stage_levels=[0, 1, 2, 3, 4]).backbone.strides == [2] * 5
    path = tmp_path / "mnv3.pth"
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), path)
    with pytest.raises(ValueError, match=r"does not fit tdaf_timm/regnety_002.*missing keys: stem\.conv\.weight"):
        tdaf.create_model("tdaf_timm/regnety_002", pretrained=path)
    with pytest.raises(TypeError, match="tdaf_timm/regnety_002: bad argument for the timm model"):
        tdaf.create_model("tdaf_timm/regnety_002", no_such_option=1)
