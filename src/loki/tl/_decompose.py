"""Loki Decompose: cell-type proportions of spots or H&E patches from a labelled scRNA-seq reference.

Glue between AnnData / SpatialData and the array code in :mod:`loki.tl._mapping` (Tangram-style
optimisation, eq. 12) and :mod:`loki.tl._nnls`. :func:`decompose` reads as its steps: check the
options, read the inputs (:mod:`loki.tl._decompose_inputs`, warnings about them in
:mod:`loki.tl._decompose_warnings`), fit, refine, write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._keys import Key
from loki._logging import logger
from loki._utils import all_or_nothing, as_seed, check_result_key, drop_obsm, write_obsm, write_uns
from loki._utils._spatialdata import check_write_mode, get_table, is_spatialdata

from ._decompose_inputs import cell_type_codes, dense, density_from_prior, feature_matrices, few
from ._decompose_warnings import (
    agree,
    check_scales,
    warn_mapping_only,
    warn_types_not_separable,
    warn_types_without_features,
)
from ._mapping import (
    MappingSettings,
    fit_mapping_with,
    mapping_to_proportions,
    name_keys,
    nms_refine,
    normalize_rows,
    percentile_normalize,
)
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
    method: Method | None = None,
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

    ``method="nnls"`` solves a non-negative least-squares problem per spot on the per-type mean
    profiles and normalises the weights. It is the default for expression (``use="X"``) because on
    pseudo-spots built from real labelled cells (spacexr's hypothalamus and hippocampus references
    split in two halves, 55 um spots of ~8 cells, expression input) it was clearly more accurate
    than the mapping (JS divergence 0.19 vs 0.27 and 0.22 vs 0.31, SSIM of eq. 25 0.75 vs 0.63 and
    0.73 vs 0.59; ``benchmarks/RESULTS.md``) and far faster: there the spot profile really is a sum
    of cell profiles. The mapping agrees with tangram-sc 1.0.4 (per-type correlation of proportions
    >= 0.997), is better on the synthetic generator, and is the paper's method for embeddings
    (``use="loki_text"`` / ``"loki_image"``), where a spot is not a non-negative mix of cell
    embeddings (their entries are signed: half of loki-tiny's are negative): it is the default
    there. On the ``loki-tiny`` text embeddings of the three benchmark cases it was closer to the
    truth than NNLS (JS 0.56 vs 0.63, 0.62 vs 0.71, 0.40 vs 0.49), yet both were worse than a
    uniform guess (JS 0.48, 0.51, 0.11): the embedding route needs a model trained on much more
    data than the bundled sections. Compare both methods on your data.

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
    logged as a warning and recorded as ``n_empty_spots``. On embeddings NNLS gives no weight to a
    spot whose embedding has a dot product <= 0 with every cell type's mean embedding; the warning
    counts those apart from all-zero ones. A cell type whose reference features are all zero (e.g.
    a gene panel without any of its genes) cannot be placed: a :class:`~loki.LokiWarning` names it
    (NNLS gives it 0 in every spot, the mapping spreads it by the density prior alone).
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
        ``"nnls"`` or ``"mapping"`` (see above). Default (``None``): ``"nnls"`` for expression
        (``use="X"``), ``"mapping"`` for embeddings (any other ``use``; logged at info level).
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
    table = _spots_table(data, table_key)
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
    defaulted = method is None
    method = _default_method(use) if defaulted else method
    _check_options(reference, method, mode, refine, normalize, percentiles, return_mapping, defaulted)
    if reference_use is None:
        reference_use = "X" if use == "X" else Key.TEXT

    codes, cell_types = cell_type_codes(reference, cell_type_key, min_cells_per_type)
    spots, ref, features = feature_matrices(table, reference, use, reference_use, layer, reference_layer)
    if table.n_obs == 0:
        raise ValueError("The spots table has no observations.")
    centred_reference = use == "X" and check_scales(table, spots, layer, reference, ref, reference_layer)
    target_density = density_from_prior(density_prior, table.n_obs)

    info = _base_record(
        method, use, reference_use, cell_type_key, cell_types, features, spots, min_cells_per_type
    )
    empty = _rows_without_signal(spots)
    unweighted = np.zeros_like(empty)  # NNLS only: spots with features but no weight
    profiles = type_means(ref, codes, len(cell_types))
    warn_types_without_features(profiles, cell_types, use == "X", method)
    if not centred_reference:  # its profiles are dependent by themselves; the scale warning says why
        warn_types_not_separable(profiles, use == "X", table.n_vars, reference.n_vars)
    if method == "nnls":
        weights = nnls_weights(profiles, spots, progress=progress)
        unweighted = (weights.sum(axis=1) <= 0) & ~empty
        proportions = normalize_rows(weights)
    else:
        settings = MappingSettings(
            lambda_g1=lambda_g1,
            lambda_g2=lambda_g2,
            lambda_d=lambda_d if density_prior is not None else 0.0,  # no prior, no density term
            lambda_r=lambda_r,
            epochs=epochs,
            lr=lr,
            seed=as_seed(seed),  # the int recorded (drawn from a Generator or from OS entropy)
            device=device,
            num_threads=num_threads,
            progress=progress,
        )
        proportions, fit_record = _fit_mapping(
            profiles,
            ref,
            spots,
            codes,
            cell_types,
            settings,
            cell_names=reference.obs_names,
            spot_names=table.obs_names,
            mode=mode,
            density_prior=density_prior,
            target_density=target_density,
            return_mapping=return_mapping,
        )
        info.update(fit_record)
    info["n_empty_spots"] = int((empty | unweighted).sum())
    _log_spots_without_signal(empty, unweighted, table.obs_names, method, expression=use == "X")

    proportions_df = pd.DataFrame(proportions, index=table.obs_names.copy(), columns=pd.Index(cell_types))
    refined_df = None
    if refine is not None or normalize is not None:
        refined, refine_record = _refined(proportions, cell_types, refine, normalize, percentiles)
        refined_df = pd.DataFrame(refined, index=proportions_df.index, columns=proportions_df.columns)
        info.update(refine_record)
    if not inplace:
        return Decomposition(proportions_df, refined_df, info)
    return _write_results(table, copy, key_added, refined_key, proportions_df, refined_df, info)


def _spots_table(data: AnnData | SpatialData, table_key: str | None) -> AnnData:
    """The table of spots: ``data`` itself, or the table ``table_key`` of a SpatialData."""
    if is_spatialdata(data):
        return get_table(data, table_key)
    if isinstance(data, AnnData):
        return data
    raise TypeError(f"Expected an AnnData or a SpatialData, got {type(data).__name__}.")


def _default_method(use: str) -> str:
    """The method of ``method=None``: NNLS on expression (``use="X"``), the mapping on embeddings.

    NNLS models a spot as a non-negative mix of the types' profiles, which holds for counts but not
    for signed, L2-normalised embeddings; on the benchmark's text embeddings the mapping was the
    closer of the two in every case.
    """
    if use == "X":
        return "nnls"
    logger.info("decompose: method='mapping', the default for embeddings (use=%r)", use)
    return "mapping"


def _check_options(
    reference,
    method: str,
    mode: str,
    refine: str | None,
    normalize: str | None,
    percentiles: tuple[float, float],
    return_mapping: bool,
    defaulted: bool,
) -> None:
    """Refuse a reference that is no AnnData and options outside their choices, in that order.

    ``percentiles`` are checked only with ``normalize="percentile"``. With ``method="nnls"``, the
    options of the mapping that differ from their defaults (``mode``, ``return_mapping``) are warned
    about: NNLS ignores them. ``defaulted``: ``method`` was chosen by default (``method=None``).
    """
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
        warn_mapping_only(mode=mode, return_mapping=return_mapping, defaulted=defaulted)


def _check_choice(name: str, value, choices: tuple) -> None:
    """Raise a ValueError when option ``name`` is not one of ``choices``, listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")


def _base_record(
    method: str,
    use: str,
    reference_use: str,
    cell_type_key: str,
    cell_types: list[str],
    features: list[str] | None,
    spots,
    min_cells_per_type: int,
) -> dict:
    """The entries of the ``.uns`` record that every call writes, before the fit adds its own.

    The inputs, the number of features (the width of ``spots``) and, for expression, the shared
    genes (``features``). ``decompose`` adds the mapping's parameters and loss, ``n_empty_spots``
    and the refinement's options after these, in that order.
    """
    record = {
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
        record["genes"] = features
    return record


def _rows_without_signal(x) -> np.ndarray:
    """Boolean mask of the rows of ``x`` (dense or sparse) whose entries are all zero."""
    if sparse.issparse(x):
        return np.asarray(abs(x).max(axis=1).toarray()).ravel() == 0
    return ~np.any(x != 0, axis=1)


def _fit_mapping(
    profiles: np.ndarray,
    ref,
    spots,
    codes: np.ndarray,
    cell_types: list[str],
    settings: MappingSettings,
    *,
    cell_names: pd.Index,
    spot_names: pd.Index,
    mode: str,
    density_prior,
    target_density: np.ndarray | None,
    return_mapping: bool,
) -> tuple[np.ndarray, dict]:
    """Fit the Tangram-style mapping and read the spots' proportions off it; also the record's entries.

    In ``mode="clusters"`` the sources are the cell types (their mean ``profiles`` times their cell
    counts), in ``mode="cells"`` the reference cells (``ref`` densified, named ``cell_names``).
    ``settings`` holds the int seed and ``lambda_d`` as recorded (0 without a density prior).
    Returns the spots x types proportions and the record's ``mode`` ... ``device`` entries (with
    ``mapping`` and ``mapping_sources`` under ``return_mapping``).
    """
    n_types = len(cell_types)
    counts = np.bincount(codes, minlength=n_types)
    if mode == "clusters":
        source = profiles * counts[:, None]
        source_density, groups, group_weights = counts / counts.sum(), np.arange(n_types), counts
        sources = list(cell_types)
    else:
        source, source_density, groups, group_weights = dense(ref), None, codes, np.ones(len(codes))
        sources = list(cell_names)
    result = fit_mapping_with(
        source,
        dense(spots),
        settings,
        source_density=source_density,
        target_density=target_density,
        source_keys=name_keys(sources),
        target_keys=name_keys(spot_names),
    )
    proportions = mapping_to_proportions(result.mapping, groups, n_types, group_weights)
    record = {
        "mode": mode,
        **settings.record(),
        "density_prior": density_prior
        if isinstance(density_prior, str)
        else ("custom" if density_prior is not None else "none"),
        "seed": settings.seed,
        "loss": result.loss,
        "device": result.device,
    }
    if return_mapping:
        record.update(mapping=result.mapping, mapping_sources=sources)
    logger.info(
        "decompose: final loss %.4f after %d epochs on %s", result.loss[-1], settings.epochs, result.device
    )
    return proportions, record


def _log_spots_without_signal(
    empty: np.ndarray, unweighted: np.ndarray, spot_names: pd.Index, method: str, *, expression: bool
) -> None:
    """Log a warning that counts and names (a few of) the spots without signal, if there are any.

    ``empty``: their features are all zero; ``unweighted``: NNLS gave the others no weight at all.
    Their proportions are uniform (NNLS) or whatever the mapping left there, not a measured mixture.
    On embeddings NNLS gives no weight to a spot whose embedding has a dot product <= 0 with every
    type's mean embedding (zero is then the best non-negative fit), which signed embeddings allow:
    the message says so rather than call such spots empty.
    """
    no_signal = empty | unweighted
    if not no_signal.any():
        return
    n_spots, examples = len(spot_names), few(spot_names[no_signal])
    if method == "nnls" and not expression:
        causes = [
            f"{k} {what}"
            for k, what in (
                (int(empty.sum()), "with an all-zero embedding"),
                (int(unweighted.sum()), "whose embedding has a dot product <= 0 with every cell type's mean"),
            )
            if k
        ]
        logger.warning(
            "decompose: %d of %d spots got no NNLS weight (%s), e.g. %s; their proportions are uniform, "
            "not a measured mixture. NNLS fits a spot as a non-negative mix of the cell types' mean "
            "embeddings; method='mapping' (the default for embeddings) does not",
            int(no_signal.sum()),
            n_spots,
            "; ".join(causes),
            examples,
        )
        return
    logger.warning(
        "decompose: %d of %d spots have no signal (%s), e.g. %s; their proportions are %snot a "
        "measured mixture",
        int(no_signal.sum()),
        n_spots,
        "all features zero, or no NNLS weight" if method == "nnls" else "all features zero",
        examples,
        "uniform, " if method == "nnls" else "",
    )


def _refined(
    proportions: np.ndarray,
    cell_types: list[str],
    refine: str | None,
    normalize: str | None,
    percentiles: tuple[float, float],
) -> tuple[np.ndarray, dict]:
    """The refined / normalised scores of ``proportions``, and the record's entries that say how.

    NMS first (``refine="nms"``), then the per-type percentile normalisation
    (``normalize="percentile"``); the entries are ``percentiles`` (with the normalisation only),
    ``refine`` and ``normalize`` (``"none"`` for an option not given).
    """
    refined = _nms(proportions, cell_types) if refine == "nms" else proportions
    record: dict = {}
    if normalize == "percentile":
        refined = percentile_normalize(refined, *percentiles)
        record["percentiles"] = [float(p) for p in percentiles]
    record["refine"] = refine or "none"
    record["normalize"] = normalize or "none"
    return refined, record


def _nms(proportions: np.ndarray, cell_types: list[str]) -> np.ndarray:
    """NMS refinement (eqs. 13-14); logs a warning naming the types kept in no spot."""
    refined = nms_refine(proportions)
    never = [t for t, column in zip(cell_types, refined.T, strict=True) if not column.any()]
    if never:
        logger.warning(
            "refine='nms': %d %s the most probable type of no spot and %s 0 in every refined spot "
            "(eqs. 13-14): %s",
            len(never),
            agree(len(never), "cell type is", "cell types are"),
            agree(len(never), "is", "are"),
            ", ".join(map(repr, never)),
        )
    return refined


def _write_results(
    table: AnnData,
    copy: bool,
    key_added: str,
    refined_key: str,
    proportions: pd.DataFrame,
    refined: pd.DataFrame | None,
    record: dict,
) -> AnnData | None:
    """Write the results into ``table`` (or a copy of it, returned): all of them or, on failure, none.

    Without ``refined`` an earlier call's refined scores are dropped, since these proportions would
    contradict them.
    """
    target = table.copy() if copy else table
    with all_or_nothing():
        write_obsm(target, key_added, proportions)
        if refined is not None:
            write_obsm(target, refined_key, refined)
        else:  # an earlier call's, which these proportions would contradict
            drop_obsm(target, refined_key, "of an earlier call (no refine or normalize now)")
        write_uns(target, key_added, record)
    return target if copy else None
