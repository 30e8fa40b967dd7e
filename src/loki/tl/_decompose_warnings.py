"""Warnings of :func:`loki.tl.decompose` about inputs it accepts but cannot use well.

Options of the mapping given to NNLS, expression values on scales the methods cannot compare, and
reference profiles that cannot place or tell apart some cell types.
"""

from __future__ import annotations

import warnings

import numpy as np
from anndata import AnnData
from scipy import sparse

from loki._logging import LokiWarning, user_stacklevel

from ._decompose_inputs import few

#: at most this many stored values are tested for being whole numbers (a strided sample)
_SCALE_SAMPLE = 1_000_000
#: largest value taken for log1p-transformed expression: ln(1 + 1e4) = 9.2 after normalize_total's
#: default, ln(1 + 1e8) = 18.4 for raw counts; 30 when ``.uns['log1p']`` says so (e.g. base 2)
_LOG_MAX, _LOG_MAX_UNS = 20.0, 30.0


def warn_mapping_only(*, mode: str, return_mapping: bool, defaulted: bool = False) -> None:
    """Warn that options of the mapping were given to NNLS, which ignores them.

    ``defaulted``: NNLS was chosen by default (``method=None`` on expression), which the message says.
    """
    given = [f"mode={mode!r}"] if mode != "clusters" else []
    given += ["return_mapping=True"] if return_mapping else []
    if given:
        why = " (the default for expression, use='X')" if defaulted else ""
        warnings.warn(
            f"decompose: {' and '.join(given)} {agree(len(given), 'applies', 'apply')} to "
            f"method='mapping' only; method='nnls'{why} ignores {agree(len(given), 'it', 'them')}. "
            "Pass method='mapping' for the Tangram-style mapping.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


def agree(n: int, one: str, many: str) -> str:
    """``one`` for a count of 1, else ``many``: the word that agrees with ``n`` things."""
    return one if n == 1 else many


def check_scales(
    table: AnnData, spots, layer: str | None, reference: AnnData, ref, reference_layer: str | None
) -> bool:
    """Warn about expression values that the two methods cannot compare.

    Negative values (scaled or centred data) on either side, or counts on one side and log1p values
    on the other. Returns whether the reference holds negative values: centring it makes the types'
    profiles linearly dependent by itself, so :func:`warn_types_not_separable` would only repeat
    the cause.
    """
    have = "; ".join(
        f"{where}.layers: {', '.join(map(repr, adata.layers)) or 'none'}"
        + (f"; {where}.raw: {adata.raw.n_vars} genes" if adata.raw is not None else "")
        for where, adata in (("adata", table), ("reference", reference))
    )
    negative = [
        f"{_matrix_name(where, lay)} (minimum {low:.4g})"
        for where, x, lay in (("adata", spots, layer), ("reference", ref, reference_layer))
        if (low := _minimum(x)) < 0
    ]
    if negative:
        warnings.warn(
            f"decompose: negative expression values in {' and '.join(negative)}, like scaled or "
            "centred data (sc.pp.scale, sc.pp.regress_out). A spot is modelled as a non-negative mix "
            "of cell profiles: on such values both methods give proportions close to a uniform "
            f"guess. Pass counts with layer= / reference_layer= ({have}).",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
        return _minimum(ref) < 0
    sides = [
        ("adata", layer, _scale(spots, table, layer)),
        ("reference", reference_layer, _scale(ref, reference, reference_layer)),
    ]
    if {scale[0] if scale else None for *_, scale in sides} != {"counts", "log"}:
        return False
    found = "; ".join(f"{_matrix_name(where, lay)} holds {scale[1]}" for where, lay, scale in sides)
    warnings.warn(
        f"decompose: the spots and the reference look like different expression scales: {found}. "
        "Both methods compare the two sides on one scale, and counts against log values can give "
        "proportions worse than a uniform guess. Pass matrices on the same scale with layer= / "
        f"reference_layer= ({have}), or transform both sides the same way.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )
    return False


def _matrix_name(where: str, layer: str | None) -> str:
    """How messages name the expression matrix of ``where``: ``adata.X`` or ``adata.layers['counts']``."""
    return f"{where}.{'X' if layer is None else f'layers[{layer!r}]'}"


def _scale(x, adata: AnnData, layer: str | None) -> tuple[str, str] | None:
    """``("counts" | "log", description)`` when the scale of expression ``x`` can be told, else None.

    Counts: non-negative whole numbers. Log: non-negative, not whole, with a maximum typical of log1p
    values (above 1, or any with scanpy's ``.uns['log1p']`` when ``x`` is ``.X``).
    """
    values = x.data if sparse.issparse(x) else np.asarray(x).ravel()
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    if low < 0 or high <= 0:
        return None
    sample = values[:: max(1, values.size // _SCALE_SAMPLE)]
    sample = sample[sample != 0]
    if np.array_equal(sample, np.round(sample)):
        return "counts", f"non-negative whole numbers up to {high:.4g}, like raw counts"
    marked = layer is None and "log1p" in adata.uns
    if high <= (_LOG_MAX_UNS if marked else _LOG_MAX) and (high > 1 or marked):
        note = ", and .uns['log1p'] is set" if marked else ""
        return "log", f"non-integer values up to {high:.4g}, like log1p-transformed expression{note}"
    return None


def _minimum(x) -> float:
    """Smallest value of a dense or sparse matrix (0 for an empty one)."""
    values = x.data if sparse.issparse(x) else np.asarray(x).ravel()
    low = float(values.min()) if values.size else 0.0
    return min(low, 0.0) if sparse.issparse(x) else low


def warn_types_without_features(
    profiles: np.ndarray, cell_types: list[str], expression: bool, method: str
) -> None:
    """Warn about cell types whose reference features are all zero: nothing can place them."""
    empty = [t for t, row in zip(cell_types, profiles, strict=True) if not np.any(row)]
    if not empty:
        return
    n = len(empty)
    what = (
        "no counts on the shared genes"
        if expression
        else agree(n, "an all-zero embedding", "all-zero embeddings")
    )
    outcome = (
        "0 in every spot"
        if method == "nnls"
        else "spread over the spots by the density prior alone, not by their features"
    )
    remedy = (
        f"Use more genes (a panel may miss {agree(n, 'its', 'their')} markers)"
        if expression
        else "Embed the reference cells again (reference_use names the .obsm key read)"
    )
    warnings.warn(
        f"decompose: {n} {agree(n, 'cell type has', 'cell types have')} {what} in the reference: "
        f"{few(empty)}. {agree(n, 'Its', 'Their')} proportions are {outcome}. {remedy} or drop "
        f"{agree(n, 'it', 'them')}.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def warn_types_not_separable(
    profiles: np.ndarray, expression: bool, n_spot_genes: int, n_ref_genes: int
) -> None:
    """Warn when the cell types' reference profiles are linearly dependent (e.g. fewer features than types).

    Different mixtures then give the same profile: a spot's proportions are not pinned down by its data.
    Types without features are left out (:func:`warn_types_without_features` names those).
    """
    rows = profiles[np.any(profiles != 0, axis=1)]
    if len(rows) < 2:
        return
    rank = _rank(rows / np.abs(rows).max(axis=1, keepdims=True))
    if rank == len(rows):
        return
    n_features = profiles.shape[1]
    what = (
        f"{n_features} {agree(n_features, 'shared gene', 'shared genes')}"
        if expression
        else f"{n_features}-d embeddings"
    )
    cause = (
        f"fewer {'genes' if expression else 'features'} than cell types"
        if n_features < len(rows)
        else "some types' profiles are combinations of others', e.g. two types with one profile"
    )
    hint = (
        f" Only {n_features} of the spots' {n_spot_genes} and the reference's {n_ref_genes} genes are "
        "shared: check that both name genes the same way (symbols, species, case) or use a reference "
        "measured on more of the spots' genes."
        if expression and n_features < len(rows)
        else " Merge types that cannot be told apart, or use more features."
    )
    warnings.warn(
        f"decompose: the reference profiles of {len(rows)} cell types span only {rank} "
        f"{agree(rank, 'dimension', 'dimensions')} on {what} ({cause}). Different mixtures of them "
        f"give the same profile, so a spot's proportions are not pinned down by its data.{hint}",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _rank(a: np.ndarray) -> int:
    """Numerical rank of ``a`` from the eigenvalues of its smaller Gram matrix.

    Cheaper than an SVD of a types x genes matrix (1 s against 7 s for 300 x 30,000 on a shared
    2-core machine); an eigenvalue below ``1e-12`` of the largest is a singular value below ``1e-6`` of the largest.
    """
    gram = a @ a.T if a.shape[0] <= a.shape[1] else a.T @ a
    eig = np.linalg.eigvalsh(gram)
    return int((eig > eig.max() * 1e-12).sum()) if eig.max() > 0 else 0
