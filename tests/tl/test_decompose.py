from __future__ import annotations

import subprocess
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from tests.conftest import shared_path, spacexr_visium

import loki as lk
from loki.pp._pseudo_spots import scatter_cells_in_regions


def _toy(n_types=4, n_genes=40, n_spots=80, cells_per_type=30, seed=0, sparse_x=False):
    """Spots that are exact sums of reference-like cells, plus a labelled reference.

    ``cells_per_type``: one size for every type, or one size per type; then the tissue is drawn with
    the reference's composition (Dirichlet mean = type frequencies), as in a matched atlas.
    """
    rng = np.random.default_rng(seed)
    profiles = rng.gamma(0.6, 4.0, size=(n_types, n_genes))
    sizes = np.broadcast_to(np.asarray(cells_per_type), (n_types,))
    labels = np.repeat([f"T{k}" for k in range(n_types)], sizes)
    ref_x = rng.poisson(profiles[np.repeat(np.arange(n_types), sizes)]).astype(np.float32)
    reference = ad.AnnData(
        sp.csr_matrix(ref_x) if sparse_x else ref_x,
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]),
    )
    alpha = np.full(n_types, 0.4) if np.ndim(cells_per_type) == 0 else 0.4 * n_types * sizes / sizes.sum()
    counts = rng.multinomial(8, rng.dirichlet(alpha, size=n_spots))
    spots_x = rng.poisson(counts @ profiles).astype(np.float32)
    spots = ad.AnnData(spots_x, var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]))
    spots.obs_names = [f"s{i}" for i in range(n_spots)]
    spots.obsm["spatial"] = rng.uniform(0, 100, size=(n_spots, 2))
    truth = counts / counts.sum(axis=1, keepdims=True)
    return spots, reference, truth


def _js(truth, pred):
    return float(np.mean(lk.metrics.js_divergence(truth + 1e-12, np.asarray(pred) + 1e-12, axis=0)))


#: unequal type sizes, as in any atlas: per-type sums instead of means, or clusters counted as one
#: cell each, would bias every spot towards the small (or the large) types
UNBALANCED = (80, 40, 20, 10)


@pytest.mark.parametrize("method", ["nnls", "mapping"])
def test_decompose_writes_proportions_that_beat_uniform(method):
    spots, reference, truth = _toy(cells_per_type=UNBALANCED)
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=150)
    props = spots.obsm["loki_proportions"]
    assert isinstance(props, pd.DataFrame)
    assert list(props.columns) == ["T0", "T1", "T2", "T3"]
    assert props.index.equals(spots.obs_names)
    np.testing.assert_allclose(props.sum(axis=1), 1.0, rtol=1e-6)
    assert (props.to_numpy() >= 0).all()
    uniform = np.full_like(truth, 0.25)
    # measured: JS 0.12 (nnls) and 0.10 (mapping) x uniform's, mean |error| 0.03; per-type sums give
    # 0.25 / 0.30 x uniform and 0.12 / 0.06, clusters counted as one cell 0.46 x uniform and 0.16
    assert _js(truth, props) < 0.2 * _js(truth, uniform)
    assert np.abs(props.to_numpy() - truth).mean() < 0.05
    info = spots.uns["loki"]["loki_proportions"]
    assert info["method"] == method
    assert info["cell_types"] == ["T0", "T1", "T2", "T3"]
    assert info["n_features"] == 40
    if method == "mapping":
        assert info["loss"].shape == (150,)
        assert info["loss"][-1] < info["loss"][0]


def test_mapping_takes_the_reference_composition_as_the_tissues():
    """Documented Tangram property: every reference cell is mapped, so the mean proportions are the
    reference's type frequencies even where the tissue's differ; NNLS follows the tissue."""
    spots, _, truth = _toy()  # tissue of ~1/4 of each type
    _, reference, _ = _toy(cells_per_type=UNBALANCED)  # the same type profiles (same seed)
    frequencies = np.asarray(UNBALANCED) / sum(UNBALANCED)
    kwargs = {"reference": reference, "cell_type_key": "cell_type", "inplace": False}
    mapped = lk.tl.decompose(spots, method="mapping", epochs=150, **kwargs).proportions.to_numpy()
    np.testing.assert_allclose(mapped.mean(axis=0), frequencies, atol=0.02)
    nnls = lk.tl.decompose(spots, **kwargs).proportions.to_numpy()
    np.testing.assert_allclose(nnls.mean(axis=0), truth.mean(axis=0), atol=0.04)


def test_nnls_is_as_accurate_after_the_first_block_of_spots():
    """More spots than one NNLS block (1024): every block, the partial last one too, is decomposed as well."""
    spots, reference, truth = _toy(n_spots=2100, cells_per_type=UNBALANCED)
    spots.X = sp.csr_matrix(spots.X)
    out = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)
    props = out.proportions.to_numpy()
    uniform = np.full_like(truth, 0.25)
    for rows in (slice(0, 1024), slice(1024, 2048), slice(2048, None)):
        assert _js(truth[rows], props[rows]) < 0.2 * _js(truth[rows], uniform[rows]), rows
        assert np.abs(props[rows] - truth[rows]).mean() < 0.05, rows


def test_mapping_cells_mode_and_mapping_matrix_on_request():
    spots, reference, truth = _toy(cells_per_type=10)
    lk.tl.decompose(
        spots,
        reference=reference,
        cell_type_key="cell_type",
        method="mapping",
        mode="cells",
        epochs=200,
        return_mapping=True,
        key_added="cells",
    )
    info = spots.uns["loki"]["cells"]
    assert info["mapping"].shape == (reference.n_obs, spots.n_obs)
    np.testing.assert_allclose(info["mapping"].sum(axis=1), 1.0, rtol=1e-5)
    assert info["mapping_sources"] == list(reference.obs_names)
    assert _js(truth, spots.obsm["cells"]) < 0.5 * _js(truth, np.full_like(truth, 0.25))


def test_copy_returns_new_object_and_leaves_input_untouched():
    spots, reference, _ = _toy(sparse_x=True)
    out = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", copy=True)
    assert "loki_proportions" in out.obsm
    assert "loki_proportions" not in spots.obsm
    assert "loki" not in spots.uns


def test_refine_and_percentile_normalisation_go_to_the_refined_key():
    spots, reference, _ = _toy()
    lk.tl.decompose(
        spots, reference=reference, cell_type_key="cell_type", refine="nms", normalize="percentile"
    )
    props = spots.obsm["loki_proportions"].to_numpy()
    refined = spots.obsm["loki_proportions_refined"].to_numpy()
    np.testing.assert_allclose(props.sum(axis=1), 1.0)
    assert refined.min() >= 0
    assert refined.max() <= 1
    assert ((refined > 0).sum(axis=1) <= 1).all()
    # The surviving type of each spot is its most probable one (eq. 13).
    nonzero = refined.max(axis=1) > 0
    np.testing.assert_array_equal(refined[nonzero].argmax(axis=1), props[nonzero].argmax(axis=1))


def _unit_rows(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _embedded_toy(type_emb=None):
    """:func:`_toy` with signed, L2-normalised embeddings: reference cells near their type's
    embedding in ``.obsm['loki_text']``, spots the mix of their cells' types in ``.obsm['loki_image']``."""
    spots, reference, truth = _toy(cells_per_type=UNBALANCED)
    rng = np.random.default_rng(1)
    type_emb = rng.normal(size=(4, 16)) if type_emb is None else type_emb
    codes = pd.Categorical(reference.obs["cell_type"]).codes
    reference.obsm["loki_text"] = _unit_rows(type_emb[codes] + 0.05 * rng.normal(size=(reference.n_obs, 16)))
    spots.obsm["loki_image"] = _unit_rows(truth @ type_emb)
    return spots, reference, truth


def test_embedding_input_and_size_mismatch():
    spots, reference, truth = _embedded_toy()
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", use="loki_image", method="nnls")
    assert _js(truth, spots.obsm["loki_proportions"]) < 0.5 * _js(truth, np.full_like(truth, 0.25))
    assert spots.uns["loki"]["loki_proportions"]["reference_use"] == "loki_text"

    spots.obsm["loki_text"] = np.zeros((spots.n_obs, 8), np.float32)
    del spots.obsm["loki_proportions"], spots.uns["loki"]
    with pytest.raises(ValueError, match="Embedding sizes differ"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", use="loki_text")
    assert "loki_proportions" not in spots.obsm
    assert "loki" not in spots.uns


def test_the_default_method_is_nnls_on_expression_and_the_mapping_on_embeddings():
    """NNLS ran on signed embeddings by default, without a word, although the mapping is the paper's
    method there (and was closer to the truth on every benchmark case)."""
    spots, reference, _ = _embedded_toy()
    kwargs = {"reference": reference, "cell_type_key": "cell_type", "epochs": 30, "inplace": False}
    for use, method in (("X", "nnls"), ("loki_image", "mapping")):
        default = lk.tl.decompose(spots, use=use, **kwargs)
        chosen = lk.tl.decompose(spots, use=use, method=method, **kwargs)
        assert default.record["method"] == method
        pd.testing.assert_frame_equal(default.proportions, chosen.proportions, check_exact=True)


def test_spots_without_nnls_weight_on_embeddings_are_told_apart_from_empty_ones(caplog):
    """NNLS on embeddings gives no weight to a spot pointing away from every type's mean embedding;
    the log called such spots "no signal (all features zero, or no NNLS weight)"."""
    type_emb = np.abs(np.random.default_rng(2).normal(size=(4, 16)))  # every type's mean is positive
    spots, reference, _ = _embedded_toy(type_emb)
    spots.obsm["loki_image"][3] = -spots.obsm["loki_image"][3]  # a dot product < 0 with every type
    spots.obsm["loki_image"][7] = 0
    with caplog.at_level("WARNING", logger="loki"):
        out = lk.tl.decompose(
            spots,
            reference=reference,
            cell_type_key="cell_type",
            use="loki_image",
            method="nnls",
            inplace=False,
        )
    assert out.record["n_empty_spots"] == 2
    np.testing.assert_allclose(out.proportions.iloc[[3, 7]], 0.25)
    assert (
        "2 of 80 spots got no NNLS weight (1 with an all-zero embedding; 1 whose embedding has a dot "
        "product <= 0 with every cell type's mean), e.g. 's3', 's7'" in caplog.text
    )
    assert "method='mapping' (the default for embeddings)" in caplog.text
    assert "no signal" not in caplog.text


def _nothing_written(adata):
    return "loki_proportions" not in adata.obsm and "loki" not in adata.uns


def test_missing_cell_type_column_is_a_keyerror_naming_columns():
    spots, reference, _ = _toy()
    spots.obs["celltype"] = "x"  # the column is looked for in the reference, and the message says so
    with pytest.raises(KeyError, match=r"'celltype' not found in reference\.obs; available: 'cell_type'"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="celltype")
    assert _nothing_written(spots)


def test_cell_type_with_one_cell_is_rejected():
    spots, reference, _ = _toy()
    reference.obs["cell_type"] = reference.obs["cell_type"].astype(str)
    reference.obs.iloc[0, 0] = "Lonely"
    with pytest.raises(ValueError, match=r"'Lonely' \(1 cell\)"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


def test_reference_cells_without_a_label_are_named():
    spots, reference, _ = _toy()
    reference.obs["cell_type"] = reference.obs["cell_type"].astype(object)
    reference.obs.iloc[:3, 0] = None
    with pytest.raises(ValueError, match=r"3 of 120 cells have no label in reference.obs\['cell_type'\]"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


def test_a_declared_cell_type_without_cells_is_rejected():
    spots, reference, _ = _toy()
    reference.obs["cell_type"] = pd.Categorical(
        reference.obs["cell_type"], categories=["T0", "T1", "T2", "T3", "B"]
    )
    with pytest.raises(ValueError, match=r"'B' \(0 cells\).*remove_unused_categories"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


def test_no_shared_genes_lists_names_from_both_sides():
    spots, reference, _ = _toy()
    spots.var_names = [f"ENSMUSG{i:011d}" for i in range(spots.n_vars)]
    with pytest.raises(ValueError, match=r"No genes are shared.*ENSMUSG00000000000.*reference: 'G0'"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


def test_duplicated_gene_names_are_rejected():
    spots, reference, _ = _toy()
    reference.var_names = ["G0", *reference.var_names[:-1]]
    with pytest.raises(ValueError, match=r"reference.var_names has duplicated genes \('G0'"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "tangram"}, ValueError, "method must be one of"),
        ({"mode": "cell"}, ValueError, "mode must be one of"),
        ({"refine": "max"}, ValueError, "refine must be one of"),
        ({"use": "loki_text"}, KeyError, "not found in adata.obsm"),
        ({"use": "X", "reference_use": "loki_text"}, ValueError, "both must be"),
        ({"layer": "counts"}, KeyError, "adata.layers"),
        ({"density_prior": np.ones(3)}, ValueError, "density_prior"),
        ({"normalize": "percentile", "percentiles": (50, 10)}, ValueError, "percentiles"),
        ({"num_threads": 0}, ValueError, "num_threads must be a positive integer or None"),
        ({"num_threads": 1.5}, ValueError, "num_threads must be a positive integer or None"),
        ({"epochs": 2.5}, ValueError, "epochs must be a positive integer"),
    ],
)
def test_bad_parameters_fail_before_writing(kwargs, error, match):
    spots, reference, _ = _toy()
    with pytest.raises(error, match=match):
        lk.tl.decompose(
            spots, reference=reference, cell_type_key="cell_type", **{"method": "mapping", **kwargs}
        )
    assert _nothing_written(spots)


def test_non_finite_features_are_rejected():
    spots, reference, _ = _toy()
    spots.X[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


def test_spatialdata_input_inplace_and_not():
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    spots, reference, _ = _toy()
    spots.obs["region"] = pd.Categorical(["sec_spots"] * spots.n_obs)
    spots.obs["spot_id"] = np.arange(spots.n_obs)
    shapes = ShapesModel.parse(spots.obsm["spatial"], geometry=0, radius=np.full(spots.n_obs, 2.0))
    table = TableModel.parse(spots, region="sec_spots", region_key="region", instance_key="spot_id")
    sdata = SpatialData(shapes={"sec_spots": shapes}, tables={"sec": table})
    out = lk.tl.decompose(sdata, reference=reference, cell_type_key="cell_type", inplace=False)
    assert isinstance(out, lk.tl.Decomposition)
    assert isinstance(out.proportions, pd.DataFrame)
    assert out.refined is None
    assert out.proportions.shape == (spots.n_obs, 4)
    assert "loki_proportions" not in sdata.tables["sec"].obsm
    assert lk.tl.decompose(sdata, reference=reference, cell_type_key="cell_type") is None
    pd.testing.assert_frame_equal(sdata.tables["sec"].obsm["loki_proportions"], out.proportions)
    with pytest.raises(ValueError, match="copy=True applies to AnnData"):
        lk.tl.decompose(sdata, reference=reference, cell_type_key="cell_type", copy=True)


def test_nnls_path_does_not_import_torch():
    code = (
        "import sys, numpy as np, anndata as ad, pandas as pd, loki as lk\n"
        "r = ad.AnnData(np.eye(4, dtype='f4').repeat(3, 0), obs=pd.DataFrame({'t': list('aabbccdd' * 2)[:12]}))\n"
        "r.obs_names = [str(i) for i in range(12)]\n"
        "s = ad.AnnData(np.ones((5, 4), 'f4'))\n"
        "lk.tl.decompose(s, reference=r, cell_type_key='t', method='nnls')\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout + out.stderr


def _split_merfish(seed=0, n_cells=4000):
    root = shared_path("spacexr_rctd_examples", "Reference", "Merfish_Ref")
    counts = pd.read_csv(root / "counts.csv", index_col=0)
    types = pd.read_csv(root / "cell_types.csv", index_col=0).iloc[:, 0]
    cells = ad.AnnData(
        sp.csr_matrix(counts.T.to_numpy(np.float32)),
        obs=pd.DataFrame(
            {"cell_type": types.loc[counts.columns].astype(str).to_numpy()}, index=counts.columns
        ),
        var=pd.DataFrame(index=counts.index),
    )
    cells = cells[~cells.obs["cell_type"].isin(["Ambiguous", "Unstable"])].copy()
    rng = np.random.default_rng(seed)
    first = np.zeros(cells.n_obs, bool)
    for idx in cells.obs.groupby("cell_type", observed=True).indices.values():
        first[rng.permutation(idx)[: len(idx) // 2]] = True
    half, reference = cells[first].copy(), cells[~first].copy()
    pick = rng.choice(half.n_obs, n_cells)
    names = [f"cell{i}" for i in range(n_cells)]
    tissue = ad.AnnData(half.X[pick], obs=half.obs.iloc[pick].set_axis(names), var=half.var)
    tissue.obsm["spatial"], _, _ = scatter_cells_in_regions(tissue.obs["cell_type"].to_numpy(), seed=seed + 1)
    return lk.pp.pseudo_spots(tissue, diameter_um=55.0), reference


@pytest.mark.data
def test_real_merfish_pseudo_spots_nnls_and_mapping_beat_uniform():
    spots, reference = _split_merfish()
    truth = spots.obsm["proportions"]
    uniform_js = _js(truth.to_numpy(), np.full(truth.shape, 1 / truth.shape[1]))
    for method in ("nnls", "mapping"):
        lk.tl.decompose(
            spots, reference=reference, cell_type_key="cell_type", method=method, epochs=200, key_added=method
        )
        pred = spots.obsm[method][truth.columns].to_numpy()
        js = _js(truth.to_numpy(), pred)
        ssim = float(np.mean(lk.metrics.ssim_grid(spots.obsm["spatial"], truth.to_numpy(), pred)))
        assert js < 0.8 * uniform_js, (method, js, uniform_js)
        assert ssim > 0.3, (method, ssim)


def test_inplace_false_writes_nothing_and_returns_proportions_and_refined():
    spots, reference, _ = _toy()
    out = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)
    assert isinstance(out, lk.tl.Decomposition)
    assert isinstance(out.proportions, pd.DataFrame)
    assert out.refined is None
    assert "loki_proportions" not in spots.obsm
    assert "loki" not in spots.uns
    out = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False, refine="nms")
    assert isinstance(out, lk.tl.Decomposition)
    proportions, refined, _ = out
    assert isinstance(refined, pd.DataFrame)
    assert out.record["refine"] == "nms"
    np.testing.assert_allclose(proportions.sum(axis=1), 1.0)
    assert ((refined > 0).sum(axis=1) == 1).all()
    assert set(spots.obsm) == {"spatial"}
    with pytest.raises(ValueError, match="pass one of them"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False, copy=True)


def test_rerun_without_refine_drops_the_earlier_refined_scores():
    spots, reference, _ = _toy()
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", refine="nms")
    assert "loki_proportions_refined" in spots.obsm
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert "loki_proportions_refined" not in spots.obsm
    assert "refine" not in spots.uns["loki"]["loki_proportions"]


def test_cells_mode_matches_the_direct_tangram_gradient_end_to_end():
    """mode='cells' with more cells than features takes the M^T S association of the gradient."""
    spots, reference, _ = _toy(n_genes=12, cells_per_type=10)
    out = lk.tl.decompose(
        spots,
        reference=reference,
        cell_type_key="cell_type",
        method="mapping",
        mode="cells",
        epochs=30,
        return_mapping=True,
        device="cpu",
        copy=True,
    )
    import torch

    S = torch.tensor(reference.X, dtype=torch.float64)
    G = torch.tensor(spots.X, dtype=torch.float64)
    n_cells, n_spots = S.shape[0], G.shape[0]
    from loki.tl._mapping import initial_logits, name_keys

    start = initial_logits(0, name_keys(reference.obs_names), name_keys(spots.obs_names))
    logits = torch.tensor(start, dtype=torch.float64)
    logits.requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.1)
    d, d_source = torch.full((n_spots,), 1 / n_spots).double(), torch.full((n_cells,), 1 / n_cells).double()
    for _ in range(30):
        opt.zero_grad()
        M = torch.softmax(logits, dim=1)
        loss = -torch.nn.functional.cosine_similarity(M.T @ S, G, dim=0).mean()
        loss = loss + torch.nn.KLDivLoss(reduction="sum")(torch.log(d_source @ M), d)
        loss.backward()
        opt.step()
    mapping = out.uns["loki"]["loki_proportions"]["mapping"]
    np.testing.assert_allclose(mapping, torch.softmax(logits, 1).detach().numpy(), atol=1e-4)


@pytest.mark.parametrize("mode", ["clusters", "cells"])
def test_mapping_follows_the_spots_and_cells_when_they_are_reordered(mode):
    """The start is drawn per (cell, spot) name pair: reordering either reorders the result.

    The random start used to be drawn in row order, so reordering acted like another seed.
    """
    spots, reference, _ = _toy(n_genes=12, cells_per_type=6)
    kwargs = {"cell_type_key": "cell_type", "method": "mapping", "mode": mode, "epochs": 30}
    kwargs |= {"device": "cpu", "inplace": False}
    out = lk.tl.decompose(spots, reference=reference, **kwargs).proportions
    rng = np.random.default_rng(1)
    spot_order = rng.permutation(spots.n_obs)
    cell_order = rng.permutation(reference.n_obs)
    moved = lk.tl.decompose(
        spots[spot_order].copy(), reference=reference[cell_order].copy(), **kwargs
    ).proportions
    # up to rounding: sums over spots and cells are taken in another order
    np.testing.assert_allclose(moved.loc[out.index, out.columns], out, atol=1e-4)


def _sparse_toy(n_cells=20_000, n_spots=5_000, n_genes=1_000, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.choice(["T0", "T1", "T2", "T3"], n_cells)
    reference = ad.AnnData(
        sp.random(n_cells, n_genes, density=0.01, format="csr", dtype=np.float32, random_state=rng) * 10,
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]),
    )
    spots = ad.AnnData(
        sp.random(n_spots, n_genes, density=0.05, format="csr", dtype=np.float32, random_state=rng) * 10,
        var=pd.DataFrame(index=[f"G{g}" for g in range(n_genes)]),
    )
    spots.obs_names = [f"s{i}" for i in range(n_spots)]
    return spots, reference


def test_sparse_reference_and_spots_stay_sparse():
    import tracemalloc

    spots, reference = _sparse_toy()
    dense_ref_mib = reference.n_obs * reference.n_vars * 4 / 2**20  # 76 MiB
    tracemalloc.start()
    try:
        out = lk.tl.decompose(
            spots, reference=reference, cell_type_key="cell_type", inplace=False
        ).proportions
        peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    assert peak < dense_ref_mib / 3, peak
    # spots are decomposed independently: the last block's rows are those of the same spots alone
    tail = lk.tl.decompose(spots[-300:].copy(), reference=reference, cell_type_key="cell_type", inplace=False)
    tail = tail.proportions
    pd.testing.assert_frame_equal(out.iloc[-300:], tail, check_exact=True)
    # the same numbers as from dense input (same sums in the same order and precision)
    small_spots, small_ref = spots[:300].copy(), reference[:3000].copy()
    sparse_out = lk.tl.decompose(small_spots, reference=small_ref, cell_type_key="cell_type", inplace=False)
    small_spots.X, small_ref.X = small_spots.X.toarray(), small_ref.X.toarray()
    dense_out = lk.tl.decompose(small_spots, reference=small_ref, cell_type_key="cell_type", inplace=False)
    pd.testing.assert_frame_equal(sparse_out.proportions, dense_out.proportions, check_exact=True)
    assert out.shape == (spots.n_obs, 4)


def test_non_finite_sparse_features_name_their_rows():
    spots, reference, _ = _toy(sparse_x=True)
    x = reference.X.tolil()
    x[7, 3] = np.inf
    reference.X = x.tocsr()
    with pytest.raises(ValueError, match=r"reference features \(X\) contains 1 non-finite.*rows \[7\]"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


def _rare_dominant_type(n_spots=200, n_dominated=8, rare_alpha=0.3, seed=0):
    """Type C is the most probable type in only n_dominated spots (4 %)."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i}" for i in range(40)]
    profiles = rng.gamma(0.6, 4.0, size=(3, 40))
    props = rng.dirichlet([5, 5, rare_alpha], size=n_spots)
    props[:n_dominated] = [0.05, 0.05, 0.9]
    counts = rng.multinomial(10, props)
    spots = ad.AnnData(
        rng.poisson(counts @ profiles).astype(np.float32),
        obs=pd.DataFrame(index=[f"s{i}" for i in range(n_spots)]),
        var=pd.DataFrame(index=genes),
    )
    labels = np.repeat(["A", "B", "C"], 40)
    reference = ad.AnnData(
        rng.poisson(profiles[np.repeat(np.arange(3), 40)]).astype(np.float32),
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(120)]),
        var=pd.DataFrame(index=genes),
    )
    return spots, reference


def test_nms_then_percentile_keeps_a_rare_type_where_it_dominates():
    spots, reference = _rare_dominant_type()
    props, refined, _ = lk.tl.decompose(
        spots,
        reference=reference,
        cell_type_key="cell_type",
        refine="nms",
        normalize="percentile",
        inplace=False,
    )
    wins = props.to_numpy().argmax(axis=1) == 2
    assert 0 < wins.sum() <= 0.05 * spots.n_obs
    assert (refined["C"][wins] > 0).all()
    assert refined["C"].max() == 1.0
    assert (refined["C"][~wins] == 0).all()


def test_nms_warns_about_a_type_that_wins_no_spot(caplog):
    spots, reference = _rare_dominant_type(n_dominated=0, rare_alpha=0.01)
    with caplog.at_level("WARNING", logger="loki"):
        props, refined, _ = lk.tl.decompose(
            spots, reference=reference, cell_type_key="cell_type", refine="nms", inplace=False
        )
    assert (props.to_numpy().argmax(axis=1) != 2).all()
    assert (refined["C"] == 0).all()
    assert "1 cell type is the most probable type of no spot and is 0 in every refined spot" in caplog.text
    assert "'C'" in caplog.text


@pytest.mark.parametrize("method", ["nnls", "mapping"])
def test_spots_without_signal_are_counted_and_warned_about(method, caplog):
    spots, reference, _ = _toy()
    spots.X[[0, 5]] = 0
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=20)
    assert spots.uns["loki"]["loki_proportions"]["n_empty_spots"] == 2
    assert "2 of 80 spots have no signal" in caplog.text
    assert "'s0', 's5'" in caplog.text
    if method == "nnls":
        np.testing.assert_allclose(spots.obsm["loki_proportions"].iloc[[0, 5]], 0.25)
    caplog.clear()
    spots, reference, _ = _toy()
    with caplog.at_level("WARNING", logger="loki"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=20)
    assert spots.uns["loki"]["loki_proportions"]["n_empty_spots"] == 0
    assert "no signal" not in caplog.text


@pytest.mark.parametrize("seed", [None, np.random.default_rng(3), 11])
def test_the_seed_used_is_recorded_and_reproduces_the_run(seed):
    spots, reference, _ = _toy()
    kwargs = {"reference": reference, "cell_type_key": "cell_type", "method": "mapping", "epochs": 20}
    lk.tl.decompose(spots, seed=seed, **kwargs)
    info = spots.uns["loki"]["loki_proportions"]
    assert isinstance(info["seed"], int)
    if isinstance(seed, int):
        assert info["seed"] == seed
    again = lk.tl.decompose(spots, seed=info["seed"], inplace=False, **kwargs).proportions
    pd.testing.assert_frame_equal(again, spots.obsm["loki_proportions"], check_exact=True)
    assert info["min_cells_per_type"] == 2


@pytest.mark.parametrize("sparse_x", [False, True])
def test_nnls_pairs_the_reference_genes_with_the_spots_genes_by_name(sparse_x):
    """Reference and spots list their genes in other orders and each has genes the other lacks: the
    proportions are those of an independent NNLS on the per-type mean profiles over the shared genes,
    both sides taken by gene name in one common order."""
    from scipy.optimize import nnls

    rng = np.random.default_rng(3)
    shared = [f"G{g}" for g in range(30)]
    ref_genes = list(rng.permutation(shared + [f"R{g}" for g in range(6)]))
    spot_genes = list(rng.permutation(shared + [f"S{g}" for g in range(4)]))
    labels = np.repeat(["A", "B", "C"], [25, 15, 10])
    profiles = rng.gamma(0.6, 4.0, size=(3, len(ref_genes)))
    ref_x = rng.poisson(profiles[pd.Categorical(labels).codes]).astype(np.float32)
    reference = ad.AnnData(
        sp.csr_matrix(ref_x) if sparse_x else ref_x,
        obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))]),
        var=pd.DataFrame(index=ref_genes),
    )
    spot_x = rng.poisson(3.0, size=(25, len(spot_genes))).astype(np.float32)
    # noise on every spot gene, plus a mixture of the type profiles on the genes the reference has
    by_name = pd.Index(ref_genes).get_indexer(spot_genes)
    spot_x[:, by_name >= 0] += rng.poisson(
        rng.dirichlet(np.ones(3), 25) * 6 @ profiles[:, by_name[by_name >= 0]]
    )
    spots = ad.AnnData(sp.csr_matrix(spot_x) if sparse_x else spot_x, var=pd.DataFrame(index=spot_genes))
    spots.obs_names = [f"s{i}" for i in range(25)]

    got = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)

    genes = sorted(shared)  # a common order of neither side's
    ref_cols, spot_cols = pd.Index(ref_genes).get_indexer(genes), pd.Index(spot_genes).get_indexer(genes)
    means = np.stack([ref_x[labels == t][:, ref_cols].mean(axis=0) for t in "ABC"]).astype(np.float64)
    weights = np.stack([nnls(means.T, row.astype(np.float64))[0] for row in spot_x[:, spot_cols]])
    assert (weights.sum(axis=1) > 0).all()
    np.testing.assert_allclose(
        got.proportions.to_numpy(), weights / weights.sum(axis=1, keepdims=True), rtol=1e-6, atol=1e-9
    )
    assert sorted(got.record["genes"]) == genes


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_backed_reference_with_genes_in_another_order(tmp_path, fmt):
    """A reference read with backed='r' whose genes the spots list in another order decomposes as in memory
    (h5py refused the unsorted gene indexer of a dense backed matrix)."""
    import anndata as ad
    from scipy import sparse

    rng = np.random.default_rng(0)
    genes = [f"g{i}" for i in range(30)]
    reference = ad.AnnData(
        rng.poisson(3, (200, 30)).astype(np.float32),
        obs={"cell_type": pd.Categorical(rng.choice(list("ABC"), 200))},
    )
    reference.var_names = genes
    if fmt == "csr":
        reference.X = sparse.csr_matrix(reference.X)
    reference.write_h5ad(tmp_path / "reference.h5ad")
    backed = ad.read_h5ad(tmp_path / "reference.h5ad", backed="r")
    spots = ad.AnnData(rng.poisson(3, (20, 30)).astype(np.float32))
    spots.var_names = genes[::-1]
    got, want = spots.copy(), spots.copy()
    lk.tl.decompose(got, reference=backed, cell_type_key="cell_type")
    lk.tl.decompose(want, reference=reference, cell_type_key="cell_type")
    np.testing.assert_allclose(
        got.obsm[lk.Key.PROPORTIONS].to_numpy(), want.obsm[lk.Key.PROPORTIONS].to_numpy()
    )


def test_mapping_same_for_dense_and_sparse_expression():
    """The same values as a dense or a CSR .X give the same mapping (the dense spots used to reach torch
    as a Fortran-ordered, strided tensor whose products rounded differently)."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    spots, reference = sdata.tables["MOB1"], sdata.tables["MOB2"].copy()
    reference.obs["cell_type"] = pd.Categorical(np.array(list("ABCD"))[np.arange(reference.n_obs) % 4])
    dense, csr = spots.copy(), spots.copy()
    dense.X = sp.csr_matrix(spots.X).toarray()
    csr.X = sp.csr_matrix(spots.X)
    for table in (dense, csr):
        lk.tl.decompose(table, reference=reference, cell_type_key="cell_type", method="mapping", epochs=100)
    np.testing.assert_array_equal(
        dense.obsm[lk.Key.PROPORTIONS].to_numpy(), csr.obsm[lk.Key.PROPORTIONS].to_numpy()
    )


def test_inplace_false_returns_the_record_with_the_mapping():
    spots, reference, _ = _toy()
    kwargs = {"reference": reference, "cell_type_key": "cell_type", "method": "mapping", "epochs": 20}
    out = lk.tl.decompose(spots, inplace=False, return_mapping=True, **kwargs)
    assert set(spots.obsm) == {"spatial"}
    assert "loki" not in spots.uns
    lk.tl.decompose(spots, return_mapping=True, **kwargs)
    written = spots.uns["loki"]["loki_proportions"]
    assert out.record.keys() == written.keys()
    np.testing.assert_array_equal(out.record["mapping"], written["mapping"])
    np.testing.assert_array_equal(out.record["loss"], written["loss"])
    pd.testing.assert_frame_equal(out.proportions, spots.obsm["loki_proportions"])


def _log1p(adata, mark=True):
    """``adata`` with ``.X`` normalised to 1e4 per row and log1p-transformed (as scanpy does), counts in a layer."""
    out = adata.copy()
    x = np.asarray(out.X.toarray() if sp.issparse(out.X) else out.X, dtype=np.float64)
    out.layers["counts"] = out.X.copy()
    totals = x.sum(axis=1, keepdims=True)
    out.X = np.log1p(x / np.where(totals > 0, totals, 1) * 1e4).astype(np.float32)
    if mark:
        out.uns["log1p"] = {"base": None}
    return out


@pytest.mark.parametrize("log_side", ["spots", "reference"])
def test_log_expression_against_counts_warns_naming_both_sides_and_their_layers(log_side):
    spots, reference, _ = _toy()
    if log_side == "spots":
        spots = _log1p(spots)
        expected = r"adata\.X holds non-integer values .*\.uns\['log1p'\] is set; reference\.X holds non-negative whole"
    else:  # no .uns['log1p']: the values alone tell
        reference = _log1p(reference, mark=False)
        expected = (
            r"adata\.X holds non-negative whole numbers .*; reference\.X holds non-integer values up to"
        )
    with pytest.warns(lk.LokiWarning, match=expected) as record:
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    message = str(record[0].message)
    layers = ("'counts'", "none") if log_side == "spots" else ("none", "'counts'")
    assert f"adata.layers: {layers[0]}; reference.layers: {layers[1]}" in message
    assert "layer= / reference_layer=" in message
    assert record[0].filename == __file__  # points at the user's call


def test_matching_scales_layers_and_embeddings_do_not_warn_about_scales():
    import warnings

    spots, reference, _ = _toy()
    log_spots, log_reference = _log1p(spots), _log1p(reference)
    scaled = spots.copy()  # normalize_total without the log: NNLS proportions do not change
    scaled.X = scaled.X / scaled.X.sum(axis=1, keepdims=True) * 1e4
    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)
        base = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)
        lk.tl.decompose(log_spots, reference=log_reference, cell_type_key="cell_type", inplace=False)
        via_layer = lk.tl.decompose(
            log_spots, reference=reference, cell_type_key="cell_type", layer="counts", inplace=False
        )
        both_layers = lk.tl.decompose(
            log_spots,
            reference=log_reference,
            cell_type_key="cell_type",
            layer="counts",
            reference_layer="counts",
            inplace=False,
        )
        normalised = lk.tl.decompose(scaled, reference=reference, cell_type_key="cell_type", inplace=False)
        # embeddings are not expression: whole numbers against small non-integers are not checked
        rng = np.random.default_rng(0)
        log_spots.obsm["emb"] = rng.integers(0, 5, size=(log_spots.n_obs, 8)).astype(np.float32)
        log_reference.obsm["emb"] = rng.uniform(0, 3, size=(log_reference.n_obs, 8)).astype(np.float32)
        lk.tl.decompose(
            log_spots,
            reference=log_reference,
            cell_type_key="cell_type",
            use="emb",
            reference_use="emb",
            inplace=False,
        )
    for out in (via_layer, both_layers, normalised):
        np.testing.assert_allclose(out.proportions, base.proportions, atol=1e-5)


def test_integer_cell_types_give_columns_in_numeric_order():
    spots, reference, _ = _toy()
    as_strings = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)
    reference.obs["number"] = (
        reference.obs["cell_type"].map({"T0": 0, "T1": 5, "T2": 10, "T3": 15}).astype(int)
    )
    lk.tl.decompose(spots, reference=reference, cell_type_key="number", key_added="numbers")
    props = spots.obsm["numbers"]
    assert list(props.columns) == ["0", "5", "10", "15"]
    assert spots.uns["loki"]["numbers"]["cell_types"] == ["0", "5", "10", "15"]
    np.testing.assert_allclose(props.to_numpy(), as_strings.proportions[["T0", "T1", "T2", "T3"]].to_numpy())
    # a categorical column keeps its declared order, numbers or not
    reference.obs["declared"] = pd.Categorical(reference.obs["number"], categories=[15, 0, 10, 5])
    out = lk.tl.decompose(spots, reference=reference, cell_type_key="declared", inplace=False)
    assert list(out.proportions.columns) == ["15", "0", "10", "5"]
    # labels that do not compare (numbers and strings) sort as strings
    reference.obs["mixed"] = reference.obs["number"].astype(object).where(reference.obs["number"] != 15, "x")
    out = lk.tl.decompose(spots, reference=reference, cell_type_key="mixed", inplace=False)
    assert list(out.proportions.columns) == ["0", "10", "5", "x"]


@pytest.mark.parametrize("method", ["nnls", "mapping"])
@pytest.mark.parametrize("side", ["spots", "reference"])
def test_negative_expression_warns_naming_the_side_and_its_layers(method, side):
    """Scaled / centred expression (sc.pp.scale) gave near-uniform proportions without a word."""
    spots, reference, _ = _toy()
    target = spots if side == "spots" else reference
    target.layers["counts"] = target.X.copy()
    x = np.log1p(target.X)
    target.X = ((x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-8)).astype(np.float32)
    where = "adata" if side == "spots" else "reference"
    with pytest.warns(
        lk.LokiWarning, match=rf"negative expression values in {where}\.X \(minimum -"
    ) as record:
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=5)
    message = str(record[0].message)
    assert f"{where}.layers: 'counts'" in message
    assert "layer= / reference_layer=" in message
    assert record[0].filename == __file__
    # the counts layer, on the same scale as the other side, does not warn
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)
        lk.tl.decompose(
            spots,
            reference=reference,
            cell_type_key="cell_type",
            inplace=False,
            **({"layer": "counts"} if side == "spots" else {"reference_layer": "counts"}),
        )


def test_genes_differing_only_by_case_are_named():
    spots, reference, _ = _toy()
    # half the reference's symbols in lower case: only the other half was matched, silently
    reference.var_names = [g.lower() if i % 2 else g for i, g in enumerate(reference.var_names)]
    with pytest.warns(
        lk.LokiWarning,
        match=r"20 genes are shared by name, and 20 more differ only by case \(e\.g\. 'G1' / 'g1'",
    ):
        out = lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)
    assert out.record["n_features"] == 20
    # no gene shared by name: the error says how many match ignoring case
    reference.var_names = [g.lower() for g in spots.var_names]
    with pytest.raises(
        ValueError, match=r"No genes are shared.*40 match when case is ignored \(e\.g\. 'G0' / 'g0'"
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)


@pytest.mark.parametrize("kwargs", [{"mode": "cells"}, {"return_mapping": True}])
def test_mapping_options_given_to_nnls_are_warned_about(kwargs):
    """A Tangram user's mode='cells' (tangram-sc's default) fell through to NNLS silently."""
    spots, reference, _ = _toy()
    name = next(iter(kwargs))
    match = rf"{name}=\S+ applies to method='mapping' only; method='nnls' \(the default for expression"
    with pytest.warns(lk.LokiWarning, match=match):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", **kwargs)
    assert spots.uns["loki"]["loki_proportions"]["method"] == "nnls"


def test_mapping_options_warning_agrees_in_number_and_names_a_chosen_nnls_as_such():
    """It read "mode='cells' apply to ... (the default)", also when method='nnls' was passed."""
    spots, reference, _ = _toy()
    kwargs = {"reference": reference, "cell_type_key": "cell_type", "inplace": False}
    with pytest.warns(
        lk.LokiWarning,
        match=r"mode='cells' and return_mapping=True apply to method='mapping' only; method='nnls' "
        r"\(the default for expression, use='X'\) ignores them\.",
    ):
        lk.tl.decompose(spots, mode="cells", return_mapping=True, **kwargs)
    with pytest.warns(lk.LokiWarning, match=r"applies to method='mapping' only; method='nnls' ignores it\."):
        lk.tl.decompose(spots, method="nnls", mode="cells", **kwargs)


def test_mapping_settings_are_recorded_as_numbers_and_no_prior_means_no_density_term():
    """Without a density prior lambda_d does not enter the fit and is recorded as 0: the fit is the one
    of lambda_d=0 under the uniform prior. numpy numbers are recorded as Python ones."""
    spots, reference, _ = _toy()
    kwargs = {"reference": reference, "cell_type_key": "cell_type", "method": "mapping", "inplace": False}
    settings = {"epochs": np.int64(15), "lr": np.float32(0.05), "lambda_g2": 1, "lambda_r": 0.01}
    without = lk.tl.decompose(spots, density_prior=None, lambda_d=5.0, **settings, **kwargs)
    weightless = lk.tl.decompose(spots, lambda_d=0.0, **settings, **kwargs)
    pd.testing.assert_frame_equal(without.proportions, weightless.proportions, check_exact=True)
    np.testing.assert_array_equal(without.record["loss"], weightless.record["loss"])
    numbers = [without.record[k] for k in ("epochs", "lr", "lambda_g1", "lambda_g2", "lambda_d", "lambda_r")]
    assert numbers == [15, float(np.float32(0.05)), 1.0, 1.0, 0.0, 0.01]  # lambda_d: 0, not 5
    assert [type(v) for v in numbers] == [int] + [float] * 5
    assert (without.record["density_prior"], weightless.record["density_prior"]) == ("none", "uniform")
    with_prior = lk.tl.decompose(spots, lambda_d=5.0, **settings, **kwargs)
    assert with_prior.record["lambda_d"] == 5.0
    assert not np.array_equal(with_prior.record["loss"], without.record["loss"])


def test_tangrams_rna_count_based_prior_is_refused_with_its_equivalent():
    spots, reference, _ = _toy()
    with pytest.raises(ValueError, match=r"got 'rna_count_based'\. For tangram-sc's .*X\.sum\(axis=1\)"):
        lk.tl.decompose(
            spots,
            reference=reference,
            cell_type_key="cell_type",
            method="mapping",
            density_prior="rna_count_based",
        )
    assert _nothing_written(spots)
    # the equivalent runs
    totals = np.asarray(spots.X.sum(axis=1)).ravel()
    lk.tl.decompose(
        spots,
        reference=reference,
        cell_type_key="cell_type",
        method="mapping",
        epochs=5,
        density_prior=totals,
    )
    assert spots.uns["loki"]["loki_proportions"]["density_prior"] == "custom"


@pytest.mark.parametrize("method", ["nnls", "mapping"])
def test_a_cell_type_without_counts_on_the_shared_genes_is_named(method):
    """Its proportions were 0 (NNLS) or arbitrary (mapping) without a word."""
    spots, reference, _ = _toy()
    reference.X[(reference.obs["cell_type"] == "T2").to_numpy()] = 0
    with pytest.warns(
        lk.LokiWarning,
        match=r"1 cell type has no counts on the shared genes in the reference: 'T2'\. Its proportions",
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=5)
    assert list(spots.obsm["loki_proportions"].columns) == ["T0", "T1", "T2", "T3"]
    reference.X[(reference.obs["cell_type"] == "T3").to_numpy()] = 0
    with pytest.warns(
        lk.LokiWarning, match=r"2 cell types have no counts on the shared genes .*'T2', 'T3'\. Their"
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=5)


def test_a_cell_type_with_all_zero_embeddings_is_named_without_a_gene_remedy():
    """The message said "Use more genes (a panel may miss their markers)" for embeddings too."""
    spots, reference, _ = _embedded_toy()
    reference.obsm["loki_text"][(reference.obs["cell_type"] == "T2").to_numpy()] = 0
    with pytest.warns(
        lk.LokiWarning,
        match=r"1 cell type has an all-zero embedding in the reference: 'T2'\. Its proportions are 0 in "
        r"every spot\. Embed the reference cells again \(reference_use names the \.obsm key read\) or "
        r"drop it\.",
    ):
        lk.tl.decompose(
            spots,
            reference=reference,
            cell_type_key="cell_type",
            use="loki_image",
            method="nnls",
            inplace=False,
        )


def test_a_missing_layer_points_at_raw_when_there_is_one():
    spots, reference, _ = _toy()
    reference.raw = reference.copy()
    with pytest.raises(
        KeyError, match=r"reference\.raw holds 40 genes; it is not read: pass reference\.raw\.to_adata\(\)"
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", reference_layer="raw")
    assert _nothing_written(spots)


@pytest.mark.parametrize("method", ["nnls", "mapping"])
def test_fewer_shared_genes_than_cell_types_is_warned_about(method):
    """A reference sharing 3 genes with the spots for 4 types (e.g. another nomenclature that
    matches a few symbols): any of many mixtures fits every spot, and proportions came back
    without a word (on the hippocampus Visium example, 5 shared genes for 17 types)."""
    spots, reference, _ = _toy()
    reference.var_names = [f"G{g}" if g < 3 else f"ENSG{g}" for g in range(reference.n_vars)]
    match = (
        r"profiles of 4 cell types span only 3 dimensions on 3 shared genes \(fewer genes than cell "
        r"types\).*Only 3 of the spots' 40 and the reference's 40 genes are shared"
    )
    with pytest.warns(lk.LokiWarning, match=match):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=5)
    # two types with one profile (a label split in two) cannot be told apart either
    spots, reference, _ = _toy()
    twin = (reference.obs["cell_type"] == "T1").to_numpy()
    reference.X[twin] = reference.X[(reference.obs["cell_type"] == "T0").to_numpy()]
    with pytest.warns(lk.LokiWarning, match=r"span only 3 dimensions.*two types with one profile"):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", method=method, epochs=5)


def test_profiles_spanning_one_dimension_are_named_in_the_singular():
    """One shared gene for four types read "span only 1 dimensions on 1 shared genes"."""
    spots, reference, _ = _toy()
    reference.var_names = [f"G{g}" if g < 1 else f"ENSG{g}" for g in range(reference.n_vars)]
    reference.X[:, 0] += 1  # every type has counts on the shared gene
    with pytest.warns(
        lk.LokiWarning, match=r"4 cell types span only 1 dimension on 1 shared gene \(fewer genes than"
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)


def test_enough_shared_genes_do_not_warn_about_separability():
    spots, reference, _ = _toy()
    with warnings.catch_warnings():
        warnings.simplefilter("error", lk.LokiWarning)
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")


@pytest.mark.parametrize("side", ["reference", "adata"])
def test_no_shared_genes_points_at_a_var_column_holding_the_other_sides_names(side):
    """Ensembl ids as var_names and the symbols in a column (as many atlases are shipped): the error
    only asked whether both were symbols."""
    spots, reference, _ = _toy()
    renamed = reference if side == "reference" else spots
    renamed.var["gene_symbols"] = pd.Categorical(renamed.var_names)
    renamed.var["gene_ids"] = [f"ENSMUSG{g:011d}" for g in range(renamed.n_vars)]
    renamed.var_names = renamed.var["gene_ids"].to_numpy()
    other = "spots'" if side == "reference" else "reference's"
    with pytest.raises(
        ValueError,
        match=rf"{side}\.var\['gene_symbols'\] holds 40 of the {other} gene names: use it as the names, "
        rf"{side}\.var_names = {side}\.var\['gene_symbols'\]\.astype\(str\)",
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)
    renamed.var_names = renamed.var["gene_symbols"].astype(str)
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert spots.uns["loki"]["loki_proportions"]["n_features"] == 40


def test_a_var_column_naming_one_gene_by_chance_is_not_offered_as_the_names():
    spots, reference, _ = _toy()
    reference.var["note"] = ["none"] * (reference.n_vars - 1) + [spots.var_names[0]]
    reference.var_names = [f"ENSMUSG{g:011d}" for g in range(reference.n_vars)]
    with pytest.raises(ValueError, match=r"Are both gene symbols") as info:
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert "var['note']" not in str(info.value)


def test_missing_labels_written_as_text_are_warned_about():
    """obs['cell_type'].astype(str) turns NaN into 'nan': those cells became a cell type 'nan' without
    a word (a real NaN is an error)."""
    spots, reference, _ = _toy()
    labels = reference.obs["cell_type"].astype(object)
    labels.iloc[:5] = np.nan
    reference.obs["cell_type"] = labels.astype(str)
    with pytest.warns(
        lk.LokiWarning, match=r"cells without a real label \(5 labelled 'nan'\).*\.astype\(str\)"
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert "nan" in spots.obsm["loki_proportions"].columns


@pytest.mark.parametrize("side", ["adata", "reference"])
def test_an_anndata_without_x_names_its_layers(side):
    """Counts only in a layer and .X None: the call failed with "'NoneType' object is not subscriptable"."""
    spots, reference, _ = _toy()
    target = spots if side == "adata" else reference
    target.layers["counts"] = target.X.copy()
    target.X = None
    param = "layer" if side == "adata" else "reference_layer"
    with pytest.raises(
        ValueError, match=rf"{side}\.X is None .*pass {param}= one of {side}\.layers: 'counts'"
    ):
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type")
    assert _nothing_written(spots)
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", **{param: "counts"})
    assert spots.obsm["loki_proportions"].shape == (spots.n_obs, 4)


def test_decompose_on_a_scaled_reference_warns_about_the_scale_only():
    spots, reference = spacexr_visium()
    # what sc.pp.normalize_total + log1p + scale leave in .X: every gene centred over the cells
    x = reference.X.toarray()
    x = np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)
    reference.X = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, lk.LokiWarning)]
    assert any("negative expression values in reference.X" in m for m in messages), messages
    # the types' centred profiles sum to zero: a consequence of the scaling, not of the types
    assert not any("span only" in m for m in messages), messages


def test_decompose_with_only_the_spots_scaled_still_names_types_it_cannot_tell_apart():
    rng = np.random.default_rng(0)
    genes = ["g0", "g1", "g2"]
    reference = ad.AnnData(rng.poisson(5, (40, 3)).astype(np.float32), var=pd.DataFrame(index=genes))
    reference.obs["cell_type"] = pd.Categorical(np.repeat(["A", "B", "C", "D"], 10))  # 4 types, 3 genes
    spots = ad.AnnData(rng.poisson(5, (30, 3)).astype(np.float32) - 5.0, var=pd.DataFrame(index=genes))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", inplace=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, lk.LokiWarning)]
    assert any("negative expression values in adata.X" in m for m in messages), messages
    assert any("4 cell types span only 3 dimensions" in m for m in messages), messages


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        (list("abcd"), "'a', 'b', 'c', 'd'"),
        (list("abcde"), "'a', 'b', 'c', 'd', 'e'"),  # exactly five: nothing more to hint at
        (list("abcdef"), "'a', 'b', 'c', 'd', 'e', ..."),
        (pd.Index(list("abcdef")), "'a', 'b', 'c', 'd', 'e', ..."),
    ],
)
def test_few_names_ends_with_dots_only_when_there_are_more(names, shown):
    from loki.tl._decompose_inputs import few

    assert few(names) == shown
