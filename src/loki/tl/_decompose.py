"""Loki Decompose: cell-type proportions of spots or H&E patches from a labelled scRNA-seq reference.

Glue between AnnData / SpatialData and the array code in :mod:`loki.tl._mapping` (Tangram-style
optimisation, eq. 12) and :mod:`loki.tl._nnls`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import logger
from loki._utils import (
    as_seed,
    check_array_finite,
    check_key_name,
    check_labelled,
    check_obs_key,
    check_unique_var_names,
    require_keys,
    write_obsm,
    write_uns,
)
from loki._utils._spatialdata import get_table, is_spatialdata

from ._mapping import mapping_to_proportions, nms_refine, normalize_rows, percentile_normalize
from ._nnls import nnls_weights, type_means

if TYPE_CHECKING:
    from spatialdata import SpatialData

Method = Literal["nnls", "mapping"]
Mode = Literal["clusters", "cells"]

_METHODS = ("nnls", "mapping")
_MODES = ("clusters", "cells")


def decompose(
    data: AnnData | SpatialData,
    *,
    reference: AnnData,
    cell_type_key: str,
    use: str = "X",
    reference_use: str | None = None,
    method: Method = "nnls",
    mode: Mode = "clusters",
    layer: str | None = None,
    reference_layer: str | None = None,
    table_key: str | None = None,
    epochs: int = 1000,
    lr: float = 0.1,
    lambda_g1: float = 1.0,
    lambda_g2: float = 0.0,
    lambda_d: float = 1.0,
    lambda_r: float = 0.0,
    density_prior: Literal["uniform"] | np.ndarray | None = "uniform",
    refine: Literal["nms"] | None = None,
    normalize: Literal["percentile"] | None = None,
    percentiles: tuple[float, float] = (5.0, 95.0),
    min_cells_per_type: int = 2,
    return_mapping: bool = False,
    seed: int | np.random.Generator | None = 0,
    device: str = "auto",
    num_threads: int | None = None,
    progress: bool = False,
    key_added: str = Key.PROPORTIONS,
    copy: bool = False,
    inplace: bool = True,
) -> AnnData | pd.DataFrame | None:
    """Estimate the cell-type proportions of every spot (or H&E patch) from a labelled reference.

    Two methods share the same inputs:

    ``method="mapping"`` is our torch implementation of the paper's Tangram-style objective
    (eq. 12): a mapping ``M`` (sources x spots, softmax over spots for every source) is fitted by
    Adam so that the mapped reference features ``M^T S`` have, for every feature, the highest cosine
    similarity with the spot features ``G``, under a uniform density prior (KL term). In
    ``mode="clusters"`` a source is a cell type (features summed over its cells, as tangram-sc does);
    in ``mode="cells"`` every reference cell is a source. The proportions of spot ``j`` are the
    expected numbers of cells of each type mapped to it, normalised to sum to 1.

    ``method="nnls"`` (default) solves a non-negative least-squares problem per spot on the per-type
    mean profiles and normalises the weights. It is the default because on pseudo-spots built from
    real labelled cells (spacexr's hypothalamus and hippocampus references split in two halves, 55 um
    spots of ~8 cells, expression input) it was clearly more accurate than the mapping (JS divergence
    0.19 vs 0.27 and 0.22 vs 0.31, SSIM 0.61 vs 0.47 and 0.61 vs 0.49; ``benchmarks/RESULTS.md``) and
    far faster: there the spot profile really is a sum of cell profiles. The mapping agrees with
    tangram-sc 1.0.4 (per-type correlation of proportions >= 0.998), is better on the synthetic
    generator, and is the paper's method for embeddings (``use="loki_text"`` / ``"loki_image"``),
    where a spot is not a linear mix of cell embeddings; compare both on your data.

    Parameters
    ----------
    data
        Spots: an AnnData, or a SpatialData whose table (``table_key``) holds the spots.
    reference
        Labelled single-cell reference (cells x genes), with embeddings in ``.obsm`` when ``use`` is
        an embedding key.
    cell_type_key
        Column of ``reference.obs`` with the cell type of every cell.
    use
        ``"X"`` (expression of the genes shared by both objects, from ``.X`` or ``layer``), or a key
        of ``.obsm`` holding spot embeddings, e.g. ``"loki_text"`` (ST) or ``"loki_image"`` (H&E).
    reference_use
        Features of the reference: ``"X"`` or an ``.obsm`` key. Default: ``"X"`` when ``use="X"``,
        otherwise ``"loki_text"`` (cells embedded by the text encoder).
    method
        ``"nnls"`` or ``"mapping"`` (see above).
    mode
        ``"clusters"`` or ``"cells"`` (``method="mapping"`` only).
    layer, reference_layer
        Layers used instead of ``.X`` for the spots and the reference when the features are ``"X"``.
    table_key
        Table of a SpatialData holding the spots (may be omitted when there is one).
    epochs, lr
        Adam steps and learning rate of the mapping.
    lambda_g1, lambda_g2, lambda_d, lambda_r
        Weights of the per-feature cosine term (eq. 12), a per-spot cosine term, the density prior
        and an entropy regulariser (tangram-sc's ``lambda_g1``, ``lambda_g2``, ``lambda_d``,
        ``lambda_r``).
    density_prior
        ``"uniform"`` (the paper's choice), an array of per-spot densities (normalised to sum to 1)
        or ``None`` (no density term).
    refine
        ``"nms"``: keep only the most probable type per spot (eqs. 13-14); written to
        ``.obsm[f"{key_added}_refined"]``.
    normalize
        ``"percentile"``: clip every type's column to ``percentiles`` and rescale it to [0, 1] (after
        ``refine`` when both are given), for maps; written to ``.obsm[f"{key_added}_refined"]``.
    percentiles
        Lower and upper percentiles of ``normalize="percentile"``.
    min_cells_per_type
        Cell types with fewer reference cells are an error (their profile would be one cell's noise);
        so is a declared category of a categorical column without cells.
    return_mapping
        Store the mapping matrix (sources x spots) in ``.uns['loki'][key_added]['mapping']``.
    seed
        Seed of the local torch generator that initialises the mapping.
    device
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    num_threads
        ``method="mapping"`` on CPU: torch threads during the fit (restored afterwards). Default 1,
        which was the fastest at every size measured on a 2-core machine (the fit is many skinny
        products); try more on a large idle machine.
    progress
        Show a progress bar.
    key_added
        Key of the results.
    copy
        AnnData input: return a modified copy instead of writing in place.
    inplace
        Write the results into the spots table (or the copy). ``False`` writes nothing and returns them.

    Returns
    -------
    ``None`` (in place), the modified copy (``copy=True``), or with ``inplace=False`` the proportions
    DataFrame, and with ``refine`` or ``normalize`` the pair ``(proportions, refined)``. Writes to the
    spots table:

    ``.obsm[key_added]``
        DataFrame spots x cell types, rows sum to 1.
    ``.obsm[f"{key_added}_refined"]``
        DataFrame of refined / normalised scores, only with ``refine`` or ``normalize``.
    ``.uns['loki'][key_added]``
        ``method``, ``use``, ``reference_use``, ``mode``, ``cell_types``, ``n_features`` (and the
        shared ``genes`` for expression), the
        parameters, and for the mapping the ``loss`` history (one value per epoch), ``device`` and,
        with ``return_mapping``, ``mapping`` and ``mapping_sources``.

    """
    check_key_name(key_added)
    if copy and not inplace:
        raise ValueError("copy=True writes into a copy and inplace=False writes nothing; pass one of them.")
    if is_spatialdata(data):
        if copy:
            raise ValueError("copy=True is for AnnData input; SpatialData takes inplace=False.")
        table = get_table(data, table_key)
    elif isinstance(data, AnnData):
        table = data
    else:
        raise TypeError(f"Expected an AnnData or a SpatialData, got {type(data).__name__}.")
    if not isinstance(reference, AnnData):
        raise TypeError(f"reference must be an AnnData, got {type(reference).__name__}.")
    _check_choice("method", method, _METHODS)
    _check_choice("mode", mode, _MODES)
    _check_choice("refine", refine, (None, "nms"))
    _check_choice("normalize", normalize, (None, "percentile"))
    if normalize == "percentile":
        low, high = percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}.")
    if reference_use is None:
        reference_use = "X" if use == "X" else Key.TEXT

    codes, cell_types = _cell_type_codes(reference, cell_type_key, min_cells_per_type)
    spots, ref, features = _features(table, reference, use, reference_use, layer, reference_layer)
    if table.n_obs == 0:
        raise ValueError("The spots table has no observations.")
    target_density = _target_density(density_prior, table.n_obs)

    n_types = len(cell_types)
    info: dict = {
        "method": method,
        "use": use,
        "reference_use": reference_use,
        "cell_type_key": cell_type_key,
        "cell_types": list(cell_types),
        "n_features": int(spots.shape[1]),
    }
    if features is not None:
        info["genes"] = features
    if method == "nnls":
        weights = nnls_weights(type_means(ref, codes, n_types), spots, progress=progress)
        proportions = normalize_rows(weights)
    else:
        from ._mapping import fit_mapping

        counts = np.bincount(codes, minlength=n_types)
        if mode == "clusters":
            source = type_means(ref, codes, n_types) * counts[:, None]
            source_density, groups, group_weights = counts / counts.sum(), np.arange(n_types), counts
            sources = list(cell_types)
        else:
            source, source_density, groups, group_weights = ref, None, codes, np.ones(len(codes))
            sources = list(reference.obs_names)
        result = fit_mapping(
            source,
            spots,
            source_density=source_density,
            target_density=target_density,
            lambda_g1=lambda_g1,
            lambda_g2=lambda_g2,
            lambda_d=lambda_d if density_prior is not None else 0.0,
            lambda_r=lambda_r,
            epochs=epochs,
            lr=lr,
            seed=as_seed(seed),
            device=device,
            num_threads=num_threads,
            progress=progress,
        )
        proportions = mapping_to_proportions(result.mapping, groups, n_types, group_weights)
        info.update(
            mode=mode,
            epochs=int(epochs),
            lr=float(lr),
            lambda_g1=float(lambda_g1),
            lambda_g2=float(lambda_g2),
            lambda_d=float(lambda_d if density_prior is not None else 0.0),
            lambda_r=float(lambda_r),
            density_prior=density_prior
            if isinstance(density_prior, str)
            else ("custom" if density_prior is not None else "none"),
            loss=result.loss,
            device=result.device,
        )
        if return_mapping:
            info.update(mapping=result.mapping, mapping_sources=sources)
        logger.info(
            "decompose: final loss %.4f after %d epochs on %s", result.loss[-1], epochs, result.device
        )

    proportions_df = pd.DataFrame(proportions, index=table.obs_names.copy(), columns=pd.Index(cell_types))
    refined_df = None
    if refine is not None or normalize is not None:
        refined = nms_refine(proportions) if refine == "nms" else proportions
        if normalize == "percentile":
            refined = percentile_normalize(refined, *percentiles)
            info["percentiles"] = [float(p) for p in percentiles]
        refined_df = pd.DataFrame(refined, index=proportions_df.index, columns=proportions_df.columns)
        info["refine"] = refine or "none"
        info["normalize"] = normalize or "none"

    if not inplace:
        return proportions_df if refined_df is None else (proportions_df, refined_df)
    target = table.copy() if copy else table
    write_obsm(target, key_added, proportions_df)
    if refined_df is not None:
        write_obsm(target, f"{key_added}_refined", refined_df)
    elif f"{key_added}_refined" in target.obsm:  # an earlier call's, which these proportions would contradict
        del target.obsm[f"{key_added}_refined"]
        logger.info(
            "removed .obsm[%r] of an earlier call (no refine or normalize now)", f"{key_added}_refined"
        )
    write_uns(target, key_added, info)
    return target if copy else None


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def _cell_type_codes(reference: AnnData, key: str, min_cells: int) -> tuple[np.ndarray, list[str]]:
    check_obs_key(reference, key)
    labels = reference.obs[key]
    check_labelled(labels, f"reference.obs[{key!r}]", "cells")
    # a categorical column's declared types count too: one without cells is reported, not dropped
    declared = (
        [str(c) for c in labels.cat.categories] if isinstance(labels.dtype, pd.CategoricalDtype) else None
    )
    cat = pd.Categorical(labels.astype(str), categories=declared)
    counts = np.bincount(cat.codes, minlength=len(cat.categories))
    small = [(str(c), int(n)) for c, n in zip(cat.categories, counts, strict=True) if n < max(min_cells, 1)]
    if small:
        listing = ", ".join(f"{c!r} ({n} cell{'s' if n != 1 else ''})" for c, n in small)
        raise ValueError(
            f"Cell type(s) with fewer than {min_cells} reference cells in reference.obs[{key!r}]: {listing}. "
            "Remove or merge them (or lower min_cells_per_type)"
            + (
                "; drop unused categories with .cat.remove_unused_categories()."
                if min(n for _, n in small) == 0
                else "."
            )
        )
    if len(cat.categories) < 2:
        raise ValueError(f"reference.obs[{key!r}] holds fewer than 2 cell types: {list(cat.categories)}.")
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


def _matrix(adata: AnnData, layer: str | None, where: str):
    if layer is None:
        return adata.X
    require_keys(adata.layers, layer, f"{where}.layers")
    return adata.layers[layer]


def _features(
    table: AnnData,
    reference: AnnData,
    use: str,
    reference_use: str,
    layer: str | None,
    reference_layer: str | None,
) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Spot and reference feature matrices of the same width (shared genes, or two embeddings)."""
    if (use == "X") != (reference_use == "X"):
        raise ValueError(
            f"use={use!r} and reference_use={reference_use!r}: both must be 'X' (expression) or both embeddings."
        )
    if use == "X":
        for adata, where in ((table, "adata"), (reference, "reference")):
            check_unique_var_names(adata, where)
        shared = table.var_names.intersection(reference.var_names, sort=False)
        if len(shared) == 0:
            raise ValueError(
                "No genes are shared by the spots and the reference "
                f"(spots: {_few(table.var_names)}; reference: {_few(reference.var_names)}). "
                "Are both gene symbols (not Ensembl ids against symbols)?"
            )
        spot_x = _matrix(table, layer, "adata")
        ref_x = _matrix(reference, reference_layer, "reference")
        spots = _dense(spot_x[:, table.var_names.get_indexer(shared)])
        ref = _dense(ref_x[:, reference.var_names.get_indexer(shared)])
        features = list(shared)
    else:
        require_keys(table.obsm, use, "adata.obsm")
        require_keys(reference.obsm, reference_use, "reference.obsm")
        spots = _dense(table.obsm[use])
        ref = _dense(reference.obsm[reference_use])
        if spots.ndim != 2 or ref.ndim != 2 or spots.shape[1] != ref.shape[1]:
            raise ValueError(
                f"Embedding sizes differ: adata.obsm[{use!r}] is {spots.shape}, "
                f"reference.obsm[{reference_use!r}] is {ref.shape}; embed both with the same model."
            )
        features = None
    check_array_finite(spots, f"spot features ({use})")
    check_array_finite(ref, f"reference features ({reference_use})")
    return spots, ref, features


def _few(names, k: int = 5) -> str:
    names = [str(n) for n in names[:k]]
    return ", ".join(map(repr, names)) + (", ..." if len(names) == k else "")


def _target_density(prior, n_spots: int) -> np.ndarray | None:
    if prior is None or (isinstance(prior, str) and prior == "uniform"):
        return None
    if isinstance(prior, str):
        raise ValueError(f"density_prior must be 'uniform', None or an array; got {prior!r}.")
    d = np.asarray(prior, dtype=np.float64).ravel()
    if d.shape != (n_spots,) or not np.isfinite(d).all() or (d < 0).any() or d.sum() <= 0:
        raise ValueError(f"density_prior must be {n_spots} non-negative finite values with a positive sum.")
    return d / d.sum()
