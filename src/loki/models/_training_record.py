"""The record a fine-tuning run leaves in :attr:`~loki.models.OmiCLIP.training_runs`."""

from __future__ import annotations

import math
import time

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


def run_record(history: dict, *, steps: int, start: dict, completed: bool) -> dict:
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
    record["versions"] = versions()
    return _finite_or_none(record)


def versions() -> dict:
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
