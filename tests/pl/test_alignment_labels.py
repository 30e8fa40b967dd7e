"""lk.pl.alignment takes the sections as lk.tl.align_sections does, and labels them alike.

Also: ``spot_size=None`` sizes the spots as the other spatial plots do, and a wrong ``image_key`` is an
error in every plot that takes one, whatever ``show_image`` says.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import warnings

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

import loki as lk
from loki._keys import Key
from loki._logging import LokiWarning


def _align(sections, target):
    with warnings.catch_warnings():  # a few CPD iterations suffice to have an alignment to draw
        warnings.simplefilter("ignore", LokiWarning)
        return lk.tl.align_sections(
            sections, target=target, use=None, method="rigid", max_iter=5, progress=False
        )


def _mob_pair():
    return lk.datasets.mob("MOB1"), lk.datasets.mob("MOB2")


@pytest.fixture(scope="module")
def stacked_dict():
    """Two bundled MOB sections, one SpatialData each, aligned as a dict {"S1": ..., "S2": ...}."""
    first, second = _mob_pair()
    stack = {"S1": first, "S2": second}
    assert sorted(_align(stack, "S1")) == ["S1", "S2"]
    return stack


@pytest.fixture(scope="module")
def stacked_list():
    """The same two sections, aligned as a list: align_sections labels them by their table keys."""
    first, second = _mob_pair()
    labels = _align([first, second], 0)
    return [first, second], labels


def _legend(fig) -> list[str]:
    fig.canvas.draw()  # rendered, not only built
    return [t.get_text() for t in fig.axes[1].get_legend().get_texts()]


def test_a_dict_of_sections_is_drawn_labelled_by_its_keys(stacked_dict):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # each section is a recorded target or aligned: no warning
        fig = lk.pl.alignment(stacked_dict, show=False)
    assert _legend(fig) == ["S1", "S2"]
    before, after = fig.axes[:2]
    assert [before.get_title(), after.get_title()] == ["before alignment", "after alignment"]
    tables = [s.tables[k] for s, k in zip(stacked_dict.values(), ("MOB1", "MOB2"), strict=True)]
    for i, table in enumerate(tables):
        np.testing.assert_allclose(before.collections[i].get_offsets(), table.obsm[Key.SPATIAL][:, :2])
        np.testing.assert_allclose(after.collections[i].get_offsets(), table.obsm[Key.ALIGNED][:, :2])
    plt.close(fig)

    fig = lk.pl.alignment(stacked_dict, kind="stack", show=False)  # the levels are named too
    fig.canvas.draw()
    for panel in fig.axes[:2]:
        assert [t.get_text() for t in panel.get_yticklabels()] == ["S1", "S2"]
    plt.close(fig)


def test_sections_picks_and_orders_the_keys_of_a_dict(stacked_dict):
    plt.close("all")
    fig = lk.pl.alignment(stacked_dict, sections=["S2", "S1"], show=False)
    assert _legend(fig) == ["S2", "S1"]
    plt.close(fig)
    fig = lk.pl.alignment(stacked_dict, sections="S2", show=False)  # one key, not its letters
    assert _legend(fig) == ["S2"]
    plt.close(fig)
    with pytest.raises(KeyError, match=r"'S3' not found in the dict of sections; available: 'S1', 'S2'"):
        lk.pl.alignment(stacked_dict, sections=["S1", "S3"], show=False)
    with pytest.raises(ValueError, match=r"sections= lists \['S1'\] more than once"):
        lk.pl.alignment(stacked_dict, sections=["S1", "S1"], show=False)
    with pytest.raises(ValueError, match=r"maps labels \(strings\) to sections; 0 is not a label"):
        lk.pl.alignment({0: stacked_dict["S1"], "S2": stacked_dict["S2"]}, show=False)
    with pytest.raises(TypeError, match=r"section 'S2' of the dict given to lk\.pl\.alignment is a str"):
        lk.pl.alignment({"S1": stacked_dict["S1"], "S2": "MOB2"}, show=False)
    assert plt.get_fignums() == []


def test_a_dict_of_anndata_is_labelled_by_its_keys(stacked_dict):
    tables = {"first": stacked_dict["S1"].tables["MOB1"], "second": stacked_dict["S2"].tables["MOB2"]}
    fig = lk.pl.alignment(tables, show=False)
    assert _legend(fig) == ["first", "second"]
    plt.close(fig)


def test_a_list_is_labelled_as_align_sections_labels_it(stacked_list):
    sections, aligned = stacked_list
    assert sorted(aligned) == ["MOB1", "MOB2"]  # align_sections: the table keys
    fig = lk.pl.alignment(sections, show=False)
    assert _legend(fig) == ["MOB1", "MOB2"]
    plt.close(fig)
    fig = lk.pl.alignment(sections, kind="stack", show=False)
    fig.canvas.draw()
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["MOB1", "MOB2"]
    plt.close(fig)
    fig = lk.pl.alignment(sections, sections=["first", "second"], show=False)  # still overrides
    assert _legend(fig) == ["first", "second"]
    plt.close(fig)


def test_a_list_without_distinct_table_keys_is_labelled_by_position(stacked_list):
    sections, _ = stacked_list
    tables = [s.tables[k] for s, k in zip(sections, ("MOB1", "MOB2"), strict=True)]
    mixed = [sections[0], tables[1]]  # an AnnData has no table key
    for given in (tables, mixed, [sections[0], sections[0]]):
        fig = lk.pl.alignment(given, show=False)
        assert _legend(fig) == ["section0", "section1"]
        plt.close(fig)


def test_a_list_of_several_table_spatialdata_is_refused_naming_them():
    both = lk.datasets.mob(("MOB1", "MOB2"))
    with pytest.raises(
        ValueError,
        match=r"given to lk\.pl\.alignment .* section0 is a SpatialData with 2 tables \('MOB1', 'MOB2'\)",
    ):
        lk.pl.alignment([both], show=False)


def test_spot_size_none_shrinks_with_the_spots_as_in_the_other_plots(stacked_dict):
    n = sum(s.tables[k].n_obs for s, k in zip(stacked_dict.values(), ("MOB1", "MOB2"), strict=True))
    fig = lk.pl.alignment(stacked_dict, spot_size=None, show=False)
    fig.canvas.draw()
    sizes = [float(c.get_sizes()[0]) for ax in fig.axes[:2] for c in ax.collections]
    assert sizes == pytest.approx([max(4.0, 8000.0 / n)] * 4)  # not matplotlib's 36 points^2
    plt.close(fig)
    fig = lk.pl.alignment(stacked_dict, show=False)  # the default stays 8 points^2
    assert {float(c.get_sizes()[0]) for c in fig.axes[1].collections} == {8.0}
    plt.close(fig)
    assert "None" in lk.pl.alignment.__doc__.split("spot_size\n")[1].split("\n    ax\n")[0]


@pytest.fixture(scope="module")
def joined_and_split():
    """Three MOB sections in one AnnData, aligned with library_key= (MOB3 left out), and a dict of its copies."""
    sdata = lk.datasets.mob(("MOB1", "MOB2", "MOB3"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the sections share barcodes: obs_names repeat
        adata = ad.concat(dict(sdata.tables), label="library_id")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LokiWarning)
        lk.tl.align_sections(
            adata,
            library_key="library_id",
            target="MOB2",
            sections=["MOB2", "MOB1"],  # z: MOB2 0, MOB1 1, not their order in the column
            use=None,
            method="rigid",
            max_iter=5,
            progress=False,
        )
    split = {k: adata[(adata.obs["library_id"] == k).to_numpy()] for k in ("MOB1", "MOB2")}
    return adata, split


@pytest.mark.parametrize("kind", ["overlay", "stack"])
def test_sections_of_one_anndata_are_drawn_as_a_dict_of_them(joined_and_split, kind):
    adata, split = joined_and_split
    fig = lk.pl.alignment(adata, library_key="library_id", kind=kind, show=False)
    assert _legend(fig) == ["MOB1", "MOB2"]  # the column's order; for the stack, top (z 1) to bottom
    assert len(fig.axes) == 2
    assert [len(panel.collections) for panel in fig.axes] == [2, 2]  # MOB3, not aligned, is left out
    heights = {"MOB2": 0.0, "MOB1": 1.0}  # the z the stack recorded
    for i, (name, view) in enumerate(split.items()):
        for panel, key in zip(fig.axes, (Key.SPATIAL, Key.ALIGNED), strict=True):
            drawn = panel.collections[i].get_offsets()
            np.testing.assert_array_equal(drawn[:, 0], view.obsm[key][:, 0])
            expected = view.obsm[key][:, 1] if kind == "overlay" else np.full(view.n_obs, heights[name])
            np.testing.assert_array_equal(drawn[:, 1], expected)
    if kind == "stack":
        labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert dict(zip(labels, fig.axes[0].get_yticks(), strict=True)) == heights
    plt.close(fig)
    # a dict of its sections' copies, whose records hold their z, is drawn alike
    copies = {k: v.copy() for k, v in split.items()}
    for k, v in copies.items():
        v.uns[Key.UNS] = {Key.ALIGNED: adata.uns[Key.UNS][Key.ALIGNED]["sections"][k]}
    ref = lk.pl.alignment(copies, kind=kind, show=False)
    _legend(ref)
    for panel, theirs in zip(fig.axes, ref.axes, strict=True):
        for mine, other in zip(panel.collections, theirs.collections, strict=True):
            np.testing.assert_array_equal(mine.get_offsets(), other.get_offsets())
            np.testing.assert_array_equal(mine.get_facecolors(), other.get_facecolors())
    plt.close(ref)


def test_library_key_picks_sections_and_takes_one_anndata_only(joined_and_split):
    adata, _ = joined_and_split
    plt.close("all")
    fig = lk.pl.alignment(adata, library_key="library_id", sections=["MOB2"], show=False)
    assert _legend(fig) == ["MOB2"]
    plt.close(fig)
    with pytest.raises(
        ValueError, match=r"sections \['MOB3'\] were left out of the stack .*\['MOB2', 'MOB1'\]"
    ):
        lk.pl.alignment(adata, library_key="library_id", sections=["MOB1", "MOB3"], show=False)
    with pytest.raises(TypeError, match=r"library_key= names the \.obs column .* got a SpatialData"):
        lk.pl.alignment(lk.datasets.mob("MOB1"), library_key="library_id", show=False)
    assert plt.get_fignums() == []


@pytest.fixture(scope="module")
def mob1():
    sdata = lk.datasets.mob("MOB1")
    table = sdata.tables["MOB1"]
    scores = pd.DataFrame(
        np.random.default_rng(0).random((table.n_obs, 2)), index=table.obs_names, columns=["a", "b"]
    )
    table.obsm["loki_annotation"] = scores
    table.obsm["loki_proportions"] = scores / scores.to_numpy().sum(axis=1, keepdims=True)
    return sdata


@pytest.mark.parametrize(
    ("plot", "show_image"),
    [(plot, show) for plot in ("annotation", "expression", "proportions") for show in (False, None)]
    + [("proportions", "array")],  # the only plot that takes an image array
)
def test_a_wrong_image_key_is_refused_whatever_show_image_says(mob1, plot, show_image):
    plt.close("all")
    if show_image == "array":
        show_image = np.zeros((4, 4, 3))
    args = (mob1.tables["MOB1"].var_names[0],) if plot == "expression" else ()
    extra = {"layer_predicted": None} if plot == "expression" else {}
    with pytest.raises(KeyError, match=r"'MOB1_imag' not found in sdata\.images; available: 'MOB1_image'"):
        getattr(lk.pl, plot)(mob1, *args, image_key="MOB1_imag", show_image=show_image, show=False, **extra)
    assert plt.get_fignums() == []
    fig = getattr(lk.pl, plot)(
        mob1, *args, image_key="MOB1_image", show_image=show_image, show=False, **extra
    )
    fig.canvas.draw()  # the right name is drawn as before
    plt.close(fig)
