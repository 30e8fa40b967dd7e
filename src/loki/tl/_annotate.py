"""Loki Annotate: similarity of patch / spot embeddings to marker-gene or bulk sentences (eqs. 8-11)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    all_or_nothing,
    check_int,
    check_labelled,
    check_result_key,
    drop_obsm,
    require_keys,
    write_obs,
    write_obsm,
    write_uns,
)
from loki._utils._labels import label_categories
from loki._utils._provenance import embedding_model, warn_if_models_differ
from loki._utils._spatialdata import check_write_mode, get_table

from ._retrieve import _check_norms, l2_normalize, row_norms

if TYPE_CHECKING:
    from spatialdata import SpatialData

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


def marker_sentences(
    markers: Mapping[str, Sequence[str]], vocabulary: Iterable[str] | None = None, *, max_genes: int = 50
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """One gene sentence per class: its markers in the given order, joined by spaces.

    Markers are matched to ``vocabulary`` ignoring case and written in the vocabulary's spelling (so
    human marker tables work on mouse data); markers absent from it are left out and returned.

    Returns
    -------
    Class -> sentence, and class -> markers not found in the vocabulary.

    """
    markers = _marker_mapping(markers)
    if not markers:
        raise ValueError("markers is empty; pass {class: [genes]} with at least one class.")
    if isinstance(vocabulary, str):
        raise TypeError(
            f"vocabulary must be a list of gene symbols, not the string {vocabulary[:40]!r} (its letters "
            "would be the genes); pass e.g. [gene] or a table's var_names."
        )
    check_int(max_genes, "max_markers", why="the number of markers per class")
    names = pd.Series([str(c) for c in markers])
    if names.duplicated().any():
        clash = [c for c in markers if str(c) in set(names[names.duplicated()])]
        raise ValueError(f"Marker classes {clash!r} have the same name as text; give them distinct names.")
    lookup = None if vocabulary is None else {str(g).upper(): str(g) for g in vocabulary}
    sentences, missing = {}, {}
    for cls, genes in markers.items():
        if isinstance(genes, str):
            raise TypeError(f"Markers of class {cls!r} must be a list of genes, not the string {genes!r}.")
        genes = [str(g).strip() for g in genes if str(g).strip()]
        if not genes:
            raise ValueError(f"The marker list of class {cls!r} is empty.")
        if lookup is not None:
            missing[str(cls)] = [g for g in genes if g.upper() not in lookup]
            genes = [lookup[g.upper()] for g in genes if g.upper() in lookup]
            if not genes:
                raise ValueError(
                    f"None of the markers of class {str(cls)!r} ({', '.join(missing[str(cls)][:10])}) is in "
                    "the vocabulary."
                )
        sentences[str(cls)] = " ".join(list(dict.fromkeys(genes))[:max_genes])
    return sentences, {c: m for c, m in missing.items() if m}


def _marker_mapping(markers) -> Mapping[str, Sequence[str]]:
    """``markers`` as ``{class: [genes]}``: a mapping, or a pandas Series of gene lists indexed by class.

    A DataFrame is refused: iterating one gives its column names, so a long table (one row per class and
    gene) or a wide one (one column per class) would be read as wrong classes without a word.
    """
    if isinstance(markers, pd.DataFrame):
        raise TypeError(
            f"markers is a DataFrame (columns {list(markers.columns)[:5]}); pass {{class: [genes]}}: for a "
            "table of one row per class and gene, df.groupby(class_column)[gene_column].agg(list); for "
            "ScTypeDB, PanglaoDB or CellMarker files, lk.pp.read_markers(path)."
        )
    if isinstance(markers, pd.Series):
        if not markers.index.is_unique:
            repeated = list(markers.index[markers.index.duplicated()].unique()[:5])
            raise ValueError(
                f"markers is a Series whose index repeats classes ({repeated}); give each class one list of "
                "genes, e.g. df.groupby(class_column)[gene_column].agg(list)."
            )
        return markers.to_dict()
    if not isinstance(markers, Mapping):
        raise TypeError(
            f"markers must be {{class: [genes]}} (or a bulk AnnData), got {type(markers).__name__}; "
            "lk.pp.read_markers(path) reads ScTypeDB, PanglaoDB and CellMarker tables into one."
        )
    return markers


def bulk_sentences(bulk: AnnData, *, groupby: str | None = None, **sentence_kwargs: Any) -> dict[str, str]:
    """Gene sentences of bulk (or pseudo-bulk) profiles with the spots' recipe.

    Parameters
    ----------
    bulk
        Samples x genes counts (``var_names`` = gene symbols).
    groupby
        Column of ``bulk.obs``: samples of a group are summed into one pseudo-bulk profile per group,
        a class named by the group as a string. The classes are ordered as
        :func:`loki.tl.decompose` orders cell types: by a categorical column's categories (those
        without a sample are left out), otherwise by value, numbers as numbers (0, 2, 10). Default:
        each sample is its own class, named by ``obs_names``.
    **sentence_kwargs
        Passed to :func:`loki.pp.gene_sentences` (``n_genes``, ``housekeeping``, ...).

    """
    from loki.pp import gene_sentences

    if bulk.n_obs == 0:
        raise ValueError("The bulk AnnData has no sample.")
    if groupby is not None:
        require_keys(bulk.obs.columns, groupby, "bulk.obs")
        check_labelled(bulk.obs[groupby], f"bulk.obs[{groupby!r}]", "samples")
        # the order decompose gives the same labels: declared categories, numbers as numbers
        groups = label_categories(bulk.obs[groupby])
        unused = [
            str(c)
            for c in groups.categories[np.bincount(groups.codes, minlength=len(groups.categories)) == 0]
        ]
        if unused:
            logger.info(
                "bulk.obs[%r]: categories without a sample are no class: %s",
                groupby,
                ", ".join(map(repr, unused)),
            )
            groups = groups.remove_unused_categories()
        onehot = sparse.csr_matrix(
            (np.ones(bulk.n_obs), (groups.codes, np.arange(bulk.n_obs))),
            shape=(len(groups.categories), bulk.n_obs),
        )
        x = onehot @ (bulk.X if sparse.issparse(bulk.X) else np.asarray(bulk.X))
        bulk = AnnData(
            X=sparse.csr_matrix(x),
            obs=pd.DataFrame(index=pd.Index(groups.categories, dtype=str)),
            var=bulk.var[[]],
        )
    else:
        bulk = AnnData(X=bulk.X, obs=pd.DataFrame(index=bulk.obs_names.astype(str)), var=bulk.var[[]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = gene_sentences(bulk, copy=True, **sentence_kwargs)
    sentence_key = sentence_kwargs.get("key_added", Key.SENTENCE)
    empty = out.obs[Key.empty_of(sentence_key)].to_numpy(dtype=bool)
    if empty.any():
        raise ValueError(
            f"Bulk profile(s) {list(out.obs_names[empty])} have no expressed gene after filtering."
        )
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return dict(zip(out.obs_names, out.obs[sentence_key], strict=True))


class Annotation(NamedTuple):
    """What :func:`annotate` returns with ``inplace=False``: the results it would write."""

    scores: pd.DataFrame
    """Items x classes cosine similarities (``.obsm[key_added]``)."""
    labels: pd.Series
    """Categorical label of each item, named ``label_key`` (``.obs[label_key]``)."""
    fused: pd.DataFrame | None
    """Fused scores (``.obsm[f"{key_added}_fused"]``), or None without ``fuse_with``."""


def _encode(model: Any, sentences: list[str]) -> np.ndarray:
    if model is None:
        raise ValueError(
            "Pass model= (e.g. lk.models.load('loki-tiny')) or class_embeddings= to embed the classes."
        )
    if hasattr(model, "encode_texts"):
        return np.asarray(model.encode_texts(sentences), dtype=np.float32)
    if callable(model):
        return np.asarray(model(sentences), dtype=np.float32)
    raise TypeError(f"model must have encode_texts() or be callable, got {type(model).__name__}.")


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
        (its columns are not classes).
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
        Known gene symbols; markers not in it are dropped with a warning that lists them. Default:
        the genes of the annotated table (``var_names``); a table without genes (an image-only
        section, e.g. from :func:`loki.pp.tile_image`) uses the markers as given, unless a
        vocabulary (e.g. the genes the model was trained on) is passed.
    max_markers
        At most this many markers per class sentence.
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
    ``fuse_with``). Markers missing from the vocabulary are reported by a warning either way; the
    classes that label no item are ``scores.columns.difference(labels.cat.categories)``.
    Otherwise writes into the table:

    - ``.obsm[key_added]``: DataFrame items x classes of cosine similarities.
    - ``.obsm[f"{key_added}_fused"]``: the fused scores (only with ``fuse_with``).
    - ``.obs[label_key]``: categorical label (argmax of the scores, or of the fused scores). Its
      categories are the classes that label at least one item, in class order; classes that are the
      label of no item are left out (logged), as scanpy / squidpy group tools expect.
    - ``.uns['loki'][key_added]``: ``classes`` (all of them), and aligned with them their ``sentences``
      and the ``missing_markers`` left out (space-separated, ``""`` for none);
      ``classes_without_spots``, the classes that label no item; and the parameters.

    Class names are written as text; a ``/`` in one (several marker databases have them) keeps the
    result from zarr, and a warning says so.

    """
    check_write_mode(data, copy, inplace)
    adata = get_table(data, table_key)
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
    require_keys(adata.obsm, use, "adata.obsm")
    items = np.asarray(adata.obsm[use], dtype=np.float32)
    # a copy made here (float64 embeddings, say) is normalised in place rather than copied again
    own_items = items is not adata.obsm[use] and items.flags.owndata and items.flags.writeable
    if not _all_finite(items):
        raise ValueError(f"adata.obsm[{use!r}] contains NaN or infinite values.")
    sentences: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    if class_embeddings is not None:
        if markers is not None:
            raise ValueError("Pass either markers or class_embeddings, not both.")
        ce = (
            class_embeddings
            if isinstance(class_embeddings, pd.DataFrame)
            else pd.DataFrame({k: np.asarray(v, dtype=np.float32) for k, v in class_embeddings.items()}).T
        )
        if ce.shape[0] == 0:
            raise ValueError("class_embeddings holds no class.")
        classes, emb = [str(c) for c in ce.index], ce.to_numpy(dtype=np.float32)
        source = "embeddings"
    elif markers is None:
        raise ValueError("Pass markers ({class: [genes]} or a bulk AnnData) or class_embeddings.")
    else:
        if isinstance(markers, AnnData):
            sentences = bulk_sentences(markers, groupby=groupby, **dict(sentence_kwargs or {}))
            source = "bulk"
        else:
            vocab = vocabulary
            if vocab is None and adata.n_vars:
                vocab = adata.var_names
            elif vocab is None:
                logger.info("the table holds no genes (an image-only section): markers are used as given")
            sentences, missing = marker_sentences(markers, vocab, max_genes=max_markers)
            source = "markers"
        classes = list(sentences)
        emb = None
    if len(set(classes)) != len(classes):
        raise ValueError(f"Class names must be unique, got {classes}.")
    fused_other = None
    if fuse_with is not None:
        if isinstance(fuse_with, pd.DataFrame):
            require_keys(fuse_with.columns, classes, "fuse_with.columns")
            missing_rows = adata.obs_names.difference(fuse_with.index)
            if len(missing_rows):
                raise ValueError(
                    f"fuse_with has no row for {len(missing_rows)} of the {adata.n_obs} items (e.g. "
                    f"{', '.join(map(repr, missing_rows[:3]))}); its index must hold the table's obs_names."
                )
            if not fuse_with.index.is_unique:
                raise ValueError(
                    "fuse_with's index has duplicated names; rows are matched to obs_names by name."
                )
            fused_other = fuse_with.loc[adata.obs_names, classes].to_numpy(dtype=np.float64)
        else:
            fused_other = np.asarray(fuse_with, dtype=np.float64)
        if fused_other.shape != (adata.n_obs, len(classes)):
            raise ValueError(
                f"fuse_with must be items x classes {(adata.n_obs, len(classes))}, got {fused_other.shape}."
            )
        if not np.isfinite(fused_other).all():
            raise ValueError("fuse_with contains NaN or infinite values.")
    if emb is None:
        recorded = embedding_model(adata, use)
        if recorded is not None and isinstance(getattr(model, "checkpoint_hash", None), str):
            info = model.info() if callable(getattr(model, "info", None)) else {}
            mine = {"model": getattr(model, "name", "?"), **info, "checkpoint_hash": model.checkpoint_hash}
            warn_if_models_differ({f"adata.obsm[{use!r}]": recorded, "the class embeddings (model=)": mine})
        emb = _encode(model, [sentences[c] for c in classes])
        if emb.shape[0] != len(classes):
            raise ValueError(f"The model returned {emb.shape[0]} embeddings for {len(classes)} sentences.")
    # validates embedding sizes before anything is written
    scores = _cosine_scores(items, emb, overwrite_items=own_items)
    del items  # normalised in place when it was a copy
    if missing:
        listing = "; ".join(f"{c}: {', '.join(m)}" for c, m in missing.items())
        warnings.warn(
            f"Markers absent from the vocabulary were left out ({listing}).",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
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
    index = adata.obs_names.copy()
    result = Annotation(
        scores=pd.DataFrame(scores, index=index, columns=classes),
        labels=pd.Series(labels, index=index, name=label_key),
        fused=None if fused_other is None else pd.DataFrame(final, index=index, columns=classes),
    )
    if not inplace:
        return result

    record = {
        "tool": "tl.annotate",
        "use": use,
        "source": source,
        "classes": classes,
        "classes_without_spots": without_spots,
        "sentences": [sentences.get(c, "") for c in classes],
        "missing_markers": [" ".join(missing.get(c, [])) for c in classes],
        "fused": fused_other is not None,
        "label_key": label_key,
    }
    if copy:
        adata = adata.copy()
    with all_or_nothing():
        write_obsm(adata, key_added, result.scores)
        if result.fused is not None:
            write_obsm(adata, fused_key, result.fused)
        else:  # an earlier call's, which these labels would contradict
            drop_obsm(adata, fused_key, "of an earlier call (no fuse_with now)")
        write_obs(adata, label_key, result.labels)
        write_uns(adata, key_added, record)
    return adata if copy else None
