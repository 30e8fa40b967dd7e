"""Image preprocessing on the device from uint8 crops, equivalent to open_clip's PIL transform."""

from __future__ import annotations

import numpy as np


def as_uint8_nhwc(images) -> np.ndarray:
    """Return ``images`` as a uint8 ``(n, h, w, 3)`` numpy array (accepts numpy, torch, dask)."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    check_uint8_nhwc(arr.shape, arr.dtype)
    return np.ascontiguousarray(arr)  # torch refuses negative strides (flipped views, BGR -> RGB)


def check_uint8_nhwc(shape, dtype) -> None:
    """Raise unless ``shape`` / ``dtype`` are those of a uint8 ``(n, h, w, 3)`` batch."""
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"images must be (n, height, width, 3) RGB, got shape {tuple(shape)}")
    if dtype != np.uint8:
        hint = ""
        if np.issubdtype(dtype, np.floating):
            hint = (
                "; convert floats in [0, 1] with (images * 255).round().astype(np.uint8), floats in "
                "[0, 255] with images.round().astype(np.uint8)"
            )
        elif np.issubdtype(dtype, np.integer):
            hint = "; convert 0-255 integers with images.astype(np.uint8)"
        raise ValueError(f"images must be uint8 (0-255), got dtype {dtype}{hint}")


def preprocess_uint8(batch, *, image_size: int, mean, std, device=None):
    """Resize uint8 NHWC crops to ``image_size`` and normalise, on ``device``.

    Follows open_clip's eval transform: the shorter side is resized to ``image_size`` (bicubic with
    antialiasing, like PIL's bicubic resize), then the centre is cropped; a square crop is only resized.
    Returns a float32 ``(n, 3, image_size, image_size)`` tensor.

    Parameters
    ----------
    batch
        uint8 ``(n, h, w, 3)`` numpy array or torch tensor.
    image_size
        Side of the model input.
    mean, std
        Per-channel normalisation (the model's ``image_mean`` / ``image_std``).
    device
        Torch device to work on.

    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(batch, device=device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    size = _resized_size(*x.shape[-2:], image_size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0.0, 1.0)
    x = center_square(x, image_size)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Output size of torchvision's ``Resize(size)``: the shorter side becomes ``size``, the longer keeps the ratio."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def center_square(x, side: int | None = None):
    """Centre crop of NCHW ``x`` to ``side`` (default: the shorter side), with torchvision's offsets."""
    h, w = x.shape[-2:]
    side = min(h, w) if side is None else side
    top, left = round((h - side) / 2.0), round((w - side) / 2.0)
    return x[..., top : top + side, left : left + side]


def augment_dihedral(x, generator):
    """Random flip and 90° rotation of a batch (H&E has no orientation), one draw per batch element.

    Non-square NCHW crops are first centre-cropped to a square (the region open_clip's eval transform
    keeps), so every rotation has the same shape.
    """
    import torch

    x = center_square(x)
    n = x.shape[0]
    k = torch.randint(0, 4, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    out = torch.empty_like(x)
    for r in range(4):
        for f in (False, True):
            sel = ((k == r) & (flip == f)).nonzero().flatten().to(x.device)
            if sel.numel():
                xi = x[sel]
                if f:
                    xi = xi.flip(-1)
                out[sel] = torch.rot90(xi, r, dims=(-2, -1))
    return out
