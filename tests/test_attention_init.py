"""attention_init: "identity" makes a TDAF model compute its plain counterpart at step 0
(every gate 1 - eta, Eq. 5 multiplies by exactly 1) while attention still learns; "auto"
starts attention as the identity over trained weights."""

from __future__ import annotations

import pytest
import torch

import tdaf
from tdaf.r2dns import R2DNS, SCRATCH_ATTENTION_INIT, resolve_attention_init


def _torchvision_file(tmp_path, name: str, num_classes: int) -> str:
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, name)(num_classes=num_classes)
    # trained-looking BatchNorm statistics, so a flow that used the wrong ones would show
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"{name}.pth"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("name", ["resnet18"])
def test_pretrained_tdaf_equals_its_plain_model_at_step_0(tmp_path, name):
    path = _torchvision_file(tmp_path, name, num_classes=7)
    plain = tdaf.create_model(name, num_classes=7, pretrained=path).eval()
    model = tdaf.create_model("tdaf_" + name, num_classes=7, pretrained=path).eval()  # auto -> identity
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad(), tdaf.record_attention(model) as maps:
        out = model(x)
        torch.testing.assert_close(out, plain(x), rtol=0, atol=0)
    assert maps and all(bool((m == 0.5).all()) for m in maps.values())
    # today's init over the same weights changes the outputs
    random = tdaf.create_model("tdaf_" + name, num_classes=7, pretrained=path, attention_init="random").eval()
    with torch.no_grad():
        assert (random(x) - plain(x)).abs().max() > 1e-3


def test_identity_attention_still_learns():
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, attention_init="identity")
    model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum().backward()
    heads = [g.head for g in model.backbone.attention]
    assert len(heads) == 3
    for head in heads:
        assert head.weight.abs().max() == 0 and head.bias.abs().max() == 0
        assert head.weight.grad.abs().max() > 0  # the gate moves at the first step


def test_identity_gate_follows_eta():
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, eta=0.25, attention_init="identity").eval()
    with torch.no_grad(), tdaf.record_attention(model) as maps:
        model(torch.randn(1, 3, 32, 32))
    for m in maps.values():
        torch.testing.assert_close(m, torch.full_like(m, 0.75))
    with pytest.raises(ValueError, match="eta"):
        tdaf.create_model("tdaf_resnet18_cifar", eta=0.0, attention_init="identity")


def test_auto_and_bad_values():
    assert resolve_attention_init("auto", from_trained=True) == "identity"
    assert resolve_attention_init(None) == SCRATCH_ATTENTION_INIT
    with pytest.raises(ValueError, match="attention_init: got 'zeros'"):
        tdaf.create_model("tdaf_resnet18_cifar", attention_init="zeros")
    with pytest.raises(ValueError, match="only TDAF models"):
        tdaf.create_model("resnet18_cifar", attention_init="identity")


def test_init_attention_switches_every_r2dns():
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, attention_init="random")
    assert any(g.head.weight.abs().max() > 0 for g in model.backbone.attention)
    assert tdaf.init_attention(model, "identity") == 1
    assert all(g.head.weight.abs().max() == 0 for g in model.backbone.attention)
    assert isinstance(model.backbone, R2DNS)
