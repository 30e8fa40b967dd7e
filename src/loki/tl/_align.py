"""Loki Align: register a source section onto a target section (glue over :mod:`loki.tl._cpd`).

Points are ``[x, y, PC_1, ..., PC_k]``: spot coordinates (centred, divided by the target's extent)
and the leading principal components of an embedding (PCA fitted on the target, scaled by
``feature_weight`` relative to the coordinates). The rigid/affine part of the result goes into a
SpatialData coordinate system on the source section's elements (see :func:`align` for which); the
non-rigid coordinates go into ``.obsm`` and a new shapes element.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    all_or_nothing,
    check_array_finite,
    check_int,
    check_key_name,
    check_result_key,
    loki_record,
    loki_uns,
    require_keys,
    write_obsm,
    write_uns,
)
from loki._utils._affine import apply_matrix, linear_scale
from loki._utils._pca import fit_pca
from loki._utils._provenance import embedding_model, warn_if_models_differ
from loki._utils._rng import as_seed
from loki._utils._sections import library_sections, stack_sections
from loki._utils._spatialdata import (
    aligned_coordinate_systems,
    check_write_mode,
    get_table,
    is_spatialdata,
)
from loki.tl._align_spatialdata import (
    ImageKeys,
    Section,
    aligned_shapes,
    check_cs,
    check_shapes_name,
    check_spot_frame,
    in_stack,
    log_how_to_save,
    placed_elements,
    replace_stack_target,
    section_elements,
    section_input_cs,
    shapes_name,
    source_to_cs,
    stack_onto,
    target_to_cs,
    warn_left_out_of_stack,
    warn_shared_coordinate_system,
    write_spatialdata,
)
from loki.tl._cpd import AlignResult, Method, cpd_align, reverse_result

if TYPE_CHECKING:
    from spatialdata import SpatialData

__all__ = ["Alignment", "align", "align_sections", "embedding_features"]

Use = str | tuple[str, str] | None


class Alignment(NamedTuple):
    """What :func:`align` returns with ``inplace=False``: the results it would write."""

    coords: np.ndarray
    """``(n, 2)`` aligned spot coordinates of the source (``.obsm[key_added]``)."""
    transformation: np.ndarray
    """3x3 ``Affine`` that would place the source's elements in ``coordinate_system`` (``matrix`` for
    AnnData input)."""
    record: dict[str, Any]
    """The ``.uns['loki'][key_added]`` entry (its ``shapes`` names the element that would be added)."""


def _resolve(data: Any, key: str | None, role: str) -> Section:
    if isinstance(data, AnnData):
        return Section(data, None, data)
    if not is_spatialdata(data):
        raise TypeError(
            f"{role} must be a SpatialData, an AnnData or a table key, got {type(data).__name__}."
        )
    if key is None:
        tables = list(data.tables.keys())
        if len(tables) != 1:
            param = "source" if role == "source" else "target_table"
            raise ValueError(
                f"The {role} SpatialData holds {len(tables)} tables ({', '.join(map(repr, tables)) or 'none'}); "
                f"name the {role} section's table with {param}=."
            )
        key = tables[0]
    return Section(data, key, get_table(data, key))


def _use_keys(use: Use) -> tuple[str | None, str | None]:
    if use is None:
        return None, None
    if isinstance(use, str):
        return use, use
    use = tuple(use)
    if len(use) != 2 or not all(isinstance(u, str) for u in use):
        raise ValueError(f"use must be an .obsm key, a (source_key, target_key) pair or None, got {use!r}.")
    return use[0], use[1]


def embedding_features(
    emb_source: np.ndarray, emb_target: np.ndarray, n_pcs: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leading principal components of both embeddings, PCA fitted on the target.

    The PCA (:func:`loki._utils._pca.fit_pca`) works on row blocks, so its memory does not grow with
    a copy of the embeddings; each component's largest loading is positive.

    Parameters
    ----------
    emb_source, emb_target
        (n, d) and (m, d) embeddings in one space.
    n_pcs
        Number of components (at most ``min(m, d)`` are returned).

    Returns
    -------
    ``(pcs_source, pcs_target, explained_variance_ratio)``; the components are divided by the 1-99
    percentile range of the target's first component so they live on the scale of normalised
    coordinates.
    """
    pca = fit_pca(emb_target, n_pcs)
    pt, ps = pca.transform(emb_target), pca.transform(emb_source)
    lo, hi = np.percentile(pt[:, 0], [1, 99]) if pt.shape[1] else (0.0, 1.0)
    scale = (hi - lo) or 1.0
    return ps / scale, pt / scale, pca.explained_variance_ratio


def _embedding(section: Section, key: str, role: str) -> np.ndarray:
    import scipy.sparse as sp

    require_keys(section.table.obsm, key, f"{role} table .obsm ({section.name!r})")
    emb = section.table.obsm[key]
    if isinstance(emb, pd.DataFrame):
        text = [str(c) for c, dtype in emb.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
        if text:
            raise ValueError(
                f"{role} .obsm[{key!r}] must be numeric; its column(s) {text[:5]} are not. Pass an embedding."
            )
        emb = emb.to_numpy(dtype=np.float64, na_value=np.nan)
    elif sp.issparse(emb):  # (n, d) with d in the hundreds: small next to what alignment holds anyway
        emb = emb.toarray()
    emb = np.asarray(emb)
    if emb.dtype.kind not in "biuf":
        raise ValueError(f"{role} .obsm[{key!r}] must be numeric, got dtype {emb.dtype}. Pass an embedding.")
    if emb.ndim != 2:
        raise ValueError(f"{role} .obsm[{key!r}] must be 2-dimensional, got shape {emb.shape}.")
    check_array_finite(emb, f"{role} .obsm[{key!r}]")
    return emb


def _pca_loadings(table: AnnData, key: str) -> tuple[str, pd.DataFrame] | None:
    """The loadings scanpy wrote for the PCA in ``.obsm[key]``: ``(varm key, genes x components)``, or None.

    ``sc.pp.pca`` writes ``.obsm['X_pca']`` with ``.varm['PCs']``, and ``.obsm[k]`` with ``.varm[k]``
    for ``key_added=k``.
    """
    varm_key = "PCs" if key == "X_pca" else key
    if varm_key not in table.varm or not table.var_names.is_unique:
        return None
    loadings = np.asarray(table.varm[varm_key])
    if loadings.ndim != 2 or loadings.dtype.kind not in "biuf":
        return None
    return varm_key, pd.DataFrame(loadings, index=table.var_names)


def _own_components(emb: np.ndarray, k: int = 10) -> bool:
    """Whether ``emb`` looks like a PCA of these rows alone: centred, its leading columns uncorrelated.

    A PCA's scores are so to float precision (1e-6 on the MOB sections); the rows of one section cut
    from a PCA of several sections are not (means of 0.5-2 standard deviations, correlations of 0.2-0.8
    on MOB and her2st). Only the first ``k`` columns are checked, so the cost stays O(n k).
    """
    lead = np.asarray(emb[:, :k], dtype=np.float64)
    if lead.shape[1] < 2 or len(lead) <= lead.shape[1]:
        return False
    sd = lead.std(axis=0)
    if not (sd > 0).all():
        return False
    corr = np.corrcoef(lead, rowvar=False)
    np.fill_diagonal(corr, 0.0)
    return bool(np.abs(lead.mean(axis=0) / sd).max() < 1e-3 and np.abs(corr).max() < 1e-3)


def _warn_if_separate_pca(
    src: Section, key_src: str, tgt: Section, key_tgt: str, emb_src: np.ndarray, emb_tgt: np.ndarray
) -> None:
    """Warn when the two embeddings are PCAs fitted on each section separately.

    Each fit has its own axes (order, sign, mixture of genes), so the components of one section do not
    describe the other's: the global start then compares unrelated columns, and on her2st A2 onto A1
    the alignment came out mirrored. One PCA fitted on the sections together gives both tables the same
    loadings over their shared genes. When both tables hold scanpy's loadings they decide; without
    them, two embeddings that are each centred with uncorrelated components (:func:`_own_components`),
    and not one and the same set of rows, are taken for separate fits.
    """
    found = _pca_loadings(src.table, key_src), _pca_loadings(tgt.table, key_tgt)
    if found[0] is not None and found[1] is not None:
        (varm_src, a), (varm_tgt, b) = found
        shared = a.index.intersection(b.index)
        if a.shape[1] == b.shape[1] and len(shared) and np.allclose(a.loc[shared], b.loc[shared], atol=1e-6):
            return
        loadings = f"their loadings (source .varm[{varm_src!r}], target .varm[{varm_tgt!r}])"
        why = (
            f"{loadings} differ over the {len(shared)} genes they share"
            if len(shared)
            else f"{loadings} share no gene"
        )
    elif (
        _own_components(emb_src)
        and _own_components(emb_tgt)
        and not np.array_equal(np.sort(emb_src[:, 0]), np.sort(emb_tgt[:, 0]))
    ):
        why = "each is centred with uncorrelated components, as a PCA of that section alone is"
    else:
        return
    warnings.warn(
        f"source .obsm[{key_src!r}] and target .obsm[{key_tgt!r}] look like separate PCA fits: {why}, so "
        "their components are not one space and the alignment can come out rotated or mirrored. Fit one "
        "PCA on the sections together (e.g. sc.pp.pca on anndata.concat of their tables) and give each "
        "section its rows of the result (and its loadings, or drop a stale .varm entry).",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _coords(section: Section, key: str, role: str) -> np.ndarray:
    require_keys(section.table.obsm, key, f"{role} table .obsm ({section.name!r})")
    xy = np.asarray(section.table.obsm[key], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise ValueError(f"{role} .obsm[{key!r}] must be (n, 2) coordinates, got shape {xy.shape}.")
    xy = xy[:, :2]
    if len(xy) < 3:
        raise ValueError(f"The {role} section has {len(xy)} spot(s); alignment needs at least 3.")
    check_array_finite(xy, f"{role} .obsm[{key!r}]")
    distinct = len(np.unique(xy, axis=0))
    if distinct < 3:
        raise ValueError(
            f"The {role} section's {len(xy)} spots lie at {distinct} distinct position(s) of .obsm[{key!r}]; "
            "alignment needs at least 3."
        )
    return xy


def _microns_per_unit(table, key: str) -> float | None:
    """µm per unit of ``.obsm[key]``, or None when unknown.

    The table's own scale (``.uns['loki']['microns_per_unit']``) is that of its spot coordinates,
    ``.obsm['spatial']``; other coordinates (an earlier alignment's) carry the scale recorded with them.
    """
    entry = loki_uns(table) if key == Key.SPATIAL else loki_record(table, key)
    value = (entry or {}).get("microns_per_unit")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _physical_unit(
    src: Section,
    tgt: Section,
    mpu_src: float | None,
    mpu_tgt: float | None,
    frame_scale: float,
    physical_units: bool,
) -> float:
    """Scale that ``microns_per_unit`` adds after the spots' transformations (``frame_scale``), or 1.

    ``mpu_src`` and ``mpu_tgt`` are the two sections' :func:`_microns_per_unit` of the registered
    coordinates. With both known, it decides the size: it corrects what the transformations leave
    (two SpatialData objects imaged at different resolutions, both ``Identity``), and where the
    transformations scale too and the two disagree by more than 1%, a warning says so.
    """
    if not physical_units:
        return 1.0
    if (mpu_src is None) != (mpu_tgt is None):
        known, unknown = (
            (("source", src), ("target", tgt)) if mpu_tgt is None else (("target", tgt), ("source", src))
        )
        logger.warning(
            "physical_units: only the %s section %r records .uns['loki']['microns_per_unit'] for its "
            "coordinates; the %s section %r does not, so %s",
            known[0],
            known[1].name,
            unknown[0],
            unknown[1].name,
            "no unit conversion was applied (both are taken in the same units)"
            if np.isclose(frame_scale, 1.0)
            else f"the units are converted by the spots' transformations alone (scale {frame_scale:.4g})",
        )
    if not (mpu_src and mpu_tgt):
        return 1.0
    unit = mpu_src / frame_scale / mpu_tgt
    if not np.isclose(frame_scale, 1.0, rtol=1e-3) and not np.isclose(unit, 1.0, rtol=1e-2):
        logger.warning(
            "physical_units: the spots' transformations scale the source by %.4g, but the recorded "
            "microns_per_unit ask for %.4g; microns_per_unit is used (a further factor %.4g). Check the "
            "transformations or .uns['loki']['microns_per_unit'] of %r and %r",
            frame_scale,
            frame_scale * unit,
            unit,
            src.name,
            tgt.name,
        )
    return unit


# serial sections here differ by at most 9% in spot count; a source holding 87.5% of the target
# (ratio 1.14) already lands 0.2-0.7 spacings off when it moves (benchmarks/RESULTS.md, torn sections)
_AUTO_REVERSE_RATIO = 1.12


def _moving(moving: str, n_source: int, n_target: int, *, partial: bool = False) -> str:
    """Resolve ``moving="auto"``: the target moves when it has clearly more spots than the source.

    A ``partial`` alignment registers the overlap only, so the source keeps moving.
    """
    if moving not in ("auto", "source", "target"):
        raise ValueError(f"moving must be 'auto', 'source' or 'target', got {moving!r}.")
    if moving == "auto" and partial:
        return "source"
    if moving == "auto":
        return "target" if n_target > _AUTO_REVERSE_RATIO * n_source else "source"
    return moving


_STAGE_COLUMNS = (
    "level",
    "n_points",
    "n_starts",
    "n_iter",
    "sigma2",
    "sigma2_features",
    "converged",
    "seconds",
)


def _warn_stopped_at_max_iter(stages: list[dict], max_iter: int, source: str, target: str) -> None:
    """Warn when a CPD stage of the last level ran out of iterations: the result is where it stopped.

    Coarser levels of the pyramid only give the next level its start, so they do not warn.
    """
    last = max((s["level"] for s in stages if s.get("level") is not None), default=None)
    stopped = [s["stage"] for s in stages if s.get("converged") is False and s.get("level") == last]
    if stopped:
        warnings.warn(
            f"CPD stopped at max_iter={max_iter} before converging in stage(s) {', '.join(map(repr, stopped))} "
            f"of the alignment of {source!r} onto {target!r} (the record's 'stages' table); the result is where "
            "it stopped. Pass a larger max_iter to let it converge.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


def _deformation_record(deformation: dict | None) -> dict | None:
    """The ratios of :func:`~loki.tl._cpd.deformation_ratios` as the record keeps them (None for rigid runs)."""
    if deformation is None:
        return None
    return {
        "axis_ratios": np.asarray(deformation["axis_ratios"], dtype=float),
        "spacing_ratio": float(deformation["spacing_ratio"]),
        "collapsed": bool(deformation["collapsed"]),
    }


def _warn_if_collapsed(
    deformation: dict | None, scale: float, source: str, target: str, moving: str, key_added: str
) -> None:
    """Warn when the deformable stage collapsed the section that moved in CPD (``moving``).

    The numbers are in the target's units (``scale`` undoes the normalisation).
    """
    if deformation is None or not deformation["collapsed"]:
        return
    moved = "the source" if moving == "source" else "the target, which moved in CPD (moving=)"
    before = " x ".join(f"{v * scale:.4g}" for v in deformation["axes_before"])
    after = " x ".join(f"{v * scale:.4g}" for v in deformation["axes_after"])
    ratios = ", ".join(f"{v:.2f}" for v in deformation["axis_ratios"])
    warnings.warn(
        f"The deformable stage of the alignment of {source!r} onto {target!r} collapsed {moved}: the spread of "
        f"its spots along their principal axes (standard deviation) went from {before} to {after} (ratios "
        f"{ratios}) and their median nearest-neighbour spacing from {deformation['spacing_before'] * scale:.4g} "
        f"to {deformation['spacing_after'] * scale:.4g} (ratio {deformation['spacing_ratio']:.2f}), in the "
        "target's units. The deformable field pulled the spots together, as it does when their embedding "
        "matches spots all over the other section rather than those they lie on (a model that saw only one of "
        "the sections) or when the sections share only part of their tissue: the aligned coordinates are no "
        "alignment, and the placement (the record's 'matrix', the SpatialData transformation) is the "
        "pre-alignment's, not a fit to them. Pass method='rigid' (keeps the section's shape), embeddings of a "
        "model that saw both sections, an expression PCA fitted on both sections, or use=None (coordinates "
        "only), or a larger alpha; partial=True for sections that share only part of their tissue. "
        f".uns['loki'][{key_added!r}]['deformation'] records the ratios.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _stage_table(stages: list[dict]) -> pd.DataFrame:
    """CPD stages as a table, one row per stage in run order.

    Numbers a stage does not have (a start's iterations, a fit's number of starts, the feature variance
    without an embedding) are NaN, and ``converged`` is 1.0 / 0.0 / NaN, so the table is writeable.
    """
    table = pd.DataFrame(stages).reindex(columns=["stage", *_STAGE_COLUMNS])
    table.index = table.index.astype(str)
    numeric = table[list(_STAGE_COLUMNS)].apply(
        lambda col: pd.to_numeric(col.astype(object), errors="coerce")
    )
    return pd.concat([table[["stage"]].astype(str), numeric.astype(float)], axis=1)


def _start_table(scores: list[dict]) -> pd.DataFrame | None:
    """Global-start scores as a table (NaN where a start was not run to convergence), or None.

    Columns of the usual start; a partial start (``correlation``, ``overlap``, ``agreement``) keeps its own.
    """
    if not scores:
        return None
    if "correlation" in scores[0]:
        cols = ["mirror", "rotation_deg", "correlation", "overlap", "agreement"]
    else:
        cols = ["mirror", "rotation_deg", "loglik_screen", "loglik", "loglik_common", "agreement"]
    table = pd.DataFrame(scores).reindex(columns=cols)
    table.index = table.index.astype(str)
    return table.astype({"mirror": bool, **{c: float for c in cols[1:]}})


def _original_matrix(norm: np.ndarray, c_src: np.ndarray, c_tgt: np.ndarray, scale: float) -> np.ndarray:
    """Express a 3x3 transform of normalised coordinates in the sections' own units."""
    to_norm = np.eye(3)
    to_norm[:2, :2] /= scale
    to_norm[:2, 2] = -c_src / scale
    from_norm = np.eye(3)
    from_norm[:2, :2] *= scale
    from_norm[:2, 2] = c_tgt
    return from_norm @ norm @ to_norm


def _check_key_added(key_added: str, spatial_key: str, use_keys: tuple[str | None, str | None]) -> None:
    """``key_added`` must be a key name and differ from the input keys (coordinates, embeddings)."""
    check_key_name(key_added)
    inputs = {"spatial_key": spatial_key, "the source's embedding (use)": use_keys[0]}
    inputs["the target's embedding (use)"] = use_keys[1]
    for what, key in inputs.items():
        if key == key_added:
            raise ValueError(
                f"key_added={key_added!r} is also {what}: the result would replace an input .obsm entry of "
                "the source. Choose another key_added."
            )


def _default_coordinate_system(key_added: str) -> str:
    """The aligned coordinate system named after ``key_added``: ``"aligned"`` for ``"spatial_aligned"``."""
    return key_added.removeprefix("spatial_")


_INPUT_CS_HINT = (
    "Without input_coordinate_system=, a section is taken in 'global', or else in the one coordinate system "
    "its spots and image share; pass input_coordinate_system= to name the one they lie in."
)


def _input_systems(
    src: Section,
    tgt: Section,
    given: str | None,
    image_key: ImageKeys,
    target_image_key: ImageKeys,
    coordinate_system: str,
) -> tuple[str, str, str | None]:
    """The source's and the target's input coordinate systems, and the hint of a missing one's error.

    ``given`` (``input_coordinate_system=``) applies to both. Without it each section is looked up
    separately (:func:`~loki.tl._align_spatialdata.section_input_cs`), leaving out the coordinate
    systems that alignments placed sections in: this call's ``coordinate_system`` and those recorded
    in either object's tables.
    """
    if given is not None:
        if not isinstance(given, str) or not given:
            raise ValueError(f"input_coordinate_system={given!r} is not a coordinate system name.")
        return given, given, None
    aligned = {coordinate_system, *aligned_coordinate_systems(src.data, tgt.data)}
    in_src = section_input_cs(src, image_key, "source", aligned)
    in_tgt = section_input_cs(tgt, target_image_key, "target", aligned)
    return in_src, in_tgt, _INPUT_CS_HINT


def align(
    data: SpatialData | AnnData,
    *,
    source: str | None = None,
    target: str | SpatialData | AnnData,
    target_table: str | None = None,
    use: Use = Key.TEXT,
    method: Method = "deformable",
    pre_align: Literal["rigid", "similarity", "affine"] = "rigid",
    mirror: bool = True,
    n_rotations: int = 8,
    n_pcs: int = 2,
    feature_weight: float = 1.0,
    alpha: float = 0.5,
    beta: float = 2.0,
    w: float = 0.1,
    max_iter: int = 200,
    tol: float = 1e-6,
    n_landmarks: int = 300,
    max_points: int = 50_000,
    n_coarse: int = 5000,
    refine: bool = True,
    preserve_scale: bool = False,
    moving: Literal["auto", "source", "target"] = "auto",
    partial: bool = False,
    physical_units: bool = True,
    spatial_key: str = Key.SPATIAL,
    target_spatial_key: str | None = None,
    key_added: str = Key.ALIGNED,
    coordinate_system: str | None = None,
    input_coordinate_system: str | None = None,
    image_key: ImageKeys = None,
    target_image_key: ImageKeys = None,
    seed: int | np.random.Generator | None = 0,
    copy: bool = False,
    inplace: bool = True,
) -> AnnData | Alignment | None:
    """Align a source section onto a target section with coherent point drift (Loki Align).

    ST-to-ST (``use="loki_text"``), image-to-ST (``use=("loki_image", "loki_text")``) and
    image-to-image (``use="loki_image"``), or any ``.obsm`` key (e.g. ``"X_pca"``). Points are the
    spot coordinates (centred, divided by the target's extent) and the first ``n_pcs`` principal
    components of the embeddings (PCA fitted on the target), registered by CPD after a global start
    over ``n_rotations`` rotations x mirror.

    Parameters
    ----------
    data
        SpatialData holding the source section (and the target, when ``target`` is a table key), or
        the source AnnData.
    source
        Table key of the source section in ``data`` (may be omitted when ``data`` holds one table).
    target
        Table key of the target section in ``data``, or the target SpatialData / AnnData.
    target_table
        Table key of the section in a separate target SpatialData (with a table key ``target``, any
        other name is refused).
    use
        ``.obsm`` key of the embedding in both tables, a ``(source_key, target_key)`` pair, or None
        for coordinates only. A :class:`~loki.LokiWarning` says so when the two embeddings' records
        (``.uns['loki']``) name different model weights, and when they are PCAs fitted on each section
        separately (scanpy's loadings, ``.varm['PCs']`` for ``"X_pca"``, differ): fit one PCA on the
        sections together.
    method
        ``"rigid"``, ``"similarity"``, ``"affine"`` or ``"deformable"`` (the paper's recipe; starts from
        a ``pre_align`` registration). Where the embedding of the section that moves matches spots all
        over the other section rather than those it lies on (e.g. a model that saw only one of them),
        the deformable stage can collapse it onto a strip while reporting convergence. When the spread
        of its spots along a principal axis, or their median nearest-neighbour spacing, shrinks below
        half the pre-alignment's (0.81-1.06 on 14 real serial pairs and synthetic warps; 0.09-0.37 in
        the collapses seen), a :class:`~loki.LokiWarning` gives the numbers, the placement
        (``matrix``) is the pre-alignment's instead of a fit to the collapsed coordinates, and the
        record's ``deformation`` says ``collapsed``.
    pre_align
        Transform family before the deformable stage: ``"rigid"``, ``"similarity"`` or ``"affine"``
        (checked with every method, used by ``deformable`` only).
    mirror
        Also try the source flipped and keep the better fit. The best starts of each side converge;
        with an embedding the run whose spatially paired spots agree best in the whole embedding wins,
        without one the run with the best likelihood at one spatial variance. Pass ``False`` when the
        sections are known to be mounted alike.
    n_rotations
        Initial rotations tried by the global start (1 and ``mirror=False`` skip it).
    n_pcs
        Embedding principal components appended to the coordinates (0 for none); at most the
        target embedding's dimensions (and spots).
    feature_weight
        Scale of the components relative to the normalised coordinates.
    alpha, beta
        Deformable regularisation (lambda) and kernel width (in units of the target's extent).
    w
        Outlier weight in [0, 1). With ``w=0`` a target spot with no moving spot within the E-step's
        truncation (6 sigma) gets no posterior mass at all, where dense CPD would spread it; keep it
        above 0 unless every spot has a partner.
    max_iter, tol
        Iteration cap and relative log-likelihood tolerance per stage. A stage of the finest level that
        stops at the cap before converging warns (a :class:`~loki.LokiWarning`); coarser levels only
        give it its start.
    n_landmarks
        Rank bound of the Nyström kernel of the deformable stage.
    max_points, n_coarse, refine
        Coarse-to-fine pyramid for large sections: the first level registers ``n_coarse`` random spots
        per side (global start + rigid/affine CPD), each further level about sqrt(10) times more,
        starting from the previous level's transform and variance, the last level all spots (which
        also runs the deformable stage). Subsample levels register coordinates only (at their coarse
        sigma the embedding columns bias the spatial fit) and anneal sigma down to their own spot
        spacing; the global start and the last level use the embedding too. Synthetic benchmark: 5e4
        spots per side in 8 s, 5e5 in 64-80 s, both within 0.01 spot spacing. With
        ``refine=False`` and
        more than ``max_points`` spots per side, the pyramid stops at a ``max_points`` subsample and
        its transform and deformable field (through its low-rank Nystrom form) are interpolated to
        all spots; ``.uns[...]['approximate']`` records it. That subsample keeps the embedding but
        its spatial variance is held at or below its own squared spot spacing, since random
        subsamples of two sections do not pair spot for spot. It is only about as precise as that
        subsample: on the 500,000-spot synthetic benchmark 1.2 spot spacings off in 22 s, against
        0.004 for the exact pyramid in 64-80 s (``benchmarks/RESULTS.md``). Prefer the default
        ``refine=True`` unless time matters more than sub-spot precision.
    preserve_scale
        ``deformable`` only (refused with the other methods): divide the isotropic scale of the
        deformable motion out of the result (Umeyama similarity fit from the pre-aligned to the
        deformed coordinates), keeping its rotation, translation and local warp, so the non-rigid
        coordinates keep the pre-alignment's overall size. The deformable M-step can contract a source towards the target's centroid
        (Stahl breast cancer layers of equal extent: by 5-12%). Off by default: on the real serial
        pairs of ``benchmarks/bench_align_real.py`` it does not raise the expression agreement at
        aligned locations on every pair.
    moving
        Which section's spots move in CPD, i.e. form the Gaussian mixture. CPD has to explain every spot
        of the fixed section by the moving one, so the fixed section should lie within the moving one:
        a source covering only part of the target (torn, cropped, a smaller capture area) aligns only
        with the target moving (it is registered onto the source and the motion inverted; the
        deformable warp is carried back by kernel regression). ``"auto"`` moves the target when it
        has more than 1.12 times the source's spots, otherwise the source. Serial sections of one
        size (spot ratios 0.9-1.09 here) keep the source moving, which suits them better. The rule
        counts spots, so it assumes one spot density: for sections of different platforms or bin
        sizes, pass ``"target"`` when the source covers only part of the target. With ``partial``,
        ``"auto"`` keeps the source moving.
    partial
        The sections share only part of their tissue, each possibly holding some the other lacks (torn
        on both sides, capture areas placed differently). The global start then places the source by
        the cross-correlation of the two sections' embedding maps over rotations (every 10 degrees) x
        mirror x all translations, and CPD runs on the spots that have a partner on the other side
        within 0.75 spot spacings, re-estimated until stable; the deformable field is fitted on that
        overlap. Needs ``use``. On 14 real sections cut in two overlapping parts it recovered the
        exact transform in every case where each part shared 57% of its spots or more, in 26 of 28
        at 46% and in 10 of 28 at a third. Checked on sections of up to 35,000 spots; a warning is
        logged above that (``benchmarks/RESULTS.md``).
    physical_units
        When both tables give ``.uns['loki']['microns_per_unit']`` (the readers and
        :func:`loki.pp.tile_image` write it), bring the source's coordinates into the target's units
        before registering, so sections imaged at different resolutions align with a rigid fit. The
        factor is folded into ``matrix``. That scale is of the readers' coordinates,
        ``.obsm['spatial']``; an earlier alignment's coordinates (``target_spatial_key``) carry the
        units recorded with them, and other keys are taken as they are. When only one of the two
        records it, a warning says so and ``microns_per_unit`` is not used: the units are converted by
        the spots' transformations alone (below), or not at all for an AnnData or for ``Identity``
        transformations, the two then taken in the same units. With a SpatialData target the
        source is first brought into the target table's frame by the spots' transformations into
        ``input_coordinate_system`` (their scale and pose); ``microns_per_unit`` then corrects what
        those leave, e.g. two SpatialData objects with ``Identity`` transformations imaged at different
        resolutions. Where both scale and disagree by more than 1%, ``microns_per_unit`` is used and a
        warning says so.
    spatial_key
        Source coordinates in ``.obsm``. As in SpatialData (spatialdata-io writes them so, and
        :func:`loki.pp.spot_patches` reads them so), ``.obsm['spatial']`` holds the spot shapes' own
        coordinates, which their transformation places in ``input_coordinate_system``; a table that
        holds their ``input_coordinate_system`` positions instead, beside shapes with another
        transformation, is refused.
    target_spatial_key
        Target coordinates in ``.obsm`` (default ``spatial_key``); e.g. an earlier ``key_added`` to
        chain sections. Coordinates of an earlier alignment are chained in the coordinate system it
        recorded; another ``coordinate_system`` is refused.
    key_added
        ``.obsm`` key (and ``.uns['loki']`` key) of the result; it may not be ``spatial_key`` or an
        embedding key of ``use``. For SpatialData input it also names the shapes element of aligned
        spots (see Returns), which must be a valid element name not taken by another element type.
    coordinate_system
        SpatialData coordinate system that receives the rigid/affine part. Default:
        ``key_added.removeprefix("spatial_")``, so ``"aligned"`` for the default ``key_added`` and
        ``"rigid"`` for ``key_added="spatial_rigid"``: alignments kept under different keys keep their
        own placements. When another alignment of the source recorded in ``.uns['loki']`` used the same
        coordinate system, a warning says that its placement of the source's elements is replaced;
        likewise when an earlier alignment placed the target there (chain onto the aligned target with
        ``target_spatial_key=key_added`` instead).
    input_coordinate_system
        Coordinate system in which both sections' elements are placed before the alignment. Default:
        for each section separately, ``"global"`` when its spots and image are in it, else the one
        coordinate system they share (a section read with ``coordinate_system="sample1"``, or
        spatialdata-io's systems named after each dataset), leaving out the systems alignments placed
        sections in (this call's ``coordinate_system`` and those recorded in ``.uns['loki']``), as
        elsewhere in loki. Several shared systems, none of them ``"global"``, are named in the error;
        pass one. A name given is used for both sections.
    image_key
        Image(s) of the source section, placed with it (SpatialData input). By default, when the source's
        SpatialData holds this section only (one table), every element with a transformation to
        ``input_coordinate_system`` (images, labels, points, shapes) is placed; when it holds several
        sections, the section's spots and its image (the one its table's ``.uns['loki']['image_key']``
        names, the only image, or the one named after the section; a warning names the source when
        none is found), its other images named after it (``MOB2_lowres_image``), and the spots and
        images of every other table that records one of its images as its own (the tiles
        :func:`loki.pp.tile_image` cut from it): they lie on the same tissue and get the rigid/affine
        part; the deformable coordinates are the source table's alone. Elements left out are logged.
    target_image_key
        Image(s) of the target section, by the same rules (SpatialData target).
    seed
        Seed of every random choice: the points the global start (and ``partial``'s start) screens
        over rotations, the subsamples of the coarse-to-fine pyramid and the Nyström landmarks of the
        deformable stage. The same seed gives the same result. ``None`` (fresh OS entropy) and a
        Generator give an int seed, which is recorded, so the run can be repeated.
    copy
        AnnData input only: return a modified copy instead of writing in place.
    inplace
        Write the result (below). ``False`` runs the same alignment, writes nothing (no table entry,
        shapes element or transformation, on either section) and returns the result; not with
        ``copy=True``.

    Returns
    -------
    For AnnData with ``copy=True`` the aligned copy; with ``inplace=False`` an
    :class:`~loki.tl.Alignment` named tuple ``(coords, transformation, record)`` of what would be
    written:

    - ``coords``: (n, 2) array, the ``.obsm[key_added]`` below,
    - ``transformation``: 3x3 array, the ``Affine`` below that places the source's elements in
      ``coordinate_system`` after their transformation to ``input_coordinate_system``; for AnnData
      input, where no transformation is written, ``matrix``,
    - ``record``: the ``.uns['loki'][key_added]`` entry below (its ``shapes`` names the element that
      would be added);

    otherwise None (SpatialData is modified in place). Writes, in the source table:

    - ``.obsm[key_added]``: aligned spot coordinates in the target's units (non-rigid for
      ``deformable``),
    - ``.uns['loki'][key_added]``: ``method``, ``target``, ``use`` (the source's and the target's
      embedding keys; empty for coordinates only), ``matrix`` (3x3 rigid/affine part, source units ->
      target units), ``pre_matrix``, ``mirror`` (whether the source was found mirrored), ``sigma2``
      and, with an embedding, ``sigma2_features`` (the last stage's variance of the spatial and of the
      feature columns), ``n_iter``, ``converged``, ``loglik``, ``stages`` (a DataFrame, one row per
      stage run: ``stage``, ``level``, ``n_points``, ``n_starts``, ``n_iter``, ``sigma2``,
      ``sigma2_features``, ``converged``, ``seconds``; NaN where a stage has no such number),
      ``starts`` (with a global
      start: one row per initial rotation and side, its screening log-likelihood and, for the starts
      run to convergence, ``loglik``, ``loglik_common`` and, with an embedding, ``agreement``; the last
      of these picked the winner, so the table shows how clear the mirror decision was; with
      ``partial``, one row per refined placement: ``correlation`` (of the two sections' embedding
      maps), ``overlap`` (fraction of target spots paired) and ``agreement`` (the sum, over the paired
      spots, of the inner products of their centred embedding components); these two are sums that
      grow with the sections' size, comparable between rows only, not with the usual start's
      ``agreement``, a mean correlation in [-1, 1]), ``approximate``, ``moving`` (the section that
      moved in CPD),
      ``scale_removed`` (with ``preserve_scale``), ``deformation`` (``deformable`` only: the moved
      section's ``axis_ratios``, the standard deviations of its spots along their major and minor
      principal axes after / before the deformable stage, its ``spacing_ratio``, the same for the
      median nearest-neighbour spacing, and ``collapsed``, whether one is below 0.5; of the section
      that moved in CPD, see ``moving``), ``unit_scale`` (source units -> target units applied
      before registering: the spots' transformations and ``microns_per_unit`` together), ``microns_per_unit`` (of the aligned coordinates, when known),
      ``explained_variance_ratio`` (of the embedding components used), and ``params``: the numeric and
      flag arguments, ``mirror`` (the argument), ``seed`` (the int used, also for ``None`` or a
      Generator), ``spatial_key``, ``target_spatial_key`` (resolved), ``input_coordinate_system``
      (resolved: the source's; ``target_input_coordinate_system`` too when the target's differs) and
      ``scale`` (the target's extent that normalised the coordinates);

    and for SpatialData input:

    - a transformation to ``coordinate_system`` on the source's placed elements (see ``image_key``;
      its existing transformation to ``input_coordinate_system`` followed by one ``Affine``:
      ``matrix`` carried from the source table's frame to the target's, which is just ``matrix`` when
      both sections' spots have ``Identity`` to ``input_coordinate_system``), the existing
      transformation (usually ``Identity``) on the target's placed elements,
    - when the source's table annotates a shapes element ``region``:
      ``sdata.shapes[f"{region}_{key_added.removeprefix('spatial_')}"]`` (``MOB2_spots_aligned`` for
      the default key): spot circles at the aligned coordinates (radius in their units), placed in
      ``coordinate_system`` as the target's spots are (``Identity`` when those have ``Identity`` to
      ``input_coordinate_system``), named in ``.uns['loki'][key_added]['shapes']``, and
      ``.uns['loki'][key_added]['coordinate_system']``.

    Notes
    -----
    The alignment changes the SpatialData in memory only: the source's table, the shapes of aligned
    spots and the transformations of the placed elements (of both sections). ``sdata.write(path)``
    saves all of it into a new store. A SpatialData read from a zarr store
    (``sdata = sd.read_zarr(path)``) cannot be written over that store, and spatialdata (0.7) refuses
    ``sdata.write_element(name, overwrite=True)`` for an element already stored there (the store is
    in use). To save an alignment there, the first or a re-run with other settings, delete the
    stored elements it rewrites, write them and save the transformations (here source ``"MOB2"`` and
    the default ``key_added``)::

        names = ["MOB2", sdata.tables["MOB2"].uns["loki"]["spatial_aligned"]["shapes"]]
        stored = [path.split("/")[-1] for path in sdata.elements_paths_on_disk()]
        sdata.delete_element_from_disk([name for name in names if name in stored])
        sdata.write_element(names)
        sdata.write_transformations()

    A target given as a separate SpatialData needs ``write_transformations()`` only. An INFO log
    after the alignment gives these calls with their names. Between the deletion and the write the
    store lacks those elements; ``loki align`` on the command line writes the result into its store
    whole or not at all.

    """
    if isinstance(target, str):
        if isinstance(data, AnnData):
            raise TypeError("target must be an AnnData when data is an AnnData.")
        if target_table is not None and target_table != target:
            raise ValueError(
                f"target={target!r} names the target's table in data, and target_table={target_table!r} "
                "another: target_table= names the table of a target given as a separate SpatialData. "
                "Leave it out, or pass the target's table key as target=."
            )
        src = _resolve(data, source, "source")
        tgt = _resolve(data, target, "target")
        same_object = True
    else:
        src = _resolve(data, source, "source")
        tgt = _resolve(target, target_table, "target")
        same_object = False
    if src.table is tgt.table:
        raise ValueError("source and target are the same section.")
    check_write_mode(data, copy, inplace)
    if method not in ("rigid", "similarity", "affine", "deformable"):
        raise ValueError(f"method must be 'rigid', 'similarity', 'affine' or 'deformable', got {method!r}.")
    if pre_align not in ("rigid", "similarity", "affine"):
        raise ValueError(f"pre_align must be 'rigid', 'similarity' or 'affine', got {pre_align!r}.")
    if preserve_scale and method != "deformable":
        raise ValueError(
            f"preserve_scale=True applies to method='deformable' only (it divides the scale of the deformable "
            f"motion out), got method={method!r}. For a fit that keeps the source's size, pass method='rigid'."
        )
    if not 0.0 <= w < 1.0:
        raise ValueError(f"w must be in [0, 1), got {w}.")
    for label, value in (("alpha", alpha), ("beta", beta), ("tol", tol)):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{label} must be a positive number, got {value!r}.")
    if not (np.isfinite(feature_weight) and feature_weight >= 0):
        raise ValueError(f"feature_weight must be a number >= 0, got {feature_weight!r}.")
    n_pcs = check_int(n_pcs, "n_pcs", minimum=0)
    n_rotations = check_int(n_rotations, "n_rotations")
    max_iter = check_int(max_iter, "max_iter")
    n_landmarks = check_int(n_landmarks, "n_landmarks")
    n_coarse = check_int(n_coarse, "n_coarse", minimum=3)
    max_points = check_int(max_points, "max_points", minimum=3)
    key_src, key_tgt = _use_keys(use)
    _check_key_added(key_added, spatial_key, (key_src, key_tgt))
    check_result_key(src.table, key_added, ("obsm", "uns"), tool="tl.align")
    seed = as_seed(seed)  # recorded, so that a run with seed=None or a Generator can be repeated
    # keyword=value forms name what the user gave; the command line shows them as its options
    if coordinate_system is None:
        coordinate_system = _default_coordinate_system(key_added)
        named = f"key_added={key_added!r} names the aligned coordinate system {coordinate_system!r}, which"
        fix = "pass coordinate_system= or another key_added="
        if not coordinate_system:
            raise ValueError(f"key_added={key_added!r} leaves the aligned coordinate system no name; {fix}.")
    elif not isinstance(coordinate_system, str) or not coordinate_system:
        raise ValueError(f"coordinate_system={coordinate_system!r} is not a coordinate system name.")
    else:
        named, fix = f"coordinate_system={coordinate_system!r}", "pass another coordinate_system="
    is_sd = is_spatialdata(src.data)
    in_src, in_tgt, cs_hint = _input_systems(
        src, tgt, input_coordinate_system, image_key, target_image_key, coordinate_system
    )
    for in_cs in dict.fromkeys((in_src, in_tgt)):
        if coordinate_system == in_cs:
            raise ValueError(f"{named} must differ from input_coordinate_system={in_cs!r}; {fix}.")
    if is_sd:
        check_shapes_name(src, key_added)
    target_spatial_key = target_spatial_key or spatial_key
    xy_src = _coords(src, spatial_key, "source")
    xy_tgt = _coords(tgt, target_spatial_key, "target")
    if partial and key_src is None:
        raise ValueError("partial=True needs an embedding (use=...): the overlap is found by its features.")
    if key_src is not None:
        emb_src = _embedding(src, key_src, "source")
        emb_tgt = _embedding(tgt, key_tgt, "target")
        warn_if_models_differ(
            {
                f"source .obsm[{key_src!r}]": embedding_model(src.table, key_src),
                f"target .obsm[{key_tgt!r}]": embedding_model(tgt.table, key_tgt),
            }
        )
        if emb_src.shape[1] != emb_tgt.shape[1]:
            raise ValueError(
                f"source .obsm[{key_src!r}] has {emb_src.shape[1]} dimensions, target .obsm[{key_tgt!r}] "
                f"{emb_tgt.shape[1]}; the embeddings must share one space."
            )
        _warn_if_separate_pca(src, key_src, tgt, key_tgt, emb_src, emb_tgt)
        most = min(emb_tgt.shape)
        if n_pcs > most:
            raise ValueError(
                f"n_pcs={n_pcs} but the target .obsm[{key_tgt!r}] ({emb_tgt.shape[0]} spots x "
                f"{emb_tgt.shape[1]} dimensions) has at most {most} principal components; pass n_pcs <= {most}."
            )
    src_elements: list[str] = []
    tgt_elements: list[str] = []
    if is_sd:
        src_elements, tgt_elements = placed_elements(
            src, tgt, image_key, target_image_key, in_src, target_in_cs=in_tgt, warn=inplace, hint=cs_hint
        )
        check_spot_frame(src, spatial_key, "source")
        if inplace:  # what a write replaces or leaves out
            warn_shared_coordinate_system(
                src, tgt, key_added, coordinate_system, chained=target_spatial_key != spatial_key
            )
        if is_spatialdata(tgt.data):
            check_spot_frame(tgt, target_spatial_key, "target")
        source_frame = source_to_cs(src, in_src)
        target_frame = target_to_cs(tgt, target_spatial_key, spatial_key, in_tgt, coordinate_system)
    if key_src is not None:
        f_src, f_tgt, ratio = embedding_features(emb_src, emb_tgt, n_pcs)
    else:
        f_src, f_tgt, ratio = np.zeros((len(xy_src), 0)), np.zeros((len(xy_tgt), 0)), np.zeros(0)

    # register the source in the target table's frame, scaled and posed as SpatialData places both
    # sections (a table's coordinates are its spots' own, see source_to_cs); for an AnnData target the
    # tables' own units are taken as they are
    to_target_frame = (
        np.linalg.inv(target_frame) @ source_frame if is_sd and is_spatialdata(tgt.data) else np.eye(3)
    )
    mpu_tgt = _microns_per_unit(tgt.table, target_spatial_key)  # also recorded with the result
    unit = _physical_unit(
        src,
        tgt,
        _microns_per_unit(src.table, spatial_key),
        mpu_tgt,
        linear_scale(to_target_frame),
        physical_units,
    )
    xy_src = apply_matrix(xy_src, to_target_frame) * unit
    c_tgt = xy_tgt.mean(axis=0)
    c_src = xy_src.mean(axis=0)
    scale = float(np.ptp(xy_tgt, axis=0).max()) or 1.0
    X = np.hstack([(xy_tgt - c_tgt) / scale, feature_weight * f_tgt])
    Y = np.hstack([(xy_src - c_src) / scale, feature_weight * f_src])

    reverse = _moving(moving, len(xy_src), len(xy_tgt), partial=partial) == "target"
    res: AlignResult = cpd_align(
        *((Y, X) if reverse else (X, Y)),
        method=method,
        pre_align=pre_align,
        n_rotations=n_rotations,
        mirror=mirror,
        alpha=alpha,
        beta=beta,
        w=w,
        max_iter=max_iter,
        tol=tol,
        n_landmarks=n_landmarks,
        max_points=max_points,
        n_coarse=n_coarse,
        refine=refine,
        preserve_scale=preserve_scale,
        embeddings=None if use is None else ((emb_src, emb_tgt) if reverse else (emb_tgt, emb_src)),
        partial=partial,
        seed=seed,
    )
    if reverse:
        res = reverse_result(res, X, Y, deformable=method == "deformable")
    _warn_stopped_at_max_iter(res.stages, max_iter, src.name, tgt.name)
    _warn_if_collapsed(res.deformation, scale, src.name, tgt.name, res.moving, key_added)
    coords = res.coords * scale + c_tgt
    to_target_units = np.diag([unit, unit, 1.0]) @ to_target_frame
    matrix = _original_matrix(res.matrix, c_src, c_tgt, scale) @ to_target_units
    pre_matrix = _original_matrix(res.pre_matrix, c_src, c_tgt, scale) @ to_target_units
    shapes = None
    if is_sd and shapes_name(src, key_added) is not None:  # built before anything is written
        shapes = (
            shapes_name(src, key_added),
            aligned_shapes(src, coords, matrix, coordinate_system, target_frame),
        )
    info = {
        "tool": "tl.align",
        "method": method,
        "target": tgt.name,
        "use": [] if use is None else [key_src, key_tgt],
        "matrix": matrix,
        "pre_matrix": pre_matrix,
        "mirror": bool(res.mirror),
        "sigma2": float(res.sigma2),
        "sigma2_features": res.sigma2_features,
        "n_iter": int(res.n_iter),
        "converged": bool(res.converged),
        "loglik": float(res.loglik),
        "approximate": bool(res.approximate),
        "moving": res.moving,
        "scale_removed": None if res.scale_removed is None else float(res.scale_removed),
        "deformation": _deformation_record(res.deformation),
        "unit_scale": float(unit * linear_scale(to_target_frame)),
        "microns_per_unit": mpu_tgt,
        "stages": _stage_table(res.stages),
        "starts": _start_table(res.start_scores),
        "explained_variance_ratio": ratio,
        "coordinate_system": coordinate_system if is_sd else None,
        "shapes": None if shapes is None else shapes[0],
        "params": {
            "mirror": bool(mirror),
            "seed": seed,
            "spatial_key": spatial_key,
            "target_spatial_key": target_spatial_key,
            "input_coordinate_system": in_src,
            "pre_align": pre_align,
            "n_rotations": int(n_rotations),
            "n_pcs": int(n_pcs),
            "feature_weight": float(feature_weight),
            "alpha": float(alpha),
            "beta": float(beta),
            "w": float(w),
            "max_iter": int(max_iter),
            "tol": float(tol),
            "n_landmarks": int(n_landmarks),
            "max_points": int(max_points),
            "n_coarse": int(n_coarse),
            "refine": bool(refine),
            "preserve_scale": bool(preserve_scale),
            "moving": moving,
            "partial": bool(partial),
            "physical_units": bool(physical_units),
            "scale": scale,
        },
    }

    if in_tgt != in_src:  # each section's own (neither named by the caller)
        info["params"]["target_input_coordinate_system"] = in_tgt
    info = {k: v for k, v in info.items() if v is not None}  # None cannot be written to h5ad/zarr
    # maps input_coordinate_system into coordinate_system: the source table's frame to the target's
    placement = target_frame @ matrix @ np.linalg.inv(source_frame) if is_sd else matrix.copy()
    if not inplace:
        return Alignment(coords, placement, info)
    table = src.table.copy() if (copy and not is_sd) else src.table
    # a failure part-way (an interrupt too) puts back the shapes, transformations and entries written
    restore = _snapshot([src, tgt], key_added) if is_sd else None
    try:
        with all_or_nothing():
            if is_sd:
                write_spatialdata(
                    src,
                    tgt,
                    src_elements,
                    tgt_elements,
                    placement,
                    shapes,
                    in_src,
                    coordinate_system,
                    set_target=same_object or is_spatialdata(tgt.data),
                    target_placed=target_spatial_key != spatial_key,
                    target_in_cs=in_tgt,
                )
            write_obsm(table, key_added, coords)
            write_uns(table, key_added, info)
    except BaseException:
        if restore is not None:
            restore()
        raise
    if is_sd and not in_stack():  # a stack says it once, for all its sections
        log_how_to_save(src.data, [src.key, *([] if shapes is None else [shapes[0]])])
        if is_spatialdata(tgt.data) and tgt.data is not src.data:
            log_how_to_save(tgt.data, [])
    if copy and not is_sd:
        return table
    return None


def align_sections(
    sdatas_or_keys: SpatialData
    | AnnData
    | Mapping[str, SpatialData | AnnData]
    | Sequence[SpatialData | AnnData],
    *,
    target: str | int,
    sections: Sequence[str] | None = None,
    library_key: str | None = None,
    sequential: bool = False,
    key_added: str = Key.ALIGNED,
    spatial_key: str = Key.SPATIAL,
    progress: bool = True,
    **kwargs: Any,
) -> dict[str, dict]:
    """Align a stack of serial sections onto one target section (3D reconstruction).

    Parameters
    ----------
    sdatas_or_keys
        The sections, each named by a label in the results, records and messages:

        - a SpatialData holding every section as a table: labelled by their table keys;
        - a dict ``{label: section}`` of per-section SpatialData (one table each) / AnnData objects,
          in stack order: labelled by its keys (e.g. ``{"S1": sdata1, "S2": sdata2}``);
        - a list of them, in stack order: labelled by ``sections=`` when given, else by their table
          keys when every section is a SpatialData and no two share a key, else by their positions,
          ``section0, section1, ...``;
        - one AnnData holding every section's rows, with ``library_key=`` (e.g. the tables joined by
          ``anndata.concat(..., label="library_id")``, one PCA fitted on it): labelled by the values of
          ``.obs[library_key]``.
    target
        Label of the target section: a table key of the SpatialData, a key of the dict, a label or
        position of a list, or a value of ``.obs[library_key]`` as a string (``"1"`` for the value 1).
    sections
        For a SpatialData, table keys, for a dict, its keys, and with ``library_key``, values of its
        column, in stack order, the target among them (default all, in their order); for a list, one
        label per section (distinct strings). A single key (a string) is refused: a stack of one
        section aligns nothing.
    library_key
        ``.obs`` column of one AnnData that labels each row's section (squidpy's ``library_key``); only
        for an AnnData. Each section is labelled by its value as a string; the stack order is the
        column's categories (those with rows) when it is categorical, else the order in which the
        values first appear (or ``sections=``). A row without a value (NaN) is refused, naming how
        many. ``.obsm[spatial_key]`` holds each row's coordinates in its own section's frame, as
        ``anndata.concat`` of the sections gives them. The sections are aligned exactly as a dict of
        their copies, ``{k: adata[adata.obs[library_key] == k].copy() for k in ...}``, would be; then
        the AnnData gets ``.obsm[key_added]`` for every row and ``.uns['loki'][key_added]`` holding
        ``library_key``, ``target``, ``sequential``, ``sections``, ``{label: that section's entry}``,
        and ``kept``. The rows of a section left out by ``sections=`` keep their aligned coordinates
        when an earlier stack of the same column recorded under ``key_added`` aligned it onto the
        same target from the same ``spatial_key`` (they lie in the target's frame): ``kept`` lists
        those sections, whose entries (``z`` of that stack included) come along into ``sections``.
        The rows of other sections left out are NaN; when they held aligned coordinates (e.g. of a
        stack onto another target), a warning names those sections. Nothing is written when the call
        fails.
    sequential
        Align each section to its already aligned neighbour towards the target (better for long
        stacks whose far ends differ) instead of every section directly to the target.
    key_added, spatial_key
        As in :func:`align`.
    progress
        Show a progress bar.
    **kwargs
        Passed to :func:`align`: ``image_key`` to every call (the image of each moving section),
        ``target_image_key`` to the calls onto the target. ``copy`` and ``inplace=False`` are refused:
        the sections are written in place.

    Returns
    -------
    ``{label: .uns['loki'][key_added]}`` for every aligned section (with ``library_key``, the entries
    that the AnnData's ``.uns['loki'][key_added]['sections']`` holds). Each source is written as by
    :func:`align`; the target gets ``.obsm[key_added]`` = its own coordinates and
    ``.uns['loki'][key_added]`` with the identity matrix; every section's entry holds ``z``, its
    position in the stack, and ``target``, the table key of the section it was aligned onto (the
    stack's target, or with ``sequential`` its neighbour; the target's entry names the target itself;
    an AnnData, whose table has no key, by its label), and each source's entry ``reference``, that
    section's label. The target's elements are placed in the aligned coordinate system where
    they lie in ``input_coordinate_system`` (as by :func:`align`), also when an earlier alignment under
    ``key_added`` (e.g. a stack onto another section) placed them elsewhere: that alignment's entry
    is replaced, and its shapes of aligned spots are removed (when it placed the target in the stack's
    coordinate system; otherwise they stay there with its elements), so that the target's entry, elements and
    shapes agree, as after a first stack onto it. An INFO log names the removed shapes; a warning names
    the target's alignments under other keys that had placed it in the same coordinate system, and
    another the sections of its SpatialData left out of the stack that an earlier alignment placed
    there in another section's frame (e.g. of a stack onto another target). Like
    every change here, the removal is made in memory: when the SpatialData was read from a zarr store
    that holds those shapes, a warning says how to delete them there
    (``sdata.delete_element_from_disk``).

    Every section is checked before any is written, as :func:`align` checks it (coordinates,
    embeddings, elements and their coordinate systems, table coordinates in the spots' own frame,
    instance ids that name the spot shapes); sections named twice (or one object given twice), and an
    element (e.g. one slide image) that two sections of the stack would place, are refused. A failure
    that shows only while aligning (e.g. ``partial=True`` finding no overlap) puts every section back
    as it was before the call (its ``.obsm`` / ``.uns['loki']`` entries under ``key_added``, the shapes
    added or removed, every element's transformations), then raises; a note on the error names the
    section that failed.

    Notes
    -----
    The sections are changed in memory. To save a stack of a SpatialData read from a zarr store into
    that store, rewrite the tables of its sections and the shapes of aligned spots their entries
    name, delete there the target's shapes the stack removed, and save the transformations, as for
    :func:`align` (see its Notes); an INFO log gives the calls with their names.

    """
    from tqdm.auto import tqdm

    if kwargs.pop("copy", False) or not kwargs.pop("inplace", True):
        raise ValueError(
            "align_sections writes every section in place; copy=True is not supported, nor inplace=False "
            "(copy the sections first, or align one pair with lk.tl.align(..., inplace=False))."
        )
    if library_key is not None:
        stack = {"sequential": sequential, "key_added": key_added, "spatial_key": spatial_key}
        return _align_library(
            sdatas_or_keys, library_key, target, sections, progress=progress, **stack, **kwargs
        )
    items, target = _stack_sections(sdatas_or_keys, target, sections)
    order = [n for n, _, _ in items]
    t_idx = order.index(target)
    by_name = {n: (o, k) for n, o, k in items}
    tgt_obj, tgt_key = by_name[target]
    tgt_table = get_table(tgt_obj, tgt_key)
    tables = {n: id(get_table(o, k)) for n, o, k in items}
    same = [n for n in order if list(tables.values()).count(tables[n]) > 1]
    if same:
        raise ValueError(f"sections {same} are one and the same section (the same object given twice).")

    # nearest sections first so sequential mode always has an aligned neighbour
    todo = sorted((i for i in range(len(order)) if i != t_idx), key=lambda i: (abs(i - t_idx), i))
    key_src, key_tgt = _use_keys(kwargs.pop("use", Key.TEXT))
    _check_key_added(key_added, spatial_key, (key_src, key_tgt))
    target_image_key = kwargs.pop("target_image_key", None)
    plan = []
    for i in todo:
        ref = order[i - 1 if i > t_idx else i + 1] if sequential else target
        # an aligned neighbour is a source section: it holds the sources' embedding key
        pair = None if key_src is None else (key_src, key_tgt if ref == target else key_src)
        plan.append((i, order[i], ref, pair))
    _check_stack(
        plan, by_name, target, spatial_key, key_added, {**kwargs, "target_image_key": target_image_key}
    )

    results: dict[str, dict] = {}
    tgt_section = Section(tgt_obj, tgt_key, tgt_table)
    # failures that only show at run time (CPD, partial's overlap) undo the sections written before them
    restore = _snapshot([Section(o, k, get_table(o, k)) for o, k in by_name.values()], key_added)
    step = f"placing the target {target!r}"
    try:
        labels = {id(get_table(o, k)): n for n, (o, k) in by_name.items() if not is_spatialdata(o)}
        with stack_onto(tgt_section, labels):  # its earlier placement is reported once, below
            for i, name, ref, pair in tqdm(plan, disable=not progress, desc="align sections"):
                step = f"aligning section {name!r} onto {ref!r}"
                obj, key = by_name[name]
                ref_obj, ref_key = by_name[ref]
                ref_spatial = key_added if (sequential and ref != target) else spatial_key
                common = {
                    "use": pair,
                    "key_added": key_added,
                    "spatial_key": spatial_key,
                    "target_spatial_key": ref_spatial,
                    "target_image_key": target_image_key if ref == target else None,
                    **kwargs,
                }
                if obj is ref_obj and is_spatialdata(obj):
                    align(obj, source=key, target=ref_key, **common)
                else:
                    align(obj, source=key, target=ref_obj, target_table=ref_key, **common)
                table = get_table(obj, key)
                table.uns[Key.UNS][key_added]["z"] = int(i)
                table.uns[Key.UNS][key_added]["reference"] = ref
                results[name] = table.uns[Key.UNS][key_added]
        step = f"placing the target {target!r}"
        stack_cs = kwargs.get("coordinate_system") or _default_coordinate_system(key_added)
        removed = replace_stack_target(tgt_section, key_added, stack_cs)
        write_obsm(
            tgt_table, key_added, np.asarray(tgt_table.obsm[spatial_key], dtype=np.float64)[:, :2].copy()
        )
        entry = {
            "tool": "tl.align",
            "method": "target",
            "target": target if tgt_key is None else tgt_key,  # as its sources record it
            "matrix": np.eye(3),
            "z": int(t_idx),
        }
        if is_spatialdata(tgt_section.data):  # placed there at its own coordinates, as its sources are
            entry["coordinate_system"] = stack_cs
        mpu = _microns_per_unit(tgt_table, spatial_key)
        if mpu is not None:
            entry["microns_per_unit"] = mpu
        write_uns(tgt_table, key_added, entry)
    except BaseException as exc:  # an interrupt too: the stack is written whole or not at all
        restore()
        exc.add_note(
            f"align_sections failed while {step}; every section of the stack was put back as it was before "
            "the call."
        )
        raise
    results[target] = tgt_table.uns[Key.UNS][key_added]
    if tgt_key is not None:  # sections left out that an earlier stack placed in another frame there
        stores = {id(o): o for o, _ in by_name.values() if is_spatialdata(o)}
        warn_left_out_of_stack(list(stores.values()), set(tables.values()), tgt_key, stack_cs)
    written: dict[int, tuple[Any, list[str]]] = {}
    for name, (obj, key) in by_name.items():
        if is_spatialdata(obj):
            shapes = results[name].get("shapes")
            names = written.setdefault(id(obj), (obj, []))[1]
            names += [key] if shapes is None else [key, shapes]
    for obj, names in written.values():
        # the target's stale shapes, removed in memory, are deleted from its store too
        log_how_to_save(obj, names, removed=[removed] if removed and obj is tgt_obj else [])
    return results


def _align_library(
    adata: AnnData, library_key: str, target: Any, sections: Sequence[str] | None, **stack: Any
) -> dict[str, dict]:
    """:func:`align_sections` with ``library_key``: the sections of one AnnData, aligned as a dict.

    The dict holds a copy of each section's rows; the results are then written into the AnnData: its
    rows' aligned coordinates and one record.
    """
    rows = library_sections(adata, library_key, sections, "lk.tl.align_sections")
    labels = [label for label, _ in rows]
    if not isinstance(target, str):
        raise TypeError(f"target must be a label of adata.obs[{library_key!r}] {labels}, got {target!r}.")
    require_keys(labels, target, f"adata.obs[{library_key!r}]" if sections is None else "sections")
    copies = {label: adata[mask].copy() for label, mask in rows}
    results = align_sections(copies, target=target, **stack)
    key_added = stack["key_added"]
    coords = np.full((adata.n_obs, 2), np.nan)
    for label, mask in rows:
        coords[mask] = copies[label].obsm[key_added]
    earlier = loki_record(adata, key_added) or {}
    left_out = {
        label: mask
        for label, mask in library_sections(adata, library_key, None, "lk.tl.align_sections")
        if label not in copies
    }
    kept, lost = _earlier_rows(adata, earlier, left_out, library_key, target, key_added, stack["spatial_key"])
    for label in kept:
        coords[left_out[label]] = np.asarray(adata.obsm[key_added], dtype=np.float64)[left_out[label]]
    record = {
        "tool": "tl.align",  # a rerun may replace it
        "method": "stack",
        "library_key": library_key,
        "target": target,
        "sequential": bool(stack["sequential"]),
        "sections": {label: results[label] for label in labels} | {k: earlier["sections"][k] for k in kept},
        "kept": kept,
    }
    with all_or_nothing():
        write_obsm(adata, key_added, coords)
        write_uns(adata, key_added, record)
    if kept:
        logger.info(
            "kept the rows of .obsm[%r] of sections %s, left out of this stack, as the earlier stack onto %r "
            "aligned them",
            key_added,
            kept,
            target,
        )
    if lost:
        warnings.warn(
            f"lk.tl.align_sections: sections {lost}, left out of this stack, held aligned coordinates in "
            f".obsm[{key_added!r}] that were not aligned onto {target!r} by a stack of adata.obs"
            f"[{library_key!r}] at .obsm[{stack['spatial_key']!r}] (the record they came with: "
            f"{_describe_stack(earlier)}); their rows are now NaN. Include them in sections= to align them onto "
            f"{target!r} too, or pass another key_added= to keep both alignments.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
    return results


def _earlier_rows(
    adata: AnnData,
    earlier: Mapping,
    left_out: Mapping[str, np.ndarray],
    library_key: str,
    target: str,
    key_added: str,
    spatial_key: str,
) -> tuple[list[str], list[str]]:
    """Of the sections left out of a stack, those whose aligned rows it keeps, and those it sets to NaN.

    ``earlier`` is the record under ``key_added`` before this stack, ``left_out`` the row mask of each
    section left out. Rows are kept when an earlier stack of the same column aligned that section
    onto the same target at the same coordinates (``earlier`` holds the section's entry, and its rows
    of ``.obsm[key_added]`` are all finite): they lie in the target's frame, where this stack places
    its sections. Rows of other sections that hold aligned coordinates lie in another frame, and are
    lost (NaN).
    """
    if key_added not in adata.obsm:
        return [], []
    old = np.asarray(adata.obsm[key_added], dtype=np.float64)
    if old.ndim != 2:
        return [], []
    recorded = earlier.get("sections") if isinstance(earlier.get("sections"), Mapping) else {}
    same_stack = (
        earlier.get("method") == "stack"
        and earlier.get("library_key") == library_key
        and earlier.get("target") == target
    )
    kept, lost = [], []
    for label, mask in left_out.items():
        rows = old[mask]
        if not np.isfinite(rows).any():
            continue  # nothing to lose
        entry = recorded.get(label)
        params = entry.get("params") if isinstance(entry, Mapping) else None
        sound = (
            same_stack
            and old.shape[1] == 2
            and isinstance(params, Mapping)
            and params.get("spatial_key") == spatial_key
            and np.isfinite(rows).all()
        )
        (kept if sound else lost).append(label)
    return kept, lost


def _describe_stack(record: Mapping) -> str:
    """An earlier record under ``key_added``, as a warning names it."""
    if not record:
        return "none"
    if record.get("method") != "stack":
        return f"an alignment by method {record.get('method')!r}"
    return f"a stack of adata.obs[{record.get('library_key')!r}] onto {record.get('target')!r}"


def _stack_sections(data: Any, target: Any, sections: Sequence[str] | None) -> tuple[list[tuple], str]:
    """The stack's ``(label, object, table key)`` triples in stack order, and the target's label.

    See :func:`align_sections` for the inputs and how their sections are labelled
    (:func:`~loki._utils._sections.stack_sections`); ``target`` is resolved here.
    """
    items = stack_sections(data, sections, who="lk.tl.align_sections")
    labels = [label for label, _, _ in items]
    where = "sections"
    if is_spatialdata(data):
        if not isinstance(target, str):
            raise TypeError(f"target must be a table key when a SpatialData is given, got {target!r}.")
    elif isinstance(data, Mapping):
        if not isinstance(target, str):
            raise TypeError(f"target must be a key of the dict of sections {labels}, got {target!r}.")
        where = "sections" if sections is not None else "the dict of sections"
    else:
        positions = isinstance(target, int | np.integer) and not isinstance(target, bool | np.bool_)
        if positions and -len(labels) <= target < len(labels):
            target = labels[target]
        elif not (isinstance(target, str) and target in labels):
            raise ValueError(
                f"target must be a position in the list of {len(labels)} sections or one of their labels "
                f"{labels}, got {target!r}."
            )
    require_keys(labels, target, where)
    return items, target


_ABSENT = object()


def _put_back(mapping, key: str, value: Any) -> None:
    if value is _ABSENT:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def _snapshot(sections: list[Section], key_added: str) -> Callable[[], None]:
    """Record what an :func:`align_sections` stack may change in its sections; return what restores it.

    That is each table's ``.obsm[key_added]`` and ``.uns['loki'][key_added]``, and of each SpatialData
    the shapes elements (a stack adds, replaces and removes aligned shapes) and every element's
    transformations. Only references are kept: the stack replaces these entries, it does not modify
    them in place.
    """
    from spatialdata.transformations import get_transformation, set_transformation

    tables = []
    for table in {id(s.table): s.table for s in sections}.values():
        meta = table.uns.get(Key.UNS, _ABSENT)
        entry = _ABSENT if meta is _ABSENT else meta.get(key_added, _ABSENT)
        tables.append((table, table.obsm.get(key_added, _ABSENT), meta, entry))
    stores = [
        (
            sdata,
            dict(sdata.shapes),
            {
                name: dict(get_transformation(el, get_all=True))
                for _, name, el in sdata.gen_spatial_elements()
            },
        )
        for sdata in {id(s.data): s.data for s in sections if is_spatialdata(s.data)}.values()
    ]

    def restore() -> None:
        for table, obsm, meta, entry in tables:
            _put_back(table.obsm, key_added, obsm)
            if meta is _ABSENT:
                table.uns.pop(Key.UNS, None)
            else:
                table.uns[Key.UNS] = meta
                _put_back(meta, key_added, entry)
        for sdata, shapes, transformations in stores:
            for name in [name for name in sdata.shapes if name not in shapes]:
                del sdata.shapes[name]
            for name, element in shapes.items():
                if sdata.shapes.get(name) is not element:
                    sdata.shapes[name] = element
            for name, transformation in transformations.items():
                set_transformation(sdata[name], dict(transformation), set_all=True)

    return restore


def _check_stack(
    plan: list, by_name: dict, target: str, spatial_key: str, key_added: str, kwargs: dict
) -> None:
    """Check every section of a stack as :func:`align` will see it, before any section is written.

    Besides each call's own checks, an element may be placed by one section of the stack only: two
    sections sharing it (one slide image) would each place it with their own transformation.
    """
    given = kwargs.get("input_coordinate_system")
    stack_cs = kwargs.get("coordinate_system") or _default_coordinate_system(key_added)
    aligned = {stack_cs, *aligned_coordinate_systems(*(obj for obj, _ in by_name.values()))}

    def section(name: str) -> Section:
        obj, key = by_name[name]
        return Section(obj, key, get_table(obj, key))

    placed_by: dict[tuple[int, str], str] = {}
    for name in [target, *(p[1] for p in plan)]:
        sec = section(name)
        xy = _coords(sec, spatial_key, repr(name))
        check_result_key(sec.table, key_added, ("obsm", "uns"), tool="tl.align")  # the target gets both too
        if not is_spatialdata(sec.data):
            continue
        role, image_key = (
            ("target", kwargs.get("target_image_key"))
            if name == target
            else ("source", kwargs.get("image_key"))
        )
        if role == "source":
            check_shapes_name(sec, key_added)
        stack = [
            by_name[n][1] for n in [target, *(p[1] for p in plan)] if n != name and by_name[n][0] is sec.data
        ]
        input_cs = given if given is not None else section_input_cs(sec, image_key, role, aligned)
        elements = section_elements(sec, image_key, input_cs, role, others=stack, warn=False)
        check_cs(
            sec,
            elements,
            input_cs,
            f"section {name!r}",
            hint=None if given is not None else _INPUT_CS_HINT,
        )
        check_spot_frame(sec, spatial_key, role)
        if role == "source" and shapes_name(sec, key_added) is not None:
            # the circles of aligned spots are built only after the alignment: check now that the
            # table's instance ids name its spots
            aligned_shapes(sec, xy, np.eye(3), input_cs, np.eye(3))
        for element in elements:
            other = placed_by.setdefault((id(sec.data), element), name)
            if other != name:
                raise ValueError(
                    f"sections {other!r} and {name!r} share the element {element!r}; one transformation "
                    "cannot place it for both. Name each section's own image (image_key=, "
                    ".uns['loki']['image_key']), or align these sections one at a time with lk.tl.align."
                )
    for _, name, ref, pair in plan:
        if section(name).table is section(ref).table:
            raise ValueError(f"section {name!r} and its reference {ref!r} are the same section.")
        if pair is not None:
            dims = [_embedding(section(n), k, repr(n)).shape[1] for n, k in ((name, pair[0]), (ref, pair[1]))]
            if dims[0] != dims[1]:
                raise ValueError(
                    f"section {name!r} .obsm[{pair[0]!r}] has {dims[0]} dimensions, its reference {ref!r} "
                    f".obsm[{pair[1]!r}] {dims[1]}; the embeddings must share one space."
                )
