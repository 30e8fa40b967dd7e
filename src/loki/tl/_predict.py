"""Loki PredEx: expression of query spots as the similarity-weighted average of reference spots (eq. 16)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from copy import deepcopy
from typing import TYPE_CHECKING, Literal

import numba
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    all_or_nothing,
    block_starts,
    check_int,
    check_key_name,
    check_result_key,
    check_unique_var_names,
    require_keys,
    write_layer,
    write_uns,
)
from loki._utils._backed import read_matrix
from loki._utils._provenance import embedding_model, warn_if_models_differ
from loki._utils._rng import SeedLike, as_seed
from loki._utils._spatialdata import is_spatialdata
from loki._utils._threads import keep_torch_threads

from ._candidates import Search, check_search, topk_search
from ._retrieve import _check_pair, embeddings_of, l2_normalize, table_of

if TYPE_CHECKING:
    from spatialdata import SpatialData

Negative = Literal["clip", "keep"]

#: Default block of the all-reference path: queries per block so that their scores fit in 64 MiB.
_SCORE_BLOCK_BYTES = 64 * 2**20


def similarity_weights(
    scores: np.ndarray, *, temperature: float | None = None, negative: Negative = "clip"
) -> tuple[np.ndarray, np.ndarray]:
    """Turn similarity scores (rows = queries) into averaging weights.

    - ``temperature=None``: the similarities themselves (eq. 16). With ``negative="clip"`` negative
      similarities get weight 0 - a reference spot unlike the query does not pull the prediction
      away from its own expression - and a row without any positive similarity falls back to
      uniform weights. ``negative="keep"`` uses the raw similarities as published; weights of both
      signs can then cancel and the prediction is unstable where their sum is close to 0 (a row
      whose weights sum to exactly 0 falls back to uniform weights).
    - ``temperature=t``: softmax weights ``exp((s - max s) / t)``, always positive; smaller ``t``
      concentrates on the most similar spots.

    Returns
    -------
    Weights (same shape, float32) and a boolean array of the rows that fell back to uniform weights.

    """
    s = np.asarray(scores, dtype=np.float32)
    if temperature is not None:
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        w = np.exp((s - s.max(axis=1, keepdims=True)) / np.float32(temperature))
        return w, np.zeros(len(s), dtype=bool)
    if negative == "keep":
        cancelled = s.sum(axis=1) == 0  # the weighted mean is undefined; as with "clip", fall back to uniform
        if cancelled.any():
            s = s.copy()
            s[cancelled] = 1.0
        return s, cancelled
    if negative != "clip":
        raise ValueError(f"negative must be 'clip' or 'keep', got {negative!r}.")
    w = np.maximum(s, 0)
    empty = ~(w > 0).any(axis=1)
    if empty.any():
        w[empty] = 1.0
    return w, empty


@numba.njit(parallel=True, cache=True)
def _gather_average(weights, idx, expr, out):  # pragma: no cover - numba
    nq, k = idx.shape
    for q in numba.prange(nq):
        total = 0.0
        for j in range(k):
            w = weights[q, j]
            total += w
            row = expr[idx[q, j]]
            for g in range(expr.shape[1]):
                out[q, g] += w * row[g]
        if total != 0.0:
            for g in range(expr.shape[1]):
                out[q, g] /= total


def predict_from_embeddings(
    queries: np.ndarray,
    reference: np.ndarray,
    expression: np.ndarray | sparse.spmatrix,
    *,
    top_k: int | None = None,
    temperature: float | None = None,
    negative: Negative = "clip",
    search: Search = "exact",
    n_components: int | None = None,
    n_candidates: int | None = None,
    n_lists: int | None = None,
    n_probe: int | None = None,
    seed: SeedLike = 0,
    chunk_size: int | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, int]:
    """Eq. 16 on arrays: ``X_i = sum_j w_ij X_j / sum_j w_ij`` with weights from cosine similarities.

    Parameters
    ----------
    queries
        n_queries x d embeddings (e.g. image embeddings of the held-out section).
    reference
        n_ref x d embeddings of the reference spots (e.g. their text embeddings).
    expression
        n_ref x n_genes expression of the reference spots (dense or sparse; a matrix of an AnnData
        read with ``backed="r"`` is read into memory).
    top_k
        Average over the ``top_k`` most similar reference spots only; None uses all.
    temperature, negative
        Weighting, see :func:`similarity_weights`.
    search, n_components, n_candidates, n_lists, n_probe, seed
        How the ``top_k`` spots are found, as in :func:`predict_expression` (``search="pca"`` /
        ``"ivf"``: approximate, :func:`~loki.tl._candidates.topk_cosine_pca`); ignored with ``"exact"``.
    chunk_size
        Queries per block when all reference spots are used (bounds memory to a block of scores).
        Default: blocks of at most 64 MiB of scores (335 queries for 50,000 reference spots), which
        ran 10-20% faster than 1,024-query blocks on a 2-core machine. With ``top_k`` the search
        bounds its own score blocks (128 MiB, :func:`~loki.tl._retrieve.topk_cosine`) and this is
        not used.
    progress
        Progress bar over query blocks.

    Returns
    -------
    Predicted expression (n_queries x n_genes, float32) and the number of queries whose weights fell
    back to uniform because no similarity was positive.

    """
    q = np.asarray(queries, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    _check_pair(q, ref, 1 if top_k is None else top_k)
    sizes = check_search(
        search, top_k, ref.shape[0], ref.shape[1], n_components, n_candidates, n_lists, n_probe, seed
    )
    check_int(chunk_size, "chunk_size", optional=True)
    if expression.shape[0] != ref.shape[0]:
        raise ValueError(
            f"expression has {expression.shape[0]} rows, the reference embeddings {ref.shape[0]}."
        )
    expression = read_matrix(expression)
    is_sparse = sparse.issparse(expression)
    x = (
        sparse.csr_matrix(expression, dtype=np.float32)
        if is_sparse
        else np.asarray(expression, dtype=np.float32)
    )
    if not np.isfinite(x.data if is_sparse else x).all():
        raise ValueError("expression contains NaN or infinite values.")
    out = np.zeros((len(q), x.shape[1]), dtype=np.float32)
    n_fallback = 0
    if top_k is not None:
        idx, scores = topk_search(q, ref, top_k, sizes, seed=seed, progress=progress)
        w, fb = similarity_weights(scores, temperature=temperature, negative=negative)
        n_fallback = int(fb.sum())
        if is_sparse:
            wmat = sparse.csr_matrix(
                (w.ravel(), idx.ravel(), np.arange(0, w.size + 1, top_k)), shape=(len(q), len(ref))
            )
            out[:] = (wmat @ x).toarray()
            out /= w.sum(axis=1, keepdims=True)
        else:
            with keep_torch_threads():  # a parallel numba kernel
                _gather_average(w, idx, np.ascontiguousarray(x), out)
        return out, n_fallback
    qn, rn = l2_normalize(q, "queries"), l2_normalize(ref, "reference")
    if chunk_size is None:
        chunk_size = max(1, _SCORE_BLOCK_BYTES // (4 * len(ref)))
    for start in block_starts(len(q), chunk_size, progress=progress, desc="predict"):
        w, fb = similarity_weights(
            qn[start : start + chunk_size] @ rn.T, temperature=temperature, negative=negative
        )
        n_fallback += int(fb.sum())
        block = np.asarray(x.T @ w.T).T if is_sparse else w @ x
        out[start : start + chunk_size] = block / w.sum(axis=1, keepdims=True)
    return out, n_fallback


def _expression_of(table: AnnData, layer: str | None):
    if layer is None:
        if table.X is None:
            raise ValueError("The reference's .X is empty; pass layer= to choose its expression.")
        return table.X
    require_keys(table.layers, layer, "reference.layers")
    return table.layers[layer]


def _check_query_genes_in_reference(genes: list[str], ref_genes: pd.Index) -> None:
    """Refuse ``output='layer'`` when the reference lacks some of the query's ``genes``, saying what to do.

    The layer covers the query's own genes, so each must be predicted from the reference; the
    KeyError counts and names the query's genes the reference lacks and gives the two ways out.
    """
    query_genes = pd.Index(genes)
    absent = query_genes[~query_genes.isin(ref_genes)]
    if absent.empty:
        return
    shared = len(query_genes) - len(absent)
    shown = ", ".join(map(repr, absent[:5])) + (", ..." if len(absent) > 5 else "")
    message = (
        f"output='layer' writes a layer over the query's own genes (its var_names), but the reference "
        f"lacks {'all ' if shared == 0 else ''}{len(absent)} of the query's {len(query_genes)} genes "
        f"({shown}). "
    )
    by_case = {g.casefold(): g for g in ref_genes.astype(str)}
    near = [(g, by_case[g.casefold()]) for g in absent.astype(str) if g.casefold() in by_case]
    if near:
        message += (
            f"{len(near)} of them {'differs' if len(near) == 1 else 'differ'} from a reference gene "
            "only in case (e.g. " + ", ".join(f"{g!r} -> {r!r}" for g, r in near[:3]) + "). "
        )
    if shared == 0:
        message += (
            "The sections share no gene: output='anndata' (the default) predicts the reference's "
            f"genes (e.g. {', '.join(map(repr, ref_genes[:3]))}) into a new AnnData."
        )
    else:
        message += (
            f"For the {shared} gene{'s' if shared > 1 else ''} both have, either predict "
            f"{'them' if shared > 1 else 'it'} into a new AnnData with "
            "output='anndata', genes=query.var_names[query.var_names.isin(reference.var_names)], or "
            f"subset the query to {'them' if shared > 1 else 'it'} first: "
            "query[:, query.var_names.isin(reference.var_names)] "
            "(query and reference being the tables)."
        )
    raise KeyError(message)


def predict_expression(
    query: AnnData | SpatialData | np.ndarray,
    reference: AnnData | SpatialData,
    *,
    use_query: str = Key.IMAGE,
    use_reference: str = Key.TEXT,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    top_k: int | None = None,
    temperature: float | None = None,
    negative: Negative = "clip",
    search: Search = "exact",
    n_components: int | None = None,
    n_candidates: int | None = None,
    n_lists: int | None = None,
    n_probe: int | None = None,
    seed: SeedLike = 0,
    output: Literal["anndata", "layer"] = "anndata",
    query_table_key: str | None = None,
    reference_table_key: str | None = None,
    key_added: str = Key.PREDICTED,
    chunk_size: int | None = None,
    progress: bool = False,
    copy: bool = False,
) -> AnnData | None:
    """Predict the expression of query spots from their embeddings and a reference section (eq. 16).

    Each query spot's expression is the average of the reference spots' expression weighted by the
    cosine similarity between the query's embedding (by default its H&E patch) and the reference
    spots' embeddings (by default their transcriptome text embeddings).

    Parameters
    ----------
    query
        Table (AnnData / SpatialData) with ``.obsm[use_query]``, or an embedding array.
    reference
        Table with ``.obsm[use_reference]`` and expression in ``.X`` or ``.layers[layer]``, e.g.
        log-normalised counts. It may be read with ``backed="r"``: the expression of the predicted
        genes is then read into memory.
    use_query, use_reference
        ``.obsm`` keys of the embeddings. A :class:`~loki.LokiWarning` says so when their records
        (``.uns['loki']``) name different model weights.
    layer
        Reference layer holding the expression to average (``.X`` when None).
    genes
        Reference genes to predict (default: all); one name is one gene.
    top_k
        Average over the ``top_k`` most similar reference spots only.
    temperature
        Softmax weights at this temperature instead of raw similarities.
    negative
        How raw-similarity weights treat negative cosine similarities: ``"clip"`` (default) gives them
        weight 0 and falls back to uniform weights for a query with no positive similarity (counted in
        ``.uns``); ``"keep"`` is eq. 16 verbatim (a query whose similarities sum to exactly 0 falls back
        the same way). Ignored with ``temperature``.
    search
        ``"exact"`` (default): the ``top_k`` spots are found among all reference spots. ``"pca"``:
        approximate and faster for large references - candidates are chosen by similarity on the
        reference's top ``n_components`` principal axes, ``n_candidates`` per query, then re-ranked
        with the full embeddings. A true top-k spot outside the candidates is missed; check the
        recall against ``"exact"`` on a subset of your data. Needs ``top_k``. ``"ivf"``: as
        ``"pca"``, but the projected reference spots are split into ``n_lists`` k-means cells and each
        query is scored only against the spots of its ``n_probe`` best cells (faster, lower recall).
    n_components
        Principal axes for ``search="pca"`` / ``"ivf"``, at most the embedding size (default
        ``min(64, d)``).
    n_candidates
        Candidates per query re-ranked exactly, between ``top_k`` and the number of reference spots
        (default ``min(4 top_k, n_ref)``).
    n_lists, n_probe
        Cells and probed cells per query of ``search="ivf"`` (defaults ``round(sqrt(n_ref))`` and
        ``ceil(n_lists / 8)``).
    seed
        Seed of the reference subsamples the principal axes and cells are fitted on: an int >= 0, a
        numpy Generator, or None for fresh OS entropy; the int used is recorded, so that a run can be
        repeated.
    output
        ``"anndata"``: return a new AnnData (query spots x reference genes; ``.X`` = prediction, obs,
        ``obsm['spatial']`` and ``uns['spatialdata_attrs']`` copied from the query table, so that the
        result of a SpatialData table annotates the same spots: ``sdata.tables["pred"] = result``). ``"layer"``: write ``.layers[key_added]`` on
        the query table, whose ``var_names`` must all be reference genes (aligned to its own order);
        for sections that share only some genes, predict those into a new AnnData (``genes=``) or
        subset the query to them.
    query_table_key, reference_table_key
        Tables of SpatialData inputs.
    key_added
        Layer name (``output="layer"``) and ``.uns['loki']`` key of the parameters.
    chunk_size
        Queries per block when all reference spots are used (default: 64 MiB blocks of scores);
        with ``top_k`` the search bounds its own blocks.
    progress
        Progress bar.
    copy
        With ``output="layer"`` on an AnnData, write into a copy and return it.

    Returns
    -------
    ``output="anndata"``: the new AnnData, with ``.uns['loki'][key_added]`` holding the parameters
    (including ``search``, ``n_components``, ``n_candidates`` and ``seed``; -1 where not used), and
    scanpy's ``.uns['log1p']`` record when the reference's ``.X`` has one (an average of log1p values
    is on the log scale; ``anndata.concat`` keeps the record of a reference built from several
    sections with ``uns_merge="same"``).
    ``output="layer"``: None (or the copy), after writing ``.layers[key_added]`` (float32, query spots x
    query genes) and ``.uns['loki'][key_added]`` on the query table. A layer of that name that no
    earlier prediction wrote (the query's counts, say) is replaced with a :class:`~loki.LokiWarning`.

    """
    check_key_name(key_added)
    if output not in ("anndata", "layer"):
        raise ValueError(f"output must be 'anndata' or 'layer', got {output!r}.")
    if copy and (output != "layer" or is_spatialdata(query)):
        raise ValueError("copy=True applies to output='layer' on an AnnData query.")
    q, q_names = embeddings_of(query, use_query, query_table_key, "query")
    ref_table = table_of(reference, reference_table_key, "reference")
    require_keys(ref_table.obsm, use_reference, "reference.obsm")
    ref = embeddings_of(ref_table, use_reference, None, "reference")[0]
    if not isinstance(query, np.ndarray) and table_of(query, query_table_key, "query") is ref_table:
        warnings.warn(
            "predict_expression: the query and the reference are one table, so each query spot finds "
            "itself among its most similar reference spots and the prediction copies its own "
            "expression: scores against it are inflated. Predict from another section, or use "
            "lk.tl.predict_expression_loso to hold each section out.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    warn_if_models_differ(
        {
            f"query .obsm[{use_query!r}]": embedding_model(query, use_query, query_table_key),
            f"reference .obsm[{use_reference!r}]": embedding_model(ref_table, use_reference),
        }
    )
    _check_top_k(top_k, ref.shape[0], "the reference")
    sizes = check_search(
        search, top_k, ref.shape[0], ref.shape[1], n_components, n_candidates, n_lists, n_probe, seed
    )
    if sizes is not None:
        seed = as_seed(seed)  # recorded, so that a run with seed=None or a Generator can be repeated
    x = _expression_of(ref_table, layer)
    check_unique_var_names(ref_table, "reference")
    ref_genes = pd.Index(ref_table.var_names)
    if ref_genes.empty:
        raise ValueError(
            f"The reference has no genes ({ref_table.n_obs} spots x 0 genes), so there is no expression to "
            "average: pass a table with measured expression as reference (the tiles of an H&E image, from "
            "lk.pp.tile_image, are a query)."
        )
    query_table = (
        table_of(query, query_table_key, "query")
        if isinstance(query, AnnData) or is_spatialdata(query)
        else None
    )
    if output == "layer":
        if query_table is None:
            raise ValueError("output='layer' needs an AnnData / SpatialData query; got an array.")
        check_result_key(query_table, key_added, ("layers", "uns"), tool="tl.predict_expression")
        if genes is not None:
            raise ValueError("With output='layer' the genes are the query's var_names; do not pass genes=.")
        check_unique_var_names(query_table, "query")
        genes = list(query_table.var_names)
        if not genes:
            raise ValueError(
                "The query table has no genes, and output='layer' predicts the query's own genes; use "
                "output='anndata' to get a new AnnData with the reference's genes."
            )
        _check_query_genes_in_reference(genes, ref_genes)
    if genes is not None:
        genes = _gene_list(genes)
        require_keys(ref_genes, genes, "reference.var_names")
        x = read_matrix(x, ref_genes.get_indexer(genes))
    else:
        genes = list(ref_genes)  # a backed matrix is read whole by predict_from_embeddings
    pred, n_fallback = predict_from_embeddings(
        q,
        ref,
        x,
        top_k=top_k,
        temperature=temperature,
        negative=negative,
        search=search,
        n_components=n_components,
        n_candidates=n_candidates,
        n_lists=n_lists,
        n_probe=n_probe,
        seed=seed,
        chunk_size=chunk_size,
        progress=progress,
    )
    if n_fallback:
        warnings.warn(
            _fallback_message(n_fallback, negative, top_k), LokiWarning, stacklevel=user_stacklevel()
        )
    params = {
        "tool": "tl.predict_expression",
        "use_query": use_query,
        "use_reference": use_reference,
        "layer": "X" if layer is None else layer,
        "top_k": -1 if top_k is None else int(top_k),
        "temperature": -1.0 if temperature is None else float(temperature),
        "negative": negative,
        "search": search,
        "n_components": -1 if sizes is None else sizes["n_components"],
        "n_candidates": -1 if sizes is None else sizes["n_candidates"],
        "n_lists": -1 if sizes is None else sizes.get("n_lists", -1),
        "n_probe": -1 if sizes is None else sizes.get("n_probe", -1),
        "seed": -1 if sizes is None else int(seed),
        "n_reference": int(ref.shape[0]),
        "n_fallback": n_fallback,
    }
    if output == "layer":
        target = query_table.copy() if copy else query_table
        _warn_if_replacing_a_layer(target, key_added)
        with all_or_nothing():
            write_layer(target, key_added, pred)
            write_uns(target, key_added, params)
        return target if copy else None
    obs = query_table.obs.copy() if query_table is not None else pd.DataFrame(index=q_names.astype(str))
    result = AnnData(X=pred, obs=obs, var=pd.DataFrame(index=pd.Index(genes, dtype=str)))
    if query_table is not None and Key.SPATIAL in query_table.obsm:
        result.obsm[Key.SPATIAL] = np.array(query_table.obsm[Key.SPATIAL])  # a copy: the result is new
    if query_table is not None and "spatialdata_attrs" in query_table.uns:
        # obs holds the query's region / instance columns: the result annotates the same spots
        result.uns["spatialdata_attrs"] = deepcopy(dict(query_table.uns["spatialdata_attrs"]))
    if layer is None and "log1p" in ref_table.uns:
        # an average of log1p values is on the log scale: scanpy's record of it comes along, so that
        # sc.pp.log1p on the prediction says "already log-transformed" and the base is known
        result.uns["log1p"] = deepcopy(dict(ref_table.uns["log1p"]))
    write_uns(result, key_added, params)
    return result


def predict_expression_loso(
    sections: Mapping[str, AnnData | SpatialData],
    *,
    use_query: str = Key.IMAGE,
    use_reference: str = Key.TEXT,
    layer: str | None = None,
    genes: Sequence[str] | None = None,
    top_k: int | None = None,
    temperature: float | None = None,
    negative: Negative = "clip",
    search: Search = "exact",
    n_components: int | None = None,
    n_candidates: int | None = None,
    n_lists: int | None = None,
    n_probe: int | None = None,
    seed: SeedLike = 0,
    progress: bool = False,
) -> tuple[dict[str, AnnData], pd.DataFrame]:
    """Leave-one-section-out PredEx: predict each section from all the others and score it.

    For each section in turn, the other sections (their ``use_reference`` embeddings and expression)
    form the reference and the held-out section's ``use_query`` embeddings are the queries. The
    embeddings are taken as given: for an honest estimate they must come from a model that did not
    see the held-out section (fine-tune one model per fold).

    Parameters
    ----------
    sections
        Section name -> table with both embeddings and measured expression (``.X`` or ``layer``): an
        AnnData, or a SpatialData whose table of that name (or only table) is used, e.g.
        ``{s: sdata for s in ("MOB1", "MOB2", "MOB3")}`` for the tables of one SpatialData.
    use_query, use_reference, layer
        As in :func:`predict_expression`.
    genes
        Genes to predict and score (default: the genes shared by all sections); one name is one gene.
    top_k, temperature, negative
        As in :func:`predict_expression`.
    search, n_components, n_candidates, n_lists, n_probe, seed
        Top-k search, as in :func:`predict_expression`.
    progress
        As in :func:`predict_expression`.

    Returns
    -------
    The predictions per held-out section (AnnData, spots x genes, with ``.layers['measured']``, and
    ``.uns['log1p']`` when every reference section's ``.X`` has scanpy's record) and a
    DataFrame of per-gene scores with columns ``section``, ``gene``, ``pcc`` (Pearson over spots; NaN
    for genes constant in the section) and ``mse``.

    """
    from loki.metrics import mse, pearson

    if not isinstance(sections, Mapping):
        raise TypeError(
            f"sections must map section names to tables, e.g. {{'A1': adata_a1, 'A2': adata_a2}}; got "
            f"{type(sections).__name__}."
        )
    sections = {name: _section_table(name, data) for name, data in sections.items()}
    if len(sections) < 2:
        raise ValueError(f"Leave-one-section-out needs at least 2 sections, got {len(sections)}.")
    common = None
    n_spots = sum(table.n_obs for table in sections.values())
    for name, table in sections.items():
        require_keys(table.obsm, [use_query, use_reference], f"sections[{name!r}].obsm")
        _check_top_k(top_k, n_spots - table.n_obs, f"the reference when {name!r} is held out")
        _expression_of(table, layer)
        check_unique_var_names(table, f"sections[{name!r}]")
        common = (
            pd.Index(table.var_names) if common is None else common.intersection(table.var_names, sort=False)
        )
    if genes is None:
        genes = list(common)
    else:
        genes = _gene_list(genes)
        require_keys(common, genes, "the genes shared by all sections")
    if not genes:
        raise ValueError("The sections share no gene.")
    warn_if_models_differ(
        {
            f"sections[{name!r}].obsm[{key!r}]": embedding_model(table, key)
            for name, table in sections.items()
            for key in dict.fromkeys((use_query, use_reference))
        }
    )
    predictions, rows = {}, []
    for held_out, query in sections.items():
        ref = _concat_reference(
            {k: v for k, v in sections.items() if k != held_out}, genes, use_reference, layer
        )
        pred = predict_expression(
            query,
            ref,
            use_query=use_query,
            use_reference=use_reference,
            genes=genes,
            top_k=top_k,
            temperature=temperature,
            negative=negative,
            search=search,
            n_components=n_components,
            n_candidates=n_candidates,
            n_lists=n_lists,
            n_probe=n_probe,
            seed=seed,
            progress=progress,
        )
        measured = _dense(
            read_matrix(_expression_of(query, layer), pd.Index(query.var_names).get_indexer(genes))
        )
        pred.layers["measured"] = measured
        predictions[held_out] = pred
        rows.append(
            pd.DataFrame(
                {
                    "section": held_out,
                    "gene": genes,
                    "pcc": pearson(measured, pred.X, axis=0),
                    "mse": mse(measured, pred.X, axis=0),
                }
            )
        )
        logger.info("PredEx held out %r against %d reference spots", held_out, ref.n_obs)
    return predictions, pd.concat(rows, ignore_index=True)


def _warn_if_replacing_a_layer(table: AnnData, key: str) -> None:
    """Warn before ``output="layer"`` replaces a layer that no earlier prediction wrote under ``key``.

    A query's layers often hold its measurement (``"counts"``), which cannot be recovered; a rerun of
    :func:`predict_expression` under its own key (its ``.uns['loki']`` record) replaces it silently.
    """
    if key not in table.layers:
        return
    record = table.uns.get(Key.UNS, {})
    record = record.get(key) if isinstance(record, Mapping) else None
    if isinstance(record, Mapping) and record.get("tool") == "tl.predict_expression":
        return
    warnings.warn(
        f"key_added={key!r} replaces the query's .layers[{key!r}], which lk.tl.predict_expression did not "
        "write (no record of it in .uns['loki']); pass another key_added= to keep that layer.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _section_table(name: str, data) -> AnnData:
    """The table of section ``name``: an AnnData, or a SpatialData's table of that name (or its only one)."""
    if isinstance(data, AnnData):
        return data
    if not is_spatialdata(data):
        raise TypeError(f"sections[{name!r}] must be an AnnData or a SpatialData, got {type(data).__name__}.")
    tables = data.tables
    if name in tables:
        return tables[name]
    if len(tables) == 1:
        return next(iter(tables.values()))
    raise ValueError(
        f"sections[{name!r}] is a SpatialData with tables {', '.join(map(repr, tables.keys())) or 'none'}, none "
        f"named {name!r}: name each section after its table (e.g. {{'MOB1': sdata, 'MOB2': sdata}}) or pass "
        "the table itself (sdata.tables['MOB1'])."
    )


def _fallback_message(n_fallback: int, negative: Negative, top_k: int | None) -> str:
    """The warning for queries whose raw-similarity weights fell back to uniform weights."""
    spots = f"their top-{top_k} reference spots" if top_k is not None else "the reference spots"
    if negative == "keep":
        why = f"similarities to {spots} that sum to 0 (negative='keep' weights by the raw similarities)"
    else:
        why = f"no positive similarity to any of {spots} (negative='clip' gives negative ones weight 0)"
    return (
        f"{n_fallback} query spot(s) have {why}; they get uniform weights over {spots}, i.e. the "
        "unweighted mean of their expression. Softmax weights (temperature=) avoid this."
    )


def _check_top_k(top_k: int | None, n_reference: int, reference: str) -> None:
    """``top_k`` must be None or a positive integer of at most ``n_reference`` (the reference's spots, > 0).

    Checked before any search, so that the message names ``top_k`` and the reference, not the search's
    own ``k`` and bank.
    """
    if n_reference == 0:
        raise ValueError(
            f"{reference[0].upper()}{reference[1:]} has no spots: there is nothing to predict from."
        )
    if check_int(top_k, "top_k", optional=True) is None:
        return
    if top_k > n_reference:
        raise ValueError(
            f"top_k={top_k} is larger than {reference} ({n_reference} spots); pass top_k <= {n_reference} "
            "or None."
        )


def _gene_list(genes: str | Sequence[str]) -> list[str]:
    # one name is one gene, not its letters
    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    if not genes:
        raise ValueError("genes= is empty; pass gene names, or None for all of the reference's genes.")
    names = pd.Index(genes)
    repeated = list(names[names.duplicated()].unique())
    if repeated:
        raise ValueError(
            f"genes= names {', '.join(map(repr, repeated[:5]))} more than once; the prediction's var_names "
            "must be unique (pass each gene once)."
        )
    return genes


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


def _concat_reference(
    sections: Mapping[str, AnnData], genes: list[str], use: str, layer: str | None
) -> AnnData:
    emb = np.concatenate([np.asarray(t.obsm[use], dtype=np.float32) for t in sections.values()])
    parts = [
        read_matrix(_expression_of(t, layer), pd.Index(t.var_names).get_indexer(genes))
        for t in sections.values()
    ]
    x = (
        sparse.vstack([sparse.csr_matrix(p, dtype=np.float32) for p in parts], format="csr")
        if any(sparse.issparse(p) for p in parts)
        else np.concatenate([_dense(p) for p in parts])
    )
    names = [f"{name}:{obs}" for name, t in sections.items() for obs in t.obs_names]
    ref = AnnData(
        X=x, obs=pd.DataFrame(index=pd.Index(names, dtype=str)), var=pd.DataFrame(index=pd.Index(genes))
    )
    ref.obsm[use] = emb
    records = [t.uns.get("log1p") for t in sections.values()] if layer is None else [None]
    if all(r is not None for r in records):  # every section's .X is log1p: the prediction is too
        ref.uns["log1p"] = deepcopy(dict(records[0]))
    return ref
