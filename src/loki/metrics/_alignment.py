"""Alignment metrics: distance to ground truth, and expression agreement at aligned locations.

The paper scores alignments of real serial sections by the Pearson correlation (eq. 20) and Kendall's
tau (eq. 21) of highly variable gene expression between target and source "at the same location":
each target spot is paired with the nearest aligned source spot (within ``max_distance``), and the
coefficient is computed across genes for every pair; the median over pairs summarises a section.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from scipy.spatial import cKDTree

from loki._keys import Key
from loki._logging import LokiWarning, user_stacklevel
from loki._utils import (
    as_rng,
    check_array_finite,
    check_int,
    check_obsm_key,
    check_unique_var_names,
    is_real,
    loki_record,
    require_keys,
)
from loki._utils._backed import read_matrix
from loki._utils._rng import check_seed
from loki._utils._spacing import nearest_spot_distance
from loki.metrics._correlation import kendall_tau_rows, pearson
from loki.metrics._labels import align_labels

_BOOT_CHUNK = 1 << 22  # resampled spots per bootstrap chunk (32 MB of float64 per alignment)
#: Values (pairs x genes) of the spot pairs correlated at once, and (spots x genes) of the spots
#: log-normalised at once (16 MB of float64).
_PAIR_BLOCK = 1 << 21
#: How values that are not counts are recognised (:func:`_multiples`): a value is a whole multiple
#: of its spot's smallest value within this relative tolerance (float32 rounding, through expm1 too,
#: stays under 1e-6 on real sections); ratios above ``_MAX_RATIO`` are left out (a tolerance scaled to them would pass
#: any value); and the values are taken for scaled counts when at least ``_MULTIPLES_SHARE`` of the
#: tested ones (and at least ``_MIN_TESTED``) are multiples. Measured share: 0.98-1.00 on
#: normalize_total'd and log-transformed real and synthetic sections, at most 0.006 on corrected counts.
_RATIO_RTOL = 2e-5
_MAX_RATIO = 1000.0
_MULTIPLES_SHARE = 0.5
_MIN_TESTED = 10
#: Positive values read before deciding (the first blocks of spots holding them): enough to tell
#: the shares apart, and a bound on the time spent on a matrix of 10^9 values.
_VALUES_READ = 1 << 20
#: Largest value that a log-transformed count matrix holds (log1p of 10^21); larger ones are not logs.
_LOG_MAX = 50.0
#: What values may be, and how to undo it before they are tested as counts scaled per spot.
_UNDO = (
    ("normalised (e.g. sc.pp.normalize_total)", None),
    ("log1p-transformed (e.g. sc.pp.log1p, normalised first or not)", np.expm1),
    ("log-transformed with base 2 (sc.pp.log1p(base=2))", lambda v: np.exp2(v) - 1.0),
    ("log-transformed with base 10 (sc.pp.log1p(base=10))", lambda v: 10.0**v - 1.0),
)

__all__ = [
    "alignment_error",
    "alignment_expression_scores",
    "matched_expression_correlation",
    "paired_median_difference",
    "spot_spacing",
]


def _xy(xy, name: str) -> np.ndarray:
    """``xy``'s first two columns (x, y) as float64; further columns (e.g. z) are ignored, as alignment does."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"{name} must be (n, 2) coordinates, got shape {xy.shape}.")
    check_array_finite(xy, name)
    return xy[:, :2]


def _nanmedian(x: np.ndarray) -> float:
    """Median of the non-NaN values of ``x``; NaN, without numpy's warning, when there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice" / "Mean of empty slice"
        return float(np.nanmedian(x)) if len(x) else float("nan")


def spot_spacing(xy: np.ndarray) -> float:
    """Median distance from each spot to its nearest neighbour (the unit of alignment errors).

    Spots at one position (two cells in one spot, repeated rows) count once, so that they do not
    pull the spacing to 0.

    Parameters
    ----------
    xy
        ``(n, 2)`` spot coordinates ``(x, y)``, ``n >= 2``; further columns (e.g. z) are ignored.

    Returns
    -------
    The median nearest-neighbour distance between distinct positions, in the units of ``xy``; 0
    when all spots share one position.

    """
    xy = _xy(xy, "xy")
    if len(xy) < 2:
        raise ValueError(f"spot_spacing needs at least 2 points, got {len(xy)}.")
    return nearest_spot_distance(xy)


def alignment_error(aligned: np.ndarray, truth: np.ndarray, unit: float | None = None) -> float:
    """Mean Euclidean distance between aligned and true coordinates.

    Parameters
    ----------
    aligned, truth
        ``(n, d)`` coordinates of the same spots, ``n >= 1``.
    unit
        Divide by this length (e.g. the spot spacing), a positive number; default 1.

    Returns
    -------
    The mean distance (in ``unit``).

    """
    aligned = np.asarray(aligned, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if aligned.shape != truth.shape or aligned.ndim != 2:
        raise ValueError(
            f"aligned and truth must be (n, d) arrays of one shape, got {aligned.shape} and {truth.shape}."
        )
    if not len(aligned):
        raise ValueError("aligned and truth hold no spots; the mean distance needs at least one.")
    check_array_finite(aligned, "aligned")
    check_array_finite(truth, "truth")
    if unit is not None and not (is_real(unit) and np.isfinite(unit) and unit > 0):
        raise ValueError(f"unit must be a positive number, got {unit!r}.")
    return float(np.linalg.norm(aligned - truth, axis=1).mean() / (unit or 1.0))


def matched_expression_correlation(
    expr_target: np.ndarray,
    xy_target: np.ndarray,
    expr_source: np.ndarray,
    xy_source: np.ndarray,
    *,
    max_distance: float | None = None,
    kendall: bool = True,
) -> dict[str, np.ndarray]:
    """PCC and Kendall's tau across genes between each target spot and its nearest source spot.

    Parameters
    ----------
    expr_target
        Target spots x genes: an array (dense or sparse), a DataFrame or an AnnData (its ``.X``).
    xy_target
        ``(n_target, 2)`` target coordinates; further columns are ignored.
    expr_source
        Source spots x genes, as ``expr_target``: the target's genes in the same order, or, when
        both name their genes (DataFrame columns, AnnData ``var_names``), the same genes in any
        order (matched by name; genes that differ raise a ValueError naming them).
    xy_source
        ``(n_source, 2)`` source coordinates in the target's frame (the source's aligned
        coordinates); further columns are ignored.
    max_distance
        Pairs farther apart are dropped (default: the target's spot spacing, :func:`spot_spacing`).
    kendall
        Also compute Kendall's tau-b (slower).

    Returns
    -------
    ``{"pearson": (n_pairs,), "kendall_tau": (n_pairs,), "target_index", "source_index", "distance"}``;
    pairs where either profile is constant give NaN.

    """
    xy_target = _xy(xy_target, "xy_target")
    xy_source = _xy(xy_source, "xy_source")
    expr_target, expr_source = _genes_matched(expr_target, expr_source)
    if expr_target.shape[0] != len(xy_target) or expr_source.shape[0] != len(xy_source):
        raise ValueError("expression matrices and coordinates must have the same number of spots.")
    if expr_target.shape[1] != expr_source.shape[1]:
        raise ValueError(
            f"expression matrices must share genes, got {expr_target.shape[1]} and {expr_source.shape[1]}."
        )
    _check_finite(expr_target, "expr_target (the target's expression)")
    _check_finite(expr_source, "expr_source (the source's expression)")
    if max_distance is None:
        max_distance = _default_radius(xy_target, "xy_target")
    elif not (is_real(max_distance) and np.isfinite(max_distance) and max_distance >= 0):
        raise ValueError(f"max_distance must be a number >= 0, got {max_distance!r}.")
    dist, src = cKDTree(xy_source).query(xy_target, k=1)
    ok = np.nonzero(dist <= max_distance)[0]
    src = src[ok]

    def _dense(x, rows):
        x = x[rows]
        return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)

    r, tau = _pair_correlations(
        lambda rows: _dense(expr_target, rows),
        lambda rows: _dense(expr_source, rows),
        expr_target.shape[1],
        ok,
        src,
        kendall,
    )
    out = {"pearson": r, "target_index": ok, "source_index": src, "distance": dist[ok]}
    if kendall:
        out["kendall_tau"] = tau
    return out


def _genes_matched(expr_target, expr_source):
    """The two matrices as arrays (dense or sparse), the source's genes in the target's order.

    Genes are matched by name when both sides name them (DataFrame columns, AnnData ``var_names``);
    a DataFrame left as it is would be indexed by column where spot rows are meant.
    """

    def matrix_and_genes(expr):
        if isinstance(expr, AnnData):
            return expr.X, expr.var_names
        if isinstance(expr, pd.DataFrame):
            return expr.to_numpy(), expr.columns
        return expr, None

    (xt, gt), (xs, gs) = matrix_and_genes(expr_target), matrix_and_genes(expr_source)
    if gt is not None and gs is not None and not gt.equals(gs):
        # only the genes are matched: the rows are different spots
        order = align_labels(
            pd.DataFrame(columns=gt), pd.DataFrame(columns=gs), ("expr_target", "expr_source")
        ).columns
        xs = xs[:, gs.get_indexer(order)]
    return xt, xs


def _pair_correlations(read_target, read_source, n_genes: int, target_rows, source_rows, kendall: bool):
    """PCC and Kendall's tau of each pair of rows ``(target_rows[i], source_rows[i])``.

    ``read_target(rows)`` / ``read_source(rows)`` give those rows as dense float64 arrays of
    ``n_genes`` columns. Pairs are taken a block at a time: dense float64 profiles of all pairs, and
    pearson's temporaries of their size, are GBs at 10^5-10^6 spots; each coefficient depends on its
    own pair only. The tau are zeros when ``kendall`` is False.
    """
    step = max(1, _PAIR_BLOCK // max(n_genes, 1))
    r, tau = np.zeros(len(target_rows)), np.zeros(len(target_rows))
    for lo in range(0, len(target_rows), step):
        et = read_target(target_rows[lo : lo + step])
        es = read_source(source_rows[lo : lo + step])
        r[lo : lo + step] = pearson(et, es, axis=1)
        if kendall:
            tau[lo : lo + step] = kendall_tau_rows(et, es)
    return r, tau


def _check_finite(expr, name: str) -> None:
    values = expr.data if sp.issparse(expr) else np.asarray(expr)
    _raise_non_finite(int(np.count_nonzero(~np.isfinite(values))), name)


def _raise_non_finite(bad: int, name: str) -> None:
    if bad:
        raise ValueError(f"{name} holds {bad} NaN or infinite value(s); expression must be finite.")


def _multiples(values: np.ndarray, starts: np.ndarray) -> tuple[int, int]:
    """How many values of each spot are whole multiples of the spot's smallest value, of those tested.

    ``values`` are positive values, each spot's in one run that begins at its entry of ``starts``.
    Counts scaled by one factor per spot (``normalize_total``) are such multiples; so are
    log-transformed counts, once the log is undone. Corrected counts (e.g. SoupX's, raw counts less
    an ambient part of each gene) are not. Values under 1.5 times the smallest (its ties among them)
    tell nothing and are not tested, nor ratios above ``_MAX_RATIO``.

    Returns
    -------
    ``(multiples, tested)``.
    """
    smallest = np.minimum.reduceat(values, starts)
    ratio = values / np.repeat(smallest, np.diff(np.append(starts, len(values))))
    ratio = ratio[(ratio >= 1.5) & (ratio <= _MAX_RATIO)]
    return int(np.count_nonzero(np.abs(ratio - np.round(ratio)) <= _RATIO_RTOL * ratio)), len(ratio)


class _LogCounts:
    """A section's log-normalised counts over some genes, computed a block of spots at a time.

    log1p of the counts scaled to the median library size of the spots with counts (scanpy's
    ``normalize_total`` + ``log1p``); spots without counts keep their zeros. Only the counts are held
    (the table's own matrix when it is in memory, else read once): spots are normalised when they
    are read, so that no float64 copy of every gene of every spot is made (GBs at 10^5-10^6 spots).
    Each spot's values are the same, bit for bit, as when the whole matrix is normalised at once.

    Parameters
    ----------
    adata
        The section; its ``.X`` (or ``.layers[layer]``) holds counts, in memory or opened with
        ``backed="r"``.
    genes
        The genes kept, among ``adata.var_names``.
    layer
        The layer of counts, or None for ``.X``.
    """

    def __init__(self, adata: AnnData, genes: pd.Index, layer: str | None = None):
        # a view's .X would copy the matrix even when all genes are kept; a backed one is read from disk
        columns = None if genes.equals(adata.var_names) else adata.var_names.get_indexer(genes)
        x = adata.X if layer is None else adata.layers[layer]
        if isinstance(x, np.ndarray) or (sp.issparse(x) and x.format == "csr"):
            self._x, self._columns = x, columns  # the genes are taken a block of spots at a time
        else:  # read, and CSC / COO counts made CSR at their own dtype, once
            x = read_matrix(x, columns)
            self._x, self._columns = (sp.csr_matrix(x) if sp.issparse(x) else np.asarray(x)), None
        self.n_obs, self.n_vars = adata.n_obs, len(genes)
        lib = np.zeros(self.n_obs)
        finite = True
        self.negative = 0  # number of values below 0, which counts never are
        self._whole = True  # every value a whole number, as counts are
        self._max = 0.0
        for lo, counts in self._blocks(self._counts):
            lib[lo : lo + counts.shape[0]] = np.asarray(counts.sum(axis=1)).ravel()
            finite = finite and bool(np.isfinite(counts.data).all())
            self.negative += int(np.count_nonzero(counts.data < 0))
            self._whole = self._whole and bool(np.array_equal(counts.data, np.round(counts.data)))
            self._max = max(self._max, float(np.fmax.reduce(counts.data, initial=0.0)))  # NaN aside
        self.has_counts = lib > 0
        target_sum = np.median(lib[self.has_counts]) if self.has_counts.any() else 1.0
        self._scale = target_sum / np.where(self.has_counts, lib, 1.0)
        # then each scaled count is at most target_sum (a value is at most its spot's sum), so finite
        self._finite = (
            finite and not self.negative and target_sum < 1e300 and bool(np.isfinite(self._scale).all())
        )

    def transformed(self) -> str | None:
        """What the values look like when they look like transformed counts, else None.

        Whole numbers are counts. Other values are taken for counts scaled per spot (normalised) or
        log-transformed when, as such, each spot's values (once the log is undone) are mostly whole
        multiples of its smallest one (:func:`_multiples`); corrected counts, which are not whole
        numbers either, are not. Values below 0 are left to the caller (:attr:`negative`). Only
        when they are not whole numbers, the counts are read again, a block of spots at a time,
        until ``_VALUES_READ`` positive values are read.
        """
        if self._whole or self.negative:
            return None
        undos = [(kind, undo) for kind, undo in _UNDO if undo is None or self._max <= _LOG_MAX]
        found = np.zeros((len(undos), 2), np.int64)
        read = 0
        for _, counts in self._blocks(self._counts):
            spot = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
            positive = counts.data > 0  # not NaN; an inf gives ratios left out
            values, spot = counts.data[positive], spot[positive]
            if len(values):
                starts = np.flatnonzero(np.diff(spot, prepend=-1))  # CSR: each spot's values in one run
                found += [_multiples(values if undo is None else undo(values), starts) for _, undo in undos]
            read += len(values)
            if read >= _VALUES_READ:
                break
        for (kind, _), (multiples, tested) in zip(undos, found, strict=True):
            if tested >= _MIN_TESTED and multiples >= _MULTIPLES_SHARE * tested:
                return kind
        return None

    def _blocks(self, read, *args):
        step = max(1, _PAIR_BLOCK // max(self.n_vars, 1))
        for lo in range(0, self.n_obs, step):
            yield lo, read(slice(lo, lo + step), *args)

    def _counts(self, rows) -> sp.csr_matrix:
        # float64 counts of these spots, an entry stored twice summed into one value
        x = self._x[rows]
        if self._columns is not None:
            x = x[:, self._columns]
        x = (
            sp.csr_matrix(x, dtype=np.float64, copy=True)
            if sp.issparse(x)
            else sp.csr_matrix(np.asarray(x, np.float64))
        )
        x.sum_duplicates()  # log1p of the entry's sum, not of each value
        return x

    def rows(self, rows, genes: np.ndarray | None = None) -> sp.csr_matrix:
        """The log-normalised values of these spots (a slice or indices) over ``genes`` (positions)."""
        x = self._counts(rows)
        if genes is not None:
            x = x[:, genes]
        x.data *= np.repeat(self._scale[rows], np.diff(x.indptr))
        np.log1p(x.data, out=x.data)
        return x

    def blocks(self, genes: np.ndarray | None = None):
        """``(first spot, values)`` of each block of spots in turn (:meth:`rows`)."""
        return self._blocks(self.rows, genes)

    def gene_variances(self) -> tuple[np.ndarray, np.ndarray]:
        """Variance of each gene over the spots with counts, and its number of NaN or infinite values.

        Spots without counts would move the variances while telling nothing of the genes (all spots
        count when none has counts); NaN are counted over all spots. The sums add the stored values
        one after the other in the order of the whole matrix, so that they do not depend on the size
        of the blocks.
        """
        rows = self.has_counts if self.has_counts.any() else np.ones(self.n_obs, bool)
        n = max(int(rows.sum()), 1)
        sums, squares = np.zeros(self.n_vars), np.zeros(self.n_vars)
        non_finite = np.zeros(self.n_vars, np.int64)
        for lo, x in self.blocks():
            bad = ~np.isfinite(x.data)
            if bad.any():
                non_finite += np.bincount(x.indices[bad], minlength=self.n_vars)
            values, genes = x.data, x.indices
            kept = np.repeat(rows[lo : lo + x.shape[0]], np.diff(x.indptr))
            if not kept.all():  # stored values (e.g. explicit zeros) of spots left out
                values, genes = values[kept], genes[kept]
            np.add.at(sums, genes, values)
            np.add.at(squares, genes, values * values)
        mean = sums / n
        return squares / n - mean**2, non_finite

    def non_finite(self, genes: np.ndarray) -> int:
        """Number of NaN or infinite values over ``genes`` (positions)."""
        if self._finite:  # counts finite and >= 0: none, without computing them
            return 0
        return sum(int(np.count_nonzero(~np.isfinite(x.data))) for _, x in self.blocks(genes))


def _default_radius(xy: np.ndarray, name: str) -> float:
    """The target's spot spacing, the default pairing radius; a ValueError when it has none."""
    spacing = spot_spacing(xy) if len(xy) >= 2 else 0.0
    if not spacing > 0:
        raise ValueError(
            f"{name} has fewer than 2 distinct spot positions, so it has no spot spacing to pair "
            "within; pass max_distance."
        )
    return spacing


def _registered_target_key(source: AnnData, target: AnnData, aligned_key: str) -> str:
    """The target coordinates in the frame of ``source``'s ``.obsm[aligned_key]``, else ``"spatial"``.

    Two sections of one :func:`loki.tl.align_sections` stack (both records hold ``z``, and the same
    ``coordinate_system`` where they name one) lie in the stack's frame at ``.obsm[aligned_key]``,
    whichever section each was aligned onto: the target's aligned coordinates are then the ones to
    pair with. Otherwise :func:`loki.tl.align` records the coordinates the source was registered onto
    as ``params['target_spatial_key']``: an earlier alignment's coordinates when it chained onto them
    (``align_sections(sequential=True)``).
    """
    record = loki_record(source, aligned_key) or {}
    other = loki_record(target, aligned_key) or {}
    systems = {str(r["coordinate_system"]) for r in (record, other) if r.get("coordinate_system") is not None}
    if "z" in record and "z" in other and len(systems) <= 1 and aligned_key in target.obsm:
        return aligned_key
    params = record.get("params")
    key = params.get("target_spatial_key") if isinstance(params, dict) else None
    return key if isinstance(key, str) and key else Key.SPATIAL


def alignment_expression_scores(
    source: AnnData,
    target: AnnData,
    *,
    aligned_key: str = Key.ALIGNED,
    target_key: str | None = None,
    n_top_genes: int = 200,
    max_distance: float | None = None,
    kendall: bool = True,
    layer: str | None = None,
) -> dict[str, float | np.ndarray]:
    """Median PCC and Kendall's tau of highly variable gene expression at aligned locations.

    Counts of both sections (``.X``, or ``.layers[layer]``) over the genes they share are normalised to the section's median library
    size and log1p-transformed; the ``n_top_genes`` of those genes with the highest variance of the
    target's log expression are used. Spots without counts over the shared genes (empty or off-tissue
    barcodes) take part in neither the median nor the variance, as in scanpy's ``normalize_total``;
    such a spot has a constant profile, so its pairs are NaN and left out (see Returns).

    Parameters
    ----------
    source
        Aligned section with ``.obsm[aligned_key]``.
    target
        Target section with ``.obsm[target_key]``.
    aligned_key, target_key
        Coordinates in ``.obsm``. ``target_key`` defaults to the coordinates in the frame of the
        source's aligned ones: ``aligned_key`` when both sections belong to one
        :func:`loki.tl.align_sections` stack (their ``.uns['loki'][aligned_key]`` records hold ``z``),
        which places every section in the frame of its target, so that any two sections of a stack
        (e.g. neighbours that were each aligned onto a middle target) are compared there; else the
        target coordinates the source's alignment was registered onto
        (``.uns['loki'][aligned_key]['params']['target_spatial_key']``, as :func:`loki.tl.align`
        records it), else ``"spatial"``: a section of ``align_sections(sequential=True)`` lies in the
        frame of its neighbour's aligned coordinates, not of its neighbour's own.
    n_top_genes
        Number of highly variable genes.
    max_distance
        Pairing radius (default the target's spot spacing, :func:`spot_spacing`).
    kendall
        Also compute Kendall's tau.
    layer
        Layer of both sections that holds the counts (e.g. ``"counts"`` when ``.X`` holds
        normalised expression); None for ``.X``. Raw counts and corrected counts that are not whole
        numbers (e.g. SoupX's adjusted counts) are both counts here.

    Returns
    -------
    ``{"pearson_median", "kendall_tau_median", "n_pairs", "pearson", "kendall_tau", "target_index",
    "n_target"}``: the medians, the number of paired target spots, the per-pair coefficients, the
    target spot of each pair and the number of target spots (for :func:`paired_median_difference`).
    A pair where either spot's profile is constant over the genes (e.g. no counts) has a NaN
    coefficient, left out of the median; a median is NaN when no pair has a finite coefficient, or
    when no target spot is paired at all (which also warns, naming ``max_distance``).

    Raises
    ------
    ValueError
        When either section's counts (``.X`` or ``.layers[layer]``) hold negative values (e.g. scaled
        expression), among other invalid inputs.

    Warns
    -----
    LokiWarning
        When no target spot has an aligned source spot within ``max_distance``, or when either
        section's counts look normalised or log-transformed rather than counts: values that are not
        whole numbers, but are whole multiples of one factor per spot, once any log (base e, 2 or 10)
        is undone, as after ``sc.pp.normalize_total`` and/or ``sc.pp.log1p``. Counts corrected by
        subtraction (e.g. SoupX's) are not such multiples, and do not warn.

    """
    check_obsm_key(source, aligned_key)
    if target_key is None:
        target_key = _registered_target_key(source, target, aligned_key)
        hint = (
            None
            if target_key == Key.SPATIAL
            else f"The source's alignment {aligned_key!r} was registered onto the target's "
            f".obsm[{target_key!r}] (its record's target_spatial_key); pass the section it was aligned "
            "onto, or target_key= the target's coordinates in the same frame."
        )
        check_obsm_key(target, target_key, where="target", hint=hint)
    else:
        check_obsm_key(target, target_key)
    xy_target = _xy(target.obsm[target_key], f"target .obsm[{target_key!r}]")
    xy_source = _xy(source.obsm[aligned_key], f"source .obsm[{aligned_key!r}]")
    if max_distance is None:
        max_distance = _default_radius(xy_target, f"target .obsm[{target_key!r}]")
    check_int(n_top_genes, "n_top_genes", minimum=2)
    check_unique_var_names(source, "source")
    check_unique_var_names(target, "target")
    genes = target.var_names.intersection(source.var_names)
    if len(genes) < 2:
        raise ValueError(f"source and target share {len(genes)} gene(s); at least 2 are needed.")

    # normalised a block of spots at a time: only the chosen genes of the paired spots are kept
    if layer is not None:
        for name, adata in (("source", source), ("target", target)):
            require_keys(adata.layers, layer, f"{name}.layers")
    xt, xs = _LogCounts(target, genes, layer), _LogCounts(source, genes, layer)
    matrix = ".X" if layer is None else f".layers[{layer!r}]"
    layers = sorted(set(source.layers) & set(target.layers))
    pass_layer = (
        "Pass layer= the layer of counts (layers of both sections: "
        f"{', '.join(map(repr, layers)) or 'none'})."
    )
    for name, x in (("source", xs), ("target", xt)):
        if x.negative:
            raise ValueError(
                f"alignment_expression_scores: {name}{matrix} holds {x.negative} negative value(s), as "
                "scaled expression (e.g. sc.pp.scale) does; counts are never negative, and this score "
                f"normalises and log1p-transforms counts. {pass_layer}"
            )
    not_counts = [(name, x.transformed()) for name, x in (("source", xs), ("target", xt))]
    not_counts = [f"{name}{matrix} looks {kind}" for name, kind in not_counts if kind is not None]
    if not_counts:
        warnings.warn(
            f"alignment_expression_scores: {' and '.join(not_counts)}: each spot's values (once any log "
            "is undone) are whole multiples of one factor, as counts scaled to a library size are. They "
            f"are normalised and log1p-transformed again as if they were counts. {pass_layer}",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    var, non_finite = xt.gene_variances()
    top = np.argsort(-var, kind="stable")[: min(n_top_genes, len(genes))]
    _raise_non_finite(int(non_finite[top].sum()), "expr_target (the target's expression)")
    _raise_non_finite(xs.non_finite(top), "expr_source (the source's expression)")
    dist, src = cKDTree(xy_source).query(xy_target, k=1)
    ok = np.nonzero(dist <= max_distance)[0]
    r, tau = _pair_correlations(
        lambda rows: xt.rows(rows, top).toarray(),
        lambda rows: xs.rows(rows, top).toarray(),
        len(top),
        ok,
        src[ok],
        kendall,
    )
    res = {"pearson": r, "target_index": ok, "kendall_tau": tau}
    if not len(res["target_index"]):
        spacing = spot_spacing(xy_target) if len(xy_target) >= 2 else float("nan")
        warnings.warn(
            f"No target spot has a source spot (.obsm[{aligned_key!r}]) within max_distance="
            f"{max_distance:.4g} (the target's spot spacing is {spacing:.4g}); the medians are NaN. "
            "Are both sections in one frame? Else pass a larger max_distance.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    out: dict[str, float | np.ndarray] = {
        "pearson_median": _nanmedian(res["pearson"]),
        "n_pairs": len(res["pearson"]),
        "pearson": res["pearson"],
        "target_index": res["target_index"],
        "n_target": target.n_obs,
    }
    if kendall:
        out["kendall_tau_median"] = _nanmedian(res["kendall_tau"])
        out["kendall_tau"] = res["kendall_tau"]
    return out


def paired_median_difference(
    scores_a: dict,
    scores_b: dict,
    *,
    measure: str = "pearson",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int | np.random.Generator | None = 0,
) -> dict[str, float]:
    """Difference of two alignments' median scores on one target, with a paired bootstrap interval.

    Both score sets come from :func:`alignment_expression_scores` on the same target section (e.g.
    two methods aligning one source). Each bootstrap sample redraws the target spots with
    replacement and takes, for each alignment, the median over the drawn spots it paired; so the
    interval accounts for both alignments being scored on the same spots, and for a spot paired by
    one alignment but not the other.

    Parameters
    ----------
    scores_a, scores_b
        Outputs of :func:`alignment_expression_scores`.
    measure
        ``"pearson"`` or ``"kendall_tau"``.
    n_boot
        Bootstrap samples, an integer >= 1.
    level
        Coverage of the percentile interval, in (0, 1).
    seed
        Seed of the resampling: a non-negative integer, a numpy Generator, or None (fresh entropy).

    Returns
    -------
    ``{"difference", "low", "high", "fraction_a_ge_b"}``: median of A minus median of B, the
    interval's ends, and the share of bootstrap samples in which A's median is at least B's; all
    NaN when either alignment has no finite score.

    """
    if measure not in ("pearson", "kendall_tau"):
        raise ValueError(f"measure must be 'pearson' or 'kendall_tau', got {measure!r}.")
    for name, scores in (("scores_a", scores_a), ("scores_b", scores_b)):
        missing = {measure, "target_index", "n_target"} - set(scores)
        if missing:
            raise KeyError(
                f"{name} lacks {sorted(missing)}; pass the output of alignment_expression_scores"
                + (" with kendall=True" if measure == "kendall_tau" else "")
                + "."
            )
    n = scores_a["n_target"]
    if scores_b["n_target"] != n:
        raise ValueError(
            f"the scores come from targets of {n} and {scores_b['n_target']} spots; use one target."
        )
    check_int(n_boot, "n_boot")
    if not (is_real(level) and 0 < level < 1):
        raise ValueError(f"level must be a number in (0, 1), got {level!r}.")
    check_seed(seed)

    def per_spot(scores):
        full = np.full(n, np.nan)
        full[np.asarray(scores["target_index"])] = scores[measure]
        return full

    a, b = per_spot(scores_a), per_spot(scores_b)
    rng = as_rng(seed)
    diffs = np.empty(n_boot)
    step = max(1, _BOOT_CHUNK // n)  # draws per chunk, so that memory stays bounded for large targets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": a draw without a paired spot
        for lo in range(0, n_boot, step):
            draws = rng.integers(0, n, size=(min(step, n_boot - lo), n))
            diffs[lo : lo + len(draws)] = np.nanmedian(a[draws], axis=1) - np.nanmedian(b[draws], axis=1)
    diffs = diffs[np.isfinite(diffs)]
    low, high = np.percentile(diffs, [50 * (1 - level), 50 * (1 + level)]) if len(diffs) else (np.nan, np.nan)
    return {
        "difference": _nanmedian(a) - _nanmedian(b),
        "low": float(low),
        "high": float(high),
        "fraction_a_ge_b": float((diffs >= 0).mean()) if len(diffs) else float("nan"),
    }
