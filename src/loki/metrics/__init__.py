"""Evaluation metrics of the paper's Methods (eqs. 17-33), each a small pure function on arrays."""

from ._alignment import (
    alignment_error,
    alignment_expression_scores,
    matched_expression_correlation,
    paired_median_difference,
    spot_spacing,
)
from ._classification import calinski_harabasz, weighted_f1
from ._correlation import kendall_tau, pearson
from ._divergence import js_divergence
from ._impact import impact_score
from ._regression import mse
from ._retrieval import recall_at_k, target_ranks
from ._ssim import rasterize, ssim, ssim_grid, ssim_map

__all__ = [
    "alignment_error",
    "alignment_expression_scores",
    "calinski_harabasz",
    "impact_score",
    "js_divergence",
    "kendall_tau",
    "matched_expression_correlation",
    "mse",
    "paired_median_difference",
    "pearson",
    "rasterize",
    "recall_at_k",
    "spot_spacing",
    "ssim",
    "ssim_grid",
    "ssim_map",
    "target_ranks",
    "weighted_f1",
]
