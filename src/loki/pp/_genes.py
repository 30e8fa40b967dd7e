"""Map gene ids (Ensembl) in ``var_names`` to gene symbols."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._logging import logger

_VERSIONED = re.compile(r"^(ENS[A-Z]*[GTP]\d+)\.\d+$")
_ID_COLUMNS = ("gene_id", "gene_ids", "ensembl_id", "ensembl", "id")
_NAME_COLUMNS = ("gene_name", "gene_symbol", "symbol", "name", "gene")


def map_gene_ids(
    adata: AnnData,
    mapping: Mapping[str, str] | pd.Series | pd.DataFrame | str | PathLike,
    *,
    strip_version: bool = True,
    unmapped: Literal["keep", "drop", "raise"] = "keep",
    duplicates: Literal["sum", "first"] = "sum",
    copy: bool = False,
) -> AnnData | None:
    """Replace gene ids in ``var_names`` by gene symbols.

    Parameters
    ----------
    adata
        AnnData whose ``var_names`` are gene ids (e.g. ``ENSMUSG00000064339.1``).
    mapping
        id -> symbol: a dict, a Series indexed by id, a DataFrame with an id and a symbol column
        (``gene_id``/``gene_ids``/``ensembl_id``/``id`` and ``gene_name``/``gene_symbol``/``symbol``/
        ``name``; else its first two columns), or the path of such a table (tab-separated for
        ``.tsv``/``.txt``, else comma-separated; may be gzipped), e.g. a GENCODE-style
        ``gene_id, gene_type, gene_name`` table.
    strip_version
        Ignore Ensembl version suffixes (``.1``) on both sides when matching.
    unmapped
        Ids without a symbol: ``"keep"`` them as they are, ``"drop"`` those genes, or ``"raise"`` a
        ValueError. A warning gives their count and examples in the first two cases.
    duplicates
        Several ids mapping to one symbol: ``"sum"`` their counts (``.X`` and every layer, sparse
        stays sparse) or keep the ``"first"`` one.
    copy
        Return a modified copy instead of changing ``adata`` in place.

    Returns
    -------
    None, or the modified AnnData when ``copy=True``. Changes:

    - ``.var_names``: the symbols (unique).
    - ``.var['gene_ids']``: the original id(s); ids merged by ``duplicates="sum"`` are joined by ``;``.
    - ``.X`` and ``.layers``: columns dropped or summed as requested. ``.varm``/``.varp`` entries are
      removed when columns are summed (they cannot be merged).

    """
    if unmapped not in ("keep", "drop", "raise"):
        raise ValueError(f"unmapped must be 'keep', 'drop' or 'raise', got {unmapped!r}.")
    if duplicates not in ("sum", "first"):
        raise ValueError(f"duplicates must be 'sum' or 'first', got {duplicates!r}.")
    table = _as_mapping_series(mapping)
    ids = pd.Index(adata.var_names.astype(str))
    if strip_version:
        table.index = _strip(table.index)
        table = table[~table.index.duplicated()]
    symbols = pd.Series(table.reindex(_strip(ids) if strip_version else ids).to_numpy(), index=ids)
    missing = symbols.isna().to_numpy() | (symbols.astype(str).str.strip() == "").to_numpy()
    n_missing = int(missing.sum())
    if n_missing == len(ids) and unmapped == "drop":
        raise ValueError("No gene id is in the mapping; dropping them would leave no genes.")
    if n_missing:
        examples = ", ".join(map(repr, ids[missing][:5]))
        msg = f"{n_missing} of {len(ids)} gene ids have no symbol in the mapping (e.g. {examples})"
        if unmapped == "raise":
            raise ValueError(msg + "; pass unmapped='keep' or 'drop'.")
        action = "kept as ids" if unmapped == "keep" else "dropped"
        warnings.warn(f"{msg}; they are {action}.", UserWarning, stacklevel=2)
    new_names = np.where(missing, ids.to_numpy(dtype=object), symbols.to_numpy(dtype=object)).astype(str)

    keep = ~missing if unmapped == "drop" else np.ones(len(ids), dtype=bool)
    kept = np.flatnonzero(keep)
    codes, uniques = pd.factorize(new_names[kept])
    first = kept[np.unique(codes, return_index=True)[1]]  # first column of each symbol, in order
    n_dup = len(kept) - len(first)
    merge = duplicates == "sum" and n_dup > 0
    if merge:
        agg = sparse.csr_matrix(
            (np.ones(len(kept), dtype=np.float32), (kept, codes)), shape=(len(ids), len(uniques))
        )
        new_x = None if adata.X is None else _aggregate(adata.X, agg)
        new_layers = {k: _aggregate(v, agg) for k, v in adata.layers.items()}
        gene_ids = pd.Series(ids[kept]).groupby(codes, sort=True).agg(";".join).to_numpy()
    else:
        gene_ids = ids[first].to_numpy()
    if n_dup:
        logger.info(
            "%d gene ids share a symbol with another id; %s", n_dup, "summed" if merge else "first kept"
        )

    if copy:
        adata = adata.copy()
    adata._inplace_subset_var(first)
    if merge:
        if new_x is not None:
            adata.X = new_x
        for k, v in new_layers.items():
            adata.layers[k] = v
        for k in list(adata.varm.keys()):
            del adata.varm[k]
        for k in list(adata.varp.keys()):
            del adata.varp[k]
    adata.var["gene_ids"] = gene_ids
    adata.var_names = pd.Index(uniques.astype(str), name=None)
    logger.info(
        "mapped %d gene ids to %d symbols in .var_names (ids in .var['gene_ids'])", len(ids), len(first)
    )
    return adata if copy else None


def read_gene_table(path: str | PathLike) -> pd.Series:
    """Read an id -> symbol table from a delimited text file (see :func:`map_gene_ids`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Gene mapping file not found: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    sep = "\t" if (".tsv" in suffixes or ".txt" in suffixes) else ","
    return _as_mapping_series(pd.read_csv(path, sep=sep, dtype=str))


def _as_mapping_series(mapping) -> pd.Series:
    if isinstance(mapping, str | PathLike):
        return read_gene_table(mapping)
    if isinstance(mapping, pd.DataFrame):
        cols = {str(c).lower(): c for c in mapping.columns}
        id_col = next((cols[c] for c in _ID_COLUMNS if c in cols), None)
        name_col = next((cols[c] for c in _NAME_COLUMNS if c in cols), None)
        if id_col is None or name_col is None:
            if mapping.shape[1] < 2:
                raise ValueError(
                    f"A mapping table needs an id and a symbol column; got columns {list(mapping.columns)}."
                )
            id_col, name_col = mapping.columns[:2]
        series = pd.Series(mapping[name_col].to_numpy(), index=mapping[id_col].astype(str).to_numpy())
    elif isinstance(mapping, pd.Series):
        series = mapping.copy()
        series.index = series.index.astype(str)
    elif isinstance(mapping, Mapping):
        series = pd.Series(dict(mapping), dtype=object)
    else:
        raise TypeError(f"mapping must be a dict, Series, DataFrame or a path, got {type(mapping).__name__}.")
    series = series[~series.index.duplicated()]
    return series


def _strip(ids: pd.Index) -> pd.Index:
    return pd.Index(ids.astype(str)).str.replace(_VERSIONED, r"\1", regex=True)


def _aggregate(x, agg: sparse.csr_matrix):
    if sparse.issparse(x):
        out = sparse.csr_matrix(x) @ agg
        return out.astype(x.dtype, copy=False)
    x = np.asarray(x)
    return np.ascontiguousarray((agg.T @ x.T).T).astype(x.dtype, copy=False)
