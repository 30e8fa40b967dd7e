"""Evaluation metrics of the paper's Methods (eqs. 17-33), each a small pure function on arrays."""

from __future__ import annotations

# alignment metrics
# general metrics
