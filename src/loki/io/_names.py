"""Names the readers give: section names checked as SpatialData element names, unique gene names."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from loki._logging import logger
from loki._utils import check_element_name


def check_section_name(value, what: str) -> None:
    """Raise a ValueError naming ``what`` when ``value`` cannot name a section's SpatialData elements."""
    check_element_name(value, what, " (it names the section's table, shapes and images).")


def unique_gene_names(names: Sequence[str] | pd.Index, where: str) -> pd.Index:
    """Gene names made unique as :meth:`anndata.AnnData.var_names_make_unique` does, with a warning.

    The second occurrence of ``"X"`` becomes ``"X-1"``, the third ``"X-2"``, ... (scanpy's rule,
    which spatialdata-io applies to Visium tables too).

    Parameters
    ----------
    names
        Gene names as the input file holds them.
    where
        What the names come from, for the warning (e.g. ``"section 'A1'"``).

    Returns
    -------
    The unique names, in the input order.
    """
    from anndata.utils import make_index_unique

    index = pd.Index(names, dtype=object).astype(str)
    if index.is_unique:
        return index
    unique = make_index_unique(index.copy())
    renamed = index != unique
    repeated = index[index.duplicated(keep=False)].unique()
    examples = ", ".join(
        f"{old!r} -> {new!r}" for old, new in zip(index[renamed][:3], unique[renamed][:3], strict=True)
    )
    logger.warning(
        "%s: %d gene name(s) occur more than once (%d name(s) renamed, e.g. %s); they are made unique as "
        "AnnData.var_names_make_unique does.",
        where,
        len(repeated),
        int(renamed.sum()),
        examples,
    )
    return unique
