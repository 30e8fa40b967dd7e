"""Inputs of :func:`loki.tl.decompose`: the reference's cell types, the features of both sides, the density prior.

Each function reads one input from the spots table or the reference and refuses a bad one with an
error that names what is wrong and what exists.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    check_array_finite,
    check_labelled,
    check_obs_key,
    check_unique_var_names,
    require_keys,
)
from loki._utils._backed import read_matrix
from loki._utils._labels import label_categories
from loki._utils._provenance import embedding_model, warn_if_models_differ

#: labels that are missing values written as text (pandas' and R's spellings, and empty strings)
_MISSING_TEXT = frozenset({"", "nan", "NaN", "None", "NA", "<NA>", "NaT", "null"})

#: warn when at least this fraction of the genes matched ignoring case would be lost to case alone
_CASE_WARN_FRACTION = 0.05

#: fraction of the smaller side's genes a ``.var`` column must name for :func:`_gene_column_hint` to point at it
_GENE_COLUMN_SHARE = 0.1


def cell_type_codes(reference: AnnData, key: str, min_cells: int) -> tuple[np.ndarray, list[str]]:
    """Cell type of every reference cell as a code, and the types as strings in code order.

    The types are ordered as :func:`~loki._utils._labels.label_categories` orders them (a
    categorical column's categories, otherwise the sorted labels). A type with fewer than
    ``min_cells`` cells (a declared category without cells included) and fewer than two types are
    errors; labels that are missing values written as text are warned about.
    """
    check_obs_key(reference, key, where="reference")
    labels = reference.obs[key]
    check_labelled(labels, f"reference.obs[{key!r}]", "cells")
    # a categorical column's declared types count too: one without cells is reported, not dropped
    cat = label_categories(labels)
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
    textual = [
        (str(c), int(n))
        for c, n in zip(cat.categories, counts, strict=True)
        if str(c).strip() in _MISSING_TEXT
    ]
    if textual:
        listing = ", ".join(f"{n} labelled {c!r}" for c, n in textual)
        warnings.warn(
            f"decompose: reference.obs[{key!r}] has cells without a real label ({listing}), like missing "
            "values turned into text (.astype(str) makes NaN 'nan'); they are decomposed as a cell type "
            "of their own. Drop those cells, or label them.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


def feature_matrices(
    table: AnnData,
    reference: AnnData,
    use: str,
    reference_use: str,
    layer: str | None,
    reference_layer: str | None,
) -> tuple[np.ndarray | sparse.csr_matrix, np.ndarray | sparse.csr_matrix, list[str] | None]:
    """Spot and reference feature matrices of the same width (shared genes, or two embeddings).

    float32; expression in a scipy sparse matrix stays sparse (CSR), embeddings are dense. The third
    value is the list of shared genes for expression, None for embeddings. Both matrices are
    checked for non-finite values.
    """
    if (use == "X") != (reference_use == "X"):
        raise ValueError(
            f"use={use!r} and reference_use={reference_use!r}: both must be 'X' (expression) or both embeddings."
        )
    if use == "X":
        shared = _shared_genes(table, reference)
        spot_x = _matrix(table, layer, "adata")
        ref_x = _matrix(reference, reference_layer, "reference")
        spots = _float32(read_matrix(spot_x, table.var_names.get_indexer(shared)))
        ref = _float32(read_matrix(ref_x, reference.var_names.get_indexer(shared)))
        features = list(shared)
    else:
        spots, ref = _embeddings(table, reference, use, reference_use)
        features = None
    check_array_finite(spots, f"spot features ({use})")
    check_array_finite(ref, f"reference features ({reference_use})")
    return spots, ref, features


def _shared_genes(table: AnnData, reference: AnnData) -> pd.Index:
    """The genes named in both objects (exact names), in the spots' order.

    Both sides' ``var_names`` must be unique. No shared gene is an error that says why it may be
    (names differing by case, a ``.var`` column holding the other side's names, or Ensembl ids
    against symbols); many genes differing only by case are warned about. The count is logged.
    """
    for adata, where in ((table, "adata"), (reference, "reference")):
        check_unique_var_names(adata, where)
    shared = table.var_names.intersection(reference.var_names, sort=False)
    by_case = _case_only_matches(table.var_names, reference.var_names)
    if len(shared) == 0:
        raise ValueError(
            "No genes are shared by the spots and the reference "
            f"(spots: {few(table.var_names)}; reference: {few(reference.var_names)}). "
            + (
                f"{len(by_case)} match when case is ignored (e.g. {_few_pairs(by_case)}): "
                "map the symbols of one side to the other's (e.g. mouse 'Actb', human 'ACTB')."
                if by_case
                else _gene_column_hint(table, reference)
                or "Are both gene symbols (not Ensembl ids against symbols)?"
            )
        )
    if len(by_case) >= _CASE_WARN_FRACTION * (len(shared) + len(by_case)):
        warnings.warn(
            f"decompose: {len(shared)} genes are shared by name, and {len(by_case)} more differ "
            f"only by case (e.g. {_few_pairs(by_case)}); those are left out. Map the symbols of "
            "one side to the other's to use them (genes are matched by exact name).",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    logger.info(
        "decompose: %d genes shared (spots: %d, reference: %d)",
        len(shared),
        table.n_vars,
        reference.n_vars,
    )
    return shared


def _embeddings(
    table: AnnData, reference: AnnData, use: str, reference_use: str
) -> tuple[np.ndarray, np.ndarray]:
    """The spots' ``.obsm[use]`` and the reference's ``.obsm[reference_use]`` as dense float32 arrays.

    Both keys must exist and both arrays be 2-D with one width; a :class:`~loki.LokiWarning` says
    so when the records of the two embeddings name different model weights.
    """
    require_keys(table.obsm, use, "adata.obsm")
    require_keys(reference.obsm, reference_use, "reference.obsm")
    spots = dense(table.obsm[use])
    ref = dense(reference.obsm[reference_use])
    if spots.ndim != 2 or ref.ndim != 2 or spots.shape[1] != ref.shape[1]:
        raise ValueError(
            f"Embedding sizes differ: adata.obsm[{use!r}] is {spots.shape}, "
            f"reference.obsm[{reference_use!r}] is {ref.shape}; embed both with the same model."
        )
    warn_if_models_differ(
        {
            f"adata.obsm[{use!r}]": embedding_model(table, use),
            f"reference.obsm[{reference_use!r}]": embedding_model(reference, reference_use),
        }
    )
    return spots, ref


def _matrix(adata: AnnData, layer: str | None, where: str):
    """The expression matrix of ``adata`` (named ``where`` in messages): ``.X``, or ``.layers[layer]``.

    A missing ``.X`` or layer is an error that lists the layers there are (and, for a layer, points
    at ``.raw``, which is not read).
    """
    if layer is None:
        if adata.X is None:
            param = "layer" if where == "adata" else "reference_layer"
            raise ValueError(
                f"{where}.X is None (no expression matrix); pass {param}= one of {where}.layers: "
                f"{', '.join(map(repr, adata.layers)) or 'none'}."
            )
        return adata.X
    hint = (
        f"{where}.raw holds {adata.raw.n_vars} genes; it is not read: pass {where}.raw.to_adata() "
        "instead, or store its counts as a layer."
        if adata.raw is not None
        else None
    )
    require_keys(adata.layers, layer, f"{where}.layers", hint=hint)
    return adata.layers[layer]


def dense(x) -> np.ndarray:
    """``x`` (dense or scipy sparse) as a dense float32 array."""
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


def _float32(x):
    """``x`` as float32, a scipy sparse matrix staying sparse (CSR)."""
    return sparse.csr_matrix(x, dtype=np.float32) if sparse.issparse(x) else dense(x)


def few(names, k: int = 5) -> str:
    """The first ``k`` of ``names`` quoted and comma-separated, with ``...`` when there are more."""
    shown = [str(n) for n in names[: k + 1]]
    return ", ".join(map(repr, shown[:k])) + (", ..." if len(shown) > k else "")


def _few_pairs(pairs: list[tuple[str, str]], k: int = 3) -> str:
    """The first ``k`` of ``pairs`` as ``'a' / 'b'``, comma-separated, with ``...`` when there are more."""
    shown = ", ".join(f"{a!r} / {b!r}" for a, b in pairs[:k])
    return shown + (", ..." if len(pairs) > k else "")


def _case_only_matches(spot_genes: pd.Index, ref_genes: pd.Index) -> list[tuple[str, str]]:
    """``(spot gene, reference gene)`` pairs equal ignoring case but not by name, each gene once.

    Only genes without an exact partner on the other side count, and only names whose case-folded
    form is unique on both sides (an ambiguous pair is not offered as a match).
    """
    spot_only = pd.Index(spot_genes).difference(ref_genes, sort=False)
    ref_only = pd.Index(ref_genes).difference(spot_genes, sort=False)
    if len(spot_only) == 0 or len(ref_only) == 0:
        return []
    spot_fold = pd.Series(spot_only.astype(str), index=spot_only.astype(str).str.casefold())
    ref_fold = pd.Series(ref_only.astype(str), index=ref_only.astype(str).str.casefold())
    spot_fold = spot_fold[~spot_fold.index.duplicated(keep=False)]
    ref_fold = ref_fold[~ref_fold.index.duplicated(keep=False)]
    common = spot_fold.index.intersection(ref_fold.index, sort=False)
    return list(zip(spot_fold[common], ref_fold[common], strict=True))


def _gene_column_hint(table: AnnData, reference: AnnData) -> str | None:
    """Where a ``.var`` column of one side holds the other side's gene names: how to use it."""
    best = None
    for adata, where, other in ((reference, "reference", table), (table, "adata", reference)):
        for column in adata.var.columns:
            values = adata.var[column]
            if not (values.dtype == object or isinstance(values.dtype, pd.CategoricalDtype | pd.StringDtype)):
                continue
            n = int(pd.Index(values.astype(str)).isin(other.var_names).sum())
            # a column sharing a gene or two by chance (a 'type' column, short names) is no gene column
            if n >= max(2, _GENE_COLUMN_SHARE * min(adata.n_vars, other.n_vars)) and (
                best is None or n > best[0]
            ):
                best = (n, where, column)
    if best is None:
        return None
    n, where, column = best
    other = "spots'" if where == "reference" else "reference's"
    return (
        f"{where}.var[{column!r}] holds {n} of the {other} gene names: use it as the names, "
        f"{where}.var_names = {where}.var[{column!r}].astype(str), then "
        f"{where}.var_names_make_unique() if some repeat."
    )


def density_from_prior(prior, n_spots: int) -> np.ndarray | None:
    """The mapping's density over the spots: None for ``"uniform"`` or no prior, else the array normalised.

    Any other string is an error (with a hint for tangram-sc's ``"rna_count_based"``), and so is an
    array that is not ``n_spots`` non-negative finite values with a positive sum.
    """
    if prior is None or (isinstance(prior, str) and prior == "uniform"):
        return None
    if isinstance(prior, str):
        hint = (
            " For tangram-sc's 'rna_count_based' prior pass the spots' total counts, "
            "np.asarray(adata.X.sum(axis=1)).ravel() (normalised here)."
            if prior == "rna_count_based"
            else ""
        )
        raise ValueError(f"density_prior must be 'uniform', None or an array; got {prior!r}.{hint}")
    d = np.asarray(prior, dtype=np.float64).ravel()
    if d.shape != (n_spots,) or not np.isfinite(d).all() or (d < 0).any() or d.sum() <= 0:
        raise ValueError(f"density_prior must be {n_spots} non-negative finite values with a positive sum.")
    return d / d.sum()
