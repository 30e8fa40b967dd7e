"""Loki Decompose: cell-type proportions of spots or H&E patches from a labelled scRNA-seq reference.

Glue between AnnData / SpatialData and the array code in :mod:`loki.tl._mapping` (Tangram-style
optimisation, eq. 12) and :mod:`loki.tl._nnls`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    all_or_nothing,
    as_seed,
    check_array_finite,
    check_labelled,
    check_obs_key,
    check_result_key,
    check_unique_var_names,
    drop_obsm,
    require_keys,
    write_obsm,
    write_uns,
)
from loki._utils._backed import read_matrix
from loki._utils._labels import label_categories
from loki._utils._provenance import embedding_model, warn_if_models_differ
from loki._utils._spatialdata import check_write_mode, get_table, is_spatialdata

from ._mapping import mapping_to_proportions, nms_refine, normalize_rows, percentile_normalize
from ._nnls import nnls_weights, type_means

if TYPE_CHECKING:
    from spatialdata import SpatialData

Method = Literal["nnls", "mapping"]
Mode = Literal["clusters", "cells"]

_METHODS = ("nnls", "mapping")
_MODES = ("clusters", "cells")


class Decomposition(NamedTuple):
    """What :func:`decompose` returns with ``inplace=False``: the results it would write."""

    proportions: pd.DataFrame
    """Spots x cell types, rows sum to 1 (``.obsm[key_added]``)."""
    refined: pd.DataFrame | None
    """Refined / normalised scores (``.obsm[f"{key_added}_refined"]``), or None without ``refine`` or
    ``normalize``."""
    record: dict
    """The ``.uns['loki'][key_added]`` entry: parameters, the mapping's loss history and, with
    ``return_mapping``, the mapping itself."""


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
) -> AnnData | Decomposition | None:
    """Estimate the cell-type proportions of every spot (or H&E patch) from a labelled reference.

    Two methods share the same inputs:

    ``method="mapping"`` is our torch implementation of the paper's Tangram-style objective
    (eq. 12): a mapping ``M`` (sources x spots, softmax over spots for every source) is fitted by
    Adam so that the mapped reference features ``M^T S`` have, for every feature, the highest cosine
    similarity with the spot features ``G``, under a uniform density prior (KL term). In
    ``mode="clusters"`` a source is a cell type (features summed over its cells, as tangram-sc does);
    in ``mode="cells"`` every reference cell is a source (memory and time per epoch grow linearly
    with the number of cells). On one CPU thread of a shared 2-core machine, 20,000 spots x 5,000
    genes took 0.47 s per epoch with 30 clusters (about 8 minutes at the default 1,000 epochs) and
    14 s per epoch with 3,000 single cells (1.6 GB more memory; two products of cells x spots x
    genes per epoch, at the CPU's matrix-product speed): use a GPU for cells mode. A fit that its
    first five epochs say will take over two minutes logs its estimate (a warning of loki's logger)
    unless ``progress=True`` shows a bar. The
    proportions of spot ``j`` are the expected numbers of cells of each type mapped to it,
    normalised to sum to 1.

    The mapping takes the reference's cell-type composition as the tissue's: every reference cell
    is placed somewhere (each source's row of ``M`` is a distribution over spots), so summed over
    the spots each type receives exactly its number of reference cells, and the uniform density
    prior gives every spot the same number of cells. The mean proportions over the spots are
    therefore the reference's type frequencies, whatever the tissue's (a reference of 200/50/20/10
    cells gives a mean of 0.71/0.18/0.07/0.04 on a tissue of about 0.25 each). This is Tangram's
    model, not an artefact of this implementation: tangram-sc 1.0.4's mappings give the same (cells
    mode directly, clusters mode once every cluster's row is weighted by its size, as here), and
    dropping the density prior (``density_prior=None``) hardly changes it. Use the mapping with a
    reference whose type frequencies match the tissue's; ``method="nnls"`` estimates every spot
    from its own profile and does not assume a composition.

    ``method="nnls"`` (default) solves a non-negative least-squares problem per spot on the per-type
    mean profiles and normalises the weights. It is the default because on pseudo-spots built from
    real labelled cells (spacexr's hypothalamus and hippocampus references split in two halves, 55 um
    spots of ~8 cells, expression input) it was clearly more accurate than the mapping (JS divergence
    0.19 vs 0.27 and 0.22 vs 0.31, SSIM of eq. 25 0.75 vs 0.63 and 0.73 vs 0.59;
    ``benchmarks/RESULTS.md``) and far faster: there the spot profile really is a sum of cell
    profiles. The mapping agrees with tangram-sc 1.0.4 (per-type correlation of proportions >= 0.997),
    is better on the synthetic generator, and is the paper's method for embeddings
    (``use="loki_text"`` / ``"loki_image"``), where a spot is not a linear mix of cell embeddings;
    compare both on your data. With the ``loki-tiny`` text embeddings both methods were worse than a
    uniform guess on all three benchmark cases (JS 0.40-0.71 against 0.11-0.51): the embedding route
    needs a model trained on much more data than the bundled sections.

    Expression (``use="X"``) must be on one scale in the spots and the reference. NNLS models a spot
    as a non-negative sum of the reference's per-type mean profiles, which holds for counts: give it
    counts on both sides (``.X``, or ``layer`` / ``reference_layer``). Scaling every spot (e.g.
    ``sc.pp.normalize_total`` without the log) leaves its proportions unchanged; log1p values are not
    additive, though log1p on both sides was nearly as accurate on the synthetic generator (600 spots,
    5 types: mean absolute error 0.058 against 0.054 with counts). The mapping compares every gene's
    values over the spots by cosine similarity, which scaling a gene does not change; counts on both
    sides were its best input there too (0.070; log1p on both 0.084). Log1p spots against a counts
    reference, or the reverse, gave 0.148 and 0.154 with NNLS, worse than a uniform guess (0.113).
    When one side holds non-negative whole numbers (counts) and the other non-integer values with a
    maximum typical of log1p (at most 20, or 30 with scanpy's ``.uns['log1p']``), a
    :class:`~loki.LokiWarning` says which is which and lists the layers of both. Negative values
    (scaled or centred expression, e.g. ``sc.pp.scale``) give both methods proportions close to a
    uniform guess and are warned about too. Embeddings are not checked.

    Genes are matched by exact name (``var_names``), case included. When at least 5 % of the genes
    that would match ignoring case differ only by case (e.g. ``'Actb'`` against ``'ACTB'``), a
    :class:`~loki.LokiWarning` names a few; the number of shared genes is logged and recorded as
    ``n_features`` (and ``genes``).

    Sparse expression stays sparse where sums suffice: the per-type profiles are sparse products,
    and NNLS densifies one block of spots at a time. The mapping needs the spots dense, and
    ``mode="cells"`` also the reference.

    A spot whose features are all zero (an empty or off-tissue barcode, or no counts on the shared
    genes), or to which NNLS gives no weight at all, has no signal: its proportions are uniform
    (``nnls``) or whatever the mapping left there, not a measured mixture. Such spots are counted,
    logged as a warning and recorded as ``n_empty_spots``. A cell type whose reference features are
    all zero (e.g. a gene panel without any of its genes) cannot be placed: a
    :class:`~loki.LokiWarning` names it (NNLS gives it 0 in every spot, the mapping spreads it by
    the density prior alone).
    When the types' reference profiles are linearly dependent (fewer shared genes than cell types,
    e.g. a reference named by another gene nomenclature that shares only a few symbols, or two types
    with one profile), different mixtures give the same profile and a spot's proportions are not
    pinned down by its data: a :class:`~loki.LokiWarning` says so.

    Parameters
    ----------
    data
        Spots: an AnnData, or a SpatialData whose table (``table_key``) holds the spots.
    reference
        Labelled single-cell reference (cells x genes), with embeddings in ``.obsm`` when ``use`` is
        an embedding key.
    cell_type_key
        Column of ``reference.obs`` with the cell type of every cell. The proportions' columns are the
        types as strings, in the order of a categorical column's categories, otherwise of the sorted
        labels (numbers in numeric order: 0, 5, 10). Labels that are missing values written as text
        (``'nan'``, ``'None'``, ``'NA'``, ``''``, as ``.astype(str)`` makes them) are a type of their
        own: a :class:`~loki.LokiWarning` counts their cells.
    use
        ``"X"`` (expression of the genes shared by both objects, from ``.X`` or ``layer``), or a key
        of ``.obsm`` holding spot embeddings, e.g. ``"loki_text"`` (ST) or ``"loki_image"`` (H&E).
        A :class:`~loki.LokiWarning` says so when the records (``.uns['loki']``) of the spots' and
        the reference's embeddings name different model weights.
    reference_use
        Features of the reference: ``"X"`` or an ``.obsm`` key. Default: ``"X"`` when ``use="X"``,
        otherwise ``"loki_text"`` (cells embedded by the text encoder).
    method
        ``"nnls"`` or ``"mapping"`` (see above).
    mode
        ``"clusters"`` or ``"cells"`` (``method="mapping"`` only; with ``method="nnls"`` a value
        other than the default is warned about and ignored). Note that tangram-sc's default is
        ``"cells"``.
    layer, reference_layer
        Layers used instead of ``.X`` for the spots and the reference when the features are ``"X"``:
        both on one scale, counts for NNLS (see above).
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
        or ``None`` (no density term). tangram-sc's ``"rna_count_based"`` is the array of the
        spots' total counts, ``np.asarray(adata.X.sum(axis=1)).ravel()``.
    refine
        ``"nms"``: keep only the most probable type per spot (eqs. 13-14); written to
        ``.obsm[f"{key_added}_refined"]``. A type that is the most probable one of no spot gets a
        column of zeros (logged as a warning).
    normalize
        ``"percentile"``: clip every type's column to ``percentiles`` and rescale it to [0, 1] (after
        ``refine`` when both are given), for maps; written to ``.obsm[f"{key_added}_refined"]``. A
        column whose two percentiles coincide but which is not constant (e.g. a type kept by NMS in
        fewer than ``100 - percentiles[1]`` % of the spots) is rescaled over its [min, max] instead,
        so its non-zero entries stay non-zero; constant columns become 0.
    percentiles
        Lower and upper percentiles of ``normalize="percentile"``.
    min_cells_per_type
        Cell types with fewer reference cells are an error (their profile would be one cell's noise);
        so is a declared category of a categorical column without cells.
    return_mapping
        Store the mapping matrix (sources x spots) in ``.uns['loki'][key_added]['mapping']``
        (``method="mapping"`` only; NNLS warns and stores none).
    seed
        Seed of the mapping's start: an int, a :class:`numpy.random.Generator` (one int is drawn
        from it) or ``None`` (one int is drawn from fresh OS entropy). The int used is recorded as
        ``seed``. The start holds one random logit per (source, spot) pair, drawn from the seed and
        the two names (the reference's cells in ``mode="cells"``, the cell types in
        ``mode="clusters"``, and the spots' ``obs_names``), not from their positions, so reordering
        the spots or the reference cells reorders the result with them instead of acting like
        another seed. What remains is rounding: sums taken in another order, other thread counts
        or devices round differently, and the fit, which is not fully converged at the default
        ``epochs``, can carry such differences further (on real MOB counts in clusters mode a
        review saw proportions move by 0.002 with ``num_threads=2``). Spots or cells with the same
        name get the same start. ``method="nnls"`` depends on none of these.
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
    ``None`` (in place), the modified copy (``copy=True``), or with ``inplace=False`` a
    :class:`~loki.tl.Decomposition` named tuple ``(proportions, refined, record)`` of what would be
    written (``refined`` None without ``refine`` or ``normalize``; ``record`` the ``.uns`` entry, with
    the mapping under ``return_mapping``). Otherwise writes to the spots table:

    ``.obsm[key_added]``
        DataFrame spots x cell types, rows sum to 1.
    ``.obsm[f"{key_added}_refined"]``
        DataFrame of refined / normalised scores, only with ``refine`` or ``normalize``.
    ``.uns['loki'][key_added]``
        ``method``, ``use``, ``reference_use``, ``cell_type_key``, ``cell_types``, ``n_features`` (and
        the shared ``genes`` for expression), ``min_cells_per_type``, ``n_empty_spots`` (spots without
        signal, see above); for the mapping ``mode``, ``epochs``, ``lr``, ``lambda_g1``,
        ``lambda_g2``, ``lambda_d``, ``lambda_r``, ``density_prior``, ``seed`` (the int used), the
        ``loss`` history (one value per epoch), ``device`` and, with ``return_mapping``, ``mapping``
        and ``mapping_sources``; with ``refine`` or ``normalize``, ``refine``, ``normalize`` (and
        ``percentiles``).

    """
    check_write_mode(data, copy, inplace)
    if is_spatialdata(data):
        table = get_table(data, table_key)
    elif isinstance(data, AnnData):
        table = data
    else:
        raise TypeError(f"Expected an AnnData or a SpatialData, got {type(data).__name__}.")
    # written with refine or normalize, else an earlier call's is removed
    refined_key = f"{key_added}_refined"
    check_result_key(
        table,
        key_added,
        ("obsm", "uns"),
        inputs={"use": None if use == "X" else use},
        derived=[(refined_key, ("obsm",))],
        tool="tl.decompose",
    )
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
    if method == "nnls":
        _warn_mapping_only(mode=mode, return_mapping=return_mapping)
    if reference_use is None:
        reference_use = "X" if use == "X" else Key.TEXT

    codes, cell_types = _cell_type_codes(reference, cell_type_key, min_cells_per_type)
    spots, ref, features = _features(table, reference, use, reference_use, layer, reference_layer)
    if table.n_obs == 0:
        raise ValueError("The spots table has no observations.")
    if use == "X":
        _check_scales(table, spots, layer, reference, ref, reference_layer)
    target_density = _target_density(density_prior, table.n_obs)

    n_types = len(cell_types)
    info: dict = {
        "tool": "tl.decompose",
        "method": method,
        "use": use,
        "reference_use": reference_use,
        "cell_type_key": cell_type_key,
        "cell_types": list(cell_types),
        "n_features": int(spots.shape[1]),
        "min_cells_per_type": int(min_cells_per_type),
    }
    if features is not None:
        info["genes"] = features
    no_signal = _rows_without_signal(spots)
    profiles = type_means(ref, codes, n_types)
    _warn_types_without_features(profiles, cell_types, use == "X", method)
    _warn_types_not_separable(profiles, use == "X", table.n_vars, reference.n_vars)
    if method == "nnls":
        weights = nnls_weights(profiles, spots, progress=progress)
        no_signal |= weights.sum(axis=1) <= 0
        proportions = normalize_rows(weights)
    else:
        from ._mapping import fit_mapping, name_keys

        counts = np.bincount(codes, minlength=n_types)
        if mode == "clusters":
            source = profiles * counts[:, None]
            source_density, groups, group_weights = counts / counts.sum(), np.arange(n_types), counts
            sources = list(cell_types)
        else:
            source, source_density, groups, group_weights = _dense(ref), None, codes, np.ones(len(codes))
            sources = list(reference.obs_names)
        int_seed = as_seed(seed)
        result = fit_mapping(
            source,
            _dense(spots),
            source_density=source_density,
            target_density=target_density,
            lambda_g1=lambda_g1,
            lambda_g2=lambda_g2,
            lambda_d=lambda_d if density_prior is not None else 0.0,
            lambda_r=lambda_r,
            epochs=epochs,
            lr=lr,
            seed=int_seed,
            source_keys=name_keys(sources),
            target_keys=name_keys(table.obs_names),
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
            seed=int_seed,
            loss=result.loss,
            device=result.device,
        )
        if return_mapping:
            info.update(mapping=result.mapping, mapping_sources=sources)
        logger.info(
            "decompose: final loss %.4f after %d epochs on %s", result.loss[-1], epochs, result.device
        )

    info["n_empty_spots"] = int(no_signal.sum())
    if no_signal.any():
        logger.warning(
            "decompose: %d of %d spots have no signal (%s), e.g. %s; their proportions are %snot a "
            "measured mixture",
            info["n_empty_spots"],
            table.n_obs,
            "all features zero, or no NNLS weight" if method == "nnls" else "all features zero",
            _few(table.obs_names[no_signal]),
            "uniform, " if method == "nnls" else "",
        )
    proportions_df = pd.DataFrame(proportions, index=table.obs_names.copy(), columns=pd.Index(cell_types))
    refined_df = None
    if refine is not None or normalize is not None:
        refined = _nms(proportions, cell_types) if refine == "nms" else proportions
        if normalize == "percentile":
            refined = percentile_normalize(refined, *percentiles)
            info["percentiles"] = [float(p) for p in percentiles]
        refined_df = pd.DataFrame(refined, index=proportions_df.index, columns=proportions_df.columns)
        info["refine"] = refine or "none"
        info["normalize"] = normalize or "none"

    if not inplace:
        return Decomposition(proportions_df, refined_df, info)
    target = table.copy() if copy else table
    with all_or_nothing():
        write_obsm(target, key_added, proportions_df)
        if refined_df is not None:
            write_obsm(target, refined_key, refined_df)
        else:  # an earlier call's, which these proportions would contradict
            drop_obsm(target, refined_key, "of an earlier call (no refine or normalize now)")
        write_uns(target, key_added, info)
    return target if copy else None


def _nms(proportions: np.ndarray, cell_types: list[str]) -> np.ndarray:
    refined = nms_refine(proportions)
    never = [t for t, column in zip(cell_types, refined.T, strict=True) if not column.any()]
    if never:
        logger.warning(
            "refine='nms': %d cell type(s) are the most probable type of no spot and are 0 in every "
            "refined spot (eqs. 13-14): %s",
            len(never),
            ", ".join(map(repr, never)),
        )
    return refined


def _warn_types_without_features(
    profiles: np.ndarray, cell_types: list[str], expression: bool, method: str
) -> None:
    """Warn about cell types whose reference features are all zero: nothing can place them."""
    empty = [t for t, row in zip(cell_types, profiles, strict=True) if not np.any(row)]
    if not empty:
        return
    what = "no counts on the shared genes" if expression else "all-zero embeddings"
    outcome = (
        "0 in every spot"
        if method == "nnls"
        else "spread over the spots by the density prior alone, not by their features"
    )
    warnings.warn(
        f"decompose: {len(empty)} cell type(s) have {what} in the reference: {_few(empty)}. Their "
        f"proportions are {outcome}. Use more genes (a panel may miss their markers) or drop them.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _warn_types_not_separable(
    profiles: np.ndarray, expression: bool, n_spot_genes: int, n_ref_genes: int
) -> None:
    """Warn when the cell types' reference profiles are linearly dependent (e.g. fewer features than types).

    Different mixtures then give the same profile: a spot's proportions are not pinned down by its data.
    Types without features are left out (:func:`_warn_types_without_features` names those).
    """
    rows = profiles[np.any(profiles != 0, axis=1)]
    if len(rows) < 2:
        return
    rank = _rank(rows / np.abs(rows).max(axis=1, keepdims=True))
    if rank == len(rows):
        return
    n_features = profiles.shape[1]
    what = f"{n_features} shared genes" if expression else f"{n_features}-d embeddings"
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
        f"decompose: the reference profiles of {len(rows)} cell types span only {rank} dimensions on "
        f"{what} ({cause}). Different mixtures of them give the same profile, so a spot's proportions "
        f"are not pinned down by its data.{hint}",
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


def _warn_mapping_only(*, mode: str, return_mapping: bool) -> None:
    """Warn that options of the mapping were given to NNLS, which ignores them."""
    given = [f"mode={mode!r}"] if mode != "clusters" else []
    given += ["return_mapping=True"] if return_mapping else []
    if given:
        warnings.warn(
            f"decompose: {' and '.join(given)} apply to method='mapping' only; method='nnls' (the "
            "default) ignores them. Pass method='mapping' for the Tangram-style mapping.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def _cell_type_codes(reference: AnnData, key: str, min_cells: int) -> tuple[np.ndarray, list[str]]:
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


#: labels that are missing values written as text (pandas' and R's spellings, and empty strings)
_MISSING_TEXT = frozenset({"", "nan", "NaN", "None", "NA", "<NA>", "NaT", "null"})


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


def _float32(x):
    """``x`` as float32, a scipy sparse matrix staying sparse (CSR)."""
    return sparse.csr_matrix(x, dtype=np.float32) if sparse.issparse(x) else _dense(x)


def _rows_without_signal(x) -> np.ndarray:
    """Boolean mask of the rows of ``x`` (dense or sparse) whose entries are all zero."""
    if sparse.issparse(x):
        return np.asarray(abs(x).max(axis=1).toarray()).ravel() == 0
    return ~np.any(x != 0, axis=1)


def _check_finite(x, name: str) -> None:
    if not sparse.issparse(x):
        check_array_finite(x, name)
        return
    bad = ~np.isfinite(x.data)
    if bad.any():
        rows = np.unique(np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))[bad])
        raise ValueError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf), e.g. in rows {rows[:5].tolist()}."
        )


def _matrix(adata: AnnData, layer: str | None, where: str):
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


def _features(
    table: AnnData,
    reference: AnnData,
    use: str,
    reference_use: str,
    layer: str | None,
    reference_layer: str | None,
) -> tuple[np.ndarray | sparse.csr_matrix, np.ndarray | sparse.csr_matrix, list[str] | None]:
    """Spot and reference feature matrices of the same width (shared genes, or two embeddings).

    float32; expression in a scipy sparse matrix stays sparse (CSR), embeddings are dense.
    """
    if (use == "X") != (reference_use == "X"):
        raise ValueError(
            f"use={use!r} and reference_use={reference_use!r}: both must be 'X' (expression) or both embeddings."
        )
    if use == "X":
        for adata, where in ((table, "adata"), (reference, "reference")):
            check_unique_var_names(adata, where)
        shared = table.var_names.intersection(reference.var_names, sort=False)
        by_case = _case_only_matches(table.var_names, reference.var_names)
        if len(shared) == 0:
            raise ValueError(
                "No genes are shared by the spots and the reference "
                f"(spots: {_few(table.var_names)}; reference: {_few(reference.var_names)}). "
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
        spot_x = _matrix(table, layer, "adata")
        ref_x = _matrix(reference, reference_layer, "reference")
        spots = _float32(read_matrix(spot_x, table.var_names.get_indexer(shared)))
        ref = _float32(read_matrix(ref_x, reference.var_names.get_indexer(shared)))
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
        warn_if_models_differ(
            {
                f"adata.obsm[{use!r}]": embedding_model(table, use),
                f"reference.obsm[{reference_use!r}]": embedding_model(reference, reference_use),
            }
        )
        features = None
    _check_finite(spots, f"spot features ({use})")
    _check_finite(ref, f"reference features ({reference_use})")
    return spots, ref, features


#: at most this many stored values are tested for being whole numbers (a strided sample)
_SCALE_SAMPLE = 1_000_000
#: largest value taken for log1p-transformed expression: ln(1 + 1e4) = 9.2 after normalize_total's
#: default, ln(1 + 1e8) = 18.4 for raw counts; 30 when ``.uns['log1p']`` says so (e.g. base 2)
_LOG_MAX, _LOG_MAX_UNS = 20.0, 30.0


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


def _check_scales(
    table: AnnData, spots, layer: str | None, reference: AnnData, ref, reference_layer: str | None
) -> None:
    """Warn about expression values that the two methods cannot compare.

    Negative values (scaled or centred data) on either side, or counts on one side and log1p values
    on the other.
    """
    have = "; ".join(
        f"{where}.layers: {', '.join(map(repr, adata.layers)) or 'none'}"
        + (f"; {where}.raw: {adata.raw.n_vars} genes" if adata.raw is not None else "")
        for where, adata in (("adata", table), ("reference", reference))
    )
    negative = [
        f"{where}.{'X' if lay is None else f'layers[{lay!r}]'} (minimum {low:.4g})"
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
        return
    sides = [
        ("adata", table, layer, _scale(spots, table, layer)),
        ("reference", reference, reference_layer, _scale(ref, reference, reference_layer)),
    ]
    if {scale[0] if scale else None for *_, scale in sides} != {"counts", "log"}:
        return
    found = "; ".join(
        f"{where}.{'X' if lay is None else f'layers[{lay!r}]'} holds {scale[1]}"
        for where, _, lay, scale in sides
    )
    warnings.warn(
        f"decompose: the spots and the reference look like different expression scales: {found}. "
        "Both methods compare the two sides on one scale, and counts against log values can give "
        "proportions worse than a uniform guess. Pass matrices on the same scale with layer= / "
        f"reference_layer= ({have}), or transform both sides the same way.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _few(names, k: int = 5) -> str:
    names = [str(n) for n in names[:k]]
    return ", ".join(map(repr, names)) + (", ..." if len(names) == k else "")


#: warn when at least this fraction of the genes matched ignoring case would be lost to case alone
_CASE_WARN_FRACTION = 0.05


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


#: fraction of the smaller side's genes a ``.var`` column must name for :func:`_gene_column_hint` to point at it
_GENE_COLUMN_SHARE = 0.1


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


def _few_pairs(pairs: list[tuple[str, str]], k: int = 3) -> str:
    shown = ", ".join(f"{a!r} / {b!r}" for a, b in pairs[:k])
    return shown + (", ..." if len(pairs) > k else "")


def _target_density(prior, n_spots: int) -> np.ndarray | None:
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
