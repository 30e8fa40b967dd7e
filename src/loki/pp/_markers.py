"""Marker-gene tables (ScTypeDB, PanglaoDB, CellMarker) as ``{class: [genes]}`` for annotation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Literal

import pandas as pd

from loki._logging import LokiWarning, user_stacklevel
from loki._utils import require_keys

MarkerFormat = Literal["sctype", "panglaodb", "cellmarker"]

# Column names that identify each format: (tissue column, class column, gene column).
_COLUMNS: dict[str, tuple[str, str, str]] = {
    "sctype": ("tissueType", "cellName", "geneSymbolmore1"),
    "panglaodb": ("organ", "cell type", "official gene symbol"),
    "cellmarker": ("Tissue", "CT", "Gene"),
}


def _load(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xls"):
        return pd.read_excel(path)
    if suffix in (".tsv", ".txt"):
        return pd.read_csv(path, sep="\t")
    if suffix == ".gz" and path.stem.lower().endswith((".tsv", ".txt")):
        return pd.read_csv(path, sep="\t")
    return pd.read_csv(path)


def _detect(table: pd.DataFrame, path: Path) -> str:
    for name, cols in _COLUMNS.items():
        if set(cols) <= set(table.columns):
            return name
    raise ValueError(
        f"Cannot tell the marker table format of {str(path)!r} from its columns {list(table.columns)[:10]}; "
        f"expected the columns of one of {sorted(_COLUMNS)} ({_COLUMNS})."
    )


def _as_list(values: str | Sequence[str] | None) -> list[str] | None:
    if values is None:
        return None
    return [values] if isinstance(values, str) else list(values)


def _split_genes(cell: object) -> list[str]:
    if not isinstance(cell, str):
        return []
    return [g.strip() for g in cell.replace(";", ",").split(",") if g.strip()]


def _fold(name: str) -> str:
    """``name`` ignoring case and the kind and number of spaces (no-break spaces, doubled spaces)."""
    return " ".join(name.split()).casefold()


def _near_spellings(wanted: Sequence[str], names: Sequence[str]) -> str | None:
    """A sentence naming the classes spelled like ``wanted`` but for case or spacing, or None."""
    by_fold: dict[str, list[str]] = {}
    for name in names:
        by_fold.setdefault(_fold(name), []).append(name)
    pairs = [
        f"{w!r}: {', '.join(map(repr, by_fold[_fold(w)]))}"
        for w in wanted
        if w not in names and _fold(w) in by_fold
    ]
    if not pairs:
        return None
    return f"Spelled differently (case or spaces) in the table: {'; '.join(pairs)}."


def _warn_case_variants(markers: dict[str, list[str]], name: str) -> None:
    """Warn of classes whose names differ only in case or spacing: likely one cell type spelled twice."""
    by_fold: dict[str, list[str]] = {}
    for cls in markers:
        by_fold.setdefault(_fold(cls), []).append(cls)
    groups = [g for g in by_fold.values() if len(g) > 1]
    if not groups:
        return
    shown = "; ".join(" / ".join(map(repr, g)) for g in groups[:5])
    # the hint keeps the plainly spaced spelling (not a no-break or doubled space)
    a, b = sorted(groups[0], key=lambda n: " ".join(n.split()) != n)[:2]
    warnings.warn(
        f"read_markers: {len(groups)} group(s) of classes in {name} differ only in case or spacing "
        f"({shown}{'; ...' if len(groups) > 5 else ''}). They are kept as separate classes, which "
        f"compete for the same spots; if each is one cell type, merge them, e.g. "
        f"markers[{a!r}] += markers.pop({b!r}).",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


def read_markers(
    path: str | PathLike,
    *,
    tissue: str | Sequence[str] | None = None,
    species: Literal["human", "mouse"] | None = None,
    cell_types: Sequence[str] | None = None,
    canonical_only: bool = False,
    format: MarkerFormat | None = None,
) -> dict[str, list[str]]:
    r"""Read a marker-gene table into ``{class: [marker genes]}`` for :func:`loki.tl.annotate`.

    Supported formats (detected from the columns): ScTypeDB xlsx (``tissueType``, ``cellName``,
    positive markers in ``geneSymbolmore1``), PanglaoDB tsv (``organ``, ``cell type``,
    ``official gene symbol``, ``species``, ``canonical marker``) and CellMarker csv (``Tissue``,
    ``CT``, comma-separated ``Gene``). Gene order follows the table; duplicates are dropped.

    Parameters
    ----------
    path
        The table file.
    tissue
        Keep rows of this tissue / organ (or these), case-insensitive; default: all rows. Classes of
        the same name from several tissues are merged.
    species
        PanglaoDB only: keep markers reported in ``"human"`` (``Hs``) or ``"mouse"`` (``Mm``).
        Symbols stay as in the table (upper case); annotation matches them to the data's genes
        ignoring case.
    cell_types
        Keep only these classes (names as in the table, matched exactly; a name missing from the
        table is an error that lists the table's spellings of it that differ only in case or spaces,
        e.g. a no-break space in CellMarker's ``'CD8+\xa0intraepithelial cell'``).
    canonical_only
        PanglaoDB only: keep canonical markers.
    format
        Force a format instead of detecting it.

    Returns
    -------
    Class name -> list of gene symbols. Class names are kept as the table spells them: classes whose
    names differ only in case or spacing (CellMarker 2.0 has ``'Naive B Cell'`` and
    ``'Naive B cell'``) stay separate classes, and a :class:`~loki.LokiWarning` names them.

    Raises
    ------
    FileNotFoundError
        No such file.
    KeyError
        A ``tissue`` or one of ``cell_types`` that the table does not hold (the message lists those it
        holds).
    ValueError
        A format that cannot be told or does not fit the filters, or no class with a marker left after
        the filters (an empty table, ``cell_types=[]``, a tissue without markers of ``species``).

    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Marker table not found: {str(path)!r}.")
    table = _load(path)
    fmt = _detect(table, path) if format is None else format
    if fmt not in _COLUMNS:
        raise ValueError(f"format must be one of {sorted(_COLUMNS)}, got {format!r}.")
    tissue_col, class_col, gene_col = _COLUMNS[fmt]
    require_keys(table.columns, [tissue_col, class_col, gene_col], f"the {fmt} table {path.name}")
    n_rows = len(table)
    tissues = _as_list(tissue)
    if tissues is not None:
        wanted = {t.strip().lower(): t for t in tissues}  # named as given in an error
        present = table[tissue_col].astype(str).str.strip().str.lower()
        missing = [given for lower, given in wanted.items() if lower not in set(present)]
        if missing:
            available = sorted(table[tissue_col].dropna().astype(str).unique())
            require_keys(available, missing, f"the {tissue_col!r} column of {path.name} (case-insensitive)")
        table = table[present.isin(list(wanted)).to_numpy()]
    if species is not None:
        if fmt != "panglaodb":
            raise ValueError(f"species= applies to PanglaoDB tables only; {path.name} is a {fmt} table.")
        code = {"human": "Hs", "mouse": "Mm"}.get(species)
        if code is None:
            raise ValueError(f"species must be 'human' or 'mouse', got {species!r}.")
        table = table[table["species"].astype(str).str.split().apply(lambda s: code in s)]
    if canonical_only:
        if fmt != "panglaodb":
            raise ValueError("canonical_only applies to PanglaoDB tables only.")
        table = table[table["canonical marker"] == 1]
    if cell_types is not None:
        cell_types = _as_list(cell_types)
        present = list(table[class_col].dropna().astype(str).unique())
        require_keys(
            present,
            cell_types,
            f"the classes of {path.name}",
            hint=_near_spellings(cell_types, present),
        )
        table = table[table[class_col].astype(str).isin(cell_types)]
    markers: dict[str, list[str]] = {}
    for cls, genes in zip(table[class_col].astype(str), table[gene_col], strict=True):
        markers.setdefault(cls, []).extend(_split_genes(genes))
    markers = {cls: list(dict.fromkeys(genes)) for cls, genes in markers.items()}
    markers = {cls: genes for cls, genes in markers.items() if genes}
    _warn_case_variants(markers, path.name)
    if not markers:
        filters = {
            "tissue": tissue,
            "species": species,
            "cell_types": cell_types,
            "canonical_only": canonical_only or None,
        }
        used = ", ".join(f"{k}={v!r}" for k, v in filters.items() if v is not None) or "no filter"
        matched = (
            f"{_rows(len(table))} matched, none with a gene in {gene_col!r}"
            if len(table)
            else "no row matched"
        )
        raise ValueError(
            f"No class with a marker gene is left in {path.name} ({_rows(n_rows)}, {fmt} format) after "
            f"{used}: {matched}."
        )
    return markers
