"""TDAF-ResNet: equivalence with torchvision, parameters, MFBN in training, errors, profiler."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import tdaf
from tdaf.cli.main import main as cli_main
from tdaf.layers import ANAR, MultiFlowBatchNorm
from tdaf.profile import count_gmacs



def _trained_bn_stats(model: nn.Module, size: int = 64) -> nn.Module:
    """Give BatchNorm running stats that differ from their (0, 1) init."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, 3, size, size) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def tv_resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    net = _trained_bn_stats(torchvision.models.resnet18(num_classes=7))
    path = tmp_path_factory.mktemp("w") / "resnet18.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_flows1_equals_torchvision(tv_resnet18_file: tuple[nn.Module, Path]) -> None:
    net, path = tv_resnet18_file
    model = tdaf.create_model("tdaf_resnet18", num_classes=7, flows=1, pretrained=path).eval()
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=1e-5)
    plain = tdaf.create_model("resnet18", num_classes=7, pretrained=path).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), net(x), rtol=0, atol=1e-5)


def test_pretrained_fills_every_flow(tv_resnet18_file: tuple[nn.Module, Path]) -> None:
    net, path = tv_resnet18_file
    model = tdaf.create_model("tdaf_resnet18", num_classes=7, flows=3, pretrained=path)
    mf = model.backbone.stages[0].bn1
    assert isinstance(mf, MultiFlowBatchNorm)
    assert torch.equal(mf.running_mean, net.bn1.running_mean.expand(3, -1))
    assert torch.equal(model.head.fc.weight, net.fc.weight)
    # another class count: the classifier is skipped, the rest still loads
    model10 = tdaf.create_model("tdaf_resnet18", num_classes=10, pretrained=path)
    assert torch.equal(model10.backbone.stages[3][1].conv2.weight, net.layer4[1].conv2.weight)


@pytest.mark.parametrize("name", ["tdaf_resnet18", "tdaf_resnet50"])
def test_parameters_do_not_depend_on_flows(name: str) -> None:
    counts = {n: sum(p.numel() for p in tdaf.create_model(name, flows=n).parameters()) for n in (2, 3, 4)}
    assert len(set(counts.values())) == 1, counts
    plain = sum(p.numel() for p in tdaf.create_model(name.removeprefix("tdaf_")).parameters())
    model = tdaf.create_model(name, flows=3)
    anar = sum(p.numel() for m in model.modules() if isinstance(m, ANAR) for p in m.parameters())
    assert counts[3] == plain + anar
    assert len([m for m in model.modules() if isinstance(m, ANAR)]) == 3  # g_1..g_3, no g_4


def test_training_step_gives_each_flow_its_own_statistics() -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, flows=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    bn = model.backbone.stages[0].bn1
    assert bn.num_batches_tracked.tolist() == [1, 1, 1]
    rm = bn.running_mean
    assert not torch.allclose(rm[0], rm[1]) and not torch.allclose(rm[1], rm[2])
    # one affine pair per BN, shared by the flows
    assert bn.weight.shape == (64,) and bn.weight.grad is not None
    # a stage-4 BN is used by the last flow only
    assert model.backbone.stages[3][0].bn1.num_batches_tracked.tolist() == [0, 0, 1]
    # ANAR g_1 runs in flows 2 and 3
    anar_bn = model.backbone.attention[0].trans[1]
    assert anar_bn.num_batches_tracked.tolist() == [0, 1, 1]


def test_gradients_reach_every_anar() -> None:
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, anar="anar7", attention_init="random")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in model.named_parameters():
        if ".attention." in name:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # identity attention: at step 0 only each ANAR's last conv moves (its input path opens after)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, anar="anar7", attention_init="identity")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    for name, p in model.named_parameters():
        if ".attention." in name:
            assert (p.grad.abs().sum() > 0) == (".head." in name), name


@pytest.mark.parametrize("size", [(32, 32), (33, 47), (41, 35), (224, 161)])
def test_sizes_at_or_above_the_minimum_work(size: tuple[int, int]) -> None:
    model = tdaf.create_model("tdaf_resnet18", num_classes=5, flows=3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_cifar_setting_32x32_and_odd() -> None:
    model = tdaf.create_model("tdaf_resnet18_cifar", flows=3, anar="anar3").eval()
    assert model.backbone.min_input_size() == (8, 8)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        assert model(torch.randn(1, 3, 9, 13)).shape == (1, 10)


def test_state_dict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    a = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, anar="anar5")
    a(torch.randn(4, 3, 32, 32))  # move running stats
    a.eval()
    torch.save(a.state_dict(), tmp_path / "a.pt")
    b = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10, anar="anar5")
    b.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))
    b.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_input_errors() -> None:
    model = tdaf.create_model("tdaf_resnet50", num_classes=10)
    with pytest.raises(ValueError, match="input: expected 3 channels, got 1"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="input: spatial size 31x64 is below the minimum 32x32"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="expected a 4-D tensor"):
        model(torch.randn(3, 64, 64))


def test_construction_errors() -> None:
    with pytest.raises(ValueError, match=r"flows: got 5; allowed: an integer from 1 to the number of stages \(4\)"):
        tdaf.create_model("tdaf_resnet18", flows=5)
    with pytest.raises(ValueError, match="anar: unknown variant 'anar9'"):
        tdaf.create_model("tdaf_resnet18", anar="anar9")
    with pytest.raises(ValueError, match="downsample: unknown mode 'nearest'"):
        tdaf.create_model("tdaf_resnet18", downsample="nearest")
    with pytest.raises(ValueError, match="unknown name 'resnet51'; closest: resnet50"):
        tdaf.create_model("resnet51")
    with pytest.raises(ValueError, match="flows: only TDAF models take these; 'resnet18' is a plain model"):
        tdaf.create_model("resnet18", flows=3)


def test_pretrained_file_errors(tmp_path: Path, tv_resnet18_file: tuple[nn.Module, Path]) -> None:
    _, good = tv_resnet18_file
    with pytest.raises(FileNotFoundError, match="pretrained: file not found: .*nope.pth"):
        tdaf.create_model("tdaf_resnet18", pretrained=tmp_path / "nope.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or not a PyTorch file"):
        tdaf.create_model("tdaf_resnet18", pretrained=truncated)
    other = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), other)
    with pytest.raises(ValueError, match=r"does not fit tdaf_resnet18.*unexpected keys: layer1\.2\."):
        tdaf.create_model("tdaf_resnet18", pretrained=other)
    r50 = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), r50)
    with pytest.raises(ValueError, match=r"shape mismatches .*layer1\.0\.conv1\.weight"):
        tdaf.create_model("tdaf_resnet18", pretrained=r50)


class _Evil:
    def __reduce__(self):  # noqa: ANN204
        return (print, ("code ran",))


def test_pickles_that_run_code_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"conv1.weight": torch.zeros(1), "x": _Evil()}, f, pickle_module=pickle)
    with pytest.raises(ValueError, match="refused to load .*evil.pth.*weights_only=True"):
        tdaf.create_model("tdaf_resnet18", pretrained=path)


def test_valid_input_gives_no_nan() -> None:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", anar="anar7", flows=4)
    out = model(torch.randn(2, 3, 32, 32) * 100)
    assert torch.isfinite(out).all()
    model.eval()
    assert torch.isfinite(model(torch.zeros(1, 3, 32, 32))).all()


def test_gmacs_match_the_paper_for_resnet50() -> None:
    x = torch.randn(1, 3, 224, 224)
    base = count_gmacs(tdaf.create_model("resnet50"), x)
    assert base == pytest.approx(4.09, abs=0.02)  # paper Tab. 3a: 4.1
    ours = count_gmacs(tdaf.create_model("tdaf_resnet50", anar="anar3", flows=3), x)
    assert 1.15 < ours / base < 1.35


def test_profile_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profile", "tdaf_resnet18_cifar", "--json", "--iters", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == sum(p.numel() for p in tdaf.create_model("tdaf_resnet18_cifar").parameters())
    assert out["gmacs"] > out["baseline"]["gmacs"] > 0.5
    assert out["latency_ms"] > 0 and out["flows"] == 3 and out["anar"] == "anar3"


def test_profile_cli_table_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profile", "tdaf_resnet18_cifar", "--no-latency", "--flows", "2", "--anar", "anar5"]) == 0
    table = capsys.readouterr().out
    assert "resnet18_cifar" in table and "anar5" in table and "GMACs" in table
    assert cli_main(["profile", "resnet51"]) == 2
    assert "unknown name 'resnet51'" in capsys.readouterr().err


def test_timm_layout_pretrained_file(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    net = _trained_bn_stats(timm.create_model("resnet18", num_classes=5, pretrained=False))
    path = tmp_path / "timm_resnet18.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    model = tdaf.create_model("tdaf_resnet18", num_classes=5, flows=1, pretrained=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net(x), rtol=0, atol=1e-5)
