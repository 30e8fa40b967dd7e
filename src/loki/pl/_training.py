"""Training curves of contrastive fine-tuning."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loki._utils import require_keys

from ._common import finish, panel_grid, plot_function

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@plot_function
def loss_curve(
    history: Mapping,
    *,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Plot the training loss per step and its mean per epoch.

    Parameters
    ----------
    history
        The history returned by :func:`loki.models.finetune` / :func:`loki.tl.finetune`
        (``step_loss`` and ``epoch_loss``).
    ax
        Axes to draw into (or a list / array holding one); default a new figure.
    show
        Show the figure; by default when it is new (no ``ax``) and the backend is interactive.
    save
        Path to save the figure to; a new figure saved and not shown is closed (the returned axes
        stay usable).

    Returns
    -------
    The axes: a thin line of per-step losses and markers at each epoch's mean loss, placed at the
    epoch's last step.

    """
    require_keys(history, ["step_loss", "epoch_loss"], "history")
    steps = np.asarray(history["step_loss"], dtype=float)
    epochs = np.asarray(history["epoch_loss"], dtype=float)
    if steps.size == 0 or epochs.size == 0:
        raise ValueError("history holds no losses (was training run for at least one step?)")
    if steps.size % epochs.size:
        raise ValueError(f"{steps.size} step losses do not split into {epochs.size} epochs")
    per_epoch = steps.size // epochs.size
    created = ax is None
    _, (ax,) = panel_grid(1, 1, ax, size=3.2, aspect=5 / 3.2)
    ax.plot(np.arange(1, steps.size + 1), steps, lw=0.8, alpha=0.6, label="step")
    ax.plot(np.arange(1, epochs.size + 1) * per_epoch, epochs, "o-", ms=3.5, label="epoch mean")
    ax.set_xlabel("step")
    ax.set_ylabel("contrastive loss")
    ax.legend(frameon=False)
    finish(ax.figure, show=show, save=save, created=created)
    return ax
