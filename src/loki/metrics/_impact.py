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
        Method name -> JS divergence per cell type (array) or its mean.
    ssim_by_method
        Method name -> SSIM per cell type or its mean (the paper's is :func:`loki.metrics.ssim`);
        same methods as ``js_by_method``.

    Returns
    -------
    Impact score per method (higher is better), indexed by method name.

    """
    if set(js_by_method) != set(ssim_by_method):
        raise ValueError(
            f"js_by_method and ssim_by_method must name the same methods, got {sorted(js_by_method)} "
            f"and {sorted(ssim_by_method)}."
        )
    if len(js_by_method) < 2:
        raise ValueError("The impact score compares methods; pass at least 2.")
    methods = list(js_by_method)
    js = pd.Series({m: float(np.mean(js_by_method[m])) for m in methods})
    ssim = pd.Series({m: float(np.mean(ssim_by_method[m])) for m in methods})
    if not (np.isfinite(js).all() and np.isfinite(ssim).all()):
        raise ValueError("JS divergence and SSIM values must be finite.")
    out = (_zscore(ssim) - _zscore(js)) / 2
    out.name = "impact_score"
    return out
