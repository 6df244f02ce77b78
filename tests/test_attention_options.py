"""The attention options beyond Table 1: a width floor, a resize-then-conv up path, the
fan-in start, and the attention's own learning rate and weight decay."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tdaf
from tdaf.engine.config import TrainConfig
from tdaf.engine.trainer import Trainer
from tdaf.layers.anar import ANAR, ResizeConv
from tdaf.r2dns import R2DNS


def _widths(anar: ANAR) -> list[int]:
    return [m.out_channels for m in anar.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.mark.parametrize("name,table1,floored", [
    ("anar3", [4, 1, 1], [8, 8, 1]),  # 32 channels: c/8 = 4, c/32 = 1; the head stays one channel
    ("anar5", [8, 4, 2, 2, 1, 1], [8, 8, 8, 8, 8, 1]),  # trans c/4, down c/8, up c/16 + its skip, up c/32, head
])
def test_width_floor(name: str, table1: list[int], floored: list[int]) -> None:
    assert sorted(_widths(ANAR(32, name))) == sorted(table1)
    assert sorted(_widths(ANAR(32, name, min_width=8))) == sorted(floored)
    assert sorted(_widths(ANAR(4, name, min_width=8)))[-1] == 4  # never wider than its input
    with pytest.raises(ValueError, match="anar_min_width: got 0"):
        ANAR(32, name, min_width=0)


@pytest.mark.parametrize("size", [(5, 7), (6, 6)])
def test_resize_up_path_doubles_exactly(size: tuple[int, int]) -> None:
    a = ANAR(16, "anar5", up="resize").eval()
    assert any(isinstance(m, ResizeConv) for m in a.modules())
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in a.modules())
    out = a(torch.randn(2, 16, *size))
    assert out.shape == (2, 1, 2 * size[0], 2 * size[1])
    with pytest.raises(ValueError, match="anar_up: got 'bicubic'; allowed: deconv, resize"):
        ANAR(16, up="bicubic")


def _start_gates(init: str) -> dict[tuple[int, int], torch.Tensor]:
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, attention_init=init).train()
    with torch.no_grad(), tdaf.record_attention(model) as maps:  # batch statistics, as in training
        model(torch.randn(8, 3, 32, 32))
    return maps


def test_fan_in_start_is_spread_around_the_identity_level() -> None:
    def saturated(g: torch.Tensor) -> float:
        return ((g < 0.05) | (g > 0.95)).float().mean().item()

    fan_in, random = _start_gates("fan_in"), _start_gates("random")
    for g in fan_in.values():
        assert 0.3 < g.mean().item() < 0.7 and g.std().item() > 0.1 and saturated(g) < 0.06
    # Kaiming fan-out on the one-channel head: weights of std sqrt(2) whatever the width
    assert max(saturated(g) for g in random.values()) > 0.2


def test_attention_param_groups(tmp_path) -> None:
    cfg = TrainConfig.from_dict(dict(model="tdaf_resnet18_cifar", data="digits", attention_lr_scale=10.0,
                                     attention_weight_decay=0.0, decay_norm_and_bias=False, weight_decay=5e-4,
                                     out=str(tmp_path)))
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=10)
    groups = Trainer(cfg)._param_groups(model)
    attention = {id(p) for m in model.modules() if isinstance(m, ANAR) for p in m.parameters()}
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(1 for _ in model.parameters())
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        assert g["lr_scale"] == (10.0 if id(p) in attention else 1.0), name
        expected = 0.0 if id(p) in attention or p.ndim <= 1 else 5e-4
        assert g["weight_decay"] == expected, name
    default = TrainConfig.from_dict(dict(model="tdaf_resnet18_cifar", data="digits", out=str(tmp_path)))
    assert not isinstance(Trainer(default)._param_groups(model), list)  # one group, as before
    with pytest.raises(Exception, match="attention_lr_scale: got 0.0"):
        TrainConfig.from_dict(dict(attention_lr_scale=0.0))
