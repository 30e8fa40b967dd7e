"""Fine-tune OmiCLIP on the (patch, gene sentence) pairs of one or more sections."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from loki._keys import Key
from loki._logging import logger
from loki._utils._spatialdata import get_table, is_spatialdata

from ._embed import _patches_of, _sentences_of, empty_sentences, spot_diameter_um

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData


def collect_pairs(
    data: AnnData | SpatialData,
    *,
    table_keys: Sequence[str] | str | None = None,
    sentence_key: str = Key.SENTENCE,
    patches=None,
    size: int = 224,
    diameter_um: float | None = None,
    coordinate_system: str | None = None,
    only_valid: bool = True,
    min_pairs: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """Patches and sentences of the listed sections, concatenated in table order.

    Parameters
    ----------
    data
        SpatialData with one or more sections, or an AnnData with ``patches``.
    table_keys
        Sections to take (default: every table), each named once.
    sentence_key
        Column of ``.obs`` with the gene sentences.
    patches
        uint8 ``(n_spots, h, w, 3)`` patches (numpy or dask) of an AnnData, in table order.
    size
        Side in pixels of the cut patches.
    diameter_um
        Side of the cut squares in µm (default: the spot diameter).
    coordinate_system
        Coordinate system shared by each section's spots and image (default: as for
        :func:`loki.tl.embed_image`).
    only_valid
        Leave out spots whose patch leaves the image: by the border flags of the cut made here, or, for
        given ``patches``, by ``.obs['loki_patch_ok']`` when the table has it (written by
        :func:`loki.tl.embed_image`, or by :func:`loki.pp.spot_patches` with
        ``key_added=lk.Key.PATCH_OK``); that column must be boolean without missing values (else a
        ``ValueError``).
    min_pairs
        Raise a ``ValueError`` (before any patch is copied) that says how many spots were left out
        and why when fewer pairs remain.

    Returns
    -------
    ``(patches, sentences)``: one uint8 ``(n_pairs, h, w, 3)`` array, filled section by section and
    chunk by chunk (it takes the memory of the result plus the chunks being cut), and the ``n_pairs``
    sentences. Spots
    with an empty sentence (flagged in ``.obs[Key.empty_of(sentence_key)]`` by
    :func:`loki.pp.gene_sentences`, or ``""`` or only whitespace) are always left out: they pair no
    text with their patch. How many spots each section loses is logged.

    """
    if is_spatialdata(data) and patches is not None:
        raise ValueError("patches= is for a single AnnData; SpatialData patches are cut per section")
    keys = _section_keys(data, table_keys)
    tables = [get_table(data, k) for k in keys]  # validates every key before any work
    sentences = [_sentences_of(t, sentence_key) for t in tables]
    cuts, keeps, lost = [], [], []
    n_empty = n_outside = 0
    systems = {coordinate_system}  # those the patches were cut in (the default resolves per section)
    for key, table, sents in zip(keys, tables, sentences, strict=True):
        cut, flags, _ = _patches_of(
            data,
            table,
            table_key=key,
            image_key=None,
            patches=patches,
            size=size,
            diameter_um=diameter_um,
            coordinate_system=coordinate_system,
        )
        valid = np.ones(len(sents), dtype=bool)
        if flags is not None:
            systems = systems - {None} | {flags[1]["coordinate_system"]}
        if only_valid and flags is not None:
            valid = flags[0]
        elif only_valid and Key.PATCH_OK in table.obs:
            valid = _patch_ok_flags(table, key)
        empty = empty_sentences(table, sentence_key, sents)
        keep = valid & ~empty
        where = "the table" if key is None else f"section {key!r}"
        section_empty, section_outside = int(empty.sum()), int((~valid & ~empty).sum())
        lost.append(_left_out(where, len(keep), section_empty, section_outside))
        n_empty, n_outside = n_empty + section_empty, n_outside + section_outside
        if not keep.all():
            logger.info("%s", lost[-1])
        cuts.append(cut)
        keeps.append(keep)
    n_pairs = sum(int(k.sum()) for k in keeps)
    if n_pairs < min_pairs:
        hints = []
        if n_empty:
            hints.append(
                f"for empty sentences, check sentence_key={sentence_key!r} and that lk.pp.gene_sentences "
                "kept genes for these spots (gene symbols as var_names, fewer genes filtered out)"
            )
        if n_outside:
            hints.append(
                f"for patches that leave the image, check that coordinate_system="
                f"{' / '.join(sorted(map(repr, systems - {None}))) or None} places the spots on the image and that diameter_um= is small enough for the squares "
                "to fit in it"
            )
        if not hints:
            hints.append("train on more spots, e.g. on more sections (table_keys=)")
        raise ValueError(
            f"{n_pairs} (patch, sentence) pair(s) left, fewer than the {min_pairs} needed: "
            f"{'; '.join(lost)}. To fix: {'; '.join(hints)}."
        )
    out = np.empty((n_pairs, *cuts[0].shape[1:]), dtype=np.uint8)
    offset = 0
    for cut, keep in zip(cuts, keeps, strict=True):
        offset = _fill_kept(out, offset, cut, keep)
    kept = [
        s for sents, keep in zip(sentences, keeps, strict=True) for s, k in zip(sents, keep, strict=True) if k
    ]
    return out, kept


def _patch_ok_flags(table, key: str | None) -> np.ndarray:
    """The boolean ``.obs[Key.PATCH_OK]`` column; a ValueError for one that is not boolean.

    Read as booleans, strings (``"False"``) and missing values (NaN, e.g. after concatenating tables
    of which some lack the column) would all count as True and keep spots whose patch leaves the image.
    """
    from pandas.api.types import is_bool_dtype

    column = table.obs[Key.PATCH_OK]
    boolean = is_bool_dtype(column.dtype) or (
        column.dtype == object and all(isinstance(v, bool | np.bool_) for v in column)
    )
    if not boolean or column.isna().any():
        where = "the table" if key is None else f"section {key!r}"
        shown = ", ".join(map(repr, column.drop_duplicates().tolist()[:5]))
        raise ValueError(
            f".obs[{Key.PATCH_OK!r}] of {where} must be boolean without missing values (True: the spot's "
            f"patch lies in the image), got dtype {column.dtype} with values {shown}. Rewrite it as "
            "booleans, or delete it to train on every spot."
        )
    return column.to_numpy(dtype=bool)


def _left_out(where: str, n: int, n_empty: int, n_outside: int) -> str:
    """How many of a section's ``n`` spots are left out of training, and why."""
    return (
        f"{where}: left {n_empty + n_outside} of {n} spots out of training ({n_empty} with an empty "
        f"sentence, {n_outside} whose patch leaves the image)"
    )


def _fill_kept(out: np.ndarray, offset: int, patches, keep: np.ndarray) -> int:
    """Copy the rows of ``patches`` where ``keep`` holds into ``out`` from ``offset``; the next offset.

    A dask array is stored chunk by chunk (in parallel) straight into ``out``, so only the chunks in
    flight are held besides it; other arrays are copied without a temporary.
    """
    n = int(keep.sum())
    target = out[offset : offset + n]
    if hasattr(patches, "dask"):
        import dask.array as da

        da.store(patches[keep], target, lock=False)
    else:
        np.compress(keep, np.asarray(patches), axis=0, out=target)
    return offset + n


def _section_keys(data, table_keys) -> list[str | None]:
    """Tables to train on: ``table_keys`` (default: all) of a SpatialData; ``[None]`` for an AnnData."""
    if not is_spatialdata(data):
        return [None]
    if table_keys is None:
        keys = list(data.tables.keys())
    else:
        keys = [table_keys] if isinstance(table_keys, str) else list(table_keys)
    if not keys:
        raise ValueError(
            f"table_keys={table_keys!r} selects no table; available tables: {list(data.tables.keys())}"
        )
    repeated = sorted({k for k in keys if keys.count(k) > 1}, key=str)
    if repeated:
        raise ValueError(
            f"table_keys={table_keys!r} names {repeated[0]!r} more than once: its spots would be "
            "trained on as many times; name each section once"
        )
    return keys


def _split_sections(data, table_keys, validation_keys) -> tuple:
    """``(table_keys, validation_keys)`` of :func:`finetune`, held-out sections checked.

    Each held-out section is named once and none is trained on; with ``table_keys=None``, training
    takes the other tables.
    """
    if validation_keys is None:
        return table_keys, None
    if not is_spatialdata(data):
        raise ValueError(
            "validation_keys= names held-out sections of a SpatialData; for an AnnData, pass held-out "
            "pairs to lk.models.finetune(validation=(images, sentences))"
        )
    held_out = _section_keys(data, validation_keys)
    for key in held_out:
        get_table(data, key)  # a missing table is named before any work
    if table_keys is None:
        trained = [k for k in data.tables.keys() if k not in held_out]
        if not trained:
            raise ValueError(
                f"validation_keys={validation_keys!r} holds out every table; nothing is left to train on"
            )
        return trained, held_out
    both = sorted(set(_section_keys(data, table_keys)) & set(held_out), key=str)
    if both:
        raise ValueError(
            f"{both[0]!r} is in both table_keys and validation_keys: a held-out section must not be "
            "trained on"
        )
    return table_keys, held_out


def _cut_patch_um(data, table_keys, diameter_um: float | None) -> float | None:
    """Side in µm of the squares :func:`collect_pairs` cuts, or None when unknown.

    That is ``diameter_um``, else the sections' spot diameter when they share one known size.
    """
    if diameter_um is not None:
        return float(diameter_um)
    sizes = {round(spot_diameter_um(data, get_table(data, k)), 6) for k in _section_keys(data, table_keys)}
    size = sizes.pop() if len(sizes) == 1 else math.nan
    return None if math.isnan(size) else size


def finetune(
    data: AnnData | SpatialData,
    model,
    *,
    table_keys: Sequence[str] | str | None = None,
    sentence_key: str = Key.SENTENCE,
    patches=None,
    diameter_um: float | None = None,
    coordinate_system: str | None = None,
    epochs: int = 10,
    lr: float = 5e-6,
    batch_size: int = 64,
    seed: int | None = 0,
    freeze: str | Sequence[str] | None = None,
    augment: bool = True,
    weight_decay: float = 0.2,
    warmup: float = 0.1,
    validation_keys: Sequence[str] | str | None = None,
    keep_best: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    progress: bool = True,
):
    """Fine-tune OmiCLIP with the contrastive loss of paper eq. (1) / 2 on sections' own pairs.

    Parameters
    ----------
    data
        SpatialData with one or more sections (tables with gene sentences, and images), or an AnnData with
        ``patches``.
    model
        :class:`loki.models.OmiCLIP`, trained in place.
    table_keys
        Sections to train on (default: every table).
    sentence_key
        Column of ``.obs`` with the gene sentences (:func:`loki.pp.gene_sentences`).
    patches
        uint8 ``(n_spots, h, w, 3)`` patches for an AnnData; spots flagged False in
        ``.obs['loki_patch_ok']``, when the table has it, are left out (see :func:`collect_pairs`).
    diameter_um
        Side of the cut squares in µm (default: the spot diameter).
    coordinate_system
        Coordinate system shared by each section's spots and image; default ``"global"``, or the
        only one they share, as for :func:`loki.tl.embed_image`.
    epochs, lr, batch_size, seed, freeze, augment, weight_decay, warmup
        See :func:`loki.models.finetune` (paper defaults: 10 epochs for alignment, 5 for decomposition,
        lr 5e-6, batch 64). Each epoch reshuffles the pairs and runs ``n_pairs // batch_size`` steps:
        the last partial batch is dropped, so with few pairs a large share sits out each epoch.
    validation_keys
        Sections of a SpatialData held out of training: their pairs (cut and left out as the
        training pairs are) give a held-out loss before training and after each epoch
        (``history["val_loss"]``, drawn by :func:`loki.pl.loss_curve`). With ``table_keys=None`` the
        other tables are trained on.
    keep_best
        With ``validation_keys`` (without them, a ``ValueError`` before any patch is cut): end with
        the weights of the epoch of lowest held-out loss, as in :func:`loki.models.finetune`.
    checkpoint, checkpoint_every, resume
        Save the run's state to the file ``checkpoint`` (at epochs' ends, and every
        ``checkpoint_every`` steps), and continue a stopped run from it with ``resume=True`` and the
        same data, sections and arguments: see :func:`loki.models.finetune`. The file is checked
        before any patch is cut.
    progress
        Show a progress bar.

    Returns
    -------
    ``(model, history)``; ``history`` holds per-step and per-epoch losses (plot with
    :func:`loki.pl.loss_curve`) and ``n_pairs``. Writes nothing into ``data``; spots whose patch leaves
    the image and spots with an empty gene sentence (:func:`loki.pp.gene_sentences` flags them) are
    left out of training, and how many is logged (when fewer than 2 pairs remain, the ``ValueError``
    says how many spots were left out and why). ``model.patch_um`` (and ``history["patch_um"]``)
    becomes the side of the cut squares in µm: ``diameter_um``, or the sections' spot diameter when
    they share one known size, else None (unknown); with ``patches=`` the model keeps its own. It is
    saved with the model, and :func:`loki.tl.embed_image` cuts that size by default. For a
    SpatialData, ``history`` and the run's record in ``model.training_runs`` (see
    :func:`loki.models.finetune`) also name the sections trained on (``table_keys``) and held out
    (``validation_keys``). With ``keep_best`` and no epoch better than the starting weights, the model
    is returned unchanged (``history["best_epoch"]`` is 0).

    """
    from loki.models import finetune as _finetune
    from loki.models._training_checkpoint import checkpoint_path

    if keep_best and validation_keys is None:  # before any patch is cut, named as this function takes it
        raise ValueError("keep_best=True needs validation_keys= (held-out sections) to tell the best epoch")
    table_keys, validation_keys = _split_sections(data, table_keys, validation_keys)
    checkpoint_path(checkpoint, resume, checkpoint_every)  # before any patch is cut
    pairs = {
        "sentence_key": sentence_key,
        "size": model.image_size,
        "diameter_um": diameter_um,
        "coordinate_system": coordinate_system,
        "min_pairs": 2,
    }
    validation = None
    if validation_keys is not None:
        validation = collect_pairs(data, table_keys=validation_keys, **pairs)
    images, sentences = collect_pairs(data, table_keys=table_keys, patches=patches, **pairs)
    cut_here = patches is None
    patch_um = _cut_patch_um(data, table_keys, diameter_um) if cut_here else None
    sections = _section_keys(data, table_keys)
    named = {} if sections == [None] else {"table_keys": sections, "validation_keys": validation_keys}

    def complete_record() -> None:
        """The run's record (appended when the weights changed, also by a run stopped part-way)."""
        # a resumed run replaces the model's records: the one it appended is the one to complete
        run = getattr(model, "_appended_run", None)
        if run is None or not model.training_runs or model.training_runs[-1] is not run:
            return  # the weights did not change (keep_best kept the start)
        if cut_here and patch_um is None:  # spot-sized squares of no known size in µm
            model.patch_um = run["patch_um"] = None
        run.update(named)  # a SpatialData: the sections trained on and held out

    try:
        model, history = _finetune(
            model,
            images,
            sentences,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            freeze=freeze,
            augment=augment,
            weight_decay=weight_decay,
            warmup=warmup,
            patch_um=patch_um,
            validation=validation,
            keep_best=keep_best,
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every,
            resume=resume,
            progress=progress,
        )
    finally:
        complete_record()
    history.update(named)
    if history.get("best_epoch") != 0 and cut_here and patch_um is None:
        history["patch_um"] = None
    return model, history
