"""Cell-type labels as categories, in one order for every tool."""

from __future__ import annotations

import pandas as pd


def label_categories(labels: pd.Series) -> pd.Categorical:
    """Labels as string categories, ordered as a categorical column declares them, else by value.

    A categorical column keeps its declared categories (also those without a label) and their order.
    Other labels are ordered by their values, numbers as numbers (0, 5, 10, not "0", "10", "5");
    labels that do not compare with one another (numbers mixed with strings) are ordered as strings.
    """
    if isinstance(labels.dtype, pd.CategoricalDtype):
        declared = [str(c) for c in labels.cat.categories]
    else:
        values = pd.unique(labels.to_numpy())
        try:
            ordered = sorted(values)
        except TypeError:
            ordered = sorted(values, key=str)
        declared = list(dict.fromkeys(str(v) for v in ordered))
    return pd.Categorical(labels.astype(str), categories=declared)
