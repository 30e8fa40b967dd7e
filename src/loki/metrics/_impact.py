"""Impact score of decomposition methods (eqs. 26-30)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def _zscore(values: pd.Series) -> pd.Series:
    sd = values.std(ddof=0)
    if not sd > 0:
        return pd.Series(0.0, index=values.index)
    return (values - values.mean()) / sd


def _per_method(values, name: str) -> dict:
    """Method name -> float64 array, from a mapping, a Series or a DataFrame (one column per method).

    A Series is read by its index: iterating over it gives its values, not the method names.
    """
    if not isinstance(values, Mapping | pd.Series | pd.DataFrame):
        raise TypeError(
            f"{name} must map method names to values (a dict, or a pandas Series indexed by method), "
            f"got {type(values).__name__}."
        )
    return {m: np.asarray(v, dtype=np.float64) for m, v in values.items()}


def impact_score(
    js_by_method: Mapping[str, float | np.ndarray], ssim_by_method: Mapping[str, float | np.ndarray]
) -> pd.Series:
    """Impact score per method: mean of the z-scored SSIM and the negated z-scored JS divergence.

    Per method the JS divergences and SSIMs are averaged over cell types (eqs. 26-27), standardised
    across methods with the population standard deviation (eqs. 28-29; a metric identical for every
    method gives z = 0) and averaged (eq. 30).

    Parameters
    ----------
    js_by_method
        Method name -> JS divergence per cell type (array) or its mean: a dict, a Series indexed by
        method, or a DataFrame with one column per method. Every method's per-cell-type values
        cover the same cell types: arrays of different lengths are refused.
    ssim_by_method
        Method name -> SSIM per cell type or its mean (the paper's is :func:`loki.metrics.ssim`);
        same methods as ``js_by_method``.

    Returns
    -------
    Impact score per method (higher is better), indexed by method name.

    Raises
    ------
    ValueError
        If the two name different methods, fewer than 2 methods are given, a method's values are
        empty or not finite (named), or per-cell-type arrays differ in length (named).

    """
    js_all, ssim_all = (
        _per_method(js_by_method, "js_by_method"),
        _per_method(ssim_by_method, "ssim_by_method"),
    )
    if set(js_all) != set(ssim_all):
        raise ValueError(
            f"js_by_method and ssim_by_method must name the same methods, got {sorted(map(str, js_all))} "
            f"and {sorted(map(str, ssim_all))}."
        )
    if len(js_all) < 2:
        raise ValueError("The impact score compares methods; pass at least 2.")
    methods = list(js_all)
    for name, values in (("js_by_method", js_all), ("ssim_by_method", ssim_all)):
        bad = [m for m in methods if not (values[m].size and np.isfinite(values[m]).all())]
        if bad:
            raise ValueError(
                f"{name} holds no value, or NaN or infinite values, for method(s) {bad[:5]}; the means "
                "over cell types (eqs. 26-27) need finite values."
            )
    # a mean over 3 cell types against one over 4 compares different things
    lengths = {
        f"{name}[{m!r}]": values[m].size
        for name, values in (("js_by_method", js_all), ("ssim_by_method", ssim_all))
        for m in methods
        if values[m].ndim
    }
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"Per-cell-type values differ in length: {lengths}. Score every method on the same cell "
            "types, or pass each method's mean."
        )
    js = pd.Series({m: float(js_all[m].mean()) for m in methods})
    ssim = pd.Series({m: float(ssim_all[m].mean()) for m in methods})
    out = (_zscore(ssim) - _zscore(js)) / 2
    out.name = "impact_score"
    return out
