"""Map gene ids (Ensembl) in ``var_names`` to gene symbols."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils._spatialdata import get_table, is_spatialdata

if TYPE_CHECKING:
    from spatialdata import SpatialData

_VERSIONED = re.compile(r"^(ENS[A-Z]*[GTP]\d+)\.\d+$")
_ENSEMBL_ID = re.compile(r"^ENS[A-Z]*[GTP]\d{6,}(\.\d+)?$")
# a symbol: one word holding a letter ("Gene Expression" and "12345" are not)
_SYMBOL_LIKE = re.compile(r"^(?=[^\s]*[A-Za-z])[^\s]+$")
# column names as _normalise spells them, in order of preference (GENCODE, 10x/scanpy, BioMart, CELLxGENE)
_ID_COLUMNS = (
    "gene_id",
    "gene_ids",
    "ensembl_id",
    "ensembl_gene_id",
    "gene_stable_id",
    "ensembl",
    "feature_id",
    "id",
)
_NAME_COLUMNS = (
    "gene_name",
    "gene_symbol",
    "gene_symbols",
    "symbol",
    "feature_name",
    "external_gene_name",
    "hgnc_symbol",
    "mgi_symbol",
    "name",
    "gene",
)


def map_gene_ids(
    data: AnnData | SpatialData,
    mapping: Mapping[str, str] | pd.Series | pd.DataFrame | str | PathLike,
    *,
    strip_version: bool = True,
    unmapped: Literal["keep", "drop", "raise"] = "keep",
    duplicates: Literal["sum", "first"] = "sum",
    id_column: str | int | None = None,
    symbol_column: str | int | None = None,
    table_key: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Replace gene ids in ``var_names`` by gene symbols.

    Parameters
    ----------
    data
        AnnData whose ``var_names`` are gene ids (e.g. ``ENSMUSG00000064339.1``), or a SpatialData
        holding such a table (changed in place).
    mapping
        id -> symbol: a dict, a Series indexed by id, a DataFrame with an id and a symbol column, or the
        path of such a table (tab-separated for ``.tsv``/``.txt``, else comma-separated; may be
        gzipped). A DataFrame's index counts as one more column (named ``"index"`` when unnamed), so
        the ``.var`` of a 10x AnnData read by scanpy (symbols in the index, ``gene_ids``) works. The
        columns are found by name (ignoring case, spaces as ``_``: ``gene_id``, ``gene_ids``,
        ``ensembl_gene_id``, ``gene_stable_id``, ``feature_id``, ``id``, ... and ``gene_name``,
        ``gene_symbol``, ``symbol``, ``feature_name``, ``external_gene_name``, ``name``, ...), else by
        content: the id column is the one whose values look like Ensembl ids, the symbol column the
        only other column of one-word names with mostly distinct values. GENCODE-style tables
        (``gene_id, gene_type, gene_name``), BioMart exports (``Gene stable ID``, ``Gene name``) and
        Space Ranger ``features.tsv.gz`` files (no header line: id, symbol, type) are read as they are.
        When the columns cannot be told apart, a ValueError lists them: pass ``id_column`` and
        ``symbol_column``.
    strip_version
        Ignore Ensembl version suffixes (``.1``) on both sides when matching.
    unmapped
        Ids without a symbol: ``"keep"`` them as they are, ``"drop"`` those genes, or ``"raise"`` a
        ValueError. A warning gives their count and examples in the first two cases.
    duplicates
        Several ids mapping to one symbol: ``"sum"`` their counts (``.X`` and every layer, sparse
        stays sparse) or keep the ``"first"`` one. Sums are right for counts and library-size
        normalised values, not for log-transformed ones: a warning says so when ``adata.uns['log1p']``
        is set (scanpy's mark of :func:`scanpy.pp.log1p`). ``.raw`` is left as it is.
    id_column
        Column of a mapping table holding the ids (name, or position label of a table without header).
    symbol_column
        Column of a mapping table holding the symbols.
    table_key
        Table of a SpatialData; may be omitted when it holds one table.
    copy
        Return a modified copy of the AnnData instead of changing it in place (AnnData input only).

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
    if copy and is_spatialdata(data):
        raise ValueError(
            "copy=True applies to AnnData input; the table of a SpatialData is changed in place (map a copy "
            "of it instead: sdata.tables[key].copy())."
        )
    adata = get_table(data, table_key)
    if adata.isbacked:
        raise ValueError(
            "map_gene_ids rewrites the genes of the matrix, and this AnnData was opened with backed='r' "
            f"({adata.filename}); read it into memory first: adata = adata.to_memory()."
        )
    table = _as_mapping_series(mapping, id_column=id_column, symbol_column=symbol_column)
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
        warnings.warn(f"{msg}; they are {action}.", LokiWarning, stacklevel=user_stacklevel())
    new_names = np.where(missing, ids.to_numpy(dtype=object), symbols.to_numpy(dtype=object)).astype(str)

    keep = ~missing if unmapped == "drop" else np.ones(len(ids), dtype=bool)
    kept = np.flatnonzero(keep)
    codes, uniques = pd.factorize(new_names[kept])
    first = kept[np.unique(codes, return_index=True)[1]]  # first column of each symbol, in order
    n_dup = len(kept) - len(first)
    merge = duplicates == "sum" and n_dup > 0
    if merge and adata.X is not None and "log1p" in adata.uns:
        warnings.warn(
            f"{n_dup} gene ids share a symbol with another id and their columns are summed, but adata.X "
            "holds log-transformed values (adata.uns['log1p'] is set, as sc.pp.log1p leaves it): a sum of "
            "logs is not the log of the summed expression. Map the ids before normalising, or pass "
            "duplicates='first'.",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )
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


def read_gene_table(
    path: str | PathLike, *, id_column: str | int | None = None, symbol_column: str | int | None = None
) -> pd.Series:
    """Read an id -> symbol table from a delimited text file (see :func:`map_gene_ids`).

    A file whose first line already holds an Ensembl id (Space Ranger's ``features.tsv.gz``) is read
    as having no header line; its columns are then named ``0``, ``1``, ...
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Gene mapping file not found: {path}")
    suffixes = [s.lower() for s in path.suffixes]
    sep = "\t" if (".tsv" in suffixes or ".txt" in suffixes) else ","
    table = pd.read_csv(path, sep=sep, dtype=str)
    if _ensembl_fraction(pd.Series(table.columns.astype(str))) > 0:
        logger.info("%s has no header line (its first line holds an Ensembl id); reading it without", path)
        table = pd.read_csv(path, sep=sep, dtype=str, header=None)
    return _as_mapping_series(table, id_column=id_column, symbol_column=symbol_column)


def _as_mapping_series(mapping, *, id_column=None, symbol_column=None) -> pd.Series:
    if isinstance(mapping, str | PathLike):
        return read_gene_table(mapping, id_column=id_column, symbol_column=symbol_column)
    if not isinstance(mapping, pd.DataFrame) and (id_column is not None or symbol_column is not None):
        raise ValueError(
            "id_column and symbol_column choose the columns of a mapping table (a DataFrame or file)."
        )
    if isinstance(mapping, pd.DataFrame):
        columns = _table_columns(mapping)
        id_col = _choose_id_column(columns, id_column)
        name_col = _choose_symbol_column(columns, id_col, symbol_column)
        logger.info("mapping gene ids in column %r to the symbols in column %r", id_col, name_col)
        series = pd.Series(columns[name_col].to_numpy(), index=columns[id_col].astype(str).to_numpy())
    elif isinstance(mapping, pd.Series):
        series = mapping.copy()
        series.index = series.index.astype(str)
    elif isinstance(mapping, Mapping):
        series = pd.Series(dict(mapping), dtype=object)
    else:
        raise TypeError(f"mapping must be a dict, Series, DataFrame or a path, got {type(mapping).__name__}.")
    series = series[~series.index.duplicated()]
    return series


def _table_columns(table: pd.DataFrame) -> dict[str, pd.Series]:
    """The table's columns by name (as str), plus its index unless that is a plain row number."""
    columns = {str(c): table.iloc[:, k] for k, c in enumerate(table.columns)}
    if not isinstance(table.index, pd.RangeIndex):
        name = "index" if table.index.name is None else str(table.index.name)
        columns.setdefault(name, pd.Series(table.index, index=table.index))
    return columns


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", name.strip().lower())


def _by_name(columns: dict[str, pd.Series], known: tuple[str, ...], exclude: str | None = None) -> str | None:
    spelled = {_normalise(c): c for c in reversed(columns) if c != exclude}  # the first of equal spellings
    return next((spelled[k] for k in known if k in spelled), None)


def _requested(columns: dict[str, pd.Series], column, what: str) -> str:
    if str(column) not in columns:
        raise KeyError(f"{what}={column!r} is not a column of the mapping table; it has {list(columns)}.")
    return str(column)


def _choose_id_column(columns: dict[str, pd.Series], requested) -> str:
    if requested is not None:
        return _requested(columns, requested, "id_column")
    named = _by_name(columns, _ID_COLUMNS)
    if named is not None:
        return named
    ids = [c for c, v in columns.items() if _ensembl_fraction(v) >= 0.5]
    # BioMart's "Gene stable ID" and "Gene stable ID version" hold the same ids
    if ids and all(_strip(pd.Index(columns[c])).equals(_strip(pd.Index(columns[ids[0]]))) for c in ids):
        return ids[0]
    found = f"columns {ids} all look" if ids else "no column looks"
    raise ValueError(
        f"Cannot tell which column of the mapping table holds the gene ids ({found} like Ensembl ids; "
        f"columns: {list(columns)}). Pass id_column= (and symbol_column=)."
    )


def _choose_symbol_column(columns: dict[str, pd.Series], id_col: str, requested) -> str:
    if requested is not None:
        return _requested(columns, requested, "symbol_column")
    named = _by_name(columns, _NAME_COLUMNS, exclude=id_col)
    if named is not None:
        return named
    candidates = [c for c, v in columns.items() if c != id_col and _symbol_like(v)]
    if len(candidates) == 1:
        return candidates[0]
    found = f"{candidates} all look" if candidates else "none looks"
    raise ValueError(
        f"Cannot tell which column of the mapping table holds the gene symbols (ids in {id_col!r}; of the "
        f"columns {list(columns)}, {found} like symbols: one-word names, mostly distinct, not Ensembl ids). "
        "Pass symbol_column= (and id_column=)."
    )


def _ensembl_fraction(values: pd.Series) -> float:
    values = pd.Series(values).dropna().astype(str)
    return float(values.str.match(_ENSEMBL_ID).mean()) if len(values) else 0.0


def _symbol_like(values: pd.Series) -> bool:
    """Mostly one-word names holding a letter, mostly distinct, and not Ensembl ids."""
    values = pd.Series(values).dropna()
    if not len(values) or not pd.api.types.is_string_dtype(values):
        return False
    values = values.astype(str)
    return (
        values.str.match(_SYMBOL_LIKE).mean() >= 0.9
        and values.nunique() >= 0.5 * len(values)
        and _ensembl_fraction(values) < 0.5
    )


def _strip(ids: pd.Index) -> pd.Index:
    return pd.Index(ids.astype(str)).str.replace(_VERSIONED, r"\1", regex=True)


def _aggregate(x, agg: sparse.csr_matrix):
    if sparse.issparse(x):
        out = sparse.csr_matrix(x) @ agg
        return out.astype(x.dtype, copy=False)
    x = np.asarray(x)
    return np.ascontiguousarray((agg.T @ x.T).T).astype(x.dtype, copy=False)
