"""Checks and fingerprints of the (patch, gene sentence) pairs a fine-tuning run trains on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from ._preprocess import as_uint8_nhwc, check_uint8_nhwc


def _training_images(images):
    """Validate training images; lazy (dask) arrays are checked by shape and dtype without computing.

    :func:`~loki.models.finetune` computes a lazy array once (:func:`materialised`) after all its checks.
    """
    if not hasattr(images, "dask"):
        return as_uint8_nhwc(images)
    if images.ndim == 3:
        images = images[None]
    check_uint8_nhwc(images.shape, images.dtype)
    return images


def materialised(images) -> np.ndarray:
    """A validated lazy (dask) image array computed once into memory; other arrays as they are.

    Random batches over a lazy array would compute their chunks again at every step.
    """
    if not hasattr(images, "dask"):
        return images
    return np.ascontiguousarray(images.compute())


def blank_sentences(sentences: Sequence[str]) -> np.ndarray:
    """Boolean mask of the sentences that name no gene (``""`` or only whitespace)."""
    return np.array([isinstance(s, str) and not s.strip() for s in sentences], dtype=bool)


def _check_sentences(sentences: list[str]) -> None:
    """Refuse empty sentences: they pair no text with their patch, and every one tokenises alike."""
    blank = np.flatnonzero(blank_sentences(sentences))
    if blank.size:
        shown = ", ".join(map(str, blank[:5])) + (", ..." if blank.size > 5 else "")
        raise ValueError(
            f"{blank.size} of {len(sentences)} sentences are empty (at positions {shown}): such a pair "
            "has no text to learn from. Leave those pairs out (lk.tl.finetune does so with the spots "
            "lk.pp.gene_sentences leaves empty)."
        )


def checked_pairs(images, sentences: Sequence[str], what: str = "") -> tuple:
    """``(images, sentences)`` validated as training pairs; ``what`` prefixes the errors."""
    if isinstance(sentences, str):
        raise TypeError(f"{what}sentences must be a list of gene sentences (one per image), not one string")
    images = _training_images(images)
    sentences = list(sentences)
    if len(images) != len(sentences):
        raise ValueError(f"{what}got {len(images)} images but {len(sentences)} sentences")
    if len(sentences) < 2:
        raise ValueError(f"{what}need at least 2 pairs for a contrastive loss")
    _check_sentences(sentences)
    return images, sentences


def images_sha256(images, block_bytes: int = 1 << 24) -> str:
    """sha256 of a uint8 ``(n, h, w, 3)`` image array: its shape, then its bytes in row order.

    The bytes are read in blocks of rows of about ``block_bytes`` straight from the array's memory (a
    block is copied only when the array is not C-contiguous), so the images are never copied whole.

    Parameters
    ----------
    images
        Numpy array (as :func:`~loki.models.finetune` holds its patches).
    block_bytes
        Bytes hashed per block.

    Returns
    -------
    The hex digest of ``"loki-images-v1:" + str(shape)`` followed by the pixel bytes.

    """
    images = np.asarray(images)
    h = hashlib.sha256(f"loki-images-v1:{tuple(images.shape)}".encode())
    row_bytes = max(1, images[:1].nbytes)
    rows = max(1, block_bytes // row_bytes)
    for start in range(0, len(images), rows):
        h.update(np.ascontiguousarray(images[start : start + rows]))  # a view when already contiguous
    return h.hexdigest()


def sentences_sha256(sentences: Sequence[str]) -> str:
    """sha256 of a list of sentences in their order: each one's UTF-8 bytes after their length (8 bytes)."""
    h = hashlib.sha256(b"loki-sentences-v1")
    for sentence in sentences:
        data = sentence.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()
