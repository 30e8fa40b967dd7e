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
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must be (n, height, width, 3) RGB, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0-255), got dtype {arr.dtype}")
    return np.ascontiguousarray(arr)  # torch refuses negative strides (flipped views, BGR -> RGB)


def preprocess_uint8(batch, *, image_size: int, mean, std, device=None):
    """Resize uint8 NHWC crops to ``image_size`` and normalise, on ``device``.

    Bicubic resizing with antialiasing matches PIL's bicubic resize (open_clip's eval transform);
    a square crop needs no centre crop. Returns a float32 ``(n, 3, image_size, image_size)`` tensor.

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
    h, w = x.shape[-2:]
    if h != w:
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top : top + side, left : left + side]
    if x.shape[-1] != image_size:
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False
        )
        x = x.clamp_(0.0, 1.0)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def augment_dihedral(x, generator):
    """Random flip and 90° rotation of a batch (H&E has no orientation), one draw per batch element."""
    import torch

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
