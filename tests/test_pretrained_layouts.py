"""``pretrained=`` takes what ``--init-from`` takes: tdaf's own plain weights (a state dict or a
checkpoint) as well as torchvision/timm layout, and a TDAF model built over them computes the
plain model at step 0."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import tdaf


def _plain(num_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    net = tdaf.create_model("resnet18_cifar", num_classes=num_classes)
    net.train()
    with torch.no_grad():  # BatchNorm statistics unlike their (0, 1) start
        for _ in range(2):
            net(torch.randn(4, 3, 16, 16) * 2 + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def plain_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    net = _plain()
    path = tmp_path_factory.mktemp("plain") / "plain.pth"
    torch.save(net.state_dict(), path)
    return net, path


@pytest.mark.parametrize("flows", [2, 3])
def test_tdaf_over_tdafs_own_plain_state_dict_computes_the_plain_model(plain_file, flows: int) -> None:
    net, path = plain_file
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, flows=flows, pretrained=path).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=1e-4, atol=1e-5)
    # the same file as a checkpoint-like mapping, and through tdaf.init_from on a built model
    nested = path.with_name("nested.pth")
    torch.save({"state_dict": net.state_dict()}, nested)
    again = tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, flows=flows, pretrained=nested).eval()
    built = tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, flows=flows)
    report = tdaf.init_from(built, path)
    assert report.copied and not report.unused
    with torch.no_grad():
        torch.testing.assert_close(again(x), net(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(built.eval()(x), net(x), rtol=1e-4, atol=1e-5)


def test_plain_model_and_another_class_count(plain_file) -> None:
    net, path = plain_file
    same = tdaf.create_model("resnet18_cifar", num_classes=3, pretrained=path).eval()
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(same(x), net(x))
    ten = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, flows=2, pretrained=path).eval()
    assert ten(x).shape == (1, 10)  # the classifier of another class count starts new, as in timm layout
    torch.testing.assert_close(ten.forward_features(x), same.forward_features(x), rtol=1e-4, atol=1e-5)


def test_a_tdaf_layout_file_of_another_architecture_is_refused(tmp_path: Path) -> None:
    """Strict as the torchvision/timm layout: nothing half-loaded, the file and the keys named."""
    state = _plain().state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("backbone.stages.3.")}, partial)
    with pytest.raises(ValueError, match=r"pretrained: .*partial.pth does not fit tdaf_resnet18_cifar in tdaf's "
                                         r"own names.*missing keys: backbone\.stages\.3\."):
        tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, flows=2, pretrained=partial)
    extra = tmp_path / "extra.pth"
    torch.save({**state, "backbone.extra.weight": torch.zeros(3)}, extra)
    with pytest.raises(ValueError, match=r"unexpected keys: backbone\.extra\.weight"):
        tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, flows=2, pretrained=extra)
    foreign = tmp_path / "foreign.pth"
    torch.save({"something.weight": torch.zeros(3)}, foreign)
    with pytest.raises(ValueError, match=r"foreign.pth does not fit tdaf_resnet18_cifar \(expected"):
        tdaf.create_model("tdaf_resnet18_cifar", pretrained=foreign)


def test_a_tdaf_checkpoint_is_accepted(classification_run) -> None:
    """A ``tdaf train`` checkpoint (here of a 2-flow TDAF model) loads as ``--init-from`` loads it."""
    from tdaf.engine.checkpoint import model_from_checkpoint

    _, ckpt = classification_run
    trained = model_from_checkpoint(ckpt)[0].eval()
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, flows=2, pretrained=ckpt).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x))
