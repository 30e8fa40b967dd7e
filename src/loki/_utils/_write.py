"""Write results into AnnData containers, logging one line per write."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import pandas as pd

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel


def write_obsm(adata, key: str, value: Any) -> None:
    """Store ``value`` in ``adata.obsm[key]`` and log it; warn of DataFrame columns zarr cannot store."""
    if isinstance(value, pd.DataFrame):
        slashed = [str(c) for c in value.columns if "/" in str(c)]
        if slashed:
            warnings.warn(
                f".obsm[{key!r}] has column names with '/' ({', '.join(map(repr, slashed[:5]))}): h5ad "
                "stores them, zarr (SpatialData.write) cannot. Rename the classes (e.g. "
                "name.replace('/', '-')) to write the result to zarr.",
                LokiWarning,
                stacklevel=user_stacklevel(),
            )
    adata.obsm[key] = value
    logger.info("added .obsm[%r]", key)


def write_obs(adata, key: str, value: Any) -> None:
    """Store ``value`` in ``adata.obs[key]`` and log it."""
    adata.obs[key] = value
    logger.info("added .obs[%r]", key)


def write_layer(adata, key: str, value: Any) -> None:
    """Store ``value`` in ``adata.layers[key]`` and log it."""
    adata.layers[key] = value
    logger.info("added .layers[%r]", key)


def write_uns(adata, key: str, value: dict[str, Any]) -> None:
    """Store ``value`` in ``adata.uns['loki'][key]`` (writeable types only) and log it.

    A tool's record names it first, ``{"tool": "tl.align", ...}``: :func:`check_result_key` keeps
    another tool from writing its result under the same key.
    """
    adata.uns.setdefault(Key.UNS, {})[key] = value
    logger.info("added .uns[%r][%r]", Key.UNS, key)


def loki_uns(adata) -> Mapping[str, Any]:
    """``adata.uns['loki']``, loki's records, or an empty mapping when there is none."""
    records = adata.uns.get(Key.UNS)
    return records if isinstance(records, Mapping) else {}


def loki_record(adata, key: str) -> Mapping[str, Any] | None:
    """The record ``adata.uns['loki'][key]`` a loki tool wrote for its result ``key``, or None."""
    record = loki_uns(adata).get(key)
    return record if isinstance(record, Mapping) else None
