"""Contrastive fine-tuning (paper eq. 1) and the from-scratch recipe of loki-tiny."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from loki._logging import logger
from loki._utils import as_seed

from ._preprocess import as_uint8_nhwc, augment_dihedral, preprocess_uint8

FREEZE_GROUPS = {"image": ("visual.",), "text": ("text.",)}

#: From-scratch recipe for ``loki-tiny`` (the paper's lr 5e-6 / 10 epochs are for the pretrained model).
TINY_RECIPE = {"epochs": 40, "lr": 2e-3, "batch_size": 64, "weight_decay": 0.1, "warmup": 0.1}

#: Patch side (µm) loki-tiny was evaluated with on legacy ST (twice the 100 µm spot: more tissue context);
#: pass it as ``diameter_um=`` to :func:`loki.pp.spot_patches` / :func:`loki.tl.embed_image` / :func:`loki.tl.finetune`.
TINY_PATCH_UM = 200.0


def contrastive_loss(image_emb, text_emb, logit_scale):
    """Symmetric InfoNCE of paper eq. (1) on L2-normalised embeddings (pairs on the diagonal).

    ``logit_scale`` is the model's learnable log inverse temperature.
    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp() * image_emb @ text_emb.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _trainable(model, freeze) -> list:
    if freeze is None:
        frozen: tuple[str, ...] = ()
    elif isinstance(freeze, str):
        if freeze not in FREEZE_GROUPS:
            raise ValueError(
                f"freeze must be None, 'image', 'text' or a list of parameter prefixes, got {freeze!r}"
            )
        frozen = FREEZE_GROUPS[freeze]
    else:
        frozen = tuple(FREEZE_GROUPS.get(f, (f,))[0] for f in freeze)
    # The captioning decoder takes no part in the contrastive loss.
    frozen = (*frozen, "text_decoder.")
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(frozen))
        if p.requires_grad:
            params.append(p)
    if not params:
        raise ValueError(f"freeze={freeze!r} leaves nothing to train")
    return params


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def finetune(
    model,
    images,
    sentences: Sequence[str],
    *,
    epochs: int = 10,
    lr: float = 5e-6,
    batch_size: int = 64,
    seed: int | None = 0,
    freeze: str | Sequence[str] | None = None,
    augment: bool = True,
    weight_decay: float = 0.2,
    warmup: float = 0.1,
    progress: bool = True,
):
    """Fine-tune an OmiCLIP model on (patch, gene sentence) pairs with the loss of paper eq. (1).

    Parameters
    ----------
    model
        :class:`~loki.models.OmiCLIP`, trained in place.
    images
        uint8 ``(n, h, w, 3)`` patches (numpy, torch or dask), one per sentence.
    sentences
        ``n`` gene sentences.
    epochs, lr, batch_size
        Paper defaults for the pretrained model: 10 epochs (alignment; 5 for decomposition), lr 5e-6,
        batch 64. From scratch use :data:`TINY_RECIPE` / :func:`train_tiny`.
    seed
        Seeds shuffling and augmentation (a local generator; the global RNG is untouched).
    freeze
        ``None``, ``"image"`` (train the text tower only), ``"text"``, or a list of parameter-name
        prefixes (e.g. ``["visual.transformer.resblocks.0."]``).
    augment
        Random flips and 90° rotations of each patch (H&E has no orientation).
    weight_decay
        AdamW weight decay (not applied to biases, norms, embeddings and the logit scale).
    warmup
        Fraction of steps with linear learning-rate warm-up before the cosine decay.
    progress
        Show a progress bar.

    Returns
    -------
    ``(model, history)`` where ``history`` has ``step_loss``, ``epoch_loss``, ``lr``, ``logit_scale``
    (per epoch), ``seconds`` and the parameters used.

    """
    import torch

    images = as_uint8_nhwc(images) if not hasattr(images, "dask") else images
    sentences = list(sentences)
    n = len(sentences)
    if len(images) != n:
        raise ValueError(f"got {len(images)} images but {n} sentences")
    if n < 2:
        raise ValueError("need at least 2 pairs for a contrastive loss")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if int(value) < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0 <= warmup < 1:
        raise ValueError(f"warmup must be in [0, 1), got {warmup}")

    if model.precision == "bf16-weights":
        raise ValueError(
            "cannot train a model loaded with precision='bf16-weights'; load it with 'auto' or 'bf16'"
        )
    net = model.model
    device = model.device
    params = _trainable(net, freeze)
    decay = [p for p in params if p.ndim >= 2 and p is not getattr(net.text, "token_embedding", None)]
    decay_ids = {id(p) for p in decay}
    no_decay = [p for p in params if id(p) not in decay_ids]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    tokens = torch.from_numpy(model.tokenizer.ids(sentences))
    gen = torch.Generator().manual_seed(as_seed(seed))
    batch_size = min(int(batch_size), n)
    steps_per_epoch = (
        n // batch_size
    )  # drop the last partial batch: tiny batches make noisy contrastive steps
    total = steps_per_epoch * int(epochs)
    n_warm = int(warmup * total)
    history = {"step_loss": [], "epoch_loss": [], "lr": [], "logit_scale": []}
    max_scale = math.log(100.0)
    iterator = range(total)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="fine-tuning", unit="step")
    it = iter(iterator)
    t0 = time.perf_counter()
    net.train()
    try:
        step = 0
        for _ in range(int(epochs)):
            perm = torch.randperm(n, generator=gen)
            epoch_losses = []
            for b in range(steps_per_epoch):
                next(it, None)
                idx = perm[b * batch_size : (b + 1) * batch_size].sort().values.numpy()
                crops = torch.from_numpy(np.asarray(images[idx]))
                if augment:
                    crops = augment_dihedral(crops.permute(0, 3, 1, 2), gen).permute(0, 2, 3, 1)
                x = preprocess_uint8(
                    crops,
                    image_size=model.image_size,
                    mean=model.image_mean,
                    std=model.image_std,
                    device=device,
                )
                factor = _lr_factor(step, total, n_warm)
                for group in opt.param_groups:
                    group["lr"] = lr * factor
                with model._autocast():
                    img = net.encode_image(x, normalize=True)
                    txt = net.encode_text(tokens[idx].to(device), normalize=True)
                    loss = contrastive_loss(img.float(), txt.float(), net.logit_scale.float())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    net.logit_scale.clamp_(0, max_scale)
                history["step_loss"].append(float(loss.detach()))
                history["lr"].append(lr * factor)
                epoch_losses.append(float(loss.detach()))
                step += 1
            history["epoch_loss"].append(float(np.mean(epoch_losses)))
            history["logit_scale"].append(float(net.logit_scale.detach().exp()))
            logger.info("epoch %d: loss %.4f", len(history["epoch_loss"]), history["epoch_loss"][-1])
    finally:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(True)
        if progress:
            iterator.close()
    model._weights_changed()
    history.update(
        seconds=time.perf_counter() - t0,
        epochs=int(epochs),
        lr_max=float(lr),
        batch_size=int(batch_size),
        steps_per_epoch=int(steps_per_epoch),
        n_pairs=int(n),
        seed=seed if seed is None else int(as_seed(seed)),
        freeze=freeze if freeze is None or isinstance(freeze, str) else list(freeze),
        augment=bool(augment),
        weight_decay=float(weight_decay),
    )
    return model, history


def train_tiny(
    images,
    sentences: Sequence[str],
    *,
    arch: str = "loki-tiny",
    device: str = "auto",
    seed: int | None = 0,
    progress: bool = True,
    **recipe,
):
    """Train ``loki-tiny`` from scratch on (patch, gene sentence) pairs.

    Parameters
    ----------
    images, sentences
        Training pairs, as for :func:`finetune`.
    arch
        Architecture to initialise (default ``"loki-tiny"``).
    device
        Torch device.
    seed
        Seeds initialisation, shuffling and augmentation.
    progress
        Show a progress bar.
    **recipe
        Overrides of :data:`TINY_RECIPE` (``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``warmup``)
        or other :func:`finetune` parameters.

    Returns
    -------
    ``(model, history)`` as :func:`finetune`.

    """
    from ._loading import load

    params = {**TINY_RECIPE, **recipe}
    model = load(arch, device=device, seed=as_seed(seed) if seed is not None else None)
    return finetune(model, images, sentences, seed=seed, progress=progress, **params)
