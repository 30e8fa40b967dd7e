"""Training curves of contrastive fine-tuning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loki._utils import require_keys

from ._common import finish, panel_grid, plot_function
from ._docs import doc_params

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@plot_function
@doc_params
def loss_curve(
    history: Mapping,
    *,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Plot the training loss per step and its mean per epoch, and the held-out loss when recorded.

    Parameters
    ----------
    history
        The history returned by :func:`loki.models.finetune` / :func:`loki.tl.finetune`
        (``step_loss`` and ``epoch_loss``; ``val_loss`` and ``val_loss_before`` when it was given
        held-out pairs).
    ax
        Axes to draw into (or a list / array holding one); default a new figure.
    show
        {show}
    save
        {save}

    Returns
    -------
    The axes: a thin line of per-step losses and markers at each epoch's mean loss, placed at the
    epoch's last step; the held-out loss at step 0 (before training) and at each epoch's last step,
    with the epoch whose weights were kept (``best_epoch``) ringed: at step 0 when no epoch beat
    the starting weights (``best_epoch`` 0).
    """
    require_keys(history, ["step_loss", "epoch_loss"], "history")
    steps = np.asarray(history["step_loss"], dtype=float)
    epochs = np.asarray(history["epoch_loss"], dtype=float)
    if steps.size == 0 or epochs.size == 0:
        raise ValueError("history holds no losses (was training run for at least one step?)")
    if steps.size % epochs.size:
        raise ValueError(f"{steps.size} step losses do not split into {epochs.size} epochs")
    per_epoch = steps.size // epochs.size
    # the held-out losses are checked before a figure is made
    held_out = np.asarray(history.get("val_loss", []), dtype=float)
    if "val_loss" in history and held_out.size != epochs.size:
        raise ValueError(f"history has {held_out.size} held-out losses for {epochs.size} epochs")
    best = history.get("best_epoch") if "val_loss" in history else None
    # 0: keep_best went back to the starting weights, whose held-out loss is val_loss_before
    first = 0 if "val_loss_before" in history else 1
    if best is not None and not (isinstance(best, int | np.integer) and first <= best <= epochs.size):
        raise ValueError(
            f"history's best_epoch must be an epoch {first} to {epochs.size}, got {best!r}"
            + ("" if first == 0 else " (0, the starting weights, needs val_loss_before)")
        )
    created = ax is None
    _, (ax,) = panel_grid(1, 1, ax, size=3.2, aspect=5 / 3.2, fit_text=True)
    ax.plot(np.arange(1, steps.size + 1), steps, lw=0.8, alpha=0.6, label="step")
    ends = np.arange(1, epochs.size + 1) * per_epoch
    ax.plot(ends, epochs, "o-", ms=3.5, label="epoch mean")
    if "val_loss" in history:
        start = [history["val_loss_before"]] if "val_loss_before" in history else []
        x = np.concatenate([[0] * len(start), ends])
        ax.plot(x, np.concatenate([start, held_out]), "s--", ms=3.5, label="held-out")
        if best is not None:
            kept = (0, start[0]) if best == 0 else (ends[best - 1], held_out[best - 1])
            ax.plot(*kept, "o", ms=10, mfc="none", mec="k", label="kept")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.legend(frameon=False)
    finish(ax.figure, show=show, save=save, created=created)
    return ax
