"""Attention pictures (paper Fig. 3b/c): the stages x flows grid, the drawn maps equal the
recorded ones upsampled, valid PNGs, raw maps, video frames, and clean errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import AxesImage
from PIL import Image
from torch import nn

import tdaf
from tdaf.cli.main import main
from tdaf.classification.data import eval_transform
from tdaf.engine.checkpoint import atomic_save, checkpoint_payload
from tdaf.r2dns import R2DNS
from tdaf.viz import attention_figure, attention_grid, compute_attention, save_attention_figure, save_maps


CLASSES = ["cat", "dog", "bird"]
META = dict(class_names=CLASSES, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3], input_size=[3, 32, 32], resize=None,
            data="imagefolder")

# L = 4, N = 3 (Eq. 1): flow 2 is gated at stages 1-2, flow 3 at stages 1-3.
KEYS_L4_N3 = [(1, 2), (2, 2), (1, 3), (2, 3), (3, 3)]


def _synthetic_maps(batch: int = 2, size: int = 16) -> dict[tuple[int, int], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {(s, n): torch.rand(batch, 1, size // 2 ** (s - 1) // 2 ** (3 - n), size // 2 ** (s - 1) // 2 ** (3 - n),
                               generator=g) for s, n in KEYS_L4_N3}


def _images(fig) -> list[list[AxesImage]]:
    return [ax.get_images() for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]


def test_grid_is_stages_by_flows_and_draws_the_upsampled_maps(tmp_path: Path) -> None:
    maps = _synthetic_maps()
    grid = attention_grid(maps)
    assert grid.shape == (3, 3) and grid.stages == [1, 2, 3] and grid.flows == [1, 2, 3]
    assert [grid.cells[(s, 1)] for s in (1, 2, 3)] == ["first"] * 3  # flow 1 has no attention
    assert grid.cells[(3, 2)] == "none" and sum(v == "map" for v in grid.cells.values()) == 5

    x = torch.randn(2, 3, 40, 56)  # a batch; draw element 1
    fig, fig_grid = attention_figure(x, maps, mean=META["mean"], std=META["std"], index=1, alpha=0.4)
    assert fig_grid.shape == (3, 3)
    cells = _images(fig)
    assert len(cells) == 9  # a 3 x 3 grid of image axes (plus the colour bar)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]
    picture = (x[1] * torch.tensor(META["std"]).view(3, 1, 1) + torch.tensor(META["mean"]).view(3, 1, 1))
    picture = picture.clamp(0, 1).permute(1, 2, 0).numpy()
    for (s, n), imgs, title in zip([(s, n) for s in (1, 2, 3) for n in (1, 2, 3)], cells, titles):
        assert title.startswith(f"stage {s}, flow {n}")
        assert np.allclose(imgs[0].get_array(), picture, atol=1e-6) or (s, n) == (3, 2)  # input below
        if (s, n) in maps:
            assert len(imgs) == 2 and imgs[1].get_alpha() == 0.4
            expected = F.interpolate(maps[(s, n)][1:2], size=(40, 56), mode="bilinear", align_corners=False)[0, 0]
            assert np.allclose(imgs[1].get_array(), expected.numpy(), atol=1e-6)
        else:
            assert len(imgs) == 1  # no overlay where there is no attention
    assert "no attention" in titles[0] and "not gated" in titles[7]
    # columns headed by flow and the resolution it sees, rows by stage, one bar with its range
    headers = [t.get_text() for t in fig.texts]
    assert {"flow 1 (1/4 res)", "flow 2 (1/2 res)", "flow 3 (full res)"} <= set(headers)
    assert [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()][:3] == ["stage 1", "stage 2", "stage 3"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "0..1" in bars[0].get_ylabel() and bars[0].get_ylim() == (0.0, 1.0)

    path = save_attention_figure(x, maps, tmp_path / "fig.png", index=1, title="hello", metadata={"k": "v"})
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
        im.verify()
    with Image.open(path) as im:
        assert im.text["tdaf:stages"] == "1,2,3" and im.text["tdaf:flows"] == "1,2,3"
        assert im.text["Title"] == "hello" and im.text["k"] == "v"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    root = tmp_path_factory.mktemp("attn")
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=3, anar="anar5").eval()
    ckpt = atomic_save(checkpoint_payload("tdaf_resnet18_cifar", {"num_classes": 3, "anar": "anar5"},
                                          model.state_dict(), META), root / "ckpt.pt")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (33, 47), dtype=np.uint8), "L").save(root / "grey.jpg")
    return model, ckpt, root


def test_cli_checkpoint_figures_and_raw_maps(checkpoint, tmp_path: Path, capsys) -> None:
    model, ckpt, root = checkpoint
    out = tmp_path / "out"
    assert main(["attention", "--checkpoint", str(ckpt), str(root / "rgba.png"), str(root / "grey.jpg"),
                 "--out", str(out), "--save-maps", "pt", "--no-progress"]) == 0
    printed = capsys.readouterr().out.split()
    assert sorted(Path(p).name for p in printed) == ["grey.attention.png", "grey.maps.pt", "rgba.attention.png",
                                                      "rgba.maps.pt"]
    x = eval_transform(META)(Image.open(root / "rgba.png"))[None]
    logits, direct = compute_attention(model, x)
    saved = torch.load(out / "rgba.maps.pt", weights_only=True)
    assert sorted(saved) == sorted(f"stage{s}_flow{n}" for s, n in KEYS_L4_N3)
    for (s, n), m in direct.items():
        assert torch.allclose(saved[f"stage{s}_flow{n}"], m[0], atol=1e-6)
    assert saved["stage1_flow3"].shape == (1, 32, 32) and saved["stage3_flow3"].shape == (1, 8, 8)
    with Image.open(out / "rgba.attention.png") as im:
        assert im.format == "PNG" and im.text["tdaf:stages"] == "1,2,3" and im.text["tdaf:flows"] == "1,2,3"
        label = CLASSES[int(logits.argmax())]
        assert f"predicted: {label}" in im.text["Title"] and "UNTRAINED" not in im.text["Title"]
        assert "ckpt.pt" in im.text["tdaf:model"]


def test_cli_untrained_model_odd_size_npy(checkpoint, tmp_path: Path, capsys) -> None:
    _, _, root = checkpoint
    out = tmp_path / "out"
    assert main(["attention", "--model", "tdaf_resnet18_cifar", "--flows", "2", "--anar", "anar7",
                 str(root / "grey.jpg"), "--out", str(out), "--input-size", "37", "45", "--save-maps", "npy",
                 "--no-progress"]) == 0
    capsys.readouterr()
    with Image.open(out / "grey.attention.png") as im:
        assert "UNTRAINED" in im.text["Title"]
        assert im.text["tdaf:stages"] == "1,2,3" and im.text["tdaf:flows"] == "1,2"  # N = 2: flow 2 at stages 1-3
    arrays = {p.name: np.load(p) for p in out.glob("*.npy")}
    assert sorted(arrays) == ["grey.stage1_flow2.npy", "grey.stage2_flow2.npy", "grey.stage3_flow2.npy"]
    assert arrays["grey.stage1_flow2.npy"].shape == (1, 37, 45)  # the odd input size, not rounded
    assert all(((a > 0) & (a < 1)).all() for a in arrays.values())  # sigmoid maps


def _block3d(cin: int, cout: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm3d(cout), nn.ReLU())


class _LastStage(nn.Module):
    def __init__(self, backbone: R2DNS) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)[-1]


def test_video_maps_draw_the_chosen_frame(tmp_path: Path) -> None:
    torch.manual_seed(0)
    stages = [_block3d(3, 8, 1), _block3d(8, 16, 2), _block3d(16, 16, 2)]
    model = nn.Sequential(_LastStage(R2DNS(stages, [8, 16, 16], [1, 2, 2], flows=2, anar="anar3", dims=3,
                                          attention_init="random")),
                          nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    clip = torch.randn(1, 3, 8, 16, 16)
    _, maps = compute_attention(model, clip)
    assert all(m.dim() == 5 for m in maps.values()) and sorted(maps) == [(1, 2), (2, 2)]
    fig, grid = attention_figure(clip, maps, frame=5)
    assert grid.shape == (2, 2)
    overlay = _images(fig)[1][1].get_array()  # stage 1, flow 2
    expected = F.interpolate(maps[(1, 2)], size=(8, 16, 16), mode="trilinear", align_corners=False)[0, 0, 5]
    assert np.allclose(overlay, expected.numpy(), atol=1e-6)
    other = F.interpolate(maps[(1, 2)], size=(8, 16, 16), mode="trilinear", align_corners=False)[0, 0, 0]
    assert not np.allclose(overlay, other.numpy(), atol=1e-4)  # the frame matters
    assert np.allclose(_images(fig)[0][0].get_array(), clip[0, :, 5].clamp(0, 1).permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="frame: got 8"):
        attention_figure(clip, maps, frame=8)
    with pytest.raises(ValueError, match="clip"):
        attention_figure(clip[0, :, 0], maps)  # a single frame is not a clip
    paths = save_maps(maps, tmp_path, "clip", "npz")
    with np.load(paths[0]) as z:
        assert z["stage1_flow2"].shape == (1, 8, 16, 16)


def test_attention_errors(checkpoint, tmp_path: Path, capsys) -> None:
    _, ckpt, root = checkpoint
    img = str(root / "rgba.png")

    def fails(argv: list[str], *needles: str) -> None:
        assert main(["attention", *argv, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("tdaf attention: error:"), err
        for n in needles:
            assert n in err, err

    fails(["--model", "resnet18_cifar", img], "no TDAF attention", "tdaf_resnet18_cifar")
    fails(["--model", "tdaf_resnet18_cifar", "--flows", "1", img], "1 flow")
    fails(["--checkpoint", str(ckpt), img, "--frame", "2"], "--frame", "2D model")
    notes = tmp_path / "notes.md"
    notes.write_text("# not an image")
    fails(["--checkpoint", str(ckpt), str(notes)], "notes.md", "not an image")
    fails(["--checkpoint", str(ckpt), img, "--input-size", "4", "4"], "below the minimum")
    fails(["--checkpoint", str(ckpt), img, "--cmap", "nocmap"], "--cmap")
    fails(["--checkpoint", str(ckpt), img, "--alpha", "2"], "--alpha")
    with pytest.raises(ValueError, match="no attention maps"):
        attention_grid({})
    with pytest.raises(ValueError, match="keys must be"):
        attention_grid({(0, 2): torch.rand(1, 1, 4, 4)})
    with pytest.raises(ValueError, match="--save-maps"):
        save_maps(_synthetic_maps(), tmp_path, "x", "mat")


def test_demo_saves_attention_pictures_of_test_digits(checkpoint, tmp_path: Path) -> None:
    from tdaf.cli.demo import PICTURES, attention_picture_paths, attention_pictures
    from tdaf.data.cluttered import cluttered_digits

    _, ckpt, _ = checkpoint
    paths = attention_pictures(ckpt, tmp_path)
    _, labels, _, _ = cluttered_digits("val")
    assert [p.name for p in paths] == [f"test{i}_digit{labels[i]}.attention.png" for i in PICTURES]
    assert paths == attention_picture_paths(tmp_path)
    for p in paths:
        assert p.parent == tmp_path / "attention"
        with Image.open(p) as im:
            assert im.format == "PNG" and im.text["tdaf:stages"] == "1,2,3" and "predicted:" in im.text["Title"]
            assert im.text["tdaf:checkpoint"] == "ckpt.pt"
