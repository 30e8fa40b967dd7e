"""The resumable checkpoint of a fine-tuning run: its path, atomic writes, reading and identity checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

from loki._utils import check_int

#: What a fine-tuning checkpoint file (``checkpoint=`` of :func:`~loki.models.finetune`) says it is.
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


def checkpoint_path(checkpoint, resume: bool, checkpoint_every) -> Path | None:
    """The checked ``checkpoint=`` path of :func:`~loki.models.finetune`, or None; nothing is written here.

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
    """The first ``n`` of ``names`` quoted and joined by commas, with their count when there are more; ``empty`` for none."""
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


def save_training_checkpoint(
    path: Path, run: dict, *, net, opt, gen, perm, best_weights: dict | None
) -> None:
    """Write a fine-tuning checkpoint (the format :func:`read_training_checkpoint` reads) atomically.

    Parameters
    ----------
    path
        The checkpoint file.
    run
        The JSON-able state of the run, stored as JSON text.
    net, opt, gen
        The module, its AdamW optimiser and the run's torch generator, whose states are saved.
    perm
        The order of the pairs in the epoch in progress, or None at an epoch's end.
    best_weights
        The kept weights of ``keep_best``, or None.

    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "run": json.dumps(run),  # NaN losses are kept (the history holds them as measured)
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "generator": gen.get_state(),
        "perm": perm,
        "best_weights": best_weights,
    }
    _write_atomically(path, payload)


def read_training_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint :func:`~loki.models.finetune` saved (``checkpoint=``), without running code stored in it.

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
    """``value`` for a message: a sha256 hex digest cut to 12 characters, anything else as its repr."""
    if isinstance(value, str) and len(value) == 64:
        return f"{value[:12]}..."
    return repr(value)


def _identity_changes(saved: dict, now: dict) -> list[str]:
    """The entries of :data:`RUN_IDENTITY` in which a checkpoint's run and this call differ."""
    from ._loading import config_changes, few_changes
    from ._tokenize import fingerprint_changes

    changes = []
    for key in RUN_IDENTITY:
        old, new = saved.get(key), now.get(key)
        if old == new:
            continue
        if key == "config" and isinstance(old, dict) and isinstance(new, dict):
            changes.append(f"the model's config ({few_changes(config_changes(old, new), 4)})")
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


def check_same_run(saved: dict, identity: dict, model, path: Path) -> None:
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
