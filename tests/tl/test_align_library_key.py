"""``lk.tl.align_sections(adata, library_key=...)``: serial sections kept in one AnnData, as squidpy takes them."""

from __future__ import annotations

import re
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import loki as lk
from loki._keys import Key
from loki.tl import _align

# the sections share barcodes, as after anndata.concat without index_unique: rows are found by label
pytestmark = pytest.mark.filterwarnings("ignore:Observation names are not unique")

# one start, no mirror, few iterations: these tests are about where the results go, not about the fit
_FAST = {"method": "rigid", "mirror": False, "n_rotations": 1, "max_iter": 20, "seed": 0, "progress": False}


def _stack(data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)  # the fast settings stop at max_iter
        return lk.tl.align_sections(data, **{**_FAST, **kwargs})


@pytest.fixture(scope="module")
def joined():
    """Three bundled MOB sections in one AnnData (each row in its own section's frame), one PCA on all."""
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the sections share barcodes: obs_names repeat
        adata = ad.concat(dict(sdata.tables), label="library_id")
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=10, random_state=0)
    for name, table in sdata.tables.items():  # concat keeps each section's own coordinates
        np.testing.assert_array_equal(
            adata[adata.obs["library_id"] == name].obsm[Key.SPATIAL], table.obsm[Key.SPATIAL]
        )
    return adata


def _state(adata: ad.AnnData) -> tuple:
    """What a call may change: the .obs columns, the .obsm arrays, the .uns keys and loki's records."""
    obsm = {k: np.array(v, copy=True) for k, v in adata.obsm.items()}
    return list(adata.obs.columns), obsm, sorted(adata.uns), dict(adata.uns.get(Key.UNS, {}))


def _assert_unchanged(adata: ad.AnnData, before: tuple) -> None:
    columns, obsm, uns, records = before
    assert list(adata.obs.columns) == columns
    assert list(adata.obsm.keys()) == list(obsm)
    for k, v in obsm.items():
        np.testing.assert_array_equal(adata.obsm[k], v)
    assert sorted(adata.uns) == uns
    now = adata.uns.get(Key.UNS, {})
    assert list(now) == list(records)
    assert all(now[k] is records[k] for k in records)


@pytest.mark.parametrize(
    ("column", "order", "target", "sequential"),
    [
        # a categorical column: its categories' order, not the rows'
        ("categorical", ["MOB3", "MOB1", "MOB2"], "MOB1", False),
        # a string column: the order in which the values first appear (rows of MOB2 first)
        ("string", ["MOB2", "MOB1", "MOB3"], "MOB2", True),
    ],
)
def test_library_key_aligns_the_sections_as_a_dict_of_their_copies(joined, column, order, target, sequential):
    adata = joined.copy()
    if column == "categorical":
        adata.obs["library_id"] = adata.obs["library_id"].cat.reorder_categories(order)
    else:
        first = adata.obs["library_id"].astype(str).map({"MOB2": 0, "MOB1": 1, "MOB3": 2}).to_numpy()
        adata = adata[np.argsort(first, kind="stable")].copy()
        adata.obs["library_id"] = adata.obs["library_id"].astype(str)
    split = {k: adata[(adata.obs["library_id"] == k).to_numpy()].copy() for k in order}

    results = _stack(adata, library_key="library_id", target=target, use="X_pca", sequential=sequential)
    expected = _stack(split, target=target, use="X_pca", sequential=sequential)

    assert list(results) == list(expected)
    aligned = adata.obsm[Key.ALIGNED]
    assert aligned.shape == (adata.n_obs, 2)
    for k, section in split.items():
        rows = (adata.obs["library_id"] == k).to_numpy()
        np.testing.assert_array_equal(aligned[rows], section.obsm[Key.ALIGNED])  # bit-identical
        mine, theirs = results[k], section.uns[Key.UNS][Key.ALIGNED]
        np.testing.assert_array_equal(mine["matrix"], theirs["matrix"])
        assert (mine["z"], mine["target"], mine.get("reference")) == (
            order.index(k),
            theirs["target"],
            theirs.get("reference"),
        )
    target_rows = (adata.obs["library_id"] == target).to_numpy()
    np.testing.assert_array_equal(aligned[target_rows], adata.obsm[Key.SPATIAL][target_rows])
    record = adata.uns[Key.UNS][Key.ALIGNED]
    assert {k: record[k] for k in ("library_key", "target", "sequential")} == {
        "library_key": "library_id",
        "target": target,
        "sequential": sequential,
    }
    assert all(record["sections"][k] is results[k] for k in order)
    if sequential:  # each section onto its aligned neighbour towards the target
        assert (results["MOB1"]["reference"], results["MOB3"]["reference"]) == ("MOB2", "MOB1")


def test_sections_picks_and_orders_the_stack_and_a_rerun_replaces_it(joined, tmp_path):
    adata = joined.copy()
    _stack(adata, library_key="library_id", target="MOB2", sections=["MOB2", "MOB1"], use="X_pca")
    left_out = (adata.obs["library_id"] == "MOB3").to_numpy()
    assert np.isnan(adata.obsm[Key.ALIGNED][left_out]).all()
    assert np.isfinite(adata.obsm[Key.ALIGNED][~left_out]).all()
    record = adata.uns[Key.UNS][Key.ALIGNED]
    assert {k: v["z"] for k, v in record["sections"].items()} == {"MOB2": 0, "MOB1": 1}
    results = _stack(adata, library_key="library_id", target="MOB1", use="X_pca")  # its own record: replaced
    assert sorted(adata.uns[Key.UNS][Key.ALIGNED]["sections"]) == sorted(results) == ["MOB1", "MOB2", "MOB3"]
    assert np.isfinite(adata.obsm[Key.ALIGNED]).all()
    adata.write_h5ad(tmp_path / "stack.h5ad")  # the record is of writeable types
    back = ad.read_h5ad(tmp_path / "stack.h5ad")
    np.testing.assert_array_equal(
        back.uns[Key.UNS][Key.ALIGNED]["sections"]["MOB3"]["matrix"], results["MOB3"]["matrix"]
    )


def _left_out_warnings(adata, **kwargs) -> tuple[dict, list]:
    """Stack (the fast settings) and return its results and the warnings about sections left out."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = lk.tl.align_sections(
            adata, **{**_FAST, "library_key": "library_id", "use": "X_pca", **kwargs}
        )
    return results, [w for w in caught if "left out of this stack" in str(w.message)]


def test_a_rerun_on_some_sections_keeps_the_others_aligned_onto_its_target(joined, tmp_path):
    """A rerun on some sections set the aligned rows of the others to NaN, also when an earlier stack
    had aligned them onto the same target."""
    adata = joined.copy()
    first, told = _left_out_warnings(adata, target="MOB1")
    before = adata.obsm[Key.ALIGNED].copy()
    mob2, mob3 = ((adata.obs["library_id"] == k).to_numpy() for k in ("MOB2", "MOB3"))
    again, told = _left_out_warnings(adata, target="MOB1", sections=["MOB1", "MOB2"], max_iter=5)
    assert told == []
    aligned = adata.obsm[Key.ALIGNED]
    np.testing.assert_array_equal(aligned[mob3], before[mob3])  # as the first stack aligned them
    assert not np.array_equal(aligned[mob2], before[mob2])  # realigned, with fewer iterations
    record = adata.uns[Key.UNS][Key.ALIGNED]
    assert record["kept"] == ["MOB3"]
    assert list(record["sections"]) == ["MOB1", "MOB2", "MOB3"]
    assert record["sections"]["MOB3"] is first["MOB3"]
    assert record["sections"]["MOB2"] is again["MOB2"]
    adata.write_h5ad(tmp_path / "stack.h5ad")
    assert list(ad.read_h5ad(tmp_path / "stack.h5ad").uns[Key.UNS][Key.ALIGNED]["kept"]) == ["MOB3"]


def test_a_rerun_onto_another_target_warns_naming_the_sections_whose_rows_it_empties(joined):
    """A rerun onto another target set the aligned rows of the sections left out to NaN, without a word."""
    adata = joined.copy()
    _left_out_warnings(adata, target="MOB1")
    mob3 = (adata.obs["library_id"] == "MOB3").to_numpy()
    _, told = _left_out_warnings(adata, target="MOB2", sections=["MOB2", "MOB1"])
    assert [w.filename for w in told] == [__file__]
    assert re.search(
        r"^lk\.tl\.align_sections: sections \['MOB3'\], left out of this stack, held aligned coordinates in "
        r"\.obsm\['spatial_aligned'\] that were not aligned onto 'MOB2' .*\(the record they came with: a "
        r"stack of adata\.obs\['library_id'\] onto 'MOB1'\); their rows are now NaN\.",
        str(told[0].message),
    )
    assert np.isnan(adata.obsm[Key.ALIGNED][mob3]).all()  # they lie in MOB1's frame
    assert np.isfinite(adata.obsm[Key.ALIGNED][~mob3]).all()
    record = adata.uns[Key.UNS][Key.ALIGNED]
    assert (record["kept"], sorted(record["sections"])) == ([], ["MOB1", "MOB2"])
    # rows already NaN have nothing to lose: a rerun on the same sections says nothing
    _, told = _left_out_warnings(adata, target="MOB2", sections=["MOB2", "MOB1"])
    assert told == []


def _with_nan(adata):
    adata.obs["library_id"] = adata.obs["library_id"].astype(object)
    adata.obs.iloc[[0, 5, 9], adata.obs.columns.get_loc("library_id")] = np.nan
    return {"target": "MOB1"}


def _two_spots(adata):
    column = adata.obs["library_id"].astype(str).to_numpy()
    column[np.flatnonzero(column == "MOB3")[2:]] = "MOB2"
    adata.obs["library_id"] = pd.Categorical(column)
    return {"target": "MOB1"}


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (_with_nan, ValueError, r"adata\.obs\['library_id'\] labels no section for 3 of 1224 rows \(NaN\)"),
        (
            lambda a: {"target": "MOB4"},
            KeyError,
            r"'MOB4' not found in adata\.obs\['library_id'\]; available: 'MOB1', 'MOB2', 'MOB3'",
        ),
        (
            lambda a: {"target": "MOB3", "sections": ["MOB1", "MOB2"]},
            KeyError,
            r"'MOB3' not found in sections; available: 'MOB1', 'MOB2'",
        ),
        (
            lambda a: {"target": "MOB1", "sections": ["MOB1", "MOB5"]},
            KeyError,
            r"'MOB5' not found in adata\.obs\['library_id'\]",
        ),
        (lambda a: {"target": 0}, TypeError, r"target must be a label of adata\.obs\['library_id'\]"),
        (
            lambda a: {"target": "MOB1", "library_key": "slide"},
            KeyError,
            r"'slide' not found in adata\.obs; available: .*'library_id'",
        ),
        (_two_spots, ValueError, r"The 'MOB3' section has 2 spot\(s\); alignment needs at least 3"),
        # written in place, as every stack is
        (lambda a: {"target": "MOB1", "copy": True}, ValueError, r"copy=True is not supported"),
    ],
)
def test_a_failing_call_writes_nothing(joined, make, error, match):
    adata = joined.copy()
    kwargs = {"library_key": "library_id", "use": "X_pca", **make(adata)}
    before = _state(adata)
    with pytest.raises(error, match=match):
        _stack(adata, **kwargs)
    _assert_unchanged(adata, before)


def test_a_failure_while_writing_the_anndata_puts_it_back(joined, monkeypatch):
    adata = joined.copy()
    _stack(adata, library_key="library_id", target="MOB2", sections=["MOB2", "MOB1"], use="X_pca")
    write_uns = _align.write_uns

    def fail_on_the_joined(table, key, value):
        if table is adata:
            raise RuntimeError("disk full")
        write_uns(table, key, value)

    monkeypatch.setattr(_align, "write_uns", fail_on_the_joined)
    before = _state(adata)
    with pytest.raises(RuntimeError, match="disk full"):
        _stack(adata, library_key="library_id", target="MOB1", use="X_pca")
    _assert_unchanged(adata, before)  # the .obsm written just before is put back as it was


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (lambda a: lk.datasets.mob(("MOB1", "MOB2")), r"got a SpatialData \(its tables are the sections\)"),
        (
            lambda a: [a, a],
            r"got a list\. Give a SpatialData, a dict or a list of sections without library_key",
        ),
    ],
)
def test_library_key_takes_one_anndata_only(joined, data, match):
    with pytest.raises(TypeError, match=rf"library_key= names the \.obs column .*{match}"):
        _stack(data(joined), library_key="library_id", target="MOB1", use=None)


def test_one_anndata_without_library_key_is_told_to_name_the_column(joined):
    adata = joined.copy()
    before = _state(adata)
    with pytest.raises(TypeError, match=r"got one AnnData\. .*pass library_key='library_id'"):
        _stack(adata, target="MOB1", use=None)
    _assert_unchanged(adata, before)
