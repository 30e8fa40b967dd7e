"""Plots on matplotlib. Each function takes ``ax=``, ``show=``, ``save=`` and returns the axes or figure."""

from __future__ import annotations

# training
# align
# annotate+retrieve+predict
# decompose
