"""Contrastive fine-tuning (paper eq. 1) and the from-scratch recipe of loki-tiny."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import as_seed, check_int, is_real

from ._omiclip import check_patch_um
from ._preprocess import as_uint8_nhwc, augment_dihedral, check_uint8_nhwc, preprocess_uint8
from ._tokenize import FINGERPRINT_FIELDS

FREEZE_GROUPS = {"image": ("visual.",), "text": ("text.",)}
#: The text tower of a plain open_clip ``CLIP`` model, whose parameters sit on the model itself.
CLIP_TEXT_PREFIXES = (
    "token_embedding.",
    "positional_embedding",
    "transformer.",
    "ln_final.",
    "text_projection",
)

#: From-scratch recipe for ``loki-tiny`` (the paper's lr 5e-6 / 10 epochs are for the pretrained model).
TINY_RECIPE = {"epochs": 40, "lr": 2e-3, "batch_size": 64, "weight_decay": 0.1, "warmup": 0.1}

#: Patch side (µm) loki-tiny was evaluated with on legacy ST (twice the 100 µm spot: more tissue context);
#: pass it as ``diameter_um=`` to :func:`loki.pp.spot_patches` / :func:`loki.tl.embed_image` / :func:`loki.tl.finetune`.
TINY_PATCH_UM = 200.0


def contrastive_loss(image_emb, text_emb, logit_scale):
    """Symmetric InfoNCE on L2-normalised embeddings (pairs on the diagonal): paper eq. (1) divided by 2.

    The mean of the image-to-text and text-to-image cross-entropies, open_clip's ``ClipLoss``
    convention; eq. (1) is their sum. AdamW's steps are the same for both (Adam is invariant to the
    scale of the loss, up to its ``eps``), but the values (``history["step_loss"]``,
    :func:`loki.pl.loss_curve`) are half those of eq. (1).

    Parameters
    ----------
    image_emb, text_emb
        ``(n, d)`` L2-normalised embeddings; row ``i`` of each is a pair.
    logit_scale
        The model's learnable log inverse temperature.

    Returns
    -------
    Scalar loss tensor.

    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp() * image_emb @ text_emb.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def _frozen_prefixes(freeze, net) -> tuple[str, ...]:
    if freeze is None:
        return ()
    groups = FREEZE_GROUPS if hasattr(net, "text") else {**FREEZE_GROUPS, "text": CLIP_TEXT_PREFIXES}
    if isinstance(freeze, str):
        if freeze not in groups:
            raise ValueError(
                f"freeze must be None, 'image', 'text' or a list of parameter prefixes, got {freeze!r}"
            )
        return groups[freeze]
    bad = [f for f in freeze if not isinstance(f, str)]
    if bad:
        raise ValueError(f"freeze prefixes must be strings, got {bad[0]!r}")
    return tuple(prefix for f in freeze for prefix in groups.get(f, (f,)))


def _trainable_names(net, freeze) -> set[str]:
    """Names of the parameters to train; the model is not touched."""
    prefixes = _frozen_prefixes(freeze, net)
    names = [name for name, _ in net.named_parameters()]
    unmatched = [p for p in prefixes if not any(name.startswith(p) for name in names)]
    if unmatched:
        tops = sorted({name.split(".")[0] + ("." if "." in name else "") for name in names})
        raise ValueError(
            f"freeze prefix {unmatched[0]!r} matches no parameter; groups: {list(FREEZE_GROUPS)}, "
            f"top-level prefixes: {tops}"
        )
    # The captioning decoder takes no part in the contrastive loss; parameters the caller froze stay so.
    frozen = (*prefixes, "text_decoder.")
    trainable = {
        name for name, p in net.named_parameters() if p.requires_grad and not name.startswith(frozen)
    }
    if not trainable:
        raise ValueError(
            f"freeze={freeze!r} leaves nothing to train (parameters the caller froze count as frozen)"
        )
    return trainable


def _param_groups(net, trainable: set[str], weight_decay: float) -> list[dict]:
    """AdamW groups as in open_clip's training.

    Decay on weight matrices and embeddings (ndim >= 2); none on biases, norms, class tokens and the
    logit scale (ndim < 2).
    """
    named = [(name, p) for name, p in net.named_parameters() if name in trainable]
    return [
        {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
    ]


def _set_trainable(net, trainable: set[str]) -> None:
    """Set ``requires_grad`` from ``trainable``; fully frozen modules go to eval mode.

    Eval mode keeps a frozen tower frozen: its BatchNorm statistics are not updated and its dropout is off.
    """
    for name, p in net.named_parameters():
        p.requires_grad_(name in trainable)
    net.train()
    for module in net.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def _training_images(images):
    """Validate training images; lazy (dask) arrays are checked by shape and dtype without computing.

    :func:`finetune` computes a lazy array once (:func:`_materialised`) after all its checks.
    """
    if not hasattr(images, "dask"):
        return as_uint8_nhwc(images)
    if images.ndim == 3:
        images = images[None]
    check_uint8_nhwc(images.shape, images.dtype)
    return images


def _materialised(images) -> np.ndarray:
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


def _checked_pairs(images, sentences: Sequence[str], what: str = "") -> tuple:
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


def _batch_loss(model, crops, tokens):
    """Contrastive loss (:func:`contrastive_loss`) of one batch of uint8 ``(n, h, w, 3)`` crops and their tokens."""
    net = model.model
    x = preprocess_uint8(
        crops, image_size=model.image_size, mean=model.image_mean, std=model.image_std, device=model.device
    )
    with model._autocast():
        img = net.encode_image(x, normalize=True)
        txt = net.encode_text(tokens.to(model.device), normalize=True)
        return contrastive_loss(img.float(), txt.float(), net.logit_scale.float())


def _held_out_loss(model, images: np.ndarray, tokens, batch_size: int) -> float:
    """Mean contrastive loss of held-out pairs, without augmentation or gradients.

    The pairs are taken in consecutive batches of ``batch_size``, in their order (a partial last batch
    is left out, as in training: the loss of a smaller batch is lower by construction). The modules'
    train / eval modes are put back afterwards.
    """
    import torch

    net = model.model
    modes = [(module, module.training) for module in net.modules()]
    net.eval()
    losses = []
    try:
        with torch.no_grad():
            for start in range(0, len(images) - batch_size + 1, batch_size):
                crops = torch.from_numpy(np.asarray(images[start : start + batch_size]))
                losses.append(float(_batch_loss(model, crops, tokens[start : start + batch_size])))
    finally:
        for module, training in modes:
            module.train(training)
    return float(np.mean(losses))


def images_sha256(images, block_bytes: int = 1 << 24) -> str:
    """sha256 of a uint8 ``(n, h, w, 3)`` image array: its shape, then its bytes in row order.

    The bytes are read in blocks of rows of about ``block_bytes`` straight from the array's memory (a
    block is copied only when the array is not C-contiguous), so the images are never copied whole.

    Parameters
    ----------
    images
        Numpy array (as :func:`finetune` holds its patches).
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


#: Entries of ``history`` kept in a training run's record (:attr:`~loki.models.OmiCLIP.training_runs`):
#: the parameters, the data's fingerprints and the per-epoch losses, not the per-step ones.
RUN_KEYS = (
    "epochs",
    "steps_per_epoch",
    "lr_max",
    "batch_size",
    "weight_decay",
    "warmup",
    "seed",
    "freeze",
    "augment",
    "precision",
    "patch_um",
    "n_pairs",
    "images_sha256",
    "sentences_sha256",
    "n_validation_pairs",
    "validation_images_sha256",
    "validation_sentences_sha256",
    "keep_best",
    "epoch_loss",
    "val_loss_before",
    "val_loss",
    "best_epoch",
    "seconds",
    "tokenizer",
    "checkpoint",
    "resumed_from",
)


def _run_record(history: dict, *, steps: int, start: dict, completed: bool) -> dict:
    """The JSON-able record of a training run that changed the weights, from its ``history``."""
    record = {
        "completed": completed,
        "steps": int(steps),
        **start,
        **{key: history.get(key) for key in RUN_KEYS},  # the same keys in every record (None: not measured)
    }
    epoch_loss = record.get("epoch_loss") or []
    record["final_epoch_loss"] = epoch_loss[-1] if epoch_loss else None
    best = record.get("best_epoch")
    record["best_epoch_loss"] = epoch_loss[best - 1] if best else None
    record["best_val_loss"] = history["val_loss"][best - 1] if best else None
    record["finished_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record["versions"] = _versions()
    return _finite_or_none(record)


def _versions() -> dict:
    """The versions of loki and torch, for a run's record and checkpoint."""
    import torch

    import loki

    return {"loki": loki.__version__, "torch": torch.__version__.split("+")[0]}


def _finite_or_none(value):
    """``value`` with NaN and infinite floats as None, in nested lists and dicts: strict JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _cpu_copy(net) -> dict:
    """A copy of the module's state dict on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


#: What a fine-tuning checkpoint file (``checkpoint=`` of :func:`finetune`) says it is.
CHECKPOINT_FORMAT = "loki-finetune-checkpoint"
CHECKPOINT_VERSION = 1

#: Entries a checkpoint shares with the call that resumes it: everything that decides the steps.
RUN_IDENTITY = (
    "arch",
    "config",
    "trainable",
    "tokenizer",
    "n_pairs",
    "images_sha256",
    "sentences_sha256",
    "n_validation_pairs",
    "validation_images_sha256",
    "validation_sentences_sha256",
    "epochs",
    "lr_max",
    "batch_size",
    "steps_per_epoch",
    "weight_decay",
    "warmup",
    "seed",
    "freeze",
    "augment",
    "keep_best",
    "precision",
    "patch_um",
)

_IDENTITY_NAMES = {
    "images_sha256": "the training images (sha256)",
    "sentences_sha256": "the training sentences (sha256)",
    "validation_images_sha256": "the held-out images (sha256)",
    "validation_sentences_sha256": "the held-out sentences (sha256)",
    "lr_max": "lr",
    "patch_um": "patch_um (argument)",
}


def _checkpoint_path(checkpoint, resume: bool, checkpoint_every) -> Path | None:
    """The checked ``checkpoint=`` path of :func:`finetune`, or None; nothing is written here.

    A new run refuses an existing file (it would overwrite another run's checkpoint); a resumed run
    needs the file. The first existing folder on the way to a new file must be writable.
    """
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if checkpoint is None:
        if resume:
            raise ValueError("resume=True needs checkpoint= (the file the interrupted run saved)")
        if checkpoint_every is not None:
            raise ValueError("checkpoint_every= needs checkpoint= (the file to save the run's state to)")
        return None
    check_int(checkpoint_every, "checkpoint_every", optional=True, why="steps between checkpoints")
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        raise IsADirectoryError(
            f"checkpoint={str(path)!r} is a directory; pass a file path, e.g. {str(path / 'finetune.ckpt')!r}"
        )
    if resume:
        if not path.is_file():
            there = sorted(p.name for p in path.parent.iterdir()) if path.parent.is_dir() else None
            where = (
                f"{str(path.parent)!r} does not exist"
                if there is None
                else f"{str(path.parent)!r} holds {_few_names(there, empty='no files')}"
            )
            raise FileNotFoundError(
                f"checkpoint {str(path)!r} does not exist ({where}); resume=True continues the run that "
                "saved it. To start a new run that saves it, pass resume=False."
            )
        return path
    if path.exists():
        raise FileExistsError(
            f"checkpoint {str(path)!r} exists (saved by an earlier run?): pass resume=True to continue "
            "that run, or another path (or delete the file) to start a new one; nothing was written."
        )
    folder = next(p for p in path.parents if p.exists())
    if not folder.is_dir():
        raise NotADirectoryError(f"checkpoint {str(path)!r}: {str(folder)!r} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"checkpoint {str(path)!r}: the folder {str(folder)!r} is not writable")
    return path


def _few_names(names: list[str], n: int = 8, empty: str = "none") -> str:
    if not names:
        return empty
    return ", ".join(map(repr, names[:n])) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _write_atomically(path: Path, payload: dict) -> None:
    """``torch.save`` to ``<path>.partial``, synced, then renamed over ``path``.

    The rename is atomic: a reader (or a crash at any moment) sees the previous checkpoint or the new
    one, never a part of one. A save that fails removes its partial file; one cut short by a crash
    leaves it behind, and the next save overwrites it.
    """
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (not possible on every platform)
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def read_training_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint :func:`finetune` saved (``checkpoint=``), without running code stored in it.

    Parameters
    ----------
    path
        The checkpoint file.

    Returns
    -------
    A dict: ``run`` (JSON-able: ``run_id``, ``identity`` (the entries of :data:`RUN_IDENTITY`),
    ``start`` (the weights the run started from), ``step``, ``epoch`` (epochs done), ``batch`` (batches
    of the next epoch done), ``total_steps``, ``history``, ``prior_runs``, ``resumed_from``,
    ``saved_utc``, ``versions``, ...), ``model`` (the state dict), ``optimizer`` (AdamW's state dict),
    ``generator`` (the state of the run's torch generator), ``perm`` (the order of the epoch in
    progress, or None at an epoch's end) and ``best_weights`` (the kept weights of ``keep_best``, or
    None). Tensors are on the CPU.

    Raises
    ------
    ValueError
        When the file is not readable with ``torch.load(weights_only=True)``, or is not such a
        checkpoint (a model file, another program's checkpoint, another version of the format).

    """
    import torch

    path = Path(path).expanduser()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{str(path)!r} is not a readable fine-tuning checkpoint (a file cut short, or another "
            f"format?): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err
    if not (isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT):
        found = sorted(map(str, obj))[:6] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{str(path)!r} is not a checkpoint saved by lk.models.finetune(checkpoint=...) (it holds "
            f"{found}); a saved model is loaded with lk.models.load"
        )
    if obj.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{str(path)!r} is a fine-tuning checkpoint of format version {obj.get('version')!r}; this "
            f"loki reads version {CHECKPOINT_VERSION} (install the loki that saved it to resume the run)"
        )
    return {**obj, "run": json.loads(obj["run"])}


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64:
        return f"{value[:12]}..."
    return repr(value)


def _identity_changes(saved: dict, now: dict) -> list[str]:
    """The entries of :data:`RUN_IDENTITY` in which a checkpoint's run and this call differ."""
    from ._loading import _few, config_changes
    from ._tokenize import fingerprint_changes

    changes = []
    for key in RUN_IDENTITY:
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            changes.append(f"the model's config ({_few(config_changes(old, new), 4)})")
        elif key == "tokenizer" and isinstance(old, dict) and isinstance(new, dict):
            changes.append(f"the tokenizer ({'; '.join(fingerprint_changes(old, new))})")
        elif key == "trainable" and isinstance(old, list) and isinstance(new, list):
            only_old, only_new = sorted(set(old) - set(new)), sorted(set(new) - set(old))
            changes.append(
                f"the trained parameters ({len(old)} in the checkpoint, {len(new)} now; trained there "
                f"only: {_few_names(only_old, 3)}; now only: {_few_names(only_new, 3)}; see freeze= and "
                "requires_grad)"
            )
        else:
            changes.append(
                f"{_IDENTITY_NAMES.get(key, key)}: {_short(old)} in the checkpoint, {_short(new)} now"
            )
    return changes


def _check_same_run(saved: dict, identity: dict, model, path: Path) -> None:
    """Raise a ValueError naming what differs when ``saved`` is not a checkpoint of the run this call makes.

    The model must hold the weights the run started from, or be the model the run left when it
    stopped (its last record is the run's); its arch, config and trained parameters, the pairs, the
    tokenizer and the training arguments must be the run's.
    """
    run = saved["run"]
    changes = _identity_changes(run["identity"], identity)
    start = run["start"]
    last = model.training_runs[-1] if model.training_runs else {}
    own = last.get("run_id") == run["run_id"]
    if not own and model.checkpoint_hash != start["start_checkpoint_hash"]:
        changes.insert(
            0,
            f"the model: the run started from the weights {_short(start['start_checkpoint_hash'])} "
            f"({start['start_model']!r}); the model given holds {_short(model.checkpoint_hash)} and is not "
            "the one the run left when it stopped (its last training_runs record is not the run's)",
        )
    if changes:
        raise ValueError(
            f"cannot resume from {str(path)!r}: it is a checkpoint of another run (run_id "
            f"{run['run_id']}, step {run['step']} of {run['total_steps']}), which differs from this call "
            f"in {len(changes)} way(s): " + "; ".join(changes) + ". Resume with the model, pairs and "
            "arguments of the run that saved it, or start a new run with another checkpoint= path. "
            "Nothing was changed."
        )


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
    seed: int | np.random.Generator | None = 0,
    freeze: str | Sequence[str] | None = None,
    augment: bool = True,
    weight_decay: float = 0.2,
    warmup: float = 0.1,
    patch_um: float | None = None,
    validation: tuple | None = None,
    keep_best: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
):
    """Fine-tune an OmiCLIP model on (patch, gene sentence) pairs with the loss of paper eq. (1) / 2.

    Parameters
    ----------
    model
        :class:`~loki.models.OmiCLIP`, trained in place.
    images
        uint8 ``(n, h, w, 3)`` patches (numpy, torch or dask), one per sentence. A dask array is checked
        lazily, then computed into memory once, after all arguments are checked and before the first
        step (random batches over it would recompute its chunks at every step): it must fit in memory.
    sentences
        ``n`` gene sentences (a sequence of strings; one string raises a ``TypeError``); an empty one
        (``""`` or only whitespace) raises, as it pairs no text with its patch (:func:`loki.tl.finetune`
        leaves such spots out).
    epochs, lr, batch_size
        Paper defaults for the pretrained model: 10 epochs (alignment; 5 for decomposition), lr 5e-6,
        batch 64; ``epochs`` and ``batch_size`` are integers (a float or bool raises). From scratch
        use :data:`TINY_RECIPE` / :func:`train_tiny`. A batch needs at least 2 pairs (the
        contrastive loss of one pair is 0). Each epoch reshuffles the pairs and runs
        ``n // batch_size`` steps of ``batch_size`` pairs (``batch_size`` is lowered to ``n`` when it
        is larger): the last partial batch is dropped, as open_clip does, so ``n % batch_size`` pairs
        (other ones each epoch) sit out every epoch; with few pairs that is a large share (100 pairs,
        batch 64: 1 step per epoch, 36 pairs unused).
    seed
        Seeds shuffling and augmentation (a local generator; the global RNG is untouched). An int, a
        Generator from which one int is drawn, or ``None`` for an int drawn from fresh OS entropy;
        ``history["seed"]`` records the int used, so any run can be repeated.
    freeze
        ``None``, ``"image"`` (train the text tower only), ``"text"``, or a list of parameter-name
        prefixes and group names (e.g. ``["visual.transformer.resblocks.0."]``); a prefix that matches no
        parameter raises. Parameters the caller froze (``requires_grad=False``) stay frozen too. Frozen
        towers stay in eval mode (BatchNorm statistics are kept). The parameters' ``requires_grad`` flags
        are restored afterwards, also when training fails.
    augment
        Random flips and 90° rotations of each patch (H&E has no orientation). Non-square patches are
        first centre-cropped to a square (the region open_clip's eval transform keeps).
    weight_decay
        AdamW weight decay (a finite number >= 0), as open_clip trains: on weight matrices and
        embeddings, not on biases, norms, class tokens and the logit scale.
    warmup
        Fraction of steps with linear learning-rate warm-up before the cosine decay.
    patch_um
        Side in µm of the tissue squares ``images`` show. It becomes ``model.patch_um`` (saved with
        the model, and the patch size :func:`loki.tl.embed_image` cuts by default); ``None`` keeps
        what the model had.
    validation
        Held-out ``(images, sentences)`` pairs (e.g. of another section), checked as the training
        pairs are. Their loss is measured before training and after each epoch, without augmentation,
        in consecutive batches of ``batch_size`` in their order (lowered to their number; a partial
        last batch is left out): ``history["val_loss_before"]`` and ``history["val_loss"]``. The
        training loss alone cannot show a small model overfitting a few hundred pairs.
    keep_best
        With ``validation``: end with the weights of the epoch of lowest held-out loss
        (``history["best_epoch"]``, counted from 1) instead of the last epoch's. The starting weights
        count as epoch 0, with the loss ``history["val_loss_before"]``: an epoch is kept only when its
        held-out loss is strictly lower. When none is, ``best_epoch`` is 0 and the model is returned
        as it was given (its starting weights, ``trained``, ``patch_um``, hashes and
        :attr:`~loki.models.OmiCLIP.training_runs` untouched), with a :class:`~loki.LokiWarning`.
        Keeps one copy of the weights in CPU memory (the starting weights, then the best epoch's).
    checkpoint
        File to save the run's state to, so that a run that stops (killed, preempted, interrupted)
        can be continued with ``resume=True``: the weights, AdamW's state, the position in the
        learning-rate schedule and in the epoch (its order of pairs), the state of the run's random
        generator, the history so far and, with ``keep_best``, the kept weights; loaded with
        ``torch.load(weights_only=True)`` (see :func:`read_training_checkpoint`). It is saved at the
        end of every epoch and every ``checkpoint_every`` steps, each time written to
        ``<checkpoint>.partial`` and renamed over the previous one (a crash while saving leaves the
        previous checkpoint whole), and kept after the run. A new run (``resume=False``) refuses an
        existing file. A failed save stops the run (recorded as not completed). It holds the
        float32 weights and AdamW's two moments of the trained ones (and the kept weights with
        ``keep_best``): for loki-tiny (6.7 M parameters) about 54 MB (81 MB), written in about
        0.12 s (0.17 s) on a CPU; for ``coca_ViT-L-14`` (638 M), up to 7.7 GB (10 GB).
    checkpoint_every
        Also save the checkpoint every this many steps within an epoch (``None``: at epochs' ends only).
    resume
        Continue the run that saved ``checkpoint`` from its last save, instead of starting one. Pass
        the pairs and arguments of that run (``checkpoint_every`` and ``progress`` aside; a ``seed``
        of None draws a new seed and so does not match: pass the recorded one), and either the model
        the run started from (e.g. loaded again) or the model it left when it stopped. Whatever differs
        (another model, config, tokenizer, trained parameters, pairs or argument) raises a
        ``ValueError`` naming it, before anything changes. On the CPU, a resumed run ends with the
        same weights, bit for bit, as the run would have without stopping; its history and record
        are those of the whole run.
    progress
        Show a progress bar.

    Returns
    -------
    ``(model, history)`` where ``history`` has ``step_loss``, ``epoch_loss`` (the loss of
    :func:`contrastive_loss`: eq. (1) divided by 2), ``lr``, ``logit_scale`` (per epoch), ``seconds``
    and the parameters used (``epochs``, ``lr_max``, ``batch_size`` (after lowering to ``n``),
    ``steps_per_epoch``, ``n_pairs``, ``seed``, ``freeze``, ``augment``, ``weight_decay``, ``warmup``,
    ``n_validation_pairs``, ``keep_best``, the model's ``precision``; ``patch_um``: the model's patch
    side after training), the sha256 fingerprints of the pairs (``images_sha256``: of the images'
    shape and bytes, read in blocks, never copied whole; ``sentences_sha256``: of each sentence's
    length and UTF-8 bytes, in order), ``tokenizer`` (the fingerprint of the tokenizer, see
    :func:`~loki.models.tokenizer_fingerprint`), ``checkpoint`` (the path, or None) and
    ``resumed_from`` (one entry per resumption: ``checkpoint``, ``step`` (steps already taken),
    ``epoch`` (the epoch, from 1, the run continued in), ``batch`` (that epoch's batches already
    taken) and ``saved_utc``; empty for a run never resumed); with ``validation``, also
    ``val_loss_before``, ``val_loss`` (per epoch), ``validation_images_sha256``,
    ``validation_sentences_sha256`` and, with ``keep_best``, ``best_epoch``.

    A run that changes the weights appends its record to the model's
    :attr:`~loki.models.OmiCLIP.training_runs` (saved with it by :meth:`~loki.models.OmiCLIP.save`):
    the entries of ``history`` in ``RUN_KEYS`` (parameters, fingerprints of the pairs and tokenizer,
    per-epoch and held-out losses, ``checkpoint`` and ``resumed_from``; not the per-step losses nor
    learning rates; an entry the run did not measure, such as ``val_loss`` without ``validation``,
    is None, and so is a NaN or infinite loss: strict JSON has none), ``run_id`` (also in its
    checkpoint), ``steps`` (steps taken, over all its sessions),
    ``completed`` (False for a run stopped by an error, whose steps already changed the weights),
    ``final_epoch_loss``, ``best_epoch_loss`` and ``best_val_loss`` (of the kept epoch with
    ``keep_best``, else None), ``start_checkpoint_hash`` and ``start_model`` (the weights trained
    from: :attr:`~loki.models.OmiCLIP.checkpoint_hash` and name), ``finished_utc`` and the
    ``versions`` of loki and torch. A resumed run's records are those of the runs before it (as
    its checkpoint holds them) and its own: the record of the model it left when it stopped is
    replaced. The run also sets the model's
    :attr:`~loki.models.OmiCLIP.trained_tokenizer`.

    Raises
    ------
    FloatingPointError
        When the loss of a step is not finite (training diverged, e.g. ``lr`` too high). That step is
        not taken; the steps before it already changed the model in place (reload it to start again).
    FileExistsError
        When ``checkpoint`` exists and ``resume`` is False.
    FileNotFoundError
        When ``resume`` is True and ``checkpoint`` does not exist.
    ValueError
        For bad arguments; with ``resume``, for a checkpoint of another run or a file that is no
        such checkpoint. Raised before the model changes or anything is written.

    """
    import torch

    model._appended_run = None  # the record this call appends (loki.tl.finetune completes it)
    images, sentences = _checked_pairs(images, sentences)
    n = len(sentences)
    if validation is not None:
        if not (isinstance(validation, tuple | list) and len(validation) == 2):
            raise TypeError("validation must be a pair (images, sentences) of held-out pairs")
        val_images, val_sentences = _checked_pairs(*validation, what="validation: ")
    elif keep_best:
        raise ValueError("keep_best=True needs validation= pairs to tell the best epoch")
    check_int(epochs, "epochs")
    check_int(
        batch_size, "batch_size", minimum=2, why="a contrastive loss needs two pairs; one pair has loss 0"
    )
    if not (is_real(lr) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (is_real(weight_decay) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if not (is_real(warmup) and 0 <= warmup < 1):
        raise ValueError(f"warmup must be in [0, 1), got {warmup!r}")
    patch_um = check_patch_um(patch_um)
    ckpt_path = _checkpoint_path(checkpoint, resume, checkpoint_every)
    seed_int = as_seed(seed)  # None: fresh OS entropy, recorded so the run can be repeated

    if model.precision == "bf16-weights":
        raise ValueError(
            "cannot train a model loaded with precision='bf16-weights'; load it with 'auto' or 'bf16'"
        )
    net = model.model
    tokens = torch.from_numpy(model.tokenizer.ids(sentences))
    trainable = _trainable_names(net, freeze)
    saved = read_training_checkpoint(ckpt_path) if resume else None  # a foreign file fails early
    images = _materialised(images)  # every check passed: compute lazy patches once
    tokenizer = {k: v for k, v in model.tokenizer.fingerprint().items() if k in FINGERPRINT_FIELDS}
    fingerprints = {"images_sha256": images_sha256(images), "sentences_sha256": sentences_sha256(sentences)}
    if validation is not None:
        val_images = _materialised(val_images)
        val_tokens = torch.from_numpy(model.tokenizer.ids(val_sentences))
        val_batch = min(int(batch_size), len(val_sentences))
        fingerprints["validation_images_sha256"] = images_sha256(val_images)
        fingerprints["validation_sentences_sha256"] = sentences_sha256(val_sentences)
    batch_size = min(int(batch_size), n)
    # drop the last partial batch: tiny batches make noisy contrastive steps
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * int(epochs)
    n_warm = int(warmup * total)
    identity = json.loads(
        json.dumps(
            {
                "arch": model.arch,
                "config": model.config,
                "trainable": sorted(trainable),
                "tokenizer": tokenizer,
                "n_pairs": n,
                "n_validation_pairs": 0 if validation is None else len(val_sentences),
                **{k: None for k in ("validation_images_sha256", "validation_sentences_sha256")},
                **fingerprints,
                "epochs": int(epochs),
                "lr_max": float(lr),
                "batch_size": batch_size,
                "steps_per_epoch": steps_per_epoch,
                "weight_decay": float(weight_decay),
                "warmup": float(warmup),
                "seed": seed_int,
                "freeze": freeze if freeze is None or isinstance(freeze, str) else list(freeze),
                "augment": bool(augment),
                "keep_best": bool(keep_best),
                "precision": model.precision,
                "patch_um": patch_um,
            }
        )
    )
    if saved is not None:
        _check_same_run(saved, identity, model, ckpt_path)  # raises before anything changes
        run = saved["run"]
        run_id, start, prior_runs = run["run_id"], run["start"], run["prior_runs"]
        resumed_from = [
            *run["resumed_from"],
            {
                "checkpoint": str(ckpt_path),
                "step": run["step"],
                "epoch": run["epoch"] + 1,
                "batch": run["batch"],
                "saved_utc": run["saved_utc"],
            },
        ]
    else:
        run_id = uuid.uuid4().hex  # os.urandom: no global RNG
        start = {
            "start_model": model.name,
            "start_checkpoint_hash": model.checkpoint_hash,
            # what the model was before the run: keep_best going back to epoch 0 restores it
            "start_trained": bool(model.trained),
            "start_patch_um": model.patch_um,
            "start_trained_tokenizer": model.trained_tokenizer,
        }
        prior_runs = [dict(r) for r in model.training_runs]
        resumed_from = []
    opt = torch.optim.AdamW(_param_groups(net, trainable, weight_decay), lr=lr)
    gen = torch.Generator().manual_seed(seed_int)
    history = {"step_loss": [], "epoch_loss": [], "lr": [], "logit_scale": []}
    if validation is not None:
        history["val_loss"] = []
    best = None  # (held-out loss, epoch, weights on the CPU) with keep_best; the start is epoch 0
    max_scale = math.log(100.0)
    t0 = time.perf_counter()
    seconds_before = 0.0  # spent by the sessions before a resumption
    caller_flags = [(p, p.requires_grad) for p in net.parameters()]
    step = 0
    first_epoch, first_batch, resumed_perm, epoch_losses = 0, 0, None, []
    unchanged = False  # keep_best went back to the starting weights
    completed = False
    bar = None

    def save_checkpoint(epochs_done: int, batch: int, perm) -> None:
        """Write the run's state after ``epochs_done`` epochs and ``batch`` batches of the next one."""
        run = {
            "run_id": run_id,
            "identity": identity,
            "start": start,
            "prior_runs": prior_runs,
            "resumed_from": resumed_from,
            "step": step,
            "epoch": epochs_done,
            "batch": batch,
            "total_steps": total,
            "history": history,
            "epoch_losses": epoch_losses if batch else [],
            "best": None if best is None else [best[0], best[1]],
            "seconds": seconds_before + time.perf_counter() - t0,
            "checkpoint": str(ckpt_path),
            "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": _versions(),
        }
        payload = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "run": json.dumps(run),  # NaN losses are kept (the history holds them as measured)
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "perm": perm if batch else None,
            "best_weights": None if best is None else best[2],
        }
        _write_atomically(ckpt_path, payload)
        logger.info("saved the training state at step %d of %d to %s", step, total, ckpt_path)

    try:
        if saved is not None:
            # the weights change from here on: the finally below records the run from its saved step
            run = saved["run"]
            net.load_state_dict(saved["model"])
            step = int(run["step"])
            model._weights_changed()
            model.training_runs = [dict(r) for r in prior_runs]
            opt.load_state_dict(saved["optimizer"])
            gen.set_state(saved["generator"])
            history = run["history"]
            seconds_before = float(run["seconds"])
            first_epoch, first_batch = int(run["epoch"]), int(run["batch"])
            if first_batch:
                resumed_perm, epoch_losses = saved["perm"], list(run["epoch_losses"])
            if run["best"] is not None:
                best = (float(run["best"][0]), int(run["best"][1]), saved["best_weights"])
            logger.info(
                "resuming run %s from step %d of %d (epoch %d, after %d of its batches), saved %s",
                run_id,
                step,
                total,
                first_epoch + 1,
                first_batch,
                run["saved_utc"],
            )
        elif validation is not None:
            history["val_loss_before"] = _held_out_loss(model, val_images, val_tokens, val_batch)
            if keep_best:
                before = history["val_loss_before"]  # not finite: any finite epoch beats the start
                best = (before if math.isfinite(before) else math.inf, 0, _cpu_copy(net))
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=step, desc="fine-tuning", unit="step")
        _set_trainable(net, trainable)
        for epoch_index in range(first_epoch, int(epochs)):
            if resumed_perm is not None:  # the epoch the run stopped in: its order, and the batches left
                perm, resumed_perm = resumed_perm, None
            else:
                perm = torch.randperm(n, generator=gen)
                epoch_losses = []
            for b in range(first_batch, steps_per_epoch):
                idx = perm[b * batch_size : (b + 1) * batch_size].sort().values.numpy()
                crops = torch.from_numpy(np.asarray(images[idx]))
                if augment:
                    crops = augment_dihedral(crops.permute(0, 3, 1, 2), gen).permute(0, 2, 3, 1)
                factor = _lr_factor(step, total, n_warm)
                for group in opt.param_groups:
                    group["lr"] = lr * factor
                loss = _batch_loss(model, crops, tokens[idx])
                loss_value = float(loss.detach())  # the history needs it: no extra device sync
                if not math.isfinite(loss_value):  # a step on it would make every trained weight NaN
                    raise FloatingPointError(
                        f"the loss is {loss_value} at step {step + 1} of {total} (epoch "
                        f"{step // steps_per_epoch + 1}, lr {lr * factor:.3g}): training diverged. The model "
                        f"holds the weights after step {step}, trained in place and possibly not finite; "
                        "reload it and train with a lower lr="
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    net.logit_scale.clamp_(0, max_scale)
                history["step_loss"].append(loss_value)
                history["lr"].append(lr * factor)
                epoch_losses.append(loss_value)
                step += 1
                if bar is not None:  # counted once the step is done, so the bar ends at total
                    bar.update(1)
                if checkpoint_every and step % checkpoint_every == 0 and b + 1 < steps_per_epoch:
                    save_checkpoint(epoch_index, b + 1, perm)  # an epoch's end is saved below
            first_batch = 0
            history["epoch_loss"].append(float(np.mean(epoch_losses)))
            history["logit_scale"].append(float(net.logit_scale.detach().exp()))
            epoch = len(history["epoch_loss"])
            if validation is None:
                logger.info("epoch %d: loss %.4f", epoch, history["epoch_loss"][-1])
            else:
                history["val_loss"].append(_held_out_loss(model, val_images, val_tokens, val_batch))
                logger.info(
                    "epoch %d: loss %.4f, held-out %.4f",
                    epoch,
                    history["epoch_loss"][-1],
                    history["val_loss"][-1],
                )
                if keep_best and history["val_loss"][-1] < best[0]:
                    best = (history["val_loss"][-1], epoch, None)
                    best = (*best[:2], _cpu_copy(net))  # the previous copy is freed first
            if ckpt_path is not None:
                save_checkpoint(epoch, 0, None)
        if best is not None:
            net.load_state_dict(best[2])
            history["best_epoch"] = best[1]
            unchanged = best[1] == 0
            if unchanged:
                warnings.warn(
                    f"keep_best=True: no epoch lowered the held-out loss below its value before training "
                    f"({best[0]:.4f}; epochs: {', '.join(f'{v:.4f}' for v in history['val_loss'])}), so "
                    "the model keeps its starting weights (best_epoch 0). Try another lr=, more pairs "
                    "or more epochs=.",
                    LokiWarning,
                    stacklevel=user_stacklevel(),
                )
            else:
                logger.info("kept the weights of epoch %d (held-out loss %.4f)", best[1], best[0])
        completed = True
    finally:
        net.eval()
        for p, flag in caller_flags:
            p.requires_grad_(flag)
        if bar is not None:
            bar.close()
        # weights changed, also when training stopped part-way: the hash must not claim the file's, and
        # the record says how they were made; keep_best back at the start (epoch 0) changed nothing
        if step and not unchanged:
            model._weights_changed()
            model.trained_tokenizer = model.tokenizer.fingerprint()
            if patch_um is not None:
                model.patch_um = patch_um
        elif unchanged and saved is not None:  # the start's weights, after those of the checkpoint
            model._checkpoint_hash = start["start_checkpoint_hash"]
            model.trained = start["start_trained"]
            model.patch_um = start["start_patch_um"]
            model.trained_tokenizer = start["start_trained_tokenizer"]
        history.update(
            seconds=seconds_before + time.perf_counter() - t0,
            epochs=int(epochs),
            lr_max=float(lr),
            batch_size=int(batch_size),
            steps_per_epoch=int(steps_per_epoch),
            n_pairs=int(n),
            seed=seed_int,
            freeze=freeze if freeze is None or isinstance(freeze, str) else list(freeze),
            augment=bool(augment),
            weight_decay=float(weight_decay),
            warmup=float(warmup),
            n_validation_pairs=0 if validation is None else len(val_sentences),
            keep_best=bool(keep_best),
            precision=model.precision,
            patch_um=model.patch_um,
            tokenizer=model.tokenizer.fingerprint(),
            checkpoint=None if ckpt_path is None else str(ckpt_path),
            resumed_from=resumed_from,
            **fingerprints,
        )
        if step and not unchanged:
            started = {k: start[k] for k in ("start_model", "start_checkpoint_hash")}
            record = _run_record(history, steps=step, start=started, completed=completed)
            model._appended_run = {"run_id": run_id, **record}
            model.training_runs.append(model._appended_run)
    return model, history


def train_tiny(
    images,
    sentences: Sequence[str],
    *,
    arch: str = "loki-tiny",
    device: str = "auto",
    seed: int | np.random.Generator | None = 0,
    patch_um: float | None = None,
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
        Seeds initialisation, shuffling and augmentation (an int, a Generator from which one int is
        drawn for all three, or ``None`` for an int drawn from fresh OS entropy; ``history["seed"]``
        records it).
    patch_um
        Side in µm of the tissue squares ``images`` show, recorded as ``model.patch_um`` (e.g.
        :data:`TINY_PATCH_UM`); ``None``: unknown.
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
    # one draw (from a Generator, or fresh entropy for None) seeds initialisation and training, and is
    # what history["seed"] records
    seed = as_seed(seed)
    model = load(arch, device=device, seed=seed)
    return finetune(model, images, sentences, seed=seed, patch_um=patch_um, progress=progress, **params)
