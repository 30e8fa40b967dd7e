"""Saving an alignment, and a re-alignment with other settings, into the zarr store a SpatialData was read from."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import spatialdata as sd
from spatialdata.transformations import get_transformation

import loki as lk
from loki._keys import Key

_FAST = {"use": None, "mirror": False, "n_rotations": 1, "max_iter": 20}
_XY = ("x", "y")


def _quiet(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)  # the fast settings stop at max_iter
        return call(*args, **kwargs)


def _placements(sdata) -> dict:
    return {
        name: {
            cs: np.asarray(t.to_affine_matrix(_XY, _XY))
            for cs, t in get_transformation(element, get_all=True).items()
        }
        for _, name, element in sdata.gen_spatial_elements()
    }


def _assert_stored(sdata) -> None:
    """The store holds what ``sdata`` holds in memory: tables' results, shapes, transformations."""
    back = sd.read_zarr(sdata.path)
    assert sorted(back.shapes) == sorted(sdata.shapes)
    for name, table in sdata.tables.items():
        for key, value in table.obsm.items():
            np.testing.assert_allclose(back.tables[name].obsm[key], value, err_msg=f"{name} {key}")
        if Key.ALIGNED in table.uns.get(Key.UNS, {}):
            entry, stored = table.uns[Key.UNS][Key.ALIGNED], back.tables[name].uns[Key.UNS][Key.ALIGNED]
            assert (stored["method"], stored["z"] if "z" in entry else None) == (
                entry["method"],
                entry.get("z"),
            )
            np.testing.assert_allclose(stored["matrix"], entry["matrix"])
    for name, shapes in sdata.shapes.items():
        np.testing.assert_allclose(back.shapes[name].geometry.x, shapes.geometry.x, err_msg=name)
    ours, theirs = _placements(sdata), _placements(back)
    assert ours.keys() == theirs.keys()
    for name, systems in ours.items():
        assert systems.keys() == theirs[name].keys(), name
        for cs, matrix in systems.items():
            np.testing.assert_allclose(theirs[name][cs], matrix, err_msg=f"{name} {cs}")


def _save_as_documented(sdata, source: str) -> None:
    """The calls of lk.tl.align's Notes, word for word but for the source."""
    names = [source, sdata.tables[source].uns["loki"]["spatial_aligned"]["shapes"]]
    stored = [path.split("/")[-1] for path in sdata.elements_paths_on_disk()]
    sdata.delete_element_from_disk([name for name in names if name in stored])
    sdata.write_element(names)
    sdata.write_transformations()


def test_the_documented_calls_save_an_alignment_and_a_realignment_into_the_store(tmp_path):
    lk.datasets.mob(("MOB1", "MOB2")).write(tmp_path / "mob.zarr")
    sdata = sd.read_zarr(tmp_path / "mob.zarr")
    _quiet(lk.tl.align, sdata, source="MOB2", target="MOB1", method="rigid", **_FAST)
    _save_as_documented(sdata, "MOB2")  # the shapes are new to the store, the table is not
    _assert_stored(sdata)
    # read again, aligned again with other settings: every element it writes is in the store now
    sdata = sd.read_zarr(tmp_path / "mob.zarr")
    _quiet(lk.tl.align, sdata, source="MOB2", target="MOB1", method="affine", **_FAST)
    _save_as_documented(sdata, "MOB2")
    _assert_stored(sdata)
    assert sd.read_zarr(tmp_path / "mob.zarr").tables["MOB2"].uns["loki"][Key.ALIGNED]["method"] == "affine"


def _logged_calls(caplog) -> str:
    """The calls of loki's INFO log on saving, as Python statements."""
    messages = [r.getMessage() for r in caplog.records if "to save it into the zarr store" in r.getMessage()]
    assert len(messages) == 1, messages
    return re.search(r"it was read from: (.*) \(spatialdata refuses", messages[0]).group(1)


@pytest.mark.parametrize("stack", [False, True])
def test_the_logged_calls_save_a_realignment_into_the_store(tmp_path, caplog, stack):
    """The INFO log after aligning a stored SpatialData gives calls that save the result there."""
    lk.datasets.mob(("MOB1", "MOB2")).write(tmp_path / "mob.zarr")
    # a stack rewrites its target's table too
    names = ["MOB1", "MOB2", "MOB2_spots_aligned"] if stack else ["MOB2", "MOB2_spots_aligned"]
    for method, stored in (("rigid", names[:-1]), ("affine", names)):  # a first alignment, then a re-run
        sdata = sd.read_zarr(tmp_path / "mob.zarr")
        caplog.clear()
        with caplog.at_level("INFO", logger="loki"):
            if stack:
                _quiet(lk.tl.align_sections, sdata, target="MOB1", method=method, progress=False, **_FAST)
            else:
                _quiet(lk.tl.align, sdata, source="MOB2", target="MOB1", method=method, **_FAST)
        calls = _logged_calls(caplog)
        assert calls == (
            f"sdata.delete_element_from_disk({stored!r}); sdata.write_element({names!r}); "
            "sdata.write_transformations()"
        )
        exec(calls, {"sdata": sdata})
        _assert_stored(sdata)


def test_no_saving_log_for_a_spatialdata_in_memory(caplog):
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    with caplog.at_level("INFO", logger="loki"):
        _quiet(lk.tl.align, sdata, source="MOB2", target="MOB1", method="rigid", **_FAST)
    assert not [r for r in caplog.records if "zarr store" in r.getMessage()]


def test_a_separate_stored_target_is_told_to_save_its_transformations(tmp_path, caplog):
    lk.datasets.mob(("MOB1",)).write(tmp_path / "target.zarr")
    target = sd.read_zarr(tmp_path / "target.zarr")
    source = lk.datasets.mob(("MOB2",))
    with caplog.at_level("INFO", logger="loki"):
        _quiet(lk.tl.align, source, target=target, method="rigid", **_FAST)
    assert _logged_calls(caplog) == "sdata.write_transformations()"
    target.write_transformations()
    _assert_stored(target)
