"""Accuracy of lk.tl.decompose against exact truth, and agreement with tangram-sc 1.0.4.

Ground truth: a labelled reference of ../shared/data/spacexr_rctd_examples is split per type into
two halves; one half's cells (drawn with replacement to fill the tissue) are placed into a pattern
of regions (lk.pp._pseudo_spots.scatter_cells_in_regions) and pooled into 55 um pseudo-spots
(lk.pp.pseudo_spots, exact proportions); the other half is the reference. The synthetic generator
(lk.datasets.synthetic_tissue / synthetic_reference) gives a third case.

Methods on the same spots: loki mapping (clusters, uniform prior) on expression, loki NNLS on
expression, loki mapping / NNLS on text embeddings (loki-tiny, when the model layer provides it),
a uniform baseline and tangram-sc (clusters, uniform prior) when importable.
Metrics: JS divergence per type over spots (axis 0); SSIM of eq. 25 over each type's whole profile
(lk.metrics.ssim, the paper's), from which the impact score across methods is computed (eqs. 26-30);
the local SSIM on the spot grid averaged over tissue pixels (lk.metrics.ssim_grid) as a spatial
check; per-type Pearson r of proportions between loki mapping and tangram-sc.

Run:  PYTHONPATH=/tmp/tgenv flock /tmp/loki_bench.lock python benchmarks/eval_decompose.py
(tangram-sc installed with `pip install --no-deps --target /tmp/tgenv tangram-sc==1.0.4`; it is not
a dependency of loki.)  Writes benchmarks/_out/eval_decompose.md (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

import loki as lk
from loki.pp._pseudo_spots import scatter_cells_in_regions
from loki.tl._mapping import mapping_to_proportions

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "spacexr_rctd_examples" / "Reference"
DROP = {"Ambiguous", "Unstable"}


def load_reference(name: str) -> ad.AnnData:
    counts = pd.read_csv(DATA / name / "counts.csv", index_col=0)
    types = pd.read_csv(DATA / name / "cell_types.csv", index_col=0).iloc[:, 0]
    obs = pd.DataFrame({"cell_type": types.loc[counts.columns].astype(str).values}, index=counts.columns)
    adata = ad.AnnData(
        sp.csr_matrix(counts.T.values.astype(np.float32)), obs=obs, var=pd.DataFrame(index=counts.index)
    )
    return adata[~adata.obs["cell_type"].isin(DROP)].copy()


def split_case(name: str, n_cells: int, seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    cells = load_reference(name)
    rng = np.random.default_rng(seed)
    spatial_half = np.zeros(cells.n_obs, bool)
    for idx in cells.obs.groupby("cell_type", observed=True).indices.values():
        perm = rng.permutation(idx)
        spatial_half[perm[: len(perm) // 2]] = True
    half, reference = cells[spatial_half].copy(), cells[~spatial_half].copy()
    pick = rng.choice(half.n_obs, n_cells)  # with replacement: fills the tissue
    names = [f"cell{i}" for i in range(n_cells)]
    tissue = ad.AnnData(half.X[pick], obs=half.obs.iloc[pick].set_axis(names), var=half.var)
    xy, _, _ = scatter_cells_in_regions(
        tissue.obs["cell_type"].values, n_regions=8, size=2000.0, seed=seed + 1
    )
    tissue.obsm["spatial"] = xy
    return lk.pp.pseudo_spots(tissue, diameter_um=55.0), reference


def synthetic_case(seed: int) -> tuple[ad.AnnData, ad.AnnData]:
    spots = lk.datasets.synthetic_tissue(1000, 300, 8, seed=seed)
    return spots, lk.datasets.synthetic_reference(spots, 100, seed=seed + 1)


def tangram_proportions(spots: ad.AnnData, reference: ad.AnnData, epochs: int, seed: int) -> pd.DataFrame:
    import tangram as tg

    sc_ad, sp_ad = reference.copy(), spots.copy()
    tg.pp_adatas(sc_ad, sp_ad, genes=None)
    amap = tg.map_cells_to_space(
        sc_ad,
        sp_ad,
        mode="clusters",
        cluster_label="cell_type",
        density_prior="uniform",
        num_epochs=epochs,
        device="cpu",
        random_state=seed,
        verbose=False,
    )
    types = amap.obs["cell_type"].astype(str).to_numpy()
    density = amap.obs["cluster_density"].to_numpy(dtype=float)
    order = sorted(types)
    groups = np.array([order.index(t) for t in types])
    # Same conversion as loki: expected cells per type = mapping x cluster size, normalised per spot.
    props = mapping_to_proportions(np.asarray(amap.X), groups, len(order), density * reference.n_obs)
    return pd.DataFrame(props, index=spots.obs_names, columns=order)


def train_text_model():
    """loki-tiny trained on the bundled MOB sections (the model engineer's recipe); (model, genes) or (None, reason)."""
    try:
        sdata = lk.datasets.mob()
        size = lk.models.load("loki-tiny").image_size
        images, sentences, genes = [], [], set()
        for key in ("MOB1", "MOB2", "MOB3"):
            lk.pp.gene_sentences(sdata, table_key=key)
            images.append(np.asarray(lk.pp.spot_patches(sdata, table_key=key, size=size)))
            sentences += list(sdata.tables[key].obs[lk.Key.SENTENCE])
            genes |= set(sdata.tables[key].var_names)
        model, _ = lk.models.train_tiny(np.concatenate(images), sentences, seed=0, progress=False)
    except Exception as err:  # the model layer is another engineer's; report, do not fail
        return None, f"{type(err).__name__}: {err}"
    return model, genes


def text_embeddings(spots: ad.AnnData, reference: ad.AnnData, model, train_genes) -> str | None:
    """Embed spots and reference cells with the text encoder; returns a reason string when not possible."""
    if model is None:
        return train_genes
    try:
        for adata in (spots, reference):
            lk.pp.gene_sentences(adata)
            lk.tl.embed_text(adata, model)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    overlap = len(set(spots.var_names) & set(train_genes))
    spots.uns["text_note"] = (
        f"{overlap} of the {spots.n_vars} genes occur in loki-tiny's MOB training sentences"
    )
    return None


def score(spots: ad.AnnData, truth: pd.DataFrame, pred: pd.DataFrame) -> tuple[np.ndarray, ...]:
    pred = pred[truth.columns].to_numpy(float)
    true = truth.to_numpy(float)
    js = lk.metrics.js_divergence(true + 1e-12, pred + 1e-12, axis=0)
    ssim = lk.metrics.ssim(true, pred)
    local = lk.metrics.ssim_grid(spots.obsm["spatial"], true, pred)
    return np.asarray(js), np.asarray(ssim), np.asarray(local)


def evaluate(
    case: str,
    spots: ad.AnnData,
    reference: ad.AnnData,
    epochs: int,
    seed: int,
    lines: list[str],
    text_model: tuple = (None, "no model"),
) -> None:
    truth = spots.obsm["proportions"]
    types = sorted(reference.obs["cell_type"].unique())
    truth = truth.reindex(columns=types, fill_value=0.0)
    preds: dict[str, pd.DataFrame] = {}
    times: dict[str, float] = {}

    def run(label: str, **kwargs) -> None:
        t0 = time.perf_counter()
        lk.tl.decompose(
            spots, reference=reference, cell_type_key="cell_type", seed=seed, key_added=label, **kwargs
        )
        times[label] = time.perf_counter() - t0
        preds[label] = spots.obsm[label]

    run("loki mapping (expr)", method="mapping", epochs=epochs)
    run("loki NNLS (expr)", method="nnls")
    run("loki mapping + NMS (expr)", method="mapping", epochs=epochs, refine="nms")
    preds["loki mapping + NMS (expr)"] = spots.obsm["loki mapping + NMS (expr)_refined"]
    reason = text_embeddings(spots, reference, *text_model)
    if reason is None:
        run("loki mapping (text emb)", method="mapping", use="loki_text", epochs=epochs)
        run("loki NNLS (text emb)", method="nnls", use="loki_text")
    preds["uniform"] = pd.DataFrame(1.0 / len(types), index=spots.obs_names, columns=types)
    times["uniform"] = 0.0
    agreement = None
    try:
        t0 = time.perf_counter()
        preds["tangram-sc 1.0.4 (expr)"] = tangram_proportions(spots, reference, epochs, seed)
        times["tangram-sc 1.0.4 (expr)"] = time.perf_counter() - t0
        a = preds["loki mapping (expr)"][types].to_numpy()
        b = preds["tangram-sc 1.0.4 (expr)"][types].to_numpy()
        agreement = np.array([np.corrcoef(a[:, i], b[:, i])[0, 1] for i in range(len(types))])
    except Exception as err:
        lines.append(f"- tangram-sc not run: {type(err).__name__}: {err}")

    js, ssim, local = {}, {}, {}
    for label, pred in preds.items():
        js[label], ssim[label], local[label] = score(spots, truth, pred)
    impact = lk.metrics.impact_score(js, ssim)
    lines.append(
        f"\n**{case}**: {spots.n_obs} pseudo-spots, {len(types)} types, {reference.n_obs} reference cells, "
        f"mean {spots.obs['n_cells'].mean():.1f} cells/spot, {epochs} epochs"
        if "n_cells" in spots.obs
        else f"\n**{case}**: {spots.n_obs} spots, {len(types)} types, {reference.n_obs} reference cells, {epochs} epochs"
    )
    lines.append(
        "\n| method | JS (mean over types, lower better) | SSIM eq. 25 (higher better) | impact | "
        "local SSIM, tissue pixels | time (s) |"
    )
    lines.append("|---|---|---|---|---|---|")
    for label in preds:
        lines.append(
            f"| {label} | {js[label].mean():.3f} | {ssim[label].mean():.3f} | {impact[label]:+.2f} | "
            f"{local[label].mean():.3f} | {times[label]:.1f} |"
        )
    if reason is not None:
        lines.append(f"\n- text-embedding input not run: {reason}")
    else:
        lines.append(f"\n- text embeddings: loki-tiny trained on bundled MOB1-3; {spots.uns['text_note']}")
    if agreement is not None:
        lines.append(
            f"- loki mapping vs tangram-sc, per-type Pearson r of proportions: min {agreement.min():.3f}, "
            f"median {np.median(agreement):.3f} (target >= 0.95)"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--cells", type=int, default=15000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-text", action="store_true", help="skip training loki-tiny for text embeddings")
    parser.add_argument("--out", default=str(Path(__file__).parent / "_out" / "eval_decompose.md"))
    args = parser.parse_args()
    lines = [
        "### Decompose accuracy vs exact truth (eval_decompose.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
        "2 cores shared with other engineers' jobs; torch CPU.",
    ]
    cases = [
        (
            "MERFISH hypothalamus reference (Merfish_Ref), split halves",
            lambda: split_case("Merfish_Ref", args.cells, args.seed),
        ),
        (
            "Hippocampus reference (Visium_Ref), split halves",
            lambda: split_case("Visium_Ref", args.cells, args.seed),
        ),
        ("Synthetic generator (lk.datasets.synthetic_tissue)", lambda: synthetic_case(args.seed)),
    ]
    text_model = (None, "skipped (--no-text)") if args.no_text else train_text_model()
    for case, build in cases:
        spots, reference = build()
        evaluate(case, spots, reference, args.epochs, args.seed, lines, text_model)
        print("\n".join(lines[-12:]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
