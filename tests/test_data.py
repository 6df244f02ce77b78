"""Data sets in their real on-disk formats, the paper's transforms, and the samplers."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tdaf.classification.data import build_datasets, open_split
from tdaf.classification.data.cifar10 import Cifar10Dataset
from tdaf.classification.data.imagefolder import ImageFolderDataset
from tdaf.classification.data.transforms import eval_transform, ten_crop_transform, train_transform
from tdaf.data import GlobalBatchSampler, ShardSampler, TransformedDataset, collate_skip
from tdaf.data.digits import DIGITS_MEAN, DIGITS_STD, digits_pixels



# ---------------------------------------------------------------- digits


def test_digits_split_is_fixed_stratified_and_real():
    from sklearn.datasets import load_digits

    x_train, y_train = digits_pixels("train")
    x_val, y_val = digits_pixels("val")
    assert x_train.shape == (1437, 32, 32) and x_val.shape == (360, 32, 32)
    assert x_train.dtype == np.uint8
    # stratified 80/20: every class has 20% +- 1 image in the test split
    counts_val, counts_all = np.bincount(y_val), np.bincount(np.concatenate([y_train, y_val]))
    assert np.all(np.abs(counts_val - counts_all * 0.2) <= 1)
    # the 32x32 image is the real 8x8 scan upscaled: average-pooling it back gives the scan
    digits = load_digits()
    first_train = np.setdiff1d(np.arange(len(digits.target)), _val_indices(digits.target))[0]
    pooled = torch.nn.functional.avg_pool2d(torch.tensor(x_train[:1], dtype=torch.float32)[None], 4)[0, 0].numpy()
    assert np.abs(pooled - digits.images[first_train] * 255 / 16).mean() < 20
    assert y_train[0] == digits.target[first_train]
    # the split does not depend on the training seed
    train_ds, _, info = build_datasets("digits", seed=123)
    train_ds2, _, _ = build_datasets("digits", seed=7)
    assert train_ds.raw.labels.tolist() == train_ds2.raw.labels.tolist()
    assert info.input_size == [3, 32, 32] and info.resize is None and info.class_names == [str(d) for d in range(10)]


def _val_indices(labels: np.ndarray) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0)
    return test


def test_digits_mean_std_constants_match_the_training_split():
    x, _ = digits_pixels("train")
    x = x / 255.0
    assert DIGITS_MEAN[0] == pytest.approx(x.mean(), abs=1e-4)
    assert DIGITS_STD[0] == pytest.approx(x.std(), abs=1e-4)


# ---------------------------------------------------------------- CIFAR-10


def _write_cifar(root: Path, per_batch: int = 4, key_type=str) -> dict[str, np.ndarray]:
    """A miniature cifar-10-batches-py folder, pickled as the originals (protocol 2 dicts)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    k = (lambda s: s.encode()) if key_type is bytes else (lambda s: s)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({k("label_names"): names, k("num_cases_per_batch"): per_batch, k("num_vis"): 3072}, f, protocol=2)
    rng = np.random.default_rng(0)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batch = {k("batch_label"): f"{name} of 5", k("labels"): labels, k("data"): data,
                 k("filenames"): [f"img_{j}.png" for j in range(per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("key_type", [str, bytes])
def test_cifar10_reads_the_pickle_layout(tmp_path, key_type):
    written = _write_cifar(tmp_path, key_type=key_type)
    train = Cifar10Dataset(tmp_path, "train")  # the parent of cifar-10-batches-py works
    val = Cifar10Dataset(tmp_path / "cifar-10-batches-py", "val")
    assert len(train) == 20 and len(val) == 4
    assert train.classes[0] == "airplane" and len(train.classes) == 10
    data, labels = written["data_batch_2"]
    img, label, _ = train.load(4 + 1)  # the 2nd image of data_batch_2
    assert label == labels[1]
    arr = np.asarray(img)
    # rows are 3 planes of 1024 bytes (R, G, B), row-major
    y, x = 5, 7
    assert tuple(arr[y, x]) == (data[1, y * 32 + x], data[1, 1024 + y * 32 + x], data[1, 2048 + y * 32 + x])
    assert val.load(3)[1] == written["test_batch"][1][3]


def test_cifar10_errors_show_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*data_batch_1"):
        Cifar10Dataset(tmp_path / "nope", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="lacks batches.meta.*cifar-10-batches-py"):
        Cifar10Dataset(tmp_path / "empty", "train")
    _write_cifar(tmp_path / "bad")
    folder = tmp_path / "bad" / "cifar-10-batches-py"
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_3.*uint8 array \(N, 3072\)"):
        Cifar10Dataset(folder, "train")
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="data_batch_3 is not a readable CIFAR batch"):
        Cifar10Dataset(folder, "train")


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/tdaf-pwned-by-cifar"),))


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    _write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    marker = Path("/tmp/tdaf-pwned-by-cifar")
    marker.unlink(missing_ok=True)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": _Evil(), "labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load"):
        Cifar10Dataset(folder, "val")
    assert not marker.exists()


# ---------------------------------------------------------------- ImageFolder


def _write_imagefolder(root: Path, broken: bool = False) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for c, cls in enumerate(("cat", "dog")):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 256, size=(40 + 3 * i, 50, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.jpg" if c == 0 else d / f"{i}.png")
    if broken:
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")


def test_imagefolder_layout_labels_and_skipping(tmp_path):
    _write_imagefolder(tmp_path, broken=True)
    train = ImageFolderDataset(tmp_path, "train")
    val = ImageFolderDataset(tmp_path, "val")
    assert train.classes == ["cat", "dog"] and len(train) == 7 and len(val) == 4
    assert sorted(train.targets()) == [0, 0, 0, 1, 1, 1, 1]
    meta = {"input_size": [3, 32, 32], "mean": [0.5] * 3, "std": [0.25] * 3, "resize": 36}
    ds = TransformedDataset(train, eval_transform(meta), seeded=False)
    x, y, skipped = collate_skip([ds[i] for i in range(len(ds))])
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [0, 0, 0, 1, 1, 1]
    assert len(skipped) == 1 and "broken.jpg (" in skipped[0] and skipped[0].endswith(")")  # names the reason


def test_imagefolder_errors_show_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist; expected the ImageNet layout: DATA_DIR/train/CLASS"):
        ImageFolderDataset(tmp_path / "missing", "train")
    (tmp_path / "a" / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "train" / "cat" / "0.jpg")
    with pytest.raises(FileNotFoundError, match="has no 'val' folder.*val/CLASS"):
        ImageFolderDataset(tmp_path / "a", "val")
    (tmp_path / "a" / "val" / "cow").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "val" / "cow" / "0.jpg")
    with pytest.raises(ValueError, match="class folders missing from train/: cow"):
        ImageFolderDataset(tmp_path / "a", "val")
    (tmp_path / "a" / "train" / "dog").mkdir()
    with pytest.raises(FileNotFoundError, match="dog"):
        ImageFolderDataset(tmp_path / "a", "train")  # a class folder without images


def test_build_datasets_errors():
    with pytest.raises(ValueError, match="data: got 'mnist'; allowed for task classification: digits, cluttered_digits, cluttered_digits_small, cifar10, imagefolder"):
        build_datasets("mnist")
    with pytest.raises(ValueError, match="--data-dir: digits is built in"):
        build_datasets("digits", "/tmp")
    with pytest.raises(ValueError, match="--data-dir: required for cifar10"):
        open_split("cifar10", "train", None)


# ---------------------------------------------------------------- transforms


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK", "1"])
def test_eval_transform_any_mode_to_normalised_tensor(mode):
    meta = {"input_size": [3, 24, 20], "mean": [0.25, 0.5, 0.75], "std": [0.5, 0.5, 0.5], "resize": None}
    img = Image.new(mode, (37, 29))
    x = eval_transform(meta)(img)
    assert x.shape == (3, 24, 20) and x.dtype == torch.float32


def test_eval_transform_normalises_and_centre_crops():
    meta = {"input_size": [3, 32, 32], "mean": [0.2, 0.4, 0.6], "std": [0.1, 0.2, 0.3], "resize": 48}
    # a constant image equal to the mean maps to zeros
    img = Image.new("RGB", (96, 64), (51, 102, 153))
    assert eval_transform(meta)(img).abs().max() < 0.03
    # shorter side 64 -> 48 (scale 0.75), then the centre 32x32: a marker at the image centre stays at the centre
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[28:36, 44:52] = 255
    x = eval_transform(meta)(Image.fromarray(arr))
    bright = (x[0] > 0).nonzero().float().mean(0)
    assert torch.allclose(bright, torch.tensor([15.5, 15.5]), atol=1.0)
    with pytest.raises(ValueError, match="missing mean, std"):
        eval_transform({"input_size": [3, 8, 8]})


def test_ten_crop_and_its_errors():
    meta = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3, "resize": 20}
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[:, :5] = 255  # a bright left edge
    x = ten_crop_transform(meta)(Image.fromarray(arr))
    assert x.shape == (10, 3, 16, 16)
    # crops 0-4: top-left, top-right, bottom-left, bottom-right, centre; 5-9: the same of the mirror
    assert x[0, 0, :, 0].mean() > 0 and x[1, 0, :, 0].mean() < 0
    assert torch.equal(x[6], x[0].flip(-1)) and torch.equal(x[9], x[4].flip(-1))
    with pytest.raises(ValueError, match="ten-crop"):
        ten_crop_transform(dict(meta, resize=None))


def _left_heavy() -> Image.Image:
    arr = np.zeros((32, 32), np.uint8)
    arr[:, 4:14] = 255
    return Image.fromarray(arr, "L")


def test_digits_recipe_never_flips_but_cifar_does():
    kw = dict(input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3)
    digits, cifar = train_transform("digits", **kw), train_transform("cifar", **kw)
    flips = {"digits": 0, "cifar": 0}
    for seed in range(16):
        for name, tf in (("digits", digits), ("cifar", cifar)):
            torch.manual_seed(seed)
            x = tf(_left_heavy())
            flips[name] += int(x[0, :, 16:].mean() > x[0, :, :16].mean())
    assert flips["digits"] == 0 and 3 <= flips["cifar"] <= 13


def test_imagenet_recipe_scales_crops_and_flips():
    tf = train_transform("imagenet", input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3)
    # the scale range [37, 69] for a 32 crop (= [256, 480] x 32/224): the crop shows a varying share of the image
    arr = np.zeros((100, 100, 3), np.uint8)
    arr[40:60, 40:60] = 255
    shares = []
    for seed in range(8):
        torch.manual_seed(seed)
        x = tf(Image.fromarray(arr))
        assert x.shape == (3, 32, 32)
        shares.append(float((x[0] > 0).float().mean()))
    assert max(shares) - min(shares) > 0.02
    with pytest.raises(ValueError, match="recipe: got 'autoaugment'"):
        train_transform("autoaugment", input_size=[3, 32, 32], mean=[0.5] * 3, std=[0.5] * 3)


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    train_a, _, _ = build_datasets("digits", seed=3, train_subset=8)
    train_b, _, _ = build_datasets("digits", seed=3, train_subset=8)
    train_a.set_epoch(2)
    train_b.set_epoch(2)
    torch.manual_seed(99)  # the global RNG does not matter ...
    xa = train_a[5][0]
    torch.rand(10)
    assert torch.equal(xa, train_b[5][0])
    state = torch.get_rng_state()
    train_b.set_epoch(3)  # ... the epoch does
    assert not torch.equal(xa, train_b[5][0])
    assert torch.equal(state, torch.get_rng_state())  # and the global RNG is left untouched


# ---------------------------------------------------------------- samplers


def test_global_batches_split_the_same_way_over_processes_and_micro_steps():
    one = GlobalBatchSampler(50, 16, world_size=1, rank=0, accum_steps=2, seed=4)
    ranks = [GlobalBatchSampler(50, 16, world_size=2, rank=r, seed=4) for r in range(2)]
    for s in [one, *ranks]:
        s.set_epoch(1)
    micro = list(one)
    per_rank = [list(r) for r in ranks]
    assert len(micro) == 6 and all(len(p) == 3 for p in per_rank)  # 50 // 16 = 3 steps, last partial batch dropped
    for step in range(3):
        assert micro[2 * step] == per_rank[0][step] and micro[2 * step + 1] == per_rank[1][step]
    used = [i for b in micro for i in b]
    assert len(set(used)) == 48 and all(len(b) == 8 for b in micro)
    one.set_epoch(2)
    assert list(one) != micro  # a new order each epoch
    one.set_epoch(1)
    assert list(one) == micro  # ... and the same order for the same (seed, epoch)


def test_sampler_errors_and_shards():
    with pytest.raises(ValueError, match="batch_size: got 10; allowed: a multiple of processes x accum_steps = 2 x 2"):
        GlobalBatchSampler(100, 10, world_size=2, accum_steps=2)
    with pytest.raises(ValueError, match="only 20 images"):
        GlobalBatchSampler(20, 32)
    shards = [list(ShardSampler(7, 3, r)) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
