"""``tdaf predict``: predictions equal a direct evaluation of the checkpoint on a tiny
ImageFolder set (and ``tdaf eval``'s accuracy), PIL-mode conversions, output formats and
clean errors. Both commands run the inference form (``tdaf.fold_batchnorm``) by default;
``--no-fold-bn`` the model as trained, with the same results to float rounding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import tdaf
import tdaf.cli.predict
import tdaf.engine.evaluate
from tdaf.inference import batchnorm_layers
from tdaf.layers import MultiFlowBatchNorm
from tdaf.cli.main import main
from tdaf.data.digits import digits_pixels
from tdaf.classification.data import eval_transform
from tdaf.engine.checkpoint import atomic_save, checkpoint_payload


CLASSES = ["digit0", "digit1", "digit2"]  # sorted, as ImageFolder orders class folders
META = dict(class_names=CLASSES, mean=[0.3057] * 3, std=[0.3235] * 3, input_size=[3, 32, 32], resize=None,
            data="imagefolder")


def _digit_images(split: str, per_class: int) -> list[tuple[np.ndarray, int]]:
    images, labels = digits_pixels(split)
    out = []
    for c in range(len(CLASSES)):
        out += [(images[i], c) for i in np.flatnonzero(labels == c)[:per_class]]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path, Path]:
    """A TDAF-ResNet-18 checkpoint briefly trained on 3 digit classes, and an ImageFolder
    tree (train/ and val/, greyscale PNGs: real scans from scikit-learn's digits)."""
    root = tmp_path_factory.mktemp("digits3")
    for split, n in (("train", 12), ("val", 6)):
        for k, (img, c) in enumerate(_digit_images("train" if split == "train" else "val", n)):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img, "L").save(d / f"{k:03d}.png")
    torch.manual_seed(0)
    model = tdaf.create_model("tdaf_resnet18_cifar", num_classes=3)
    tf = eval_transform(META)
    train = [(tf(Image.open(p)), CLASSES.index(p.parent.name)) for p in sorted((root / "train").rglob("*.png"))]
    x = torch.stack([t for t, _ in train])
    y = torch.tensor([c for _, c in train])
    # A cheap "training": BN statistics from one pass over the training images (every
    # flow's MFBN), then the linear classifier fitted to the pooled features in closed
    # form (ridge regression on one-hot targets). Enough for a non-constant predictor.
    for m in model.modules():
        if isinstance(m, MultiFlowBatchNorm):
            m.momentum = None  # cumulative average: the first batch sets the statistics
    with torch.no_grad():
        model.train()
        model(x)
        model.eval()
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        f1 = torch.cat([feats, torch.ones(len(feats), 1)], dim=1)
        target = nn.functional.one_hot(y, len(CLASSES)).float()
        w = torch.linalg.solve(f1.T @ f1 + 1e-2 * torch.eye(f1.shape[1]), f1.T @ target)
        model.head.fc.weight.copy_(w[:-1].T)
        model.head.fc.bias.copy_(w[-1])
    ckpt = atomic_save(checkpoint_payload("tdaf_resnet18_cifar", {"num_classes": 3}, model.state_dict(), META),
                       root / "ckpt.pt")
    return model, ckpt, root


def _direct(model: nn.Module, files: list[Path]) -> torch.Tensor:
    tf = eval_transform(META)
    with torch.no_grad():
        return torch.softmax(model(torch.stack([tf(Image.open(f)) for f in files])), dim=1)


def _predict_json(capsys, *argv: str) -> dict:
    assert main(["predict", *argv, "--json", "--no-progress"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predictions_equal_direct_evaluation(trained, capsys) -> None:
    model, ckpt, root = trained
    out = _predict_json(capsys, "--checkpoint", str(ckpt), str(root / "val"), "--topk", "3", "--batch-size", "4")
    files = sorted((root / "val").rglob("*.png"))
    assert [Path(r["file"]) for r in out["results"]] == files and out["topk"] == 3 and not out["skipped"]
    probs = _direct(model, files)
    for r, p in zip(out["results"], probs):
        order = p.argsort(descending=True).tolist()
        assert [t["index"] for t in r["topk"]] == order
        assert [t["label"] for t in r["topk"]] == [CLASSES[i] for i in order]
        assert np.allclose([t["score"] for t in r["topk"]], p[order].numpy(), atol=1e-5)
    truth = [CLASSES.index(f.parent.name) for f in files]
    acc_predict = np.mean([r["topk"][0]["index"] == t for r, t in zip(out["results"], truth)])
    acc_direct = np.mean([int(p.argmax()) == t for p, t in zip(probs, truth)])
    assert acc_predict == acc_direct
    assert len({r["topk"][0]["index"] for r in out["results"]}) > 1  # not a constant predictor


def test_predictions_reproduce_tdaf_eval_accuracy(trained, capsys) -> None:
    _, ckpt, root = trained
    assert main(["eval", "--checkpoint", str(ckpt), "--data", "imagefolder", "--data-dir", str(root), "--json",
                 "--device", "cpu", "--workers", "0"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("{")]
    top1 = json.loads(lines[-1])["top1"]
    out = _predict_json(capsys, "--checkpoint", str(ckpt), str(root / "val"), "--topk", "1")
    hits = [r["topk"][0]["label"] == Path(r["file"]).parent.name for r in out["results"]]
    assert sum(hits) / len(hits) == pytest.approx(top1, abs=1e-9)


def test_predict_and_eval_fold_batchnorm_by_default_with_the_same_results(trained, capsys, monkeypatch) -> None:
    _, ckpt, root = trained
    folded: list[nn.Module] = []

    def spy(real):
        def fold(model: nn.Module, *args, **kwargs) -> nn.Module:
            out = real(model, *args, **kwargs)
            folded.append(out)
            return out
        return fold

    for module in (tdaf.cli.predict, tdaf.engine.evaluate):
        monkeypatch.setattr(module, "fold_batchnorm", spy(module.fold_batchnorm))
    argv = ["--checkpoint", str(ckpt), str(root / "val"), "--topk", "3"]
    by_default = _predict_json(capsys, *argv)
    assert len(folded) == 1 and batchnorm_layers(folded[0]) == []  # every MFBN folded
    as_trained = _predict_json(capsys, *argv, "--no-fold-bn")
    assert len(folded) == 1

    def scores(out: dict) -> np.ndarray:
        return np.array([[t["score"] for t in sorted(r["topk"], key=lambda t: t["index"])] for r in out["results"]])

    assert np.abs(scores(by_default) - scores(as_trained)).max() < 1e-5
    evals = {}
    for flag in ("--fold-bn", "--no-fold-bn"):
        assert main(["eval", "--checkpoint", str(ckpt), "--data", "imagefolder", "--data-dir", str(root), "--json",
                     "--device", "cpu", "--workers", "0", flag]) == 0
        evals[flag] = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert len(folded) == 2 and batchnorm_layers(folded[1]) == []
    assert evals["--fold-bn"]["fold_bn"] is True and evals["--no-fold-bn"]["fold_bn"] is False
    assert evals["--fold-bn"]["top1"] == evals["--no-fold-bn"]["top1"]
    assert evals["--fold-bn"]["loss"] == pytest.approx(evals["--no-fold-bn"]["loss"], abs=1e-5)


def test_image_modes_are_converted_like_rgb(trained, tmp_path: Path, capsys) -> None:
    _, ckpt, root = trained
    rgb = np.asarray(Image.open(sorted((root / "val" / "digit2").glob("*.png"))[0]).convert("RGB").resize((37, 29)))
    grey = rgb[..., 0]
    d = tmp_path / "modes"
    d.mkdir()
    Image.fromarray(rgb).save(d / "a_rgb.png")
    Image.fromarray(np.dstack([rgb, np.full(grey.shape, 128, np.uint8)]), "RGBA").save(d / "b_rgba.png")
    palette = Image.fromarray(grey, "P")
    palette.putpalette([v for i in range(256) for v in (i, i, i)])
    palette.save(d / "c_palette.png")
    Image.fromarray(grey, "L").save(d / "d_grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(d / "e_grey16.png")  # 16-bit: same picture, x257
    Image.fromarray(grey.astype(np.int32) * 257, "I").save(d / "f_int32.tif")
    Image.fromarray(grey, "L").save(d / "g_grey.jpg", quality=100)
    assert Image.open(d / "e_grey16.png").mode == "I;16"
    (d / "notes.txt").write_text("not an image")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = _predict_json(capsys, "--checkpoint", str(ckpt), str(d), "--topk", "3")
    scores = {Path(r["file"]).name: [t["score"] for t in sorted(r["topk"], key=lambda t: t["index"])]
              for r in out["results"]}
    assert set(scores) == {"a_rgb.png", "b_rgba.png", "c_palette.png", "d_grey.png", "e_grey16.png",
                           "f_int32.tif", "g_grey.jpg"}
    assert [Path(s["file"]).name for s in out["skipped"]] == ["broken.png"] and out["ignored"] == 1
    ref = scores["a_rgb.png"]
    for name in ("b_rgba.png", "c_palette.png", "d_grey.png", "e_grey16.png", "f_int32.tif"):
        assert np.allclose(scores[name], ref, atol=1e-5), name  # grey digits: every conversion is exact
    assert np.allclose(scores["g_grey.jpg"], ref, atol=0.05)  # JPEG is lossy, but close


def test_table_output(trained, capsys) -> None:
    _, ckpt, root = trained
    files = sorted((root / "val" / "digit1").glob("*.png"))[:2]
    assert main(["predict", "--checkpoint", str(ckpt), *map(str, files), "--topk", "2", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["file", "top-1", "top-2"]
    assert lines[2].startswith(str(files[0])) and lines[3].startswith(str(files[1]))
    for row in lines[2:4]:
        cells = row.split()[1:]
        assert len(cells) == 2 and all(c.split(":")[0] in CLASSES and 0 <= float(c.split(":")[1]) <= 1 for c in cells)
    assert lines[4].startswith("2 image(s);")


def test_predict_errors(trained, tmp_path: Path, capsys) -> None:
    model, ckpt, root = trained

    def fails(argv: list[str], *needles: str) -> None:
        assert main(["predict", *argv, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("tdaf predict: error:"), err
        for n in needles:
            assert n in err, err

    text = tmp_path / "readme.txt"
    text.write_text("hello")
    img = str(sorted((root / "val").rglob("*.png"))[0])
    fails(["--checkpoint", str(ckpt), img, str(text)], "readme.txt", "not an image file")
    truncated = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    fails(["--checkpoint", str(ckpt), str(truncated)], "cut.png")
    fails(["--checkpoint", str(ckpt), str(tmp_path / "nope.png")], "nope.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(["--checkpoint", str(ckpt), str(empty)], "no image files")
    other = tmp_path / "other.pt"  # a checkpoint whose weights are for another architecture
    atomic_save(checkpoint_payload("tdaf_resnet18_cifar", {"num_classes": 3},
                                   tdaf.create_model("resnet34_cifar", num_classes=3).state_dict(), META), other)
    fails(["--checkpoint", str(other), img], "other.pt", "do not fit")
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    fails(["--checkpoint", str(plain), img], "not a tdaf checkpoint")
    names = tmp_path / "names.pt"
    atomic_save(checkpoint_payload("tdaf_resnet18_cifar", {"num_classes": 3}, model.state_dict(),
                                   dict(META, class_names=["a", "b"])), names)
    fails(["--checkpoint", str(names), img], "2 classes", "3 outputs")
    fails(["--checkpoint", str(ckpt), img, "--topk", "0"], "--topk")
    fails(["--checkpoint", str(ckpt), img, "--batch-size", "0"], "--batch-size")
