"""Gene sentences: the top expressed genes of each spot, joined by spaces (OmiCLIP's text input)."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from loki._defaults import REFERENCE_EXCLUDE_PATTERNS
from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    all_or_nothing,
    check_int,
    check_result_key,
    is_real,
    require_keys,
    write_obs,
    write_uns,
)
from loki._utils._spatialdata import check_write_mode, get_table

from ._housekeeping import housekeeping_genes
from ._topk import as_csr, join_names, top_k_rows

if TYPE_CHECKING:
    from spatialdata import SpatialData

MITO_PATTERN = r"^MT-"
RIBO_PATTERN = r"^RP[SL]"
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
_WHITESPACE = re.compile(r"\s")


def top_gene_indices(x: sparse.spmatrix | sparse.sparray | np.ndarray, n: int, *, keep=None) -> np.ndarray:
    """Column indices of the ``n`` largest positive values of each row.

    Ties are broken by column order (lower first), as ``pandas.Series.nlargest(n, keep="first")``
    does; zeros are never selected. Works on CSR rows without densifying (other inputs are converted
    to CSR).

    Parameters
    ----------
    x
        Matrix of non-negative values, rows = spots/cells (or bulk samples, marker profiles).
    n
        How many columns to keep per row.
    keep
        Optional boolean mask over columns; columns where it is False are never selected.

    Returns
    -------
    int32 array of shape ``(n_rows, n)``, best first, padded with -1 where a row has fewer than ``n``
    positive entries.

    """
    n = check_int(n, "n")
    top, _, n_bad = top_k_rows(as_csr(x), n, keep)
    _raise_bad_values(n_bad, None)
    return top


def gene_sentences(
    data: AnnData | SpatialData,
    *,
    table_key: str | None = None,
    n_genes: int = 50,
    layer: str | None = None,
    use_raw: bool | None = None,
    normalize: bool = True,
    target_sum: float = 1e4,
    housekeeping: Literal["hsiao"] | Iterable[str] | None = "hsiao",
    exclude_patterns: Sequence[str] = REFERENCE_EXCLUDE_PATTERNS,
    exclude_mito: bool = False,
    exclude_ribo: bool = False,
    key_added: str = Key.SENTENCE,
    copy: bool = False,
    inplace: bool = True,
) -> AnnData | pd.Series | None:
    """Turn each spot's expression profile into a gene sentence.

    The recipe of the Loki paper (Methods, "Training dataset curation"): normalise counts, remove
    housekeeping genes, rank the remaining genes by expression and join the symbols of the top
    ``n_genes`` with spaces, highest first (``"SNAP25 ENO2 CKB ..."``). Ties are broken by gene order
    in ``var_names``, exactly as the published ``pandas.Series.nlargest`` recipe does. Runs on sparse
    rows in parallel without densifying the matrix.

    Parameters
    ----------
    data
        AnnData (spots x genes, ``var_names`` = gene symbols) or SpatialData holding the table.
    table_key
        Table of a SpatialData; may be omitted when it holds one table.
    n_genes
        Genes per sentence (the paper uses 50). OmiCLIP's text encoder reads 76 tokens and gene
        symbols mostly take several, so only about the first 18 to 27 genes of a 50-gene sentence
        reach it (median 23 on the bundled mouse olfactory bulb sections; the paper's pipeline cuts
        them the same way): the genes beyond those, and filters that only change them, leave the
        embeddings unchanged. :func:`loki.tl.embed_text` records how many sentences were cut and
        the median number of genes kept.
    layer
        Layer holding counts; ``.X`` when None.
    use_raw
        Rank the genes of ``adata.raw`` (its ``X`` and ``var_names``) instead, e.g. all genes of a
        table that was cut to its highly variable genes. The sentences land in ``adata.obs`` as usual.
        Log-normalised values in ``.raw`` give the same sentences as its counts (see
        ``normalize``). Cannot be combined with ``layer``. None (default) ranks ``.X`` (or ``layer``)
        like False, with a warning when ``adata.raw`` holds genes the ranked matrix lacks (scanpy's
        ``adata.raw = adata`` before ``adata = adata[:, adata.var.highly_variable]``): the sentences
        then hold only the kept genes. Pass True or False to choose and silence it.
    normalize
        Whether the ranking follows library-size normalisation to ``target_sum`` (and log1p), as in
        the paper. Both are strictly increasing within a spot, so the ranking - and the sentence - is
        the same as on the stored values; the kernel therefore ranks the stored values and never
        materialises a normalised matrix. Kept to record the recipe; an already normalised layer gives
        the same sentences with either setting.
    target_sum
        Library size after normalisation (recorded with the parameters); a positive number.
    housekeeping
        ``"hsiao"`` removes the bundled MSigDB HSIAO_HOUSEKEEPING_GENES list (397 human symbols, the
        list OmiCLIP used); an iterable of symbols removes those; None keeps all genes. Matching ignores
        case: the list is human, and mouse orthologue symbols mostly differ only in case
        (``ACTB``/``Actb``).
    exclude_patterns
        Regular expressions; genes whose name matches any of them are removed. The default reproduces
        the reference implementation, which drops every gene whose name contains ``-`` or ``.``
        (this also removes ``MT-``/``mt-`` genes and many unnamed loci). Pass ``()`` to keep them.
    exclude_mito
        Also remove mitochondrial genes (``^MT-``, any case).
    exclude_ribo
        Also remove ribosomal protein genes (``^RP[SL]``, any case).
    key_added
        Column of ``.obs`` for the sentences.
    copy
        Return a modified copy of the AnnData instead of writing in place (AnnData input only).
    inplace
        Write the results into the table (or the copy). ``False`` writes nothing and returns the
        sentences.

    Returns
    -------
    None, the modified AnnData when ``copy=True``, or with ``inplace=False`` the sentences: a
    ``pd.Series`` of str indexed by ``obs_names`` and named ``key_added`` (the values ``.obs[key_added]``
    would hold; ``""`` marks the spots that would be flagged empty). Unless ``inplace=False``, writes
    into the table:

    - ``.obs[key_added]``: the sentence (str; ``""`` for spots with no expressed gene left).
    - ``.obs['loki_empty']`` (``.obs[f"{key_added}_empty"]`` for another ``key_added``, so that
      each set of sentences keeps its own flags): True where no gene with a positive value survived
      the filters. Such spots are flagged, never dropped; a warning says how many.
    - ``.uns['loki'][key_added]``: the parameters, with ``n_genes_ranked`` (genes left to rank by the
      filters) and ``n_genes_excluded`` (genes the filters removed).

    Notes
    -----
    Sentences contain expressed genes only. The reference pads spots with fewer than ``n_genes``
    expressed genes with unexpressed genes in ``var_names`` order, which carry no information.
    Ensembl ids in ``var_names`` give sentences of ids: map them first with
    :func:`loki.pp.map_gene_ids`.

    """
    check_write_mode(data, copy, inplace)
    adata = get_table(data, table_key)
    empty_key = Key.empty_of(key_added)
    check_result_key(
        adata, key_added, ("obs", "uns"), derived=[(empty_key, ("obs",))], tool="pp.gene_sentences"
    )
    if key_added == Key.EMPTY_SPOT:
        raise ValueError(
            f"key_added={key_added!r} is the column of the empty-spot flag; choose another name."
        )
    n_genes = check_int(n_genes, "n_genes")
    if not is_real(target_sum) or not np.isfinite(target_sum) or target_sum <= 0:
        raise ValueError(
            f"target_sum must be a positive number, got {target_sum!r} (the ranking, and so the "
            "sentence, is the same for any value: it is only recorded)."
        )
    for name, value in (
        ("normalize", normalize),
        ("exclude_mito", exclude_mito),
        ("exclude_ribo", exclude_ribo),
    ):
        _check_bool(value, name)
    x, var_names = _expression_source(adata, layer, use_raw)
    if len(var_names) == 0:
        raise ValueError(
            f"{'adata.raw' if use_raw else 'The table'} has no genes (0 var_names), so there is nothing to rank."
        )
    name_list = _as_str_list(var_names)
    names = var_names if var_names.inferred_type == "string" else pd.Index(name_list)
    _check_gene_names(names, name_list, where="adata.raw.var_names" if use_raw else "var_names")
    keep, excluded = gene_filter(
        name_list,
        housekeeping=housekeeping,
        exclude_patterns=exclude_patterns,
        exclude_mito=exclude_mito,
        exclude_ribo=exclude_ribo,
    )
    _check_word_names(name_list, keep, exclude_patterns)
    if use_raw is None:
        _warn_if_raw_has_more_genes(adata, layer, len(var_names))
    top, counts, n_bad = top_k_rows(as_csr(x), n_genes, keep)
    _raise_bad_values(n_bad, adata.obs_names, _other_sources(adata, layer, use_raw))
    sentences = pd.Series(
        join_names(top, counts, name_list), index=adata.obs_names, dtype=object, name=key_added
    )
    empty = counts == 0
    if empty.any():
        examples = ", ".join(map(repr, adata.obs_names[empty][:5]))
        warnings.warn(
            f"{int(empty.sum())} of {adata.n_obs} spots have no expressed gene after filtering (e.g. "
            f"{examples}); they get an empty sentence"
            + (f" and .obs[{empty_key!r}] = True." if inplace else "."),
            LokiWarning,
            stacklevel=user_stacklevel(),
        )

    if not inplace:
        return sentences
    record = {
        "tool": "pp.gene_sentences",
        "n_genes": n_genes,
        "layer": "X" if layer is None else layer,
        "use_raw": bool(use_raw),
        "normalize": bool(normalize),
        "target_sum": float(target_sum),
        "housekeeping": _housekeeping_label(housekeeping),
        "exclude_patterns": [str(p) for p in exclude_patterns],
        "exclude_mito": bool(exclude_mito),
        "exclude_ribo": bool(exclude_ribo),
        "n_genes_ranked": int(len(name_list) - excluded),
        "n_genes_excluded": int(excluded),
        "n_empty": int(empty.sum()),
        "empty_key": empty_key,
    }
    if copy:
        adata = adata.copy()
    with all_or_nothing():  # a failure between the writes leaves the table as it was
        write_obs(adata, key_added, sentences)
        write_obs(adata, empty_key, empty)
        write_uns(adata, key_added, record)
    return adata if copy else None


def gene_filter(
    names: Sequence[str],
    *,
    housekeeping: Literal["hsiao"] | Iterable[str] | None = "hsiao",
    exclude_patterns: Sequence[str] = REFERENCE_EXCLUDE_PATTERNS,
    exclude_mito: bool = False,
    exclude_ribo: bool = False,
) -> tuple[np.ndarray, int]:
    """Boolean mask of the genes a sentence may contain, and how many were excluded.

    See :func:`gene_sentences` for the meaning of the options.
    """
    names = _as_str_list(names)
    drop = np.zeros(len(names), dtype=bool)
    if housekeeping is not None:
        hk = housekeeping_genes(housekeeping) if isinstance(housekeeping, str) else housekeeping
        hk = {str(g).upper() for g in hk}
        hit = np.fromiter((n.upper() in hk for n in names), dtype=bool, count=len(names))
        logger.info("removing %d housekeeping genes", int(hit.sum()))
        drop |= hit
    if isinstance(exclude_patterns, str):
        raise TypeError("exclude_patterns must be a sequence of patterns, not a single string.")
    patterns = [str(p) for p in exclude_patterns]
    ignore_case = [p for p, on in ((MITO_PATTERN, exclude_mito), (RIBO_PATTERN, exclude_ribo)) if on]
    try:
        regexes = [re.compile("|".join(f"(?:{p})" for p in patterns))] if patterns else []
    except re.error as err:
        raise ValueError(f"Invalid regular expression in exclude_patterns {patterns}: {err}.") from err
    if ignore_case:
        regexes.append(re.compile("|".join(f"(?:{p})" for p in ignore_case), re.IGNORECASE))
    for rx in regexes:
        drop |= np.fromiter((rx.search(n) is not None for n in names), dtype=bool, count=len(names))
    if drop.all() and len(names):
        raise ValueError(f"All {len(names)} genes are excluded by the filters; nothing left to rank.")
    return ~drop, int(drop.sum())


def looks_like_ensembl(names: Iterable[str]) -> np.ndarray:
    """Boolean mask of names that look like Ensembl gene ids (``ENSG...``, ``ENSMUSG...``, versioned)."""
    names = _as_str_list(names)
    return np.fromiter(
        (n.startswith("ENS") and _ENSEMBL.match(n) is not None for n in names), dtype=bool, count=len(names)
    )


def _as_str_list(names) -> list[str]:
    if isinstance(names, pd.Index | pd.Series | np.ndarray):
        names = names.tolist()
    return [n if type(n) is str else str(n) for n in names]


def _check_gene_names(names: pd.Index, name_list: list[str] | None = None, where: str = "var_names") -> None:
    dup = names[names.duplicated()].unique()
    if len(dup):
        shown = ", ".join(map(repr, dup[:10])) + (f", ... ({len(dup)} in all)" if len(dup) > 10 else "")
        raise ValueError(
            f"{where} hold {len(dup)} duplicated gene name(s): {shown}. Sum the counts of each name "
            "(lk.pp.map_gene_ids(adata, dict(zip(adata.var_names, adata.var_names)))), or make the names "
            "unique (adata.var_names_make_unique(); the copies then end in '-1', '-2', ..., which the "
            "default exclude_patterns leave out of the sentences)."
        )
    ens = looks_like_ensembl(names.tolist() if name_list is None else name_list)
    if len(names) and ens.mean() >= 0.5:
        how = (
            "Map them to symbols first with loki.pp.map_gene_ids(adata, mapping)."
            if where == "var_names"
            else "loki.pp.map_gene_ids maps adata.var_names, not adata.raw: map a copy and put it back "
            "(raw = adata.raw.to_adata(); lk.pp.map_gene_ids(raw, mapping); adata.raw = raw)."
        )
        warnings.warn(
            f"{int(ens.sum())} of {len(names)} {where} look like Ensembl ids (e.g. {names[ens][0]!r}); "
            f"sentences will be made of ids, which OmiCLIP was not trained on. {how}",
            LokiWarning,
            stacklevel=user_stacklevel(),
        )


def _check_word_names(names: list[str], keep: np.ndarray, patterns: Sequence[str]) -> None:
    """Refuse gene names a sentence cannot hold: empty, or with whitespace (words are space-separated)."""
    bad = [n for n, k in zip(names, keep, strict=True) if k and (not n or _WHITESPACE.search(n))]
    if bad:
        shown = ", ".join(map(repr, bad[:5])) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        wider = (*(str(p) for p in patterns), r"\s", "^$")
        raise ValueError(
            f"{len(bad)} gene name(s) left by the filters are empty or hold whitespace ({shown}); in a "
            "space-separated sentence they would read as no gene or as several. Rename them, or leave "
            f"them out with exclude_patterns={wider!r}."
        )


def _warn_if_raw_has_more_genes(adata: AnnData, layer: str | None, n_ranked: int) -> None:
    """Warn when ``adata.raw`` holds genes that the ranked matrix (``.X`` or a layer) lacks."""
    if adata.raw is None or adata.raw.n_vars <= n_ranked:
        return
    used = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    warnings.warn(
        f"{used} holds {n_ranked} of the {adata.raw.n_vars} genes of adata.raw (e.g. cut to highly "
        "variable genes), so the sentences rank only those. Pass use_raw=True"
        + ("" if layer is None else " instead of layer=")
        + " to rank all genes of adata.raw, or use_raw=False to keep these and silence this warning.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def _check_bool(value, name: str) -> None:
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be True or False, got {value!r}.")


def _raise_bad_values(n_bad: np.ndarray, obs_names, sources: str | None = None) -> None:
    bad_rows = np.flatnonzero(n_bad)
    if len(bad_rows):
        which = bad_rows[:5] if obs_names is None else obs_names[bad_rows[:5]]
        raise ValueError(
            f"Expression holds {int(n_bad.sum())} NaN, infinite or negative value(s) in {len(bad_rows)} "
            f"row(s), e.g. {', '.join(map(repr, list(which)))}; gene sentences need non-negative counts "
            "or normalised expression, not scaled values (e.g. from sc.pp.scale)."
            + ("" if sources is None else f" {sources}")
        )


def _expression_source(adata: AnnData, layer: str | None, use_raw: bool):
    """The matrix to rank and its gene names: ``.X``, a layer, or ``.raw``."""
    if use_raw is not None and not isinstance(use_raw, bool | np.bool_):
        raise TypeError(f"use_raw must be True, False or None, got {use_raw!r}.")
    if use_raw:
        if layer is not None:
            raise ValueError(f"Pass either layer= or use_raw=True, not both (got layer={layer!r}).")
        if adata.raw is None:
            raise ValueError(f"use_raw=True but adata.raw is not set; {_layer_listing(adata, None)}.")
        return adata.raw.X, adata.raw.var_names
    if layer is None:
        x = adata.X
    else:
        require_keys(adata.layers, layer, "adata.layers", hint=_raw_hint(adata) if layer == "raw" else None)
        x = adata.layers[layer]
    if x is None:
        raise ValueError("adata.X is empty; pass layer= to choose the counts.")
    return x, adata.var_names


def _other_sources(adata: AnnData, layer: str | None, use_raw: bool) -> str:
    """Where else the table keeps expression: its other layers and ``.raw``, and how to use them."""
    if use_raw:
        return f"The values are adata.raw.X; {_layer_listing(adata, None)}."
    used = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    return f"The values are {used}; {_layer_listing(adata, layer)}. {_raw_hint(adata)}"


def _layer_listing(adata: AnnData, layer: str | None) -> str:
    others = [k for k in adata.layers.keys() if k != layer]
    if not others:
        return "it has no other layer"
    return f"its layers are {', '.join(map(repr, others))} (pass layer= one holding counts)"


def _raw_hint(adata: AnnData) -> str:
    """Whether ``adata.raw`` exists and how to make sentences from it (it is not a layer)."""
    if adata.raw is None:
        return "adata.raw is not set."
    return f"adata.raw holds {adata.raw.n_vars} genes; pass use_raw=True to rank them."


def _housekeeping_label(housekeeping) -> str:
    if housekeeping is None:
        return "none"
    if isinstance(housekeeping, str):
        return housekeeping
    return "custom"
