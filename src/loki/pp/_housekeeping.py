"""Bundled housekeeping gene lists."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

_LISTS = {"hsiao": "hsiao_housekeeping_genes.txt"}


@cache
def housekeeping_genes(name: str = "hsiao") -> tuple[str, ...]:
    """Return a bundled housekeeping gene list.

    Parameters
    ----------
    name
        ``"hsiao"``: the MSigDB set HSIAO_HOUSEKEEPING_GENES (397 human symbols; Hsiao et al. 2001),
        the list the OmiCLIP/Loki embedding scripts remove from gene sentences.

    Returns
    -------
    The gene symbols, in the order of the source file.

    """
    if name not in _LISTS:
        raise ValueError(
            f"Unknown housekeeping list {name!r}; bundled lists: {', '.join(map(repr, _LISTS))}."
        )
    text = files("loki.pp").joinpath("data", _LISTS[name]).read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))
