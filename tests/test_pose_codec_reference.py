"""The pose heat-map codec against SimpleBaseline's reference code (Xiao et al. 2018,
microsoft/human-pose-estimation.pytorch), to the bit.

The ``_ref_*`` functions restate, in numpy and step by step, what the reference's
``JointsDataset.generate_target``, ``inference.get_max_preds`` / ``get_final_preds``
(post-processing part, before the transform back to the image), ``transforms.flip_back``
and the flip-test shift in ``function.validate`` compute: the same window arithmetic
(``ul``, ``br``, clipped paste), the same float32 Gaussian, the same strict-inside test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tdaf.pose import decode_heatmaps, encode_heatmaps, flip_heatmaps

STRIDE = 4
IMAGE_SIZE = (192, 256)  # (w, h), SimpleBaseline's COCO setting
HEATMAP_SIZE = (48, 64)


def _ref_generate_target(joints: np.ndarray, joints_vis: np.ndarray, image_size: tuple[int, int],
                         heatmap_size: tuple[int, int], sigma: int) -> tuple[np.ndarray, np.ndarray]:
    """generate_target: joints (J, 2) in crop pixels, joints_vis (J,) -> target (J, h, w), weight (J, 1)."""
    num = joints.shape[0]
    hm_w, hm_h = heatmap_size
    weight = np.ones((num, 1), dtype=np.float32)
    weight[:, 0] = joints_vis
    target = np.zeros((num, hm_h, hm_w), dtype=np.float32)
    tmp_size = sigma * 3
    feat_stride = np.array(image_size) / np.array(heatmap_size)
    for j in range(num):
        mu_x = int(joints[j][0] / feat_stride[0] + 0.5)
        mu_y = int(joints[j][1] / feat_stride[1] + 0.5)
        ul = [int(mu_x - tmp_size), int(mu_y - tmp_size)]  # window's upper-left corner
        br = [int(mu_x + tmp_size + 1), int(mu_y + tmp_size + 1)]  # and bottom-right (exclusive)
        if ul[0] >= hm_w or ul[1] >= hm_h or br[0] < 0 or br[1] < 0:
            weight[j] = 0
            continue
        size = 2 * tmp_size + 1
        x = np.arange(0, size, 1, np.float32)
        y = x[:, np.newaxis]
        x0 = y0 = size // 2
        g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
        g_x = max(0, -ul[0]), min(br[0], hm_w) - ul[0]
        g_y = max(0, -ul[1]), min(br[1], hm_h) - ul[1]
        img_x = max(0, ul[0]), min(br[0], hm_w)
        img_y = max(0, ul[1]), min(br[1], hm_h)
        if weight[j] > 0.5:
            target[j][img_y[0]:img_y[1], img_x[0]:img_x[1]] = g[g_y[0]:g_y[1], g_x[0]:g_x[1]]
    return target, weight


def _ref_decode(batch_heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_max_preds, then get_final_preds' post-processing (heat-map pixels)."""
    b, j, hm_h, hm_w = batch_heatmaps.shape
    reshaped = batch_heatmaps.reshape((b, j, -1))
    idx = np.argmax(reshaped, 2).reshape((b, j, 1))
    maxvals = np.amax(reshaped, 2).reshape((b, j, 1))
    coords = np.tile(idx, (1, 1, 2)).astype(np.float32)
    coords[:, :, 0] = coords[:, :, 0] % hm_w
    coords[:, :, 1] = np.floor(coords[:, :, 1] / hm_w)
    coords *= np.tile(np.greater(maxvals, 0.0), (1, 1, 2)).astype(np.float32)
    for n in range(b):
        for p in range(j):
            hm = batch_heatmaps[n][p]
            px = int(math.floor(coords[n][p][0] + 0.5))
            py = int(math.floor(coords[n][p][1] + 0.5))
            if 1 < px < hm_w - 1 and 1 < py < hm_h - 1:
                diff = np.array([hm[py][px + 1] - hm[py][px - 1], hm[py + 1][px] - hm[py - 1][px]])
                coords[n][p] += np.sign(diff) * 0.25
    return coords, maxvals


def _ref_flip_back(output_flipped: np.ndarray, matched_parts: list[tuple[int, int]]) -> np.ndarray:
    """flip_back, then validate's SHIFT_HEATMAP (one column to the right, column 0 kept)."""
    out = output_flipped[:, :, :, ::-1].copy()
    for a, b in matched_parts:
        tmp = out[:, a].copy()
        out[:, a] = out[:, b]
        out[:, b] = tmp
    out[:, :, :, 1:] = out.copy()[:, :, :, 0:-1]
    return out


def _edge_keypoints(sigma: int) -> np.ndarray:
    """Crop-pixel x (or y) values at the borders: 0, 1, the last column, rounding
    boundaries, and windows exactly 6 sigma (3 sigma each side) from each edge."""
    r, w = 3 * sigma, HEATMAP_SIZE[0]
    mus = [0, 1, 2, w - 2, w - 1, w, -r, -r - 1, -r - 2, w + r - 1, w + r, w + r + 1]
    xs = [m * STRIDE for m in mus]
    xs += [m * STRIDE - 2 for m in mus] + [m * STRIDE - 2.0001 for m in mus]  # x / 4 + 0.5 = m, just below
    xs += [0.0, 1.0, -1.0, -0.5, 1.5, 190.0, 191.0, 191.5, 189.9999]
    return np.array(xs, dtype=np.float64)


@pytest.mark.parametrize("sigma", [2, 3, 1])
def test_encoding_equals_the_reference_on_edge_and_random_keypoints(sigma: int) -> None:
    edge = _edge_keypoints(sigma)
    rng = np.random.default_rng(sigma)
    mid = np.full_like(edge, 100.0)
    points = [np.stack([edge, mid], 1), np.stack([mid[: len(edge)] * 0.5, edge * 256 / 192], 1),
              np.stack([edge, edge[::-1] * 256 / 192], 1),
              rng.uniform(-40, 240, size=(200, 2)), rng.integers(-30, 260, size=(200, 2)).astype(np.float64)]
    for joints in points:
        vis = (rng.random(len(joints)) > 0.1).astype(np.float32)
        ref_target, ref_weight = _ref_generate_target(joints, vis, IMAGE_SIZE, HEATMAP_SIZE, sigma)
        target, weight = encode_heatmaps(joints, vis, HEATMAP_SIZE, STRIDE, sigma=sigma)
        assert target.dtype == ref_target.dtype == np.float32
        np.testing.assert_array_equal(weight, ref_weight[:, 0])
        assert target.tobytes() == ref_target.tobytes()  # to the bit
    # The case the old codec got wrong: a window ending exactly at the map's left edge.
    # (int() truncates towards zero: x / 4 + 0.5 = -(r + 1) exactly gives mu = -(r + 1).)
    joints = np.array([[(-3 * sigma - 1.5) * STRIDE, 100.0]])
    target, weight = encode_heatmaps(joints, np.ones(1), HEATMAP_SIZE, STRIDE, sigma=sigma)
    assert weight[0] == 1 and not target.any()


def _heatmaps_with_peaks(rng: np.random.Generator) -> np.ndarray:
    """Random maps, plus maps whose single peak sits at every border position, ties and
    maps whose maximum is not positive."""
    w, h = HEATMAP_SIZE
    maps = [rng.normal(size=(3, 17, h, w)).astype(np.float32)]
    peaks = []
    for x in (0, 1, 2, w // 2, w - 2, w - 1):
        for y in (0, 1, 2, h // 2, h - 2, h - 1):
            m = rng.uniform(0, 0.5, size=(h, w)).astype(np.float32)
            m[y, x] = 1.0
            peaks.append(m)
    maps.append(np.stack(peaks).reshape(-1, 4, h, w))
    special = np.zeros((1, 4, h, w), dtype=np.float32)
    special[0, 1] = -1.0  # a constant negative map: reference puts it at (0, 0)
    special[0, 2] = rng.uniform(-2, -0.1, size=(h, w))  # negative maximum elsewhere
    special[0, 3, 10, [5, 20]] = 1.0  # a tie: the first maximum
    maps.append(special)
    return np.concatenate([m.reshape(-1, *m.shape[1:])[:, :4] for m in maps])


def test_decoding_equals_the_reference() -> None:
    rng = np.random.default_rng(0)
    heatmaps = _heatmaps_with_peaks(rng)
    ref_coords, ref_maxvals = _ref_decode(heatmaps)
    coords, scores = decode_heatmaps(torch.from_numpy(heatmaps), STRIDE)
    # Multiplying by the stride (4) is exact: compare in heat-map pixels, to the bit.
    assert (coords / STRIDE).numpy().tobytes() == ref_coords.tobytes()
    assert scores.numpy().tobytes() == ref_maxvals[..., 0].tobytes()
    # x = 1 and the last row are not shifted (the reference's strictly-inside test, on both axes).
    w, h = HEATMAP_SIZE
    m = np.zeros((1, 2, h, w), dtype=np.float32)
    m[0, 0, 10, 1], m[0, 0, 10, 2] = 1.0, 0.5
    m[0, 1, h - 1, 10], m[0, 1, h - 1, 11] = 1.0, 0.5
    coords, _ = decode_heatmaps(torch.from_numpy(m), 1)
    assert coords[0].tolist() == [[1.0, 10.0], [10.0, h - 1.0]]


def test_flip_test_equals_the_reference() -> None:
    rng = np.random.default_rng(1)
    pairs = [(1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)]
    flipped_output = rng.normal(size=(2, 17, 64, 48)).astype(np.float32)
    ours = flip_heatmaps(torch.from_numpy(flipped_output), pairs)
    assert ours.numpy().tobytes() == _ref_flip_back(flipped_output, pairs).tobytes()
