"""Loki Annotate: similarity of patch / spot embeddings to marker-gene or bulk sentences (eqs. 8-11).

The classes (their sentences and embeddings) come from :mod:`loki.tl._annotate_classes`; this module
scores the items against them, labels the items and writes the results.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    all_or_nothing,
    check_result_key,
    drop_obsm,
    require_keys,
    write_obs,
    write_obsm,
    write_uns,
)
from loki._utils._spatialdata import check_write_mode, get_table
from loki._utils._write import _remember

from ._annotate_classes import Unmatched, annotation_classes, embed_sentences
from ._retrieve import _check_norms, l2_normalize, row_norms

if TYPE_CHECKING:
    from spatialdata import SpatialData

    from ._annotate_classes import _Classes

#: Items checked for NaN at a time, so that no boolean array as large as the embeddings is made.
_ROW_BLOCK = 1 << 20  # values (items x dimensions)


def _all_finite(x: np.ndarray) -> bool:
    if x.ndim != 2:  # refused by the size check that follows
        return bool(np.isfinite(x).all())
    step = max(1, _ROW_BLOCK // max(x.shape[1], 1))
    return all(np.isfinite(x[lo : lo + step]).all() for lo in range(0, len(x), step))


def _unit_rows(x: np.ndarray, name: str, overwrite: bool) -> np.ndarray:
    # l2_normalize(x, name) of a 2-D float32 array, written into x itself when ``overwrite``
    norms = row_norms(x)
    _check_norms(norms, name, 0)
    return np.divide(x, norms.astype(np.float32)[:, None], out=x if overwrite else None)


def cosine_scores(items: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Cosine similarity of each item (row of ``items``) with each class embedding: items x classes."""
    return _cosine_scores(items, classes, overwrite_items=False)


def _cosine_scores(items: np.ndarray, classes: np.ndarray, overwrite_items: bool) -> np.ndarray:
    # overwrite_items: items is a float32 array of the caller's own, which may be normalised in place
    items = np.asarray(items, dtype=np.float32)
    classes = np.asarray(classes, dtype=np.float32)
    if items.ndim != 2 or classes.ndim != 2 or items.shape[1] != classes.shape[1]:
        raise ValueError(
            f"Embedding sizes differ: items {items.shape}, classes {classes.shape}; were they made by the same model?"
        )
    # one product over all items: OpenBLAS's sums depend on the number of rows, so a block of
    # items at a time would move scores by a float32 rounding step
    return _unit_rows(items, "item embeddings", overwrite_items) @ l2_normalize(classes, "class embeddings").T


def minmax_per_row(scores: np.ndarray) -> np.ndarray:
    """Min-max normalise each row across classes (eqs. 8-9); a constant row becomes all zeros."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = s.min(axis=1, keepdims=True), s.max(axis=1, keepdims=True)
    span = hi - lo
    return np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)


def fuse_scores(*scores: np.ndarray) -> np.ndarray:
    """Sum of per-item min-max normalised score matrices (eq. 10); the label is its argmax (eq. 11)."""
    if len(scores) < 2:
        raise ValueError("fuse_scores needs at least two score matrices.")
    shape = np.shape(scores[0])
    if any(np.shape(s) != shape for s in scores):
        raise ValueError(f"Score matrices must share one shape, got {[np.shape(s) for s in scores]}.")
    return sum(minmax_per_row(s) for s in scores)


class Annotation(NamedTuple):
    """What :func:`annotate` returns with ``inplace=False``: the results it would write."""

    scores: pd.DataFrame
    """Items x classes cosine similarities (``.obsm[key_added]``)."""
    labels: pd.Series
    """Categorical label of each item, named ``label_key`` (``.obs[label_key]``)."""
    fused: pd.DataFrame | None
    """Fused scores (``.obsm[f"{key_added}_fused"]``), or None without ``fuse_with``."""


def annotate(
    data: AnnData | SpatialData,
    markers: Mapping[str, Sequence[str]] | pd.Series | AnnData | None = None,
    *,
    model: Any = None,
    class_embeddings: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    use: str = Key.IMAGE,
    table_key: str | None = None,
    groupby: str | None = None,
    vocabulary: Iterable[str] | None = None,
    max_markers: int = 50,
    unmatched: Unmatched = "drop",
    sentence_kwargs: Mapping[str, Any] | None = None,
    fuse_with: pd.DataFrame | np.ndarray | None = None,
    key_added: str = Key.ANNOTATION,
    label_key: str | None = None,
    copy: bool = False,
    inplace: bool = True,
) -> AnnData | Annotation | None:
    """Annotate spots / patches with classes described by marker genes or bulk RNA-seq.

    Each class becomes a gene sentence - its markers joined by spaces, or the top genes of a bulk
    profile with the same recipe as the spots (:func:`loki.pp.gene_sentences`) - embedded by the
    model's text encoder. The score of an item for a class is the cosine similarity of its embedding
    ``.obsm[use]`` (H&E patch embeddings by default) with the class embedding; the label is the class
    with the highest score. With ``fuse_with`` (another model's items x classes scores, e.g. PLIP),
    both score sets are min-max normalised per item across classes and summed, and the label is the
    argmax of the sum (eqs. 8-11).

    Parameters
    ----------
    data
        AnnData or SpatialData (table ``table_key``) with ``.obsm[use]``.
    markers
        ``{class: [genes]}`` (see :func:`loki.pp.read_markers`) or a pandas Series of gene lists indexed
        by class (``df.groupby(class_column)[gene_column].agg(list)``), or a bulk AnnData (samples x
        genes; each sample, or each ``groupby`` group summed, is a class). A DataFrame is refused
        (its columns are not classes). Marker order matters: a class sentence holds the first
        ``max_markers`` distinct markers in the order given, and the text encoder reads only as many
        of those as fit in its context (76 tokens for OmiCLIP and loki-tiny, start and end included:
        about 20 gene symbols, each taking several tokens). A class is described by those first
        genes alone, so list its most telling markers first. A :class:`~loki.LokiWarning` names the
        classes cut either way, with the genes kept of those given.
    model
        Text encoder: an object with ``encode_texts(list[str])`` (``lk.models.load(...)``) or a callable.
        A :class:`~loki.LokiWarning` says so when it is a loki model whose weights differ from those
        recorded for ``.obsm[use]`` (``.uns['loki'][use]``).
    class_embeddings
        Precomputed class embeddings (DataFrame classes x dims, or dict) instead of ``markers``/``model``.
    use
        ``.obsm`` key of the item embeddings (``loki_image`` for patches, ``loki_text`` for spots).
    table_key
        Table of a SpatialData.
    groupby
        Bulk input: ``.obs`` column whose groups are summed into pseudo-bulk profiles, one class
        each, in the order :func:`loki.tl.decompose` gives cell types: a categorical column's
        categories in their order (those without a sample left out), other labels by value, numbers
        as numbers (0, 2, 10).
    vocabulary
        Known gene symbols; markers not in it are dropped with a warning that lists the first five
        of each class (all of them are recorded in ``.uns['loki'][key_added]['missing_markers']``);
        for classes none of whose markers is in it, see ``unmatched``. Default:
        the genes of the annotated table (``var_names``); a table without genes (an image-only
        section, e.g. from :func:`loki.pp.tile_image`) uses the markers as given, unless a
        vocabulary (e.g. the genes the model was trained on) is passed.
    max_markers
        At most this many markers per class sentence (the first ones); the model's context may keep
        fewer.
    unmatched
        What becomes of marker classes none of whose markers is in the vocabulary (marker databases
        list many classes a gene panel does not measure): ``"drop"`` leaves them out with a
        :class:`~loki.LokiWarning` that names them (recorded in
        ``.uns['loki'][key_added]['classes_dropped']``), as absent markers of a class are left out;
        ``"raise"`` makes them an error. No class left is an error either way.
    sentence_kwargs
        Passed to :func:`loki.pp.gene_sentences` for bulk profiles.
    fuse_with
        Other model's scores, items x classes: a DataFrame with class columns whose index holds the
        table's obs_names (rows are matched by name), or an array in the table's row and class order.
    key_added
        ``.obsm`` key of the scores and ``.uns['loki']`` key of the parameters.
    label_key
        ``.obs`` column of the labels (default ``key_added``, so that annotations under different keys
        keep their own labels).
    copy
        Return a modified copy of an AnnData instead of writing in place.
    inplace
        Write the results into the table (or the copy). ``False`` writes nothing, into an AnnData or a
        SpatialData, and returns them; it cannot be combined with ``copy=True``.

    Returns
    -------
    None, the modified AnnData when ``copy=True``, or with ``inplace=False`` an :class:`Annotation`
    named tuple ``(scores, labels, fused)`` of what would be written: the ``scores`` DataFrame, the
    categorical ``labels`` Series (named ``label_key``) and the ``fused`` DataFrame (None without
    ``fuse_with``). Markers missing from the vocabulary, and classes whose markers are cut, are
    reported by warnings either way; the classes that label no item are
    ``scores.columns.difference(labels.cat.categories)``.
    Otherwise writes into the table:

    - ``.obsm[key_added]``: DataFrame items x classes of cosine similarities.
    - ``.obsm[f"{key_added}_fused"]``: the fused scores (only with ``fuse_with``).
    - ``.obs[label_key]``: categorical label (argmax of the scores, or of the fused scores). Its
      categories are the classes that label at least one item, in class order; classes that are the
      label of no item are left out (logged), as scanpy / squidpy group tools expect.
    - ``.uns[f"{label_key}_colors"]``: a colour per category (scanpy's convention, read by scanpy,
      squidpy, spatialdata-plot and :func:`loki.pl.annotation`), unless colours for these categories
      are there already; a class has the colour of its position among all classes.
    - ``.uns['loki'][key_added]``: ``classes`` (all of them), and aligned with them their ``sentences``,
      the ``missing_markers`` left out (space-separated, ``""`` for none), ``genes_given`` (distinct
      markers in the vocabulary, or the genes of a bulk sentence) and ``genes_encoded`` (the genes
      of the sentence that reach the text encoder; both -1 where not known: ``class_embeddings``,
      or a model that does not count them); ``classes_without_spots``, the classes that label no
      item; ``classes_dropped``, the marker classes left out (``unmatched="drop"``); and the parameters.

    Class names are written as text; a ``/`` in one (several marker databases have them) keeps the
    result from zarr, and a warning says so.

    """
    check_write_mode(data, copy, inplace)
    adata = get_table(data, table_key)
    if adata.n_obs == 0:
        raise ValueError("The table to annotate has no observations (0 spots or cells).")
    fused_key = f"{key_added}_fused"  # written with fuse_with, else an earlier call's is removed
    check_result_key(
        adata,
        key_added,
        ("obsm", "uns"),
        inputs={"use": use},
        derived=[(fused_key, ("obsm",))],
        tool="tl.annotate",
    )
    label_key = key_added if label_key is None else label_key
    check_result_key(adata, label_key, ("obs",), what="label_key", owner=key_added)
    items, own_items = _item_embeddings(adata, use)
    classes = annotation_classes(
        adata,
        markers,
        class_embeddings,
        groupby=groupby,
        vocabulary=vocabulary,
        max_markers=max_markers,
        sentence_kwargs=sentence_kwargs,
        unmatched=unmatched,
    )
    fused_other = None if fuse_with is None else _fuse_input(fuse_with, adata, classes.names)
    emb, words = classes.embeddings, None
    if emb is None:
        emb, words = embed_sentences(model, [classes.sentences[c] for c in classes.names], adata, use)
    # validates embedding sizes before anything is written
    scores = _cosine_scores(items, emb, overwrite_items=own_items)
    del items  # normalised in place when it was a copy
    recorded = f".uns['loki'][{key_added!r}]" if inplace else None
    _warn_dropped_classes(classes, recorded and f"{recorded}['classes_dropped']")
    _warn_missing_markers(classes.missing, recorded and f"{recorded}['missing_markers']")
    _warn_one_class(classes, key_added, label_key)
    _report_cut_sentences(classes, words, max_markers, getattr(model, "context_length", None), recorded)
    result, without_spots = _annotation(scores, fused_other, classes.names, adata.obs_names, label_key)
    if not inplace:
        return result

    record = {
        "tool": "tl.annotate",
        "use": use,
        "source": classes.source,
        "classes": classes.names,
        "classes_without_spots": without_spots,
        "classes_dropped": list(classes.dropped),
        "sentences": [classes.sentences.get(c, "") for c in classes.names],
        "missing_markers": [" ".join(classes.missing.get(c, [])) for c in classes.names],
        "genes_given": [classes.given.get(c, -1) for c in classes.names],
        "genes_encoded": [-1] * len(classes.names) if words is None else words[:, 0].tolist(),
        "fused": fused_other is not None,
        "label_key": label_key,
    }
    return _write_results(adata, copy, key_added, fused_key, label_key, result, record)


def _item_embeddings(adata: AnnData, use: str) -> tuple[np.ndarray, bool]:
    """The items' ``adata.obsm[use]`` as float32, and whether that array is a copy of the caller's own.

    A copy made here (of float64 embeddings, say) may be normalised in place rather than copied
    again. A missing key, or NaN or infinite values, are errors.
    """
    require_keys(adata.obsm, use, "adata.obsm")
    items = np.asarray(adata.obsm[use], dtype=np.float32)
    own_items = items is not adata.obsm[use] and items.flags.owndata and items.flags.writeable
    if not _all_finite(items):
        raise ValueError(f"adata.obsm[{use!r}] contains NaN or infinite values.")
    return items, own_items


def _fuse_input(fuse_with: pd.DataFrame | np.ndarray, adata: AnnData, classes: list[str]) -> np.ndarray:
    """The other model's scores as an items x classes float64 array in the table's row and class order.

    A DataFrame is matched by name (its columns must hold the classes and its unique index the
    table's ``obs_names``), an array taken as it is; either must have the shape items x classes and
    hold finite values only.
    """
    if isinstance(fuse_with, pd.DataFrame):
        require_keys(fuse_with.columns, classes, "fuse_with.columns")
        missing_rows = adata.obs_names.difference(fuse_with.index)
        if len(missing_rows):
            raise ValueError(
                f"fuse_with has no row for {len(missing_rows)} of the {adata.n_obs} items (e.g. "
                f"{', '.join(map(repr, missing_rows[:3]))}); its index must hold the table's obs_names."
            )
        if not fuse_with.index.is_unique:
            raise ValueError("fuse_with's index has duplicated names; rows are matched to obs_names by name.")
        fused_other = fuse_with.loc[adata.obs_names, classes].to_numpy(dtype=np.float64)
    else:
        fused_other = np.asarray(fuse_with, dtype=np.float64)
    if fused_other.shape != (adata.n_obs, len(classes)):
        raise ValueError(
            f"fuse_with must be items x classes {(adata.n_obs, len(classes))}, got {fused_other.shape}."
        )
    if not np.isfinite(fused_other).all():
        raise ValueError("fuse_with contains NaN or infinite values.")
    return fused_other


def _warn_dropped_classes(classes: _Classes, recorded_in: str | None) -> None:
    """Warn about the marker classes left out because none of their markers is in the vocabulary.

    All of them are named when they are recorded nowhere (``recorded_in`` None), else the first 20.
    """
    dropped = list(classes.dropped)
    if not dropped:
        return
    shown = dropped if recorded_in is None else dropped[:20]
    more = f" and {len(dropped) - len(shown)} more" if len(dropped) > len(shown) else ""
    where = f"; they are recorded in {recorded_in}" if recorded_in else ""
    n_all = len(dropped) + len(classes.names)
    warnings.warn(
        f"{len(dropped)} of the {n_all} marker classes {'has' if len(dropped) == 1 else 'have'} no marker "
        "in the vocabulary and {'is' if len(dropped) == 1 else 'are'} left out "
        f"(unmatched='drop'): {', '.join(map(repr, shown))}{more}{where}. Pass unmatched='raise' to make "
        "this an error, or give them markers the table measures.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _warn_one_class(classes: _Classes, key_added: str, label_key: str) -> None:
    """Warn that one class labels every item alike: only its scores (a similarity map) carry information.

    One class is a use of its own (the similarity of each spot to one bulk profile), so it is not
    refused; but its label, the argmax over one class, says nothing.
    """
    if len(classes.names) > 1:
        return
    left = f" (left after dropping {len(classes.dropped)} without a marker)" if classes.dropped else ""
    warnings.warn(
        f"Only one class, {classes.names[0]!r}{left}: it is the label of every item, so "
        f".obs[{label_key!r}] says nothing; the scores .obsm[{key_added!r}] (the similarity of each item "
        "to it) do. Pass at least two classes to label items.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _warn_missing_markers(missing: dict[str, list[str]], recorded_in: str | None = None) -> None:
    """Warn about the markers absent from the vocabulary (class -> markers), if there are any.

    Each class lists its first five; ``recorded_in`` names where all of them are written, if anywhere.
    """
    if missing:
        listing = "; ".join(
            f"{c}: {', '.join(m[:5])}" + (f" and {len(m) - 5} more" if len(m) > 5 else "")
            for c, m in missing.items()
        )
        n = sum(len(m) for m in missing.values())
        cut = any(len(m) > 5 for m in missing.values())
        where = f"; all of them are recorded in {recorded_in}" if recorded_in and cut else ""
        warnings.warn(
            f"{n} marker{'s' if n > 1 else ''} absent from the vocabulary left out ({listing}){where}.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


def _report_cut_sentences(
    classes: _Classes,
    words: np.ndarray | None,
    max_markers: int,
    context_length: int | None,
    recorded_in: str | None,
) -> None:
    """Say which classes lose genes before the text encoder: to ``max_markers``, or to the model's context.

    ``words`` are the model's word counts of the class sentences (None when it does not count them).
    Marker lists are the user's own choice, which the call can change (fewer markers, the telling ones
    first): one :class:`~loki.LokiWarning` names each class cut, with the genes kept of those given.
    Bulk sentences follow the spots' recipe, cut alike by the context: logged at INFO, as
    :func:`loki.tl.embed_text` logs the spots' sentences.
    """
    context = f"the model's {context_length}-token context" if context_length else "the model's context"
    if classes.source == "bulk":
        n_cut = 0 if words is None else int((words[:, 0] < words[:, 1]).sum())
        if n_cut:
            known = words[(words[:, 1] > 0) & (words[:, 0] >= 0), 0]
            logger.info(
                "%d of %d class sentences are longer than %s: only their first genes reach the text "
                "encoder (median %s genes kept)",
                n_cut,
                len(classes.names),
                context,
                f"{np.median(known):g}" if len(known) else "?",
            )
        return
    if classes.source != "markers":
        return
    notes = []
    for i, c in enumerate(classes.names):
        given, in_sentence = classes.given[c], len(classes.sentences[c].split())
        by_context = words is not None and words[i, 0] < words[i, 1]
        if given <= in_sentence and not by_context:
            continue
        kept = words[i, 0] if by_context else in_sentence
        why = [f"max_markers={max_markers}"] if given > in_sentence else []
        why += [context] if by_context else []
        count = f"fewer than {in_sentence}" if kept < 0 else str(kept)
        notes.append(f"{c!r} {count} of {given} (cut by {', then by '.join(why)})")
    if not notes:
        return
    listing = "; ".join(notes[:5]) + (f"; and {len(notes) - 5} more classes" if len(notes) > 5 else "")
    where = f"; the counts are in {recorded_in}['genes_given'] and ['genes_encoded']" if recorded_in else ""
    warnings.warn(
        f"Only the first markers of {len(notes)} of {len(classes.names)} classes reach the text encoder; "
        f"the later ones do not count: {listing}. Markers count in the order given: put the most telling "
        f"first, or pass fewer{where}.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _annotation(
    scores: np.ndarray,
    fused_other: np.ndarray | None,
    classes: list[str],
    obs_names: pd.Index,
    label_key: str,
) -> tuple[Annotation, list[str]]:
    """The results as an :class:`Annotation`, and the classes that label no item.

    The label of an item is the argmax of its scores, or with ``fused_other`` of the fused scores
    (eqs. 10-11). The labels' categories are the classes some item won, in class order (scanpy /
    squidpy group tools fail on empty categories); the others are logged.
    """
    final = scores if fused_other is None else fuse_scores(scores, fused_other)
    codes = np.argmax(final, axis=1)
    won = np.bincount(codes, minlength=len(classes)) > 0
    without_spots = [c for c, w in zip(classes, won, strict=True) if not w]
    # only the classes some item won: scanpy / squidpy group tools fail on empty categories
    labels = pd.Categorical.from_codes(codes, categories=classes).remove_unused_categories()
    if without_spots:
        logger.info(
            "%d of %d classes are the label of no item, left out of the categories of the labels (%r): %s",
            len(without_spots),
            len(classes),
            label_key,
            ", ".join(map(repr, without_spots)),
        )
    index = obs_names.copy()
    result = Annotation(
        scores=pd.DataFrame(scores, index=index, columns=classes),
        labels=pd.Series(labels, index=index, name=label_key),
        fused=None if fused_other is None else pd.DataFrame(final, index=index, columns=classes),
    )
    return result, without_spots


def _write_results(
    adata: AnnData,
    copy: bool,
    key_added: str,
    fused_key: str,
    label_key: str,
    result: Annotation,
    record: dict,
) -> AnnData | None:
    """Write ``result`` and ``record`` into ``adata`` (or a copy of it, returned): all of them or, on failure, none.

    Without fused scores an earlier call's are dropped, since these labels would contradict them.
    """
    if copy:
        adata = adata.copy()
    with all_or_nothing():
        write_obsm(adata, key_added, result.scores)
        if result.fused is not None:
            write_obsm(adata, fused_key, result.fused)
        else:  # an earlier call's, which these labels would contradict
            drop_obsm(adata, fused_key, "of an earlier call (no fuse_with now)")
        write_obs(adata, label_key, result.labels)
        _write_label_colours(adata, label_key, result.labels, record["classes"])
        write_uns(adata, key_added, record)
    return adata if copy else None


def _write_label_colours(adata: AnnData, label_key: str, labels: pd.Series, classes: list[str]) -> None:
    """Store the labels' colours in ``adata.uns[f"{label_key}_colors"]``, scanpy's place for them.

    Each class gets the colour of its position among all ``classes`` in :func:`loki.pl.annotation`'s
    palette, so that a class keeps its colour on every section annotated with the same classes, and
    scanpy, squidpy, spatialdata-plot and ``lk.pl`` draw it alike. Colours already there for these
    categories (at least one valid colour per category, as scanpy takes them) are kept:
    :func:`~loki._utils.write_obs` has removed them when the categories changed.
    """
    from matplotlib.colors import is_color_like, to_hex

    from loki.pl._common import category_colours

    key = f"{label_key}_colors"
    categories = [str(c) for c in labels.cat.categories]
    stored = adata.uns.get(key)
    if (
        stored is not None
        and not isinstance(stored, str)
        and len(stored) >= len(categories)
        and all(is_color_like(c) for c in stored)
    ):
        return
    palette = category_colours(len(classes))
    position = {str(c): i for i, c in enumerate(classes)}
    _remember(adata.uns, key)
    adata.uns[key] = [to_hex(palette[position[c]]) for c in categories]
    logger.info("added .uns[%r]", key)
