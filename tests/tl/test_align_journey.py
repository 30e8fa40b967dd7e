"""A user's walk through ``lk.tl.align``: sections outside ``"global"``, realignment, composition."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from spatialdata.transformations import get_transformation, set_transformation

import loki as lk
from loki._keys import Key

# one start, no mirror: the sections are mounted alike and each alignment takes seconds
_FAST = {"use": None, "mirror": False, "n_rotations": 1, "seed": 3, "method": "rigid"}
_XY = ("x", "y")


def _into(sdata, cs: str | dict, sections=None) -> None:
    """Move the elements of ``sections`` (all by default) from ``"global"`` into ``cs`` (or several)."""
    for _, name, element in list(sdata.gen_spatial_elements()):
        if sections is None or name.split("_")[0] in sections:
            placed = get_transformation(element, Key.GLOBAL_CS)
            systems = [cs] if isinstance(cs, str) else list(cs)
            set_transformation(element, dict.fromkeys(systems, placed), set_all=True)


def _matrix(sdata, name: str, cs: str = Key.ALIGNED_CS) -> np.ndarray:
    return np.asarray(get_transformation(sdata[name], cs).to_affine_matrix(_XY, _XY))


def _align(sdata, **kwargs) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)  # the fast settings stop at max_iter
        lk.tl.align(sdata, source="MOB2", target="MOB1", **{**_FAST, **kwargs})
    return sdata.tables["MOB2"].uns[Key.UNS][kwargs.get("key_added", Key.ALIGNED)]


@pytest.fixture(scope="module")
def in_global():
    """MOB2 aligned onto MOB1 with every element in ``"global"``, as loki's readers place them."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _align(sdata)
    return sdata


def _same_placement(sdata, reference) -> None:
    for name in ("MOB2_image", "MOB2_spots", "MOB1_image", "MOB1_spots", "MOB2_spots_aligned"):
        np.testing.assert_allclose(_matrix(sdata, name), _matrix(reference, name), atol=1e-9, err_msg=name)
    np.testing.assert_allclose(
        sdata.tables["MOB2"].obsm[Key.ALIGNED], reference.tables["MOB2"].obsm[Key.ALIGNED], atol=1e-9
    )


def test_a_section_read_into_its_own_coordinate_system_is_aligned_there(in_global):
    """``read_visium(..., coordinate_system="sample1")``: no input_coordinate_system= needed."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _into(sdata, "sample1")
    record = _align(sdata)
    assert record["params"]["input_coordinate_system"] == "sample1"
    assert "target_input_coordinate_system" not in record["params"]
    _same_placement(sdata, in_global)
    # inplace=False resolves it alike
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)
        out = lk.tl.align(
            sdata, source="MOB2", target="MOB1", key_added="spatial_again", inplace=False, **_FAST
        )
    assert out.record["params"]["input_coordinate_system"] == "sample1"


def test_source_and_target_each_in_their_own_coordinate_system(in_global):
    """Sections of one object read into systems named after each dataset (spatialdata-io's way)."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _into(sdata, "sample_a", ["MOB1"])
    _into(sdata, "sample_b", ["MOB2"])
    record = _align(sdata)
    assert record["params"]["input_coordinate_system"] == "sample_b"
    assert record["params"]["target_input_coordinate_system"] == "sample_a"
    _same_placement(sdata, in_global)


def test_two_objects_each_in_their_own_coordinate_system(in_global):
    source, target = lk.datasets.mob("MOB2"), lk.datasets.mob("MOB1")
    _into(source, "sample_b")
    _into(target, "sample_a")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)
        lk.tl.align(source, target=target, **_FAST)
    np.testing.assert_allclose(_matrix(source, "MOB2_image"), _matrix(in_global, "MOB2_image"), atol=1e-9)
    np.testing.assert_allclose(_matrix(target, "MOB1_image"), _matrix(in_global, "MOB1_image"), atol=1e-9)


def test_realigning_a_section_in_its_own_coordinate_system():
    """After a first alignment its elements are in ``"aligned"`` too: that system is not an input."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _into(sdata, "sample1")
    first = _matrix(sdata, "MOB2_image", "sample1")
    _align(sdata)
    record = _align(sdata, method="affine")  # overwrite
    assert record["method"] == "affine"
    assert record["params"]["input_coordinate_system"] == "sample1"
    np.testing.assert_allclose(_matrix(sdata, "MOB2_image", "sample1"), first)
    # another key: both earlier placements are in 'aligned', recorded on the table
    other = _align(sdata, key_added="spatial_rigid")
    assert other["params"]["input_coordinate_system"] == "sample1"
    assert other["coordinate_system"] == "rigid"


def test_several_shared_coordinate_systems_none_global_are_named():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _into(sdata, ["scan1", "scan2"])
    with pytest.raises(
        KeyError,
        match=r"spots and image share the coordinate systems 'scan1', 'scan2', none of them 'global': "
        "pass input_coordinate_system=",
    ):
        _align(sdata)
    assert Key.ALIGNED not in sdata.tables["MOB2"].obsm
    assert "MOB2_spots_aligned" not in sdata.shapes
    record = _align(sdata, input_coordinate_system="scan2")  # named: used for both
    assert record["params"]["input_coordinate_system"] == "scan2"
    with pytest.raises(
        KeyError,
        match=r"'scan1', 'scan2' \(besides 'aligned', where alignments placed them\), none of them "
        "'global': pass input_coordinate_system=",
    ):
        lk.tl.align_sections(sdata, target="MOB1", key_added="spatial_stack", progress=False, **_FAST)


def test_a_stack_in_its_own_coordinate_system_and_again():
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    _into(sdata, "sample1")
    for sequential in (False, True):  # the second stack finds its sections in 'aligned' too
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", lk.LokiWarning)
            out = lk.tl.align_sections(sdata, target="MOB2", sequential=sequential, progress=False, **_FAST)
        assert sorted(out) == ["MOB1", "MOB2", "MOB3"]
        for name in ("MOB1", "MOB3"):
            assert out[name]["params"]["input_coordinate_system"] == "sample1"
        np.testing.assert_allclose(_matrix(sdata, "MOB2_image"), _matrix(sdata, "MOB2_image", "sample1"))


def test_global_is_used_when_present_beside_other_systems(in_global):
    """Elements in ``"global"`` and another system align in ``"global"``, as before."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _into(sdata, [Key.GLOBAL_CS, "sample1"])
    assert _align(sdata)["params"]["input_coordinate_system"] == Key.GLOBAL_CS
    _same_placement(sdata, in_global)


def test_a_target_table_other_than_the_target_key_is_refused():
    """``target_table=`` is for a separate target SpatialData; beside a key it was silently ignored."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    with pytest.raises(ValueError, match=r"target='MOB1'.*target_table='MOB3'"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", target_table="MOB3", **_FAST)
    assert Key.ALIGNED not in sdata.tables["MOB2"].obsm


def test_after_an_alignment_a_section_keeps_its_own_coordinate_system_elsewhere_in_loki():
    """Aligned, a section read into ``"sample1"`` lies in ``"sample1"`` and ``"aligned"``; the default of
    patches, tiles and plots was then "global", which it is not in ("'global' not found")."""
    import matplotlib

    matplotlib.use("Agg")
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    _into(sdata, "sample1")
    _align(sdata)
    assert set(get_transformation(sdata["MOB2_image"], get_all=True)) == {"sample1", Key.ALIGNED_CS}
    patches = lk.pp.spot_patches(sdata, table_key="MOB2", size=16)
    assert patches.shape[0] == sdata.tables["MOB2"].n_obs
    fig = lk.pl.expression(sdata, "Penk", table_key="MOB2", layer_predicted=None, show=False)
    assert fig.axes[0].collections  # the spots were drawn
    tiles = lk.pp.tile_image(sdata, "MOB2_image", tile_um=400, key_added="MOB2_tiles")
    assert tiles.n_obs > 0
    shapes = sdata.shapes[tiles.uns["spatialdata_attrs"]["region"]]
    assert "sample1" in get_transformation(shapes, get_all=True)
