from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from loki.models._preprocess import augment_dihedral, preprocess_uint8


def _assert_matches_open_clip(crops: np.ndarray, size: int, max_diff: float) -> None:
    """``preprocess_uint8`` against open_clip's eval transform on PIL images of the same crops."""
    import open_clip
    from PIL import Image

    mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
    pil = open_clip.image_transform(size, is_train=False, mean=mean, std=std)
    ref = torch.stack([pil(Image.fromarray(p)) for p in crops])
    ours = preprocess_uint8(crops, image_size=size, mean=mean, std=std)
    assert ours.shape == ref.shape
    # PIL rounds to uint8 after resizing: differences of ~1/255 in pixel units, scaled by 1/std
    diff = (ours - ref).abs()
    assert float(diff.mean()) < 0.01, (crops.shape, size)
    assert float(diff.max()) < max_diff, (crops.shape, size)


def test_matches_open_clip_pil_preprocess_on_real_patches(mob1_pairs):
    for size in (32, 224):
        _assert_matches_open_clip(mob1_pairs[0][:16], size, max_diff=0.1)  # 48 px real H&E crops


def test_same_size_is_exact_normalisation():
    x = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    out = preprocess_uint8(x, image_size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    expected = (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(out, expected)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 5))
def test_dihedral_augmentation_permutes_pixels(seed, n):
    x = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, 6, 6), dtype=np.uint8))
    out = augment_dihedral(x, torch.Generator().manual_seed(seed))
    for a, b in zip(x, out, strict=True):
        views = [torch.rot90(v, r, dims=(-2, -1)) for v in (a, a.flip(-1)) for r in range(4)]
        assert any(torch.equal(b, v) for v in views)


def test_flipped_views_and_bad_batch_sizes():
    """Negative-stride views (a flip, BGR -> RGB) are accepted; batch sizes must be positive integers."""
    import pytest

    from loki.models._omiclip import _check_batch_size
    from loki.models._preprocess import as_uint8_nhwc

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (2, 20, 20, 3), dtype=np.uint8)
    rgb = as_uint8_nhwc(bgr[..., ::-1])
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    out = preprocess_uint8(rgb, image_size=20, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(out[:, 0].numpy(), bgr[..., 2] / 127.5 - 1, atol=1e-6)
    for bad in (0, 2.5, "4", True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            _check_batch_size(bad)


def test_non_square_patches_match_open_clip(mob1_pairs, tiny):
    """Shorter side resized, then centre-cropped (open_clip's order); arrays and PIL images agree."""
    from PIL import Image

    patches = mob1_pairs[0][:8]  # 48 px real H&E crops
    for crop in (patches[:, :40], patches[:, 3:, :47], patches[:, :, 5:], patches[:, :13]):
        crop = np.ascontiguousarray(crop)
        for size in (32, 224):
            # the other order (crop, then resize) is off by a sub-pixel shift: mean 0.02-0.06; PIL
            # rounds to uint8 between its two resize passes: max ~0.1 at 224 px, square crops included
            _assert_matches_open_clip(crop, size, max_diff=0.15)
        emb = tiny.encode_images(crop)
        emb_pil = tiny.encode_images([Image.fromarray(p) for p in crop])
        assert np.all(np.sum(emb * emb_pil, axis=1) > 0.999)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 4), st.integers(3, 9), st.integers(3, 9))
def test_dihedral_augmentation_of_non_square_crops(seed, n, h, w):
    """Non-square crops are cut to their centre square, then flipped and rotated."""
    x = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8))
    out = augment_dihedral(x, torch.Generator().manual_seed(seed))
    side = min(h, w)
    top, left = round((h - side) / 2), round((w - side) / 2)  # torchvision's CenterCrop offsets
    assert tuple(out.shape) == (n, 3, side, side)
    for a, b in zip(x[..., top : top + side, left : left + side], out, strict=True):
        views = [torch.rot90(v, r, dims=(-2, -1)) for v in (a, a.flip(-1)) for r in range(4)]
        assert any(torch.equal(b, v) for v in views)
