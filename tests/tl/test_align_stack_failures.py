"""align_sections writes a stack whole or not at all: a section that fails leaves every section as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from spatialdata.transformations import Scale, Sequence, get_transformation, set_transformation

import loki as lk
import loki.tl._align as align_module
from loki._keys import Key

_FAST = {"use": None, "method": "rigid", "mirror": False, "n_rotations": 1}
_SECTIONS = ("MOB1", "MOB2", "MOB3", "MOB4")


def _canon(value):
    """A comparable form of an .obsm / .uns value (arrays, tables and dicts by content)."""
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, pd.DataFrame):
        return value.to_json()
    if isinstance(value, np.ndarray):
        return (value.shape, value.tobytes())
    return repr(value)


def _state(sdata) -> dict:
    """What a stack may change: the tables' .obsm / .uns['loki'], the shapes, every transformation."""
    return {
        "obsm": {name: _canon(dict(table.obsm)) for name, table in sdata.tables.items()},
        "uns": {name: _canon(table.uns.get(Key.UNS, "absent")) for name, table in sdata.tables.items()},
        "shapes": {name: id(element) for name, element in sdata.shapes.items()},
        "transformations": {
            name: {
                cs: t.to_affine_matrix(("x", "y"), ("x", "y")).tolist()
                for cs, t in get_transformation(element, get_all=True).items()
            }
            for _, name, element in sdata.gen_spatial_elements()
        },
    }


def _ids_renamed(sdata, section: str) -> None:
    """The table's instance ids name no circle of its spots: only the section's own shapes tell."""
    table = sdata.tables[section]
    instance_key = table.uns["spatialdata_attrs"]["instance_key"]
    table.obs[instance_key] = table.obs[instance_key].astype(str) + "_x"


def _global_positions_in_table(sdata, section: str) -> None:
    """The table holds its spots' 'global' positions while the shapes have a Scale(2) to 'global'."""
    for name in (f"{section}_spots", f"{section}_image"):
        placed = Sequence([get_transformation(sdata[name], "global"), Scale([2, 2], axes=("x", "y"))])
        set_transformation(sdata[name], placed, "global")
    sdata.tables[section].obsm["spatial"] = sdata.tables[section].obsm["spatial"] * 2


@pytest.mark.parametrize(
    ("break_mob4", "match"),
    [
        (_ids_renamed, r"no shape in sdata.shapes\['MOB4_spots'\]"),
        (_global_positions_in_table, r"The source table 'MOB4' holds its spots' positions in 'global'"),
    ],
)
def test_a_section_refused_by_its_own_alignment_is_refused_before_the_stack_writes(break_mob4, match):
    """MOB4's table or shapes are refused by align itself: MOB2 and MOB3, aligned first, stay untouched."""
    sdata = lk.datasets.mob(_SECTIONS)
    break_mob4(sdata, "MOB4")
    before = _state(sdata)
    with pytest.raises(ValueError, match=match):
        lk.tl.align_sections(sdata, target="MOB1", progress=False, **_FAST)
    assert _state(sdata) == before


def test_a_stack_onto_an_aligned_section_that_is_refused_keeps_its_placement():
    """MOB2 was aligned onto MOB1; a stack onto MOB2 refused for MOB4 leaves MOB2 placed, as recorded."""
    sdata = lk.datasets.mob(_SECTIONS)
    lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    _ids_renamed(sdata, "MOB4")
    before = _state(sdata)
    with pytest.raises(ValueError, match=r"no shape in sdata.shapes\['MOB4_spots'\]"):
        lk.tl.align_sections(sdata, target="MOB2", progress=False, **_FAST)
    assert _state(sdata) == before


def _fail_third_alignment(monkeypatch):
    calls = []

    def cpd_align(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("the sections no longer overlap")
        return cpd_align_before(*args, **kwargs)

    cpd_align_before = align_module.cpd_align
    monkeypatch.setattr(align_module, "cpd_align", cpd_align)


def _fail_after_replacing_the_target(monkeypatch):
    def replace_stack_target(*args, **kwargs):
        replace_before(*args, **kwargs)  # removes the target's aligned shapes of the first stack
        raise RuntimeError("the sections no longer overlap")

    replace_before = align_module.replace_stack_target
    monkeypatch.setattr(align_module, "replace_stack_target", replace_stack_target)


@pytest.mark.parametrize("fail", [_fail_third_alignment, _fail_after_replacing_the_target])
@pytest.mark.parametrize("sequential", [False, True])
def test_a_stack_failing_at_run_time_is_put_back(monkeypatch, fail, sequential):
    """A restack onto MOB2 (a source of the first stack) fails after writing: everything is put back,
    the first stack's records, shapes and placements included."""
    sdata = lk.datasets.mob(_SECTIONS)
    lk.tl.align_sections(sdata, target="MOB1", progress=False, **_FAST)
    before = _state(sdata)
    fail(monkeypatch)
    with pytest.raises(RuntimeError, match="no longer overlap") as info:
        lk.tl.align_sections(sdata, target="MOB2", sequential=sequential, progress=False, **_FAST)
    assert _state(sdata) == before
    assert "every section of the stack was put back as it was before the call" in "".join(
        info.value.__notes__
    )


def test_a_failing_stack_of_anndata_sections_is_put_back(monkeypatch):
    """A list of AnnData sections: the two written before the failure are put back."""
    tissue = lk.datasets.synthetic_tissue(n_spots=300, n_genes=30, n_cell_types=4, seed=3)
    stack = [tissue] + [
        lk.datasets.transform_section(tissue, rotation_deg=r, seed=i)[0] for i, r in enumerate((5, 10, 15))
    ]
    before = [(_canon(dict(s.obsm)), _canon(s.uns.get(Key.UNS, "absent"))) for s in stack]
    _fail_third_alignment(monkeypatch)
    with pytest.raises(RuntimeError, match="no longer overlap"):
        lk.tl.align_sections(stack, target=0, progress=False, **_FAST)
    assert [(_canon(dict(s.obsm)), _canon(s.uns.get(Key.UNS, "absent"))) for s in stack] == before


def _fail_at(monkeypatch, name: str, module=align_module, call: int = 1):
    """Make the ``call``-th call of ``module.name`` (a write of the alignment) raise."""
    calls = []
    before_fn = getattr(module, name)

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise RuntimeError("interrupted while writing")
        return before_fn(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


@pytest.mark.parametrize("aligned_before", [False, True])
@pytest.mark.parametrize(
    "fail",
    [
        # the record, after the shapes, the transformations and the coordinates were written
        lambda mp: _fail_at(mp, "write_uns"),
        # the second transformation set, after the shapes and the first transformation
        lambda mp: _fail_at(
            mp, "set_transformation", module=__import__("spatialdata").transformations, call=2
        ),
    ],
    ids=["record", "transformation"],
)
def test_one_alignment_failing_while_it_writes_is_put_back(monkeypatch, fail, aligned_before):
    """align wrote the aligned shapes, the transformations and .obsm before a failure and left them there
    (align_sections put its stacks back, a single alignment did not); an earlier alignment comes back."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    if aligned_before:
        lk.tl.align(sdata, source="MOB2", target="MOB1", **{**_FAST, "mirror": True})
    before = _state(sdata)
    fail(monkeypatch)
    with pytest.raises(RuntimeError, match="interrupted while writing"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", **_FAST)
    assert _state(sdata) == before


def test_an_anndata_alignment_failing_while_it_writes_is_put_back(monkeypatch):
    tissue = lk.datasets.synthetic_tissue(n_spots=300, n_genes=30, n_cell_types=4, seed=3)
    moved = lk.datasets.transform_section(tissue, rotation_deg=10, seed=0)[0]
    before = (_canon(dict(moved.obsm)), _canon(moved.uns.get(Key.UNS, "absent")))
    _fail_at(monkeypatch, "write_uns")
    with pytest.raises(RuntimeError, match="interrupted while writing"):
        lk.tl.align(moved, target=tissue, **_FAST)
    assert (_canon(dict(moved.obsm)), _canon(moved.uns.get(Key.UNS, "absent"))) == before
