"""Plots on matplotlib. Each function takes ``ax=``, ``show=``, ``save=`` and returns the axes or figure."""

from __future__ import annotations

from ._alignment import alignment
from ._annotation import annotation
from ._expression import expression
from ._proportions import proportions
from ._retrieval import retrieval_gallery
from ._training import loss_curve
