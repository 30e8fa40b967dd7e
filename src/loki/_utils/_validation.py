"""Input checks that fail early with messages naming what is wrong and what exists."""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from loki._keys import Key
from loki._utils._write import loki_record, loki_uns, unstorable_reason


def _listing(keys: Iterable[Any], limit: int = 20) -> str:
    keys = [str(k) for k in keys]
    if not keys:
        return "none"
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def require_keys(
    container: Mapping[str, Any] | Iterable[str],
    keys: str | Iterable[str],
    where: str,
    *,
    hint: str | None = None,
) -> None:
    """Raise a KeyError naming ``where`` and the available keys when any of ``keys`` is missing.

    Parameters
    ----------
    container
        Anything with ``in`` and iteration over its keys (dict, DataFrame columns, ``adata.obsm``).
    keys
        Key or keys that must be present.
    where
        How the container is called in the message, e.g. ``"adata.obsm"``.
    hint
        Sentence appended to the message, e.g. which function writes the key.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    available = list(container.keys()) if hasattr(container, "keys") else list(container)
    missing = [k for k in keys if k not in available]
    if missing:
        message = f"{_listing(missing)} not found in {where}; available: {_listing(available)}."
        by_case = {str(k).casefold(): k for k in reversed(available)}  # the first of equal folds
        near = [(k, by_case[str(k).casefold()]) for k in missing if str(k).casefold() in by_case]
        if near:  # gene symbols: 'PENK' (human) for 'Penk' (mouse)
            message += " Differing only in case: " + ", ".join(f"{k!r} -> {m!r}" for k, m in near) + "."
        raise KeyError(message if hint is None else f"{message} {hint}")


def check_key_name(key, what: str = "key_added") -> None:
    """Require a non-empty string that h5ad and zarr can store as a key.

    Result keys name entries of ``.obs``, ``.obsm`` and ``.uns``; a ``'/'`` in one was written to
    h5ad, and the file then could not be read.
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"{what} must be a non-empty string, got {key!r}.")
    reason = unstorable_reason(key)
    if reason is not None:
        raise ValueError(f"{what}={key!r} cannot be written to h5ad or zarr ({reason}); pass another name.")


def _place(where: str, key: str) -> str:
    return f".uns[{Key.UNS!r}][{key!r}]" if where == "uns" else f".{where}[{key!r}]"


def _protected(table, where: str, inputs: Mapping[str, str | None]) -> dict[str, str]:
    """``{key: what it is}`` of the keys of ``where`` (``"obs"``, ``"obsm"``, ...) no result may take."""
    protected = {
        value: f"the call's input {name}={value!r}" for name, value in inputs.items() if value is not None
    }
    if where == "obs":
        attrs = table.uns.get("spatialdata_attrs", {})
        for link in ("region_key", "instance_key"):
            column = attrs.get(link)
            if column is not None:
                protected.setdefault(
                    column,
                    f"the table's {link} column .obs[{column!r}], which links its rows to their shapes",
                )
    elif where == "obsm":
        protected.setdefault(Key.SPATIAL, f"the spot coordinates .obsm[{Key.SPATIAL!r}]")
    elif where == "uns":
        for name in Key.SECTION_METADATA:
            protected.setdefault(name, f"the section metadata .uns[{Key.UNS!r}][{name!r}]")
    return protected


def is_int(value) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def check_int(
    value, name: str, *, minimum: int = 1, maximum: int | None = None, optional: bool = False, why: str = ""
) -> int | None:
    """``value`` as an ``int``; a ValueError naming ``name`` unless it is an integer (not a bool) in range.

    ``None`` is returned as it is with ``optional=True``. ``why`` says what the bounds stand for.
    """
    if value is None and optional:
        return None
    if is_int(value) and value >= minimum and (maximum is None or value <= maximum):
        return int(value)
    if maximum is not None:
        rule = f"an integer in [{minimum}, {maximum}]"
    else:
        rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    raise ValueError(
        f"{name} must be {rule}{' or None' if optional else ''}{f' ({why})' if why else ''}, got {value!r}."
    )


def is_real(value) -> bool:
    """Whether ``value`` is a real number (Python or numpy, integers included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_element_name(value, what: str, note: str = "") -> None:
    """Raise a ValueError naming ``what`` when ``value`` cannot name a SpatialData element.

    Parameters
    ----------
    value
        The name.
    what
        How the caller gave it, e.g. ``"name='MOB 1'"``; the message reads "{what} is not a valid
        SpatialData element name: {reason}{note}".
    note
        Text appended to the message, e.g. what the name is used for.
    """
    from spatialdata._core.validation import check_valid_name

    try:
        check_valid_name(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} is not a valid SpatialData element name: {err}{note}") from None


def check_loki_uns(table) -> None:
    """Refuse a table whose ``.uns['loki']`` holds another tool's value (not a mapping) loki cannot record into."""
    if Key.UNS in table.uns and not isinstance(table.uns[Key.UNS], Mapping):
        raise ValueError(
            f".uns[{Key.UNS!r}] holds a {type(table.uns[Key.UNS]).__name__}, not loki's records (a dict), so "
            f"results cannot be recorded there. Move that value (e.g. adata.uns['other'] = "
            f"adata.uns.pop({Key.UNS!r})) and call again; nothing was written."
        )


def check_result_key(
    table,
    key,
    where: Iterable[str],
    *,
    inputs: Mapping[str, str | None] | None = None,
    derived: Iterable[tuple[str, Iterable[str]] | tuple[str, Iterable[str], str]] = (),
    what: str = "key_added",
    tool: str | None = None,
    owner: str | None = None,
) -> None:
    """Refuse a result key that would overwrite what the call reads or what describes the section.

    Runs :func:`check_key_name`, then raises a ValueError naming ``what``, the key and what it would
    replace when the key, or one of the ``derived`` keys written with it, is

    - one of ``inputs``;
    - for ``"obs"``, the ``region_key`` or ``instance_key`` column of a SpatialData table
      (``table.uns['spatialdata_attrs']``): they link the rows to their shapes;
    - for ``"obsm"``, ``"spatial"``: the spot coordinates;
    - for ``"uns"``, one of the section metadata entries of ``.uns['loki']``
      (``Key.SECTION_METADATA``: ``image_key``, ``microns_per_unit``, ...); and any key when
      ``.uns['loki']`` is not a mapping (another tool's value) that could hold the record; and, with
      ``tool``, a key whose record another loki tool wrote (its ``"tool"``, see :func:`write_uns`);
    - another recorded result: the key of another record in ``.uns['loki']``, or an ``.obs`` column
      such a record names as part of it (``empty_key``, ``patch_ok_key``, ``label_key``). The
      result the call writes (``owner``) may replace its own.

    Call it before computing, so that nothing is written when it fails.

    Parameters
    ----------
    table
        AnnData the result is written into.
    key
        The result key.
    where
        Containers the result is written into under ``key``: any of ``"obs"``, ``"obsm"``,
        ``"layers"`` and ``"uns"`` (meaning ``.uns['loki'][key]``).
    inputs
        ``{argument: key}`` of the keys the call reads from those containers, e.g. ``{"use": use}``;
        None values are skipped.
    derived
        ``(derived_key, where)`` pairs of the other keys the call writes (or removes) because of
        ``key``, e.g. ``[(f"{key}_fused", ("obsm",))]``; the message names ``what`` and the place of
        the derived key. A third item names the tool whose record the call writes under the derived
        key (``"pp.spot_patches"`` for an image embedding's patch flags), which it may replace.
    what
        Name of the argument in the message.
    tool
        The calling tool as it records itself (``"tl.align"``); a rerun of the same tool may replace
        its own result.
    owner
        The result (its ``.uns['loki']`` key) the call writes; default ``key`` when ``where`` holds
        ``"uns"``. Pass it for a key written as part of another, e.g. annotate's ``label_key``.
    """
    check_key_name(key, what)
    where = tuple(where)
    if "uns" in where:
        check_loki_uns(table)
        recorded_by = (loki_record(table, key) or {}).get("tool")
        if tool is not None and recorded_by is not None and recorded_by != tool:
            raise ValueError(
                f"{what}={key!r} would replace the result of lk.{recorded_by} under that key (.uns[{Key.UNS!r}]"
                f"[{key!r}] and what it describes). Choose another {what}."
            )
    inputs = inputs or {}
    owner = key if "uns" in where else owner
    results = _other_results(table, owner)
    for container in where:
        protected = _protected(table, container, inputs)
        if key in protected:
            raise ValueError(f"{what}={key!r} would replace {protected[key]}. Choose another {what}.")
    if _takes(results, key, where):
        raise ValueError(f"{what}={key!r} would replace {results[key][0]}. Choose another {what}.")
    for other, other_where, *other_tool in derived:
        other_where = tuple(other_where)
        for container in other_where:
            protected = _protected(table, container, inputs)
            if other in protected:
                raise ValueError(
                    f"{what}={key!r} also takes {_place(container, other)} for its results, which is "
                    f"{protected[other]}. Choose another {what}."
                )
        if _takes(results, other, other_where) and results[other][1] not in other_tool:
            raise ValueError(
                f"{what}={key!r} also takes {other!r} for its results, which would replace "
                f"{results[other][0]}. Choose another {what}."
            )


#: fields of a record that name ``.obs`` columns belonging to its result
_COMPANION_FIELDS = ("empty_key", "patch_ok_key", "label_key")


def _takes(results: dict[str, tuple[str, str | None, bool]], key: str, where: tuple[str, ...]) -> bool:
    """Whether writing ``key`` into ``where`` takes another result: its key, or its ``.obs`` column."""
    return key in results and (not results[key][2] or "obs" in where)


def _other_results(table, owner: str | None) -> dict[str, tuple[str, str | None, bool]]:
    """The keys of the results recorded in ``.uns['loki']`` other than ``owner``.

    ``{key: (what it is, the tool that recorded it, whether it is an .obs column)}``: each record's key,
    and the ``.obs`` columns it names as part of its result.
    """
    results: dict[str, tuple[str, str | None, bool]] = {}
    for name, record in loki_uns(table).items():
        if name == owner or not isinstance(record, Mapping):
            continue
        tool = record.get("tool")
        by = f" of lk.{tool}" if tool else ""
        results[name] = (f"the result {name!r}{by} (.uns[{Key.UNS!r}][{name!r}])", tool, False)
        for field in _COMPANION_FIELDS:
            column = record.get(field)
            if isinstance(column, str) and column != name:
                results.setdefault(
                    column, (f".obs[{column!r}], part of the result {name!r}{by} (its {field})", tool, True)
                )
    return results


def check_obsm_key(adata, key: str, *, where: str = "adata", hint: str | None = None) -> None:
    """Require ``adata.obsm[key]``.

    ``where`` names the table in the message (e.g. ``"reference"``, ``"sdata.tables['A']"``);
    ``hint`` is appended to it (see :func:`require_keys`).
    """
    require_keys(adata.obsm, key, f"{where}.obsm", hint=hint)


def check_obs_key(adata, key: str, *, where: str = "adata", hint: str | None = None) -> None:
    """Require ``adata.obs[key]``; ``where`` and ``hint`` as in :func:`check_obsm_key`."""
    require_keys(adata.obs.columns, key, f"{where}.obs", hint=hint)


def check_var_key(adata, key: str) -> None:
    """Require ``adata.var[key]``."""
    require_keys(adata.var.columns, key, "adata.var")


def check_unique_var_names(adata, where: str) -> None:
    """Require unique ``var_names``: genes are looked up by name."""
    if not adata.var_names.is_unique:
        dup = adata.var_names[adata.var_names.duplicated()].unique()
        raise ValueError(
            f"{where}.var_names has duplicated genes ({_listing(dup, 5)}); call .var_names_make_unique() first."
        )


def check_array_finite(x, name: str) -> None:
    """Raise a ValueError when ``x`` (an array, or a scipy sparse matrix) holds NaN or infinite values.

    The message says how many values, in how many rows (spots, cells), and the first rows.
    """
    from scipy import sparse

    if sparse.issparse(x):
        x = sparse.csr_matrix(x)
        bad = ~np.isfinite(x.data)
        if not bad.any():
            return
        rows = np.unique(np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))[bad])
    else:
        x = np.asarray(x)
        bad = ~np.isfinite(x)
        if not bad.any():
            return
        rows = np.unique(np.nonzero(bad.reshape(len(x), -1) if x.ndim else bad)[0])
    raise ValueError(
        f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf) in {len(rows)} row(s), e.g. "
        f"rows {rows[:5].tolist()}."
    )


def check_labelled(labels, column: str, items: str) -> None:
    """Raise when ``labels`` (a column of ``.obs``) has missing values: every ``items`` needs its label."""
    missing = int(labels.isna().sum())
    if missing:
        raise ValueError(f"{missing} of {len(labels)} {items} have no label in {column}; label or drop them.")


def is_pil_image(value) -> bool:
    """Whether ``value`` is a PIL image (without importing PIL when it is not loaded)."""
    import sys

    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(value, pil.Image)
