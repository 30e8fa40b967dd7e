from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from tests.pl.test_annotation import small_section

import loki as lk


def test_measured_vs_predicted_layer_panels():
    sdata = small_section()
    table = sdata.tables["S"]
    rng = np.random.default_rng(2)
    pred = table.X + rng.normal(0, 0.5, table.X.shape).astype(np.float32)
    table.layers["loki_predicted"] = pred
    fig = lk.pl.expression(sdata, ["g1", "g3"], show_image=True, show=False)
    titled = [a for a in fig.axes if a.get_title()]
    assert [a.get_title().split(" (")[0] for a in titled] == [
        "g1 measured",
        "g1 predicted",
        "g3 measured",
        "g3 predicted",
    ]
    r = lk.metrics.pearson(table.X[:, 1], pred[:, 1])
    assert titled[1].get_title().endswith(f"(PCC {r:.2f})")
    np.testing.assert_allclose(titled[0].collections[0].get_array(), table.X[:, 1])
    np.testing.assert_allclose(titled[1].collections[0].get_array(), pred[:, 1], rtol=1e-6)
    # one shared colour scale per gene
    assert titled[0].collections[0].get_clim() == titled[1].collections[0].get_clim()
    assert len(titled[0].images) == 1
    plt.close(fig)


def test_prediction_as_separate_anndata():
    table = small_section(with_image=False)
    table.obsm["loki_text"] = np.random.default_rng(0).normal(size=(table.n_obs, 4)).astype(np.float32)
    table.obsm["loki_image"] = table.obsm["loki_text"]
    pred = lk.tl.predict_expression(table, table, top_k=3)
    fig = lk.pl.expression(table, "g0", predicted=pred, show=False)
    assert len([a for a in fig.axes if a.get_title()]) == 2
    plt.close(fig)
    with pytest.raises(KeyError, match=r"adata\.layers"):
        lk.pl.expression(table, "g0", show=False)
    with pytest.raises(KeyError, match="var_names"):
        lk.pl.expression(table, "nope", predicted=pred, show=False)
    with pytest.raises(ValueError, match="same spots"):
        lk.pl.expression(table[:5].copy(), "g0", predicted=pred, show=False)


def test_one_spot_section_has_no_correlation_to_show():
    table = small_section(with_image=False)[:1].copy()
    table.layers["loki_predicted"] = table.X.copy()
    fig = lk.pl.expression(table, "g0", show=False)
    assert [a.get_title() for a in fig.axes if a.get_title()][1] == "g0 predicted (PCC n/a, one spot)"
    plt.close(fig)
