"""The classes of :func:`loki.tl.annotate`: gene sentences of marker lists or bulk profiles, their embeddings.

A class is described by a gene sentence (its markers, or the top genes of a bulk profile) that the
model's text encoder embeds, or given as a precomputed embedding.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import logger
from loki._utils import check_int, check_labelled, require_keys
from loki._utils._labels import label_categories
from loki._utils._provenance import embedding_model, warn_if_models_differ

#: What :func:`marker_sentences` does with classes none of whose markers is in the vocabulary.
Unmatched = Literal["raise", "drop"]


class _Classes(NamedTuple):
    """The classes of an annotation, as :func:`annotation_classes` reads them from the call's arguments."""

    names: list[str]
    """Class names as text, in class order."""
    embeddings: np.ndarray | None
    """Classes x dims (``class_embeddings``), or None when the classes are still to be embedded."""
    sentences: dict[str, str]
    """Class -> gene sentence (empty for ``class_embeddings``)."""
    missing: dict[str, list[str]]
    """Class -> its markers absent from the vocabulary, for the classes that miss some."""
    given: dict[str, int]
    """Class -> the genes it was given: its distinct markers in the vocabulary, before ``max_markers``
    cuts them, or the genes of its bulk sentence (empty for ``class_embeddings``)."""
    source: str
    """``"embeddings"``, ``"bulk"`` or ``"markers"``."""
    dropped: dict[str, list[str]]
    """Class -> its markers, for the classes left out because none of their markers is in the vocabulary
    (``unmatched="drop"``)."""


def annotation_classes(
    adata: AnnData,
    markers,
    class_embeddings,
    *,
    groupby: str | None,
    vocabulary: Iterable[str] | None,
    max_markers: int,
    sentence_kwargs: Mapping[str, Any] | None,
    unmatched: Unmatched = "raise",
) -> _Classes:
    """The classes of :func:`~loki.tl.annotate`: from ``class_embeddings``, a bulk AnnData or marker lists.

    Exactly one of ``markers`` and ``class_embeddings`` must be given, and the class names must be
    unique. Marker lists are matched to ``vocabulary``, by default the genes of the annotated table
    ``adata`` (a table without genes uses the markers as given); ``unmatched`` says what becomes of
    classes none of whose markers is in it (:func:`marker_sentences`).
    """
    _check_unmatched(unmatched)
    sentences: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    given: dict[str, int] = {}
    emb = None
    if class_embeddings is not None:
        if markers is not None:
            raise ValueError("Pass either markers or class_embeddings, not both.")
        classes, emb = _given_embeddings(class_embeddings)
        source = "embeddings"
    elif markers is None:
        raise ValueError("Pass markers ({class: [genes]} or a bulk AnnData) or class_embeddings.")
    else:
        if isinstance(markers, AnnData):
            sentences = bulk_sentences(markers, groupby=groupby, **dict(sentence_kwargs or {}))
            given = {c: len(sentence.split()) for c, sentence in sentences.items()}
            source = "bulk"
        else:
            vocab = vocabulary
            if vocab is None and adata.n_vars:
                vocab = adata.var_names
            elif vocab is None:
                logger.info("the table holds no genes (an image-only section): markers are used as given")
            sentences, missing, given = marker_sentences(
                markers,
                vocab,
                max_genes=max_markers,
                vocabulary_name="the vocabulary" if vocabulary is not None else "the table's var_names",
                unmatched=unmatched,
            )
            source = "markers"
        classes = list(sentences)
    dropped = {c: m for c, m in missing.items() if c not in sentences}
    missing = {c: m for c, m in missing.items() if c in sentences}
    if len(set(classes)) != len(classes):
        raise ValueError(f"Class names must be unique, got {classes}.")
    return _Classes(classes, emb, sentences, missing, given, source, dropped)


def _check_unmatched(unmatched: str) -> None:
    if unmatched not in ("raise", "drop"):
        raise ValueError(f"unmatched must be 'raise' or 'drop', got {unmatched!r}.")


def _given_embeddings(class_embeddings) -> tuple[list[str], np.ndarray]:
    """Class names as text and the classes x dims float32 array of precomputed class embeddings.

    ``class_embeddings`` is a DataFrame (classes x dims) or a mapping class -> vector; one without
    any class is an error.
    """
    ce = (
        class_embeddings
        if isinstance(class_embeddings, pd.DataFrame)
        else pd.DataFrame({k: np.asarray(v, dtype=np.float32) for k, v in class_embeddings.items()}).T
    )
    if ce.shape[0] == 0:
        raise ValueError("class_embeddings holds no class.")
    return [str(c) for c in ce.index], ce.to_numpy(dtype=np.float32)


def embed_sentences(
    model: Any, sentences: list[str], adata: AnnData, use: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed the classes' ``sentences`` with ``model``: classes x dims float32, and how many words reached it.

    The word counts are those of :meth:`loki.models.OmiCLIP.encode_texts` (``return_word_counts``):
    an int ``(classes, 2)`` array of the words of each sentence that fit in the model's context
    (-1 for a sentence cut where that is not known) and its words; None for a model that does not
    count them (a callable, or an ``encode_texts`` without ``return_word_counts``).

    A :class:`~loki.LokiWarning` says so first when ``model`` is a loki model whose weights differ
    from those recorded for the items' ``adata.obsm[use]``. No ``model``, one that cannot encode,
    or one returning a number of embeddings other than the number of sentences is an error.
    """
    recorded = embedding_model(adata, use)
    if recorded is not None and isinstance(getattr(model, "checkpoint_hash", None), str):
        info = model.info() if callable(getattr(model, "info", None)) else {}
        mine = {"model": getattr(model, "name", "?"), **info, "checkpoint_hash": model.checkpoint_hash}
        warn_if_models_differ({f"adata.obsm[{use!r}]": recorded, "the class embeddings (model=)": mine})
    emb, words = _encode(model, sentences)
    if emb.shape[0] != len(sentences):
        raise ValueError(f"The model returned {emb.shape[0]} embeddings for {len(sentences)} sentences.")
    return emb, words


def _encode(model: Any, sentences: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """The float32 embeddings of ``sentences`` by ``model`` (``encode_texts`` or a callable), and its word counts.

    The counts are those of :func:`embed_sentences`, None where the model does not report them.
    """
    if model is None:
        raise ValueError(
            "Pass model= (e.g. lk.models.load('loki-tiny')) or class_embeddings= to embed the classes."
        )
    if hasattr(model, "encode_texts"):
        if not _counts_words(model.encode_texts):
            return np.asarray(model.encode_texts(sentences), dtype=np.float32), None
        emb, words = model.encode_texts(sentences, return_word_counts=True)
        return np.asarray(emb, dtype=np.float32), np.asarray(words, dtype=np.int64).reshape(len(sentences), 2)
    if callable(model):
        return np.asarray(model(sentences), dtype=np.float32), None
    raise TypeError(f"model must have encode_texts() or be callable, got {type(model).__name__}.")


def _counts_words(encode_texts: Any) -> bool:
    """Whether ``encode_texts`` takes ``return_word_counts`` (a loki model's does; a stand-in may not)."""
    try:
        return "return_word_counts" in inspect.signature(encode_texts).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins and C extensions)
        return False


def marker_sentences(
    markers: Mapping[str, Sequence[str]],
    vocabulary: Iterable[str] | None = None,
    *,
    max_genes: int = 50,
    vocabulary_name: str = "the vocabulary",
    unmatched: Unmatched = "raise",
) -> tuple[dict[str, str], dict[str, list[str]], dict[str, int]]:
    """One gene sentence per class: its first ``max_genes`` distinct markers in the given order, joined by spaces.

    Markers are matched to ``vocabulary`` ignoring case and written in the vocabulary's spelling (so
    human marker tables work on mouse data); markers absent from it are left out and returned.
    Classes none of whose markers is in it are left out with ``unmatched="drop"`` (they have no
    sentence, and all their markers are returned as missing); with ``"raise"`` they are an error that
    names all of them at once, says what the vocabulary is (``vocabulary_name``, e.g. ``"the table's
    var_names"``) and what it holds, and how to go on. No class left is an error either way.

    Returns
    -------
    Class -> sentence, class -> markers not found in the vocabulary (for the classes missing some),
    and class -> its distinct markers in the vocabulary, counted before ``max_genes`` cuts them.

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
    _check_unmatched(unmatched)
    names = pd.Series([str(c) for c in markers])
    if names.duplicated().any():
        clash = [c for c in markers if str(c) in set(names[names.duplicated()])]
        raise ValueError(f"Marker classes {clash!r} have the same name as text; give them distinct names.")
    lookup = None if vocabulary is None else {str(g).upper(): str(g) for g in vocabulary}
    sentences, missing, given, unmatched_classes = {}, {}, {}, []
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
                unmatched_classes.append(str(cls))
                continue
        distinct = list(dict.fromkeys(genes))
        given[str(cls)] = len(distinct)
        sentences[str(cls)] = " ".join(distinct[:max_genes])
    if unmatched_classes and (unmatched == "raise" or not sentences):
        raise ValueError(
            _no_marker_message(
                unmatched_classes, missing, len(markers), list(lookup.values()), vocabulary_name
            )
        )
    return sentences, {c: m for c, m in missing.items() if m}, given


def _no_marker_message(
    unmatched: list[str], missing: dict[str, list[str]], n_classes: int, vocabulary: list[str], name: str
) -> str:
    """The error for classes none of whose markers is in the vocabulary: all of them, and what to do."""
    from loki.pp._sentences import looks_like_ensembl

    shown = "; ".join(
        f"{c!r} ({', '.join(missing[c][:3])}{', ...' if len(missing[c]) > 3 else ''})" for c in unmatched[:10]
    )
    more = f"; and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
    example = ", ".join(repr(g) for g in vocabulary[:3])
    message = (
        f"None of the markers of {len(unmatched)} of the {n_classes} classes is in {name} ({len(vocabulary)} "
        f"genes, e.g. {example}): {shown}{more}. "
    )
    if len(vocabulary) and looks_like_ensembl(vocabulary).mean() > 0.5:
        message += (
            "They look like Ensembl ids: map them to symbols first with lk.pp.map_gene_ids(adata, mapping). "
        )
    if len(unmatched) < n_classes:
        kept = (
            f"{{c: g for c, g in markers.items() if c not in {unmatched!r}}}"
            if len(unmatched) <= 5
            else "{c: g for c, g in markers.items() if {x.upper() for x in g} & measured}, where "
            + (
                "measured = set(adata.var_names.str.upper())"
                if name == "the table's var_names"
                else "measured = {v.upper() for v in vocabulary}"
            )
        )
        message += (
            "Pass unmatched='drop' to leave those classes out (a warning names them, and "
            ".uns['loki'][key_added]['classes_dropped'] records them), pass only the classes the table "
            f"measures: markers={kept}, or give them markers the table measures."
        )
    return message.rstrip()


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
        bulk = _pseudo_bulk(bulk, groupby)
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


def _pseudo_bulk(bulk: AnnData, groupby: str) -> AnnData:
    """One profile per group of ``bulk.obs[groupby]``: the sum of its samples, named by the group as text.

    The groups are ordered as :func:`loki.tl.decompose` orders cell types; categories without a
    sample are left out (logged). Every sample needs a label. Only ``.X`` and the gene names are kept.
    """
    require_keys(bulk.obs.columns, groupby, "bulk.obs")
    check_labelled(bulk.obs[groupby], f"bulk.obs[{groupby!r}]", "samples")
    # the order decompose gives the same labels: declared categories, numbers as numbers
    groups = label_categories(bulk.obs[groupby])
    unused = [
        str(c) for c in groups.categories[np.bincount(groups.codes, minlength=len(groups.categories)) == 0]
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
    return AnnData(
        X=sparse.csr_matrix(x),
        obs=pd.DataFrame(index=pd.Index(groups.categories, dtype=str)),
        var=bulk.var[[]],
    )
