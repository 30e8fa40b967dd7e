"""Contrastive fine-tuning (paper eq. 1) and the from-scratch recipe of loki-tiny.

:func:`finetune` checks everything first (``_checked_arguments``, ``_prepared_run``: nothing
changes before they pass), then starts or resumes the run (``_new_run_state``, ``_resume``),
trains epoch by epoch (``_train_epoch``, ``_end_epoch``) and, whether it finished or not,
puts the caller's flags back and records the run (``_end_run``). The pairs' checks and
fingerprints are in ``_training_data``, what is trained and the learning-rate schedule in
``_training_params``, the resumable checkpoint in ``_training_checkpoint`` and the record in
``_training_record``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import as_seed, check_int, is_real

from ._omiclip import check_patch_um
from ._preprocess import augment_dihedral, preprocess_uint8
from ._tokenize import FINGERPRINT_FIELDS
from ._training_checkpoint import (
    check_same_run,
    checkpoint_path,
    read_training_checkpoint,
    save_training_checkpoint,
)
from ._training_data import blank_sentences as blank_sentences  # re-exported: loki.tl imports it here
from ._training_data import (
    checked_pairs,
    images_sha256,
    materialised,
    sentences_sha256,
)
from ._training_params import lr_factor, param_groups, set_trainable, trainable_names
from ._training_record import RUN_KEYS as RUN_KEYS  # re-exported: documented with finetune
from ._training_record import run_record, versions

#: From-scratch recipe for ``loki-tiny`` (the paper's lr 5e-6 / 10 epochs are for the pretrained model).
TINY_RECIPE = {"epochs": 40, "lr": 2e-3, "batch_size": 64, "weight_decay": 0.1, "warmup": 0.1}

#: Patch side (µm) loki-tiny was evaluated with on legacy ST (twice the 100 µm spot: more tissue context);
#: pass it as ``diameter_um=`` to :func:`loki.pp.spot_patches` / :func:`loki.tl.embed_image` / :func:`loki.tl.finetune`.
TINY_PATCH_UM = 200.0

#: Upper bound of the learnable log inverse temperature (a temperature of 1/100), as open_clip clamps it.
_MAX_LOGIT_SCALE = math.log(100.0)

#: Entries of a run's identity (:data:`~loki.models._training_checkpoint.RUN_IDENTITY`) that its
#: ``history`` also records, in the order it records them.
_HISTORY_SETTINGS = (
    "epochs",
    "lr_max",
    "batch_size",
    "steps_per_epoch",
    "n_pairs",
    "seed",
    "freeze",
    "augment",
    "weight_decay",
    "warmup",
    "n_validation_pairs",
    "keep_best",
    "precision",
)


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


def _cpu_copy(net) -> dict:
    """A copy of the module's state dict on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}


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
    model._appended_run = None  # the record this call appends (loki.tl.finetune completes it)
    args = _checked_arguments(
        model,
        images,
        sentences,
        validation=validation,
        keep_best=keep_best,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        patch_um=patch_um,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=seed,
        freeze=freeze,
        augment=augment,
    )
    setup = _prepared_run(model, args)
    state = _new_run_state(model, setup)
    caller_flags = [(p, p.requires_grad) for p in setup.net.parameters()]
    try:
        if setup.saved is not None:
            _resume(model, setup, state)  # the weights change from here on: _end_run records the run
        elif setup.held_out is not None:
            _measure_start(model, setup, state)
        if progress:
            from tqdm.auto import tqdm

            state.bar = tqdm(total=setup.total, initial=state.step, desc="fine-tuning", unit="step")
        set_trainable(setup.net, setup.trainable)
        for epoch_index in range(state.first_epoch, int(args.epochs)):
            _train_epoch(model, setup, state, epoch_index)
            _end_epoch(model, setup, state)
        if state.best is not None:
            _restore_best(setup.net, state)
        state.completed = True
    finally:
        _end_run(model, setup, state, caller_flags)
    return model, state.history


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


@dataclass(frozen=True)
class _Arguments:
    """The checked arguments of :func:`finetune`.

    As given, but for ``images`` and ``sentences`` (checked; a lazy array is not yet computed),
    ``validation`` (the checked held-out pair, or None), ``patch_um`` (checked), ``seed`` (the run's
    int seed) and ``checkpoint`` (the checked path, or None).
    """

    images: Any
    sentences: list[str]
    validation: tuple | None
    freeze: Any
    epochs: int
    lr: float
    batch_size: int
    seed: int
    augment: bool
    weight_decay: float
    warmup: float
    patch_um: float | None
    keep_best: bool
    checkpoint: Path | None
    checkpoint_every: int | None
    resume: bool


@dataclass
class _Setup:
    """What a fine-tuning call fixes before its first step: data, parameters, schedule and identity.

    ``images`` are in memory; ``batch_size`` is lowered to the number of pairs ``n``; ``held_out`` is ``(images, tokens, batch_size)`` of the validation pairs, or None; ``identity`` is
    the run's JSON-able identity (:data:`~loki.models._training_checkpoint.RUN_IDENTITY`); ``saved``
    is the checkpoint a resumed run continues (:func:`read_training_checkpoint`), or None.
    """

    net: Any
    images: np.ndarray
    tokens: Any
    held_out: tuple | None
    trainable: set[str]
    fingerprints: dict
    identity: dict
    saved: dict | None
    n: int
    batch_size: int
    steps_per_epoch: int
    total: int
    n_warm: int
    args: _Arguments


@dataclass
class _RunState:
    """What changes as a fine-tuning run goes on: what its checkpoint saves and a resumption restores.

    ``start`` describes the weights the run started from; ``best`` is ``(held-out loss, epoch,
    weights on the CPU)`` with ``keep_best`` (the start is epoch 0); ``first_epoch``, ``first_batch``
    and ``resumed_perm`` say where a resumed run continues; ``unchanged`` is set when ``keep_best``
    went back to the starting weights.
    """

    run_id: str
    start: dict
    prior_runs: list
    resumed_from: list
    opt: Any
    gen: Any
    history: dict
    t0: float
    best: tuple | None = None
    step: int = 0
    seconds_before: float = 0.0  # spent by the sessions before a resumption
    first_epoch: int = 0
    first_batch: int = 0
    resumed_perm: Any = None
    epoch_losses: list = field(default_factory=list)
    unchanged: bool = False
    completed: bool = False
    bar: Any = None


def _checked_arguments(
    model,
    images,
    sentences,
    *,
    validation,
    keep_best,
    epochs,
    batch_size,
    lr,
    weight_decay,
    warmup,
    patch_um,
    checkpoint,
    checkpoint_every,
    resume,
    seed,
    freeze,
    augment,
) -> _Arguments:
    """Check the arguments of :func:`finetune`, in its order; nothing is changed or written.

    Returns
    -------
    The checked arguments.

    """
    images, sentences = checked_pairs(images, sentences)
    if validation is not None:
        if not (isinstance(validation, tuple | list) and len(validation) == 2):
            raise TypeError("validation must be a pair (images, sentences) of held-out pairs")
        validation = checked_pairs(*validation, what="validation: ")
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
    ckpt_path = checkpoint_path(checkpoint, resume, checkpoint_every)
    seed_int = as_seed(seed)  # None: fresh OS entropy, recorded so the run can be repeated

    if model.precision == "bf16-weights":
        raise ValueError(
            "cannot train a model loaded with precision='bf16-weights'; load it with 'auto' or 'bf16'"
        )
    return _Arguments(
        images=images,
        sentences=sentences,
        validation=validation,
        freeze=freeze,
        epochs=epochs,
        lr=float(lr),  # numpy scalars would reach the history and the checkpoint's JSON record
        batch_size=batch_size,
        seed=seed_int,
        augment=augment,
        weight_decay=float(weight_decay),
        warmup=float(warmup),
        patch_um=patch_um,
        keep_best=keep_best,
        checkpoint=ckpt_path,
        checkpoint_every=checkpoint_every,
        resume=resume,
    )


def _prepared_run(model, args: _Arguments) -> _Setup:
    """Tokenise and fingerprint the pairs, plan the steps and check a resumed run's checkpoint.

    The last of the checks: a checkpoint of another run raises here, before anything changes.

    Returns
    -------
    The run's :class:`_Setup`.

    """
    import torch

    sentences, validation = args.sentences, args.validation
    net = model.model
    tokens = torch.from_numpy(model.tokenizer.ids(sentences))
    trainable = trainable_names(net, args.freeze)
    saved = read_training_checkpoint(args.checkpoint) if args.resume else None  # a foreign file fails early
    images = materialised(args.images)  # every check passed: compute lazy patches once
    tokenizer = {k: v for k, v in model.tokenizer.fingerprint().items() if k in FINGERPRINT_FIELDS}
    fingerprints = {"images_sha256": images_sha256(images), "sentences_sha256": sentences_sha256(sentences)}
    held_out = None
    if validation is not None:
        val_images, val_sentences = validation
        val_images = materialised(val_images)
        val_tokens = torch.from_numpy(model.tokenizer.ids(val_sentences))
        held_out = (val_images, val_tokens, min(int(args.batch_size), len(val_sentences)))
        fingerprints["validation_images_sha256"] = images_sha256(val_images)
        fingerprints["validation_sentences_sha256"] = sentences_sha256(val_sentences)
    n = len(sentences)
    batch_size = min(int(args.batch_size), n)
    # drop the last partial batch: tiny batches make noisy contrastive steps
    steps_per_epoch = n // batch_size
    total = steps_per_epoch * int(args.epochs)
    freeze = args.freeze
    identity = json.loads(
        json.dumps(
            {
                "arch": model.arch,
                "config": model.config,
                "trainable": sorted(trainable),
                "tokenizer": tokenizer,
                "n_pairs": n,
                "n_validation_pairs": 0 if validation is None else len(validation[1]),
                **{k: None for k in ("validation_images_sha256", "validation_sentences_sha256")},
                **fingerprints,
                "epochs": int(args.epochs),
                "lr_max": float(args.lr),
                "batch_size": batch_size,
                "steps_per_epoch": steps_per_epoch,
                "weight_decay": float(args.weight_decay),
                "warmup": float(args.warmup),
                "seed": args.seed,
                "freeze": freeze if freeze is None or isinstance(freeze, str) else list(freeze),
                "augment": bool(args.augment),
                "keep_best": bool(args.keep_best),
                "precision": model.precision,
                "patch_um": args.patch_um,
            }
        )
    )
    if saved is not None:
        check_same_run(saved, identity, model, args.checkpoint)  # raises before anything changes
    return _Setup(
        net=net,
        images=images,
        tokens=tokens,
        held_out=held_out,
        trainable=trainable,
        fingerprints=fingerprints,
        identity=identity,
        saved=saved,
        n=n,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total=total,
        n_warm=int(args.warmup * total),
        args=args,
    )


def _new_run_state(model, setup: _Setup) -> _RunState:
    """The state of a run at its start: a new run's id and starting point, or the saved run's.

    A resumed run takes its id, start and prior records from its checkpoint here; its weights,
    optimiser, generator and history are restored by :func:`_resume`. Nothing is changed.

    Returns
    -------
    The run's :class:`_RunState`, with a fresh AdamW optimiser and a torch generator seeded with
    the run's seed.

    """
    import torch

    saved = setup.saved
    if saved is not None:
        run = saved["run"]
        run_id, start, prior_runs = run["run_id"], run["start"], run["prior_runs"]
        resumed_from = [
            *run["resumed_from"],
            {
                "checkpoint": str(setup.args.checkpoint),
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
    args = setup.args
    opt = torch.optim.AdamW(param_groups(setup.net, setup.trainable, args.weight_decay), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    history = {"step_loss": [], "epoch_loss": [], "lr": [], "logit_scale": []}
    if setup.held_out is not None:
        history["val_loss"] = []
    return _RunState(
        run_id=run_id,
        start=start,
        prior_runs=prior_runs,
        resumed_from=resumed_from,
        opt=opt,
        gen=gen,
        history=history,
        t0=time.perf_counter(),
    )


def _resume(model, setup: _Setup, state: _RunState) -> None:
    """Load a resumed run's weights, optimiser, generator, history and position from its checkpoint."""
    saved = setup.saved
    run = saved["run"]
    setup.net.load_state_dict(saved["model"])
    state.step = int(run["step"])
    model._weights_changed()
    model.training_runs = [dict(r) for r in state.prior_runs]
    state.opt.load_state_dict(saved["optimizer"])
    state.gen.set_state(saved["generator"])
    state.history = run["history"]
    state.seconds_before = float(run["seconds"])
    state.first_epoch, state.first_batch = int(run["epoch"]), int(run["batch"])
    if state.first_batch:
        state.resumed_perm, state.epoch_losses = saved["perm"], list(run["epoch_losses"])
    if run["best"] is not None:
        state.best = (float(run["best"][0]), int(run["best"][1]), saved["best_weights"])
    logger.info(
        "resuming run %s from step %d of %d (epoch %d, after %d of its batches), saved %s",
        state.run_id,
        state.step,
        setup.total,
        state.first_epoch + 1,
        state.first_batch,
        run["saved_utc"],
    )


def _measure_start(model, setup: _Setup, state: _RunState) -> None:
    """Measure the held-out loss before training; with ``keep_best``, keep the start as epoch 0."""
    state.history["val_loss_before"] = _held_out_loss(model, *setup.held_out)
    if setup.args.keep_best:
        before = state.history["val_loss_before"]  # not finite: any finite epoch beats the start
        state.best = (before if math.isfinite(before) else math.inf, 0, _cpu_copy(setup.net))


def _train_epoch(model, setup: _Setup, state: _RunState, epoch_index: int) -> None:
    """Run the steps of epoch ``epoch_index`` (from 0) left to run, saving checkpoints within it.

    A new epoch draws its order of pairs from the run's generator; the epoch a resumed run stopped
    in keeps its saved order and continues after its batches already taken.
    """
    import torch

    if state.resumed_perm is not None:  # the epoch the run stopped in: its order, and the batches left
        perm, state.resumed_perm = state.resumed_perm, None
    else:
        perm = torch.randperm(setup.n, generator=state.gen)
        state.epoch_losses = []
    size = setup.batch_size
    for b in range(state.first_batch, setup.steps_per_epoch):
        _train_step(model, setup, state, perm[b * size : (b + 1) * size])
        every = setup.args.checkpoint_every
        if every and state.step % every == 0 and b + 1 < setup.steps_per_epoch:
            _save_checkpoint(setup, state, epoch_index, b + 1, perm)  # an epoch's end: _end_epoch
    state.first_batch = 0


def _train_step(model, setup: _Setup, state: _RunState, batch) -> None:
    """One AdamW step on the pairs ``batch`` (a slice of the epoch's order); refuses a non-finite loss."""
    import torch

    idx = batch.sort().values.numpy()
    crops = torch.from_numpy(np.asarray(setup.images[idx]))
    if setup.args.augment:
        crops = augment_dihedral(crops.permute(0, 3, 1, 2), state.gen).permute(0, 2, 3, 1)
    step, total = state.step, setup.total
    step_lr = setup.args.lr * lr_factor(step, total, setup.n_warm)
    for group in state.opt.param_groups:
        group["lr"] = step_lr
    loss = _batch_loss(model, crops, setup.tokens[idx])
    loss_value = float(loss.detach())  # the history needs it: no extra device sync
    if not math.isfinite(loss_value):  # a step on it would make every trained weight NaN
        raise FloatingPointError(
            f"the loss is {loss_value} at step {step + 1} of {total} (epoch "
            f"{step // setup.steps_per_epoch + 1}, lr {step_lr:.3g}): training diverged. The model "
            f"holds the weights after step {step}, trained in place and possibly not finite; "
            "reload it and train with a lower lr="
        )
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    state.opt.step()
    with torch.no_grad():
        setup.net.logit_scale.clamp_(0, _MAX_LOGIT_SCALE)
    state.history["step_loss"].append(loss_value)
    state.history["lr"].append(step_lr)
    state.epoch_losses.append(loss_value)
    state.step += 1
    if state.bar is not None:  # counted once the step is done, so the bar ends at total
        state.bar.update(1)


def _end_epoch(model, setup: _Setup, state: _RunState) -> None:
    """Record an epoch's losses, keep its weights when they are the best so far, save the checkpoint."""
    history, net = state.history, setup.net
    history["epoch_loss"].append(float(np.mean(state.epoch_losses)))
    history["logit_scale"].append(float(net.logit_scale.detach().exp()))
    epoch = len(history["epoch_loss"])
    if setup.held_out is None:
        logger.info("epoch %d: loss %.4f", epoch, history["epoch_loss"][-1])
    else:
        history["val_loss"].append(_held_out_loss(model, *setup.held_out))
        logger.info(
            "epoch %d: loss %.4f, held-out %.4f",
            epoch,
            history["epoch_loss"][-1],
            history["val_loss"][-1],
        )
        if setup.args.keep_best and history["val_loss"][-1] < state.best[0]:
            state.best = (history["val_loss"][-1], epoch, None)
            state.best = (*state.best[:2], _cpu_copy(net))  # the previous copy is freed first
    if setup.args.checkpoint is not None:
        _save_checkpoint(setup, state, epoch, 0, None)


def _save_checkpoint(setup: _Setup, state: _RunState, epochs_done: int, batch: int, perm) -> None:
    """Write the run's state after ``epochs_done`` epochs and ``batch`` batches of the next one."""
    best = state.best
    run = {
        "run_id": state.run_id,
        "identity": setup.identity,
        "start": state.start,
        "prior_runs": state.prior_runs,
        "resumed_from": state.resumed_from,
        "step": state.step,
        "epoch": epochs_done,
        "batch": batch,
        "total_steps": setup.total,
        "history": state.history,
        "epoch_losses": state.epoch_losses if batch else [],
        "best": None if best is None else [best[0], best[1]],
        "seconds": state.seconds_before + time.perf_counter() - state.t0,
        "checkpoint": str(setup.args.checkpoint),
        "saved_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "versions": versions(),
    }
    save_training_checkpoint(
        setup.args.checkpoint,
        run,
        net=setup.net,
        opt=state.opt,
        gen=state.gen,
        perm=perm if batch else None,
        best_weights=None if best is None else best[2],
    )
    path = setup.args.checkpoint
    logger.info("saved the training state at step %d of %d to %s", state.step, setup.total, path)


def _restore_best(net, state: _RunState) -> None:
    """Load the kept weights of ``keep_best``; warn when they are the starting ones (epoch 0)."""
    best, history = state.best, state.history
    net.load_state_dict(best[2])
    history["best_epoch"] = best[1]
    state.unchanged = best[1] == 0
    if state.unchanged:
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


def _end_run(model, setup: _Setup, state: _RunState, caller_flags: list) -> None:
    """Put the caller's flags back and complete the history; record a run that changed the weights.

    Runs also when training stopped part-way (an error, an interrupt): steps already taken changed
    the weights in place.
    """
    net, history = setup.net, state.history
    net.eval()
    for p, flag in caller_flags:
        p.requires_grad_(flag)
    if state.bar is not None:
        state.bar.close()
    changed = state.step and not state.unchanged
    # weights changed, also when training stopped part-way: the hash must not claim the file's, and
    # the record says how they were made; keep_best back at the start (epoch 0) changed nothing
    if changed:
        model._weights_changed()
        model.trained_tokenizer = model.tokenizer.fingerprint()
        if setup.args.patch_um is not None:
            model.patch_um = setup.args.patch_um
    elif state.unchanged and setup.saved is not None:  # the start's weights, after those of the checkpoint
        start = state.start
        model._checkpoint_hash = start["start_checkpoint_hash"]
        model.trained = start["start_trained"]
        model.patch_um = start["start_patch_um"]
        model.trained_tokenizer = start["start_trained_tokenizer"]
    history.update(
        seconds=state.seconds_before + time.perf_counter() - state.t0,
        **{key: setup.identity[key] for key in _HISTORY_SETTINGS},
        patch_um=model.patch_um,
        tokenizer=model.tokenizer.fingerprint(),
        checkpoint=None if setup.args.checkpoint is None else str(setup.args.checkpoint),
        resumed_from=state.resumed_from,
        **setup.fingerprints,
    )
    if changed:
        started = {k: state.start[k] for k in ("start_model", "start_checkpoint_hash")}
        record = run_record(history, steps=state.step, start=started, completed=state.completed)
        model._appended_run = {"run_id": state.run_id, **record}
        model.training_runs.append(model._appended_run)
