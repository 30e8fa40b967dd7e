"""``lk.tl.align(..., inplace=False)``: the in-place call's result, returned, with nothing written."""

from __future__ import annotations

import logging
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from spatialdata.transformations import Scale, get_transformation, set_transformation

import loki as lk
from loki._keys import Key

# one start, no mirror: the sections are mounted alike and the tests take seconds
_FAST = {"use": None, "mirror": False, "n_rotations": 1, "seed": 3}
_XY = ("x", "y")


def _tables(*tables) -> list:
    return [
        (sorted(t.obsm.keys()), sorted(t.uns.keys()), sorted(t.uns.get(Key.UNS, {}).keys())) for t in tables
    ]


def _state(sdata) -> dict:
    """Element names, the tables' .obsm / .uns keys and every element's transformations (as matrices)."""
    return {
        "elements": sorted(name for _, name, _ in sdata.gen_elements()),
        "tables": _tables(*sdata.tables.values()),
        "transformations": {
            name: {
                cs: t.to_affine_matrix(_XY, _XY).tolist()
                for cs, t in get_transformation(el, get_all=True).items()
            }
            for _, name, el in sdata.gen_spatial_elements()
        },
    }


def _assert_same_record(returned: dict, written: dict) -> None:
    """The returned ``record`` is the written ``.uns`` entry (stage timings aside)."""
    assert returned.keys() == written.keys()
    for key, value in returned.items():
        if isinstance(value, dict):
            _assert_same_record(value, written[key])
        elif isinstance(value, pd.DataFrame):
            drop = [c for c in ("seconds",) if c in value]
            pd.testing.assert_frame_equal(value.drop(columns=drop), written[key].drop(columns=drop))
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, written[key], equal_nan=True), key
        else:
            assert value == written[key] or (value != value and written[key] != written[key]), key


def _placed(sdata, name: str, cs: str = Key.ALIGNED_CS) -> np.ndarray:
    """The Affine that align appended to ``name``'s transformation into ``cs``."""
    return get_transformation(sdata[name], cs).transformations[-1].matrix


def _writes_logged(caplog) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.getMessage().startswith(("added", "set transformation"))
    ]


def test_spatialdata_returns_what_it_would_write_and_writes_nothing(caplog):
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    before = _state(sdata)
    with caplog.at_level(logging.INFO, logger="loki"):
        out = lk.tl.align(sdata, source="MOB2", target="MOB1", method="deformable", inplace=False, **_FAST)
    assert _state(sdata) == before
    assert not _writes_logged(caplog)
    assert isinstance(out, lk.tl.Alignment)
    assert out._fields == ("coords", "transformation", "record")
    assert out.coords.shape == (sdata.tables["MOB2"].n_obs, 2)
    assert out.transformation.shape == (3, 3)

    with caplog.at_level(logging.INFO, logger="loki"):
        assert lk.tl.align(sdata, source="MOB2", target="MOB1", method="deformable", **_FAST) is None
    assert _writes_logged(caplog)  # the in-place call logs each write
    table = sdata.tables["MOB2"]
    assert np.array_equal(out.coords, table.obsm[Key.ALIGNED])
    _assert_same_record(out.record, table.uns[Key.UNS][Key.ALIGNED])
    for name in ("MOB2_image", "MOB2_spots"):
        assert np.array_equal(out.transformation, _placed(sdata, name))
    assert out.record["shapes"] in sdata.shapes
    assert out.record["shapes"] not in before["elements"]


def test_second_spatialdata_target_in_another_frame():
    """The target's elements Scale(2) to 'global': the transformation differs from ``matrix``, and
    nothing is written on either object."""
    one, two = lk.datasets.mob("MOB4"), lk.datasets.mob("MOB3")
    for name in ("MOB3_image", "MOB3_spots"):
        set_transformation(two[name], Scale([2.0, 2.0], axes=_XY), to_coordinate_system="global")
    before = (_state(one), _state(two))
    out = lk.tl.align(one, target=two, method="rigid", inplace=False, **_FAST)
    assert isinstance(out, lk.tl.Alignment)
    assert (_state(one), _state(two)) == before
    assert not np.allclose(out.transformation, out.record["matrix"])

    lk.tl.align(one, target=two, method="rigid", **_FAST)
    assert np.array_equal(out.coords, one.tables["MOB4"].obsm[Key.ALIGNED])
    _assert_same_record(out.record, one.tables["MOB4"].uns[Key.UNS][Key.ALIGNED])
    for name in ("MOB4_image", "MOB4_spots"):
        assert np.array_equal(out.transformation, _placed(one, name))


def _log_expr(adata) -> np.ndarray:
    x = adata.X.tocsr().astype(np.float64)
    x = sp.diags(1e3 / np.maximum(np.asarray(x.sum(axis=1)).ravel(), 1)) @ x
    x.data = np.log1p(x.data)
    return x.toarray().astype(np.float32)


def test_anndata_with_the_target_moving():
    """A source holding half the target: ``moving="auto"`` moves the target and inverts the motion; the
    returned coordinates and matrix are the source's, as the in-place call writes them."""
    tissue = lk.datasets.synthetic_tissue(n_spots=400, n_genes=40, n_cell_types=4, seed=11)
    xy = tissue.obsm["spatial"]
    half = tissue[xy[:, 0] <= np.median(xy[:, 0])].copy()
    moved, _ = lk.datasets.transform_section(half, rotation_deg=30.0, translation=(5.0, -3.0), seed=5)
    for a in (tissue, moved):
        a.obsm["X_expr"] = _log_expr(a)
    kwargs = {**_FAST, "use": "X_expr", "method": "rigid"}
    before = _tables(moved, tissue)
    out = lk.tl.align(moved, target=tissue, inplace=False, **kwargs)
    assert isinstance(out, lk.tl.Alignment)
    assert _tables(moved, tissue) == before
    assert out.record["moving"] == "target"
    assert np.array_equal(out.transformation, out.record["matrix"])  # no frames for AnnData
    rigid = moved.obsm["spatial"] @ out.transformation[:2, :2].T + out.transformation[:2, 2]
    np.testing.assert_allclose(rigid, out.coords, atol=1e-6)  # the source's motion, not the target's

    written = lk.tl.align(moved, target=tissue, copy=True, **kwargs)
    assert np.array_equal(out.coords, written.obsm[Key.ALIGNED])
    _assert_same_record(out.record, written.uns[Key.UNS][Key.ALIGNED])


def _user_warnings(*args, **kwargs) -> list[str]:
    """The UserWarnings of one ``lk.tl.align`` call."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lk.tl.align(*args, **kwargs)
    return [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def test_what_a_write_would_leave_out_or_replace_is_warned_about_in_place_only():
    """Without the target's image, an in-place call warns that none is placed with it, and a second
    alignment into the same coordinate system that it replaces the first's placement; with
    ``inplace=False`` nothing is placed or replaced, so neither is said."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    del sdata.images["MOB1_image"]
    kwargs = {"source": "MOB2", "target": "MOB1", "method": "rigid", **_FAST}
    no_image = "no image of the target section 'MOB1' found"
    replaces = f"coordinate system {Key.ALIGNED_CS!r} holds the placement of section 'MOB2' by the alignment"

    def said(messages: list[str]) -> list[bool]:
        return [any(text in m for m in messages) for text in (no_image, replaces)]

    assert said(_user_warnings(sdata, inplace=False, **kwargs)) == [False, False]
    assert said(_user_warnings(sdata, **kwargs)) == [True, False]
    again = {**kwargs, "key_added": "spatial_again", "coordinate_system": Key.ALIGNED_CS}
    before = _state(sdata)
    assert said(_user_warnings(sdata, inplace=False, **again)) == [False, False]
    assert _state(sdata) == before
    assert said(_user_warnings(sdata, **again)) == [True, True]


def test_backed_spatialdata_store_is_left_alone(tmp_path):
    import spatialdata as sd

    path = tmp_path / "mob.zarr"
    lk.datasets.mob(("MOB1", "MOB2")).write(path)

    def files() -> dict:
        return {
            os.path.relpath(os.path.join(d, f), path): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, names in os.walk(path)
            for f in names
        }

    on_disk = files()
    sdata = sd.read_zarr(path)
    before = _state(sdata)
    lk.tl.align(sdata, source="MOB2", target="MOB1", method="rigid", inplace=False, **_FAST)
    assert _state(sdata) == before
    assert files() == on_disk


def test_validation_comes_first_and_copy_with_inplace_false_is_refused():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    adata = sdata.tables["MOB2"].copy()
    before = _state(sdata)
    with pytest.raises(ValueError, match="copy=True writes into a copy and inplace=False writes nothing"):
        lk.tl.align(adata, target=sdata.tables["MOB1"], copy=True, inplace=False, **_FAST)
    with pytest.raises(ValueError, match="copy=True writes into a copy and inplace=False writes nothing"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", copy=True, inplace=False, **_FAST)
    with pytest.raises(KeyError, match="MOB9"):
        lk.tl.align(sdata, source="MOB9", target="MOB1", inplace=False, **_FAST)
    with pytest.raises(KeyError, match="nowhere"):
        lk.tl.align(
            sdata, source="MOB2", target="MOB1", input_coordinate_system="nowhere", inplace=False, **_FAST
        )
    with pytest.raises(ValueError, match="method must be"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", method="bogus", inplace=False, **_FAST)
    with pytest.raises(ValueError, match="nor inplace=False"):
        lk.tl.align_sections(sdata, target="MOB1", inplace=False, **_FAST)
    assert _state(sdata) == before
    assert Key.ALIGNED not in adata.obsm
