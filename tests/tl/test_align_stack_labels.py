"""How align_sections names the sections of a list or dict: in its results, records and messages."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import loki as lk
from loki._keys import Key

# one start, no mirror, few iterations: these tests are about names, not about the fit
_FAST = {"use": None, "method": "rigid", "mirror": False, "n_rotations": 1, "max_iter": 20, "progress": False}


def _stack(stack, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)  # the fast settings stop at max_iter
        return lk.tl.align_sections(stack, **{**_FAST, **kwargs})


def _entry(section):
    table = section if not hasattr(section, "tables") else next(iter(section.tables.values()))
    return table.uns[Key.UNS][Key.ALIGNED]


@pytest.fixture
def anndatas():
    tissue = lk.datasets.synthetic_tissue(n_spots=200, n_genes=20, n_cell_types=3, seed=3)
    moved = [lk.datasets.transform_section(tissue, rotation_deg=r, seed=i)[0] for i, r in enumerate((5, 9))]
    return [tissue, *moved]


def test_a_list_of_spatialdata_is_labelled_by_its_table_keys():
    """A list of per-section SpatialData was labelled section0, section1, ... though each names its table."""
    sections = [lk.datasets.mob((name,)) for name in ("MOB1", "MOB2", "MOB3")]
    results = _stack(sections, target="MOB1", sequential=True)  # a label as target=, beside a position
    assert sorted(results) == ["MOB1", "MOB2", "MOB3"]
    entries = [_entry(s) for s in sections]
    assert [e["z"] for e in entries] == [0, 1, 2]
    assert [e["target"] for e in entries] == ["MOB1", "MOB1", "MOB2"]  # the target's names itself
    assert [e.get("reference") for e in entries] == [None, "MOB1", "MOB2"]
    assert results["MOB3"] is entries[2]
    # a position still names the target; a failing section is named by its label
    again = [lk.datasets.mob((name,)) for name in ("MOB1", "MOB2", "MOB3")]
    again[2].tables["MOB3"].obsm["spatial"][:] = np.nan
    with pytest.raises(ValueError, match=r"^'MOB3' \.obsm\['spatial'\] contains 876 non-finite"):
        _stack(again, target=0)
    assert all(
        Key.UNS not in s.tables[k].uns or Key.ALIGNED not in s.tables[k].uns[Key.UNS]
        for s in again
        for k in s.tables
    )


def test_a_list_whose_table_keys_repeat_or_that_holds_anndata_is_labelled_by_position(anndatas):
    twice = [lk.datasets.mob(("MOB1",)), lk.datasets.mob(("MOB1",))]
    assert sorted(_stack(twice, target=0)) == ["section0", "section1"]
    mixed = [lk.datasets.mob(("MOB1",)), anndatas[0]]
    assert sorted(_stack(mixed, target=0)) == ["section0", "section1"]


def test_a_dict_labels_its_sections(anndatas):
    """{label: section}: results, records and messages use the labels; an AnnData target is named by its label."""
    stack = dict(zip(["top", "mid", "low"], anndatas, strict=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = lk.tl.align_sections(stack, target="top", sequential=True, **{**_FAST, "max_iter": 2})
    assert list(results) == ["mid", "low", "top"]
    assert [(e["target"], e.get("reference"), e["z"]) for e in map(_entry, stack.values())] == [
        ("top", None, 0),
        ("top", "top", 1),
        ("mid", "mid", 2),
    ]
    stopped = [str(w.message) for w in caught if "CPD stopped" in str(w.message)]
    assert any("onto 'mid'" in m for m in stopped)
    assert not any("'adata'" in m for m in stopped)


def test_a_dict_of_spatialdata_records_table_keys_and_labels():
    stack = {"slice_a": lk.datasets.mob(("MOB1",)), "slice_b": lk.datasets.mob(("MOB2",))}
    results = _stack(stack, target="slice_a")
    assert list(results) == ["slice_b", "slice_a"]
    # target: the table aligned onto (as lk.pl.alignment and lk.metrics read it); reference: its label
    assert (results["slice_b"]["target"], results["slice_b"]["reference"]) == ("MOB1", "slice_a")
    assert results["slice_a"]["target"] == "MOB1"


def test_sections_orders_a_dict_and_labels_a_list(anndatas):
    stack = dict(zip(["top", "mid", "low"], anndatas, strict=True))
    results = _stack(stack, target="low", sections=["low", "top"])
    assert sorted(results) == ["low", "top"]
    assert Key.ALIGNED not in anndatas[1].obsm
    assert _entry(anndatas[0])["z"] == 1
    fresh = [a.copy() for a in anndatas]
    for a in fresh:
        a.uns.pop(Key.UNS, None)
        a.obsm.pop(Key.ALIGNED, None)
    results = _stack(fresh, target="s2", sections=["s1", "s2", "s3"])
    assert sorted(results) == ["s1", "s2", "s3"]
    assert _entry(fresh[0])["target"] == "s2"


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (
            lambda a: dict(zip(["a", "b"], a, strict=False)),
            {"target": 0},
            TypeError,
            r"target must be a key of the dict of sections \['a', 'b'\], got 0",
        ),
        (
            lambda a: dict(zip(["a", "b"], a, strict=False)),
            {"target": "c"},
            KeyError,
            r"'c' not found in the dict of sections; available: 'a', 'b'",
        ),
        (
            lambda a: {"a": a[0], 3: a[1]},
            {"target": "a"},
            ValueError,
            r"maps labels \(strings\) to sections; 3 is not a label",
        ),
        (lambda a: {"a": a[0], "b": "x"}, {"target": "a"}, TypeError, r"section 'b' of the dict .* is a str"),
        (
            lambda a: dict(zip(["a", "b"], a, strict=False)),
            {"target": "a", "sections": ["a", "c"]},
            KeyError,
            r"'c' not found in the dict of sections",
        ),
        (
            lambda a: a,
            {"target": "MOB1"},
            ValueError,
            r"one of their labels \['section0', 'section1', 'section2'\], got 'MOB1'",
        ),
        (lambda a: a, {"target": 3}, ValueError, r"position in the list of 3 sections"),
        (lambda a: a, {"target": True}, ValueError, r"position in the list of 3 sections"),
        (
            lambda a: a,
            {"target": "a", "sections": ["a", "b"]},
            ValueError,
            r"give one label \(a string\) for each of the 3 sections",
        ),
        (
            lambda a: a,
            {"target": "a", "sections": ["a", "b", "a"]},
            ValueError,
            r"sections= lists \['a'\] more than once",
        ),
        (lambda a: a, {"target": "a", "sections": "a"}, ValueError, r"got the string 'a'"),
        # one AnnData was taken as a list of one-spot sections ("'section0' section has 1 spot(s)")
        (
            lambda a: a[0],
            {"target": 0},
            TypeError,
            r"align_sections takes a stack of sections: .* got one AnnData",
        ),
    ],
)
def test_bad_labels_and_targets_are_refused_before_writing(anndatas, make, kwargs, error, match):
    with pytest.raises(error, match=match):
        _stack(make(anndatas), **kwargs)
    assert all(Key.ALIGNED not in a.obsm and Key.UNS not in a.uns for a in anndatas)
