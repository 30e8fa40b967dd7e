"""A stack of serial sections end to end: scored per section pair, saved into its store and re-run."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import spatialdata as sd

import loki as lk
from loki._keys import Key

# one start, no mirror, few iterations: these tests are about where results land, not about the fit
_FAST = {"use": None, "method": "rigid", "mirror": False, "n_rotations": 1, "max_iter": 20, "progress": False}


def _stack(stack, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)  # the fast settings stop at max_iter
        return lk.tl.align_sections(stack, **{**_FAST, **kwargs})


@pytest.fixture
def sections():
    """A tissue between two copies moved far from it (rotated, shifted by many spot spacings)."""
    tissue = lk.datasets.synthetic_tissue(n_spots=200, n_genes=20, n_cell_types=3, seed=3)
    moved = [
        lk.datasets.transform_section(tissue, rotation_deg=r, translation=(t, -t), seed=i)[0]
        for i, (r, t) in enumerate(((30, 800.0), (-40, -900.0)))
    ]
    return {"low": moved[0], "mid": tissue, "top": moved[1]}


def _scores(source, target, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)  # no pair at all would warn
        return lk.metrics.alignment_expression_scores(source, target, **kwargs)


def test_two_sections_of_a_stack_onto_a_middle_target_are_scored_in_the_stack_frame(sections):
    """Neighbours both aligned onto the middle section were scored against the neighbour's own frame.

    ``alignment_expression_scores(low, top)`` paired ``low``'s aligned coordinates (the middle
    section's frame) with ``top``'s ``.obsm['spatial']`` (its own, far away): a wrong score, or none.
    """
    _stack(sections, target="mid")
    low, mid, top = sections.values()
    stack_frame = _scores(low, top, target_key=Key.ALIGNED)
    default = _scores(low, top)
    assert default["n_pairs"] == stack_frame["n_pairs"] > 0.9 * top.n_obs
    np.testing.assert_array_equal(default["pearson"], stack_frame["pearson"])
    # the stack's target as the source is in that frame too (its aligned coordinates are its own)
    np.testing.assert_array_equal(
        _scores(mid, top)["pearson"], _scores(mid, top, target_key=Key.ALIGNED)["pearson"]
    )
    # onto the section each was aligned onto, as before
    np.testing.assert_array_equal(
        _scores(low, mid)["pearson"], _scores(low, mid, target_key=Key.SPATIAL)["pearson"]
    )


def test_a_pairwise_alignment_is_still_scored_against_the_target_it_was_registered_onto(sections):
    """Without a stack, the source's coordinates lie in the frame of its target's own coordinates."""
    low, mid, top = sections.values()
    _stack({"mid": mid, "top": top}, target="mid")  # top: in mid's frame, a stack record
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", lk.LokiWarning)
        lk.tl.align(low, target=top, **{k: v for k, v in _FAST.items() if k != "progress"})
    assert "z" not in low.uns[Key.UNS][Key.ALIGNED]
    np.testing.assert_array_equal(
        _scores(low, top)["pearson"], _scores(low, top, target_key=Key.SPATIAL)["pearson"]
    )


def _logged_calls(caplog) -> str:
    messages = [r.getMessage() for r in caplog.records if "to save it into the zarr store" in r.getMessage()]
    assert len(messages) == 1, messages
    return re.search(r"it was read from: (.*) \(spatialdata refuses", messages[0]).group(1)


def test_the_logged_calls_delete_the_shapes_a_restack_removed_from_its_new_target(tmp_path, caplog):
    """A stack onto a section that an earlier stack had aligned removes its aligned shapes in memory;
    the logged calls did not delete them from the store, so reading it again brought them back."""
    path = tmp_path / "mob.zarr"
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    _stack(sdata, target="MOB1")
    sdata.write(path)

    sdata = sd.read_zarr(path)
    assert "MOB2_spots_aligned" in sdata.shapes
    caplog.clear()
    with caplog.at_level("INFO", logger="loki"):
        _stack(sdata, target="MOB2", method="affine")
    assert "MOB2_spots_aligned" not in sdata.shapes
    calls = _logged_calls(caplog)
    deleted = re.search(r"delete_element_from_disk\((\[.*?\])\)", calls).group(1)
    assert "'MOB2_spots_aligned'" in deleted
    exec(calls, {"sdata": sdata})
    back = sd.read_zarr(path)
    assert sorted(back.shapes) == sorted(sdata.shapes)
    assert "MOB2_spots_aligned" not in back.shapes
    assert back.tables["MOB2"].uns[Key.UNS][Key.ALIGNED]["method"] == "target"
    assert back.tables["MOB1"].uns[Key.UNS][Key.ALIGNED]["method"] == "affine"


def test_the_side_view_names_each_level_once_and_lists_the_sections_top_down(sections):
    """The right panel's y label sat on its level names; the legend listed the levels bottom-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _stack(sections, target="mid")
    fig = lk.pl.alignment(sections, kind="stack", show=False)
    fig.canvas.draw()
    before, after = fig.axes[:2]
    assert (before.get_ylabel(), after.get_ylabel()) == ("section (z)", "")
    assert [t.get_text() for t in after.get_yticklabels()] == ["low", "mid", "top"]  # bottom-up, by z
    assert [t.get_text() for t in after.get_legend().get_texts()] == ["top", "mid", "low"]
    plt.close(fig)
    fig = lk.pl.alignment(sections, show=False)  # an overlay has no levels: the given order
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["low", "mid", "top"]
    assert fig.axes[1].get_ylabel() == "y"
    plt.close(fig)


def test_a_restack_of_some_sections_onto_another_target_names_those_left_in_the_old_frame():
    """Sections of an earlier stack left out of a re-stack onto another target stayed placed in the
    coordinate system in the old target's frame, beside the new stack's sections, without a word."""
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3", "MOB4"))
    _stack(sdata, target="MOB2", sequential=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lk.tl.align_sections(sdata, target="MOB2", sections=["MOB1", "MOB2"], **{**_FAST, "max_iter": 2})
    # MOB3 and MOB4 (chained onto MOB3's aligned coordinates) are still in MOB2's frame: no warning
    assert not [w for w in caught if "also holds section" in str(w.message)]
    with pytest.warns(
        lk.LokiWarning, match=r"'aligned' also holds section\(s\) 'MOB1', 'MOB2', placed there"
    ):
        lk.tl.align_sections(sdata, target="MOB3", sections=["MOB3", "MOB4"], **{**_FAST, "max_iter": 2})
