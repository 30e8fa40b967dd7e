"""loki's warnings are ``lk.LokiWarning``: a UserWarning that users filter by category."""

from __future__ import annotations

import ast
import pathlib
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import loki as lk


def _map_an_unknown_id() -> None:
    """A loki call that warns: one of the two gene ids has no symbol."""
    adata = ad.AnnData(np.ones((2, 2), dtype="f4"), var=pd.DataFrame(index=["ENSMUSG01", "ENSMUSG02"]))
    lk.pp.map_gene_ids(adata, {"ENSMUSG01": "Snap25"})


def test_a_loki_warning_is_a_loki_warning_that_users_filter_by_category():
    assert issubclass(lk.LokiWarning, UserWarning)  # pytest.warns(UserWarning) still catches it
    with pytest.warns(lk.LokiWarning, match="1 of 2 gene ids have no symbol") as record:
        _map_an_unknown_id()
    assert [w.filename for w in record] == [__file__]  # the user's line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=lk.LokiWarning)
        _map_an_unknown_id()
        warnings.warn("another library's warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another library's warning"]  # loki's alone are silenced


def test_every_warning_of_loki_is_a_loki_warning():
    """Each ``warnings.warn`` call in src/loki names LokiWarning as its category."""
    src = pathlib.Path(lk.__file__).parent
    wrong = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "warn"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "warnings"
            ):
                category = node.args[1] if len(node.args) > 1 else None
                category = next((k.value for k in node.keywords if k.arg == "category"), category)
                if not (isinstance(category, ast.Name) and category.id == "LokiWarning"):
                    wrong.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not wrong, f"warnings.warn without LokiWarning: {wrong}"
