"""Real-data evaluation of Loki Annotate, Retrieve and PredEx with loki-tiny (issue 4).

Sections: her2st patient A (A1 with pathologist labels, A2; ../shared/data/her2st_A) and the bundled
mouse olfactory bulb (MOB1-4). Every model used on a section was trained without that section's
labels; held-out sections (retrieval, PredEx) were not seen in training at all:

- her2st: ``model_A1`` = loki-tiny trained on A1's (patch, gene sentence) pairs (no labels) and
  ``model_A2`` likewise on A2. Annotation of A1 uses ``model_A1``; retrieval on A2 and PredEx of A2
  use ``model_A1``; PredEx of A1 uses ``model_A2``.
- MOB: a model trained on MOB1-3 serves retrieval and PredEx on MOB4; ``--mob-folds all`` trains one
  model per held-out section.

Run: flock /tmp/loki_bench.lock python benchmarks/eval_annotate_retrieve_predex.py [--out DIR]
Writes a markdown report (stdout and DIR/eval_annotate_retrieve_predex.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats
from scipy import sparse

import loki as lk
from loki.baselines import pixel_features

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
HER2 = DATA / "her2st_A"

# Marker genes per pathologist class of her2st A1 (HER2+ breast cancer), chosen from textbook markers
# before looking at any result: tumour epithelium (HER2 amplicon + luminal keratins), in situ
# carcinoma (tumour epithelium inside ducts lined by myoepithelium), stroma, fat, normal glands
# (basal / myoepithelial and normal luminal secretory genes) and lymphocytes / plasma cells.
HER2_MARKERS = {
    "invasive cancer": [
        "ERBB2",
        "GRB7",
        "PGAP3",
        "STARD3",
        "KRT19",
        "KRT8",
        "EPCAM",
        "MKI67",
        "TOP2A",
        "CCND1",
    ],
    "cancer in situ": ["ERBB2", "KRT18", "KRT7", "MUC1", "CDH1", "KRT5", "ACTA2", "MYH11", "CNN1", "TP63"],
    "connective tissue": [
        "COL1A1",
        "COL1A2",
        "COL3A1",
        "DCN",
        "LUM",
        "FBLN1",
        "SPARC",
        "POSTN",
        "FN1",
        "MGP",
    ],
    "adipose tissue": ["ADIPOQ", "PLIN1", "FABP4", "LEP", "CIDEA", "LPL", "CD36", "PLIN4", "GPD1", "CFD"],
    "breast glands": [
        "KRT5",
        "KRT14",
        "KRT17",
        "KRT15",
        "ACTA2",
        "MYLK",
        "PIP",
        "SCGB2A2",
        "ANKRD30A",
        "OXTR",
    ],
    "immune infiltrate": [
        "PTPRC",
        "CD3E",
        "CD2",
        "MS4A1",
        "CD79A",
        "IGKC",
        "IGHG1",
        "JCHAIN",
        "CD74",
        "HLA-DRA",
    ],
}


def md_table(df: pd.DataFrame) -> str:
    """A DataFrame as a markdown table (no tabulate dependency)."""
    head = "| " + " | ".join([str(df.index.name or ""), *map(str, df.columns)]) + " |"
    rows = [
        "| " + " | ".join([str(i), *map(str, r)]) + " |" for i, r in zip(df.index, df.to_numpy(), strict=True)
    ]
    return "\n".join([head, "|---" * (df.shape[1] + 1) + "|", *rows])


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- data
def read_her2st(section: str):
    dims = pd.read_csv(HER2 / "images" / "image_dims_from_app_dims_list.csv", index_col="section")
    scale = dims.loc[section, "app_png_width"] / dims.loc[section, "orig_width"]
    return lk.io.read_legacy_st(
        HER2 / "counts" / f"{section}.tsv.gz",
        HER2 / "spotfiles" / f"{section}_selection.tsv",
        HER2 / "images" / f"{section}_HE_image_dark.png",
        name=section,
        image_scale=float(scale),
    )


def her2st_labels(table) -> pd.Series:
    """Pathologist labels of A1 joined to spots by rounding (x, y) to "XxY"; NaN where unlabelled."""
    lab = pd.read_csv(HER2 / "labels" / "A1_labeled_coordinates.tsv", sep="\t").dropna(subset=["x", "y"])
    keys = [f"{round(x)}x{round(y)}" for x, y in zip(lab.x, lab.y, strict=True)]
    lab = pd.Series(lab.label.to_numpy(), index=keys)
    lab = lab[~lab.index.duplicated()]
    return pd.Series(table.obs["spot_id"].astype(str).map(lab).to_numpy(), index=table.obs_names)


def prepare(sdata, key: str, image_size: int) -> np.ndarray:
    """Gene sentences into the table; patches (n, s, s, 3) uint8 returned."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lk.pp.gene_sentences(sdata, table_key=key)
    return np.asarray(lk.pp.spot_patches(sdata, table_key=key, size=image_size))


def lognorm(table, genes=None) -> np.ndarray:
    x = table.X.toarray() if sparse.issparse(table.X) else np.asarray(table.X)
    x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    if genes is not None:
        x = x[:, table.var_names.get_indexer(genes)]
    return x


# ---------------------------------------------------------------------------------------------- model
def train(sections: dict, patches: dict, seed: int):
    """loki-tiny trained from scratch on the given sections' (patch, sentence) pairs (no labels)."""
    images = np.concatenate([patches[k] for k in sections])
    sentences = [s for k in sections for s in sections[k].obs[lk.Key.SENTENCE]]
    t = time.perf_counter()
    model, history = lk.models.train_tiny(images, sentences, seed=seed, progress=False, **RECIPE)
    log(
        f"trained on {list(sections)} ({len(sentences)} pairs) in {time.perf_counter() - t:.0f} s; "
        f"epoch losses {np.round(history['epoch_loss'][:: max(1, len(history['epoch_loss']) // 8)], 3).tolist()}"
    )
    return model


def embed(model, table, patches) -> None:
    table.obsm[lk.Key.IMAGE] = model.encode_images(patches)
    table.obsm[lk.Key.TEXT] = model.encode_texts(list(table.obs[lk.Key.SENTENCE]))


# ------------------------------------------------------------------------------------------ baselines
def ridge_fit_predict(x_train, y_train, x_test, alphas=(0.1, 1.0, 10.0, 100.0, 1000.0)):
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(x_train)
    model = RidgeCV(alphas=alphas).fit(sc.transform(x_train), y_train)
    return model.predict(sc.transform(x_test))


def pixel_ridge_recall(train_patches, train_expr, test_patches, test_expr, ks=(0.05, 0.10)):
    """Ridge from 12x12 pixels to the first 10 expression PCs; rank test spots by cosine in PC space."""
    from sklearn.decomposition import PCA

    pca = PCA(10, random_state=0).fit(train_expr)
    pred = ridge_fit_predict(
        pixel_features(train_patches), pca.transform(train_expr), pixel_features(test_patches)
    )
    true = pca.transform(test_expr)
    sim = lk.tl._annotate.cosine_scores(pred, true)
    return lk.metrics.recall_at_k(sim, list(ks))


# ------------------------------------------------------------------------------------------ sections
def annotation_eval(a1, model_name: str) -> list[str]:
    labels = her2st_labels(a1)
    keep = labels.notna() & (labels != "undetermined")
    y = labels[keep].astype(str).to_numpy()
    out = [f"A1 spots with a pathologist label (not 'undetermined'): {int(keep.sum())} of {a1.n_obs}."]
    rows = []
    for name, use in (
        ("Loki Annotate, H&E patch vs marker sentence", lk.Key.IMAGE),
        ("text-to-text: spot's own gene sentence vs marker sentence", lk.Key.TEXT),
    ):
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always", UserWarning)
            lk.tl.annotate(
                a1, HER2_MARKERS, model=MODELS[model_name], use=use, key_added="ann", label_key="ann_label"
            )
        missing = a1.uns["loki"]["ann"]["missing_markers"]
        pred = a1.obs["ann_label"].astype(str).to_numpy()[keep.to_numpy()]
        rows.append((name, lk.metrics.weighted_f1(y, pred), (pred == y).mean()))
        if use == lk.Key.IMAGE:
            confusion = pd.crosstab(pd.Series(y, name="pathologist"), pd.Series(pred, name="predicted"))
    majority = pd.Series(y).value_counts().idxmax()
    rows.append(
        (
            f"majority class ('{majority}')",
            lk.metrics.weighted_f1(y, np.full(len(y), majority)),
            (y == majority).mean(),
        )
    )
    rng = np.random.default_rng(0)
    perm = np.mean([lk.metrics.weighted_f1(y, rng.permutation(y)) for _ in range(100)])
    rows.append(("label-frequency random (mean of 100 permutations)", perm, float("nan")))
    out += ["", "| method | weighted F1 | accuracy |", "|---|---|---|"]
    out += [f"| {n} | {f:.3f} | {a:.3f} |" for n, f, a in rows]
    out += [
        "",
        f"Markers absent from A1's genes (left out): {missing or 'none'}.",
        "",
        "Confusion (rows pathologist, columns Loki Annotate on patches):",
        "",
        md_table(confusion),
    ]
    return out


def bulk_eval(a1, a2, model_name: str) -> list[str]:
    """Pseudo-bulk of A2's cancer cluster annotates A1 patches; one-sided Wilcoxon inside vs outside."""
    import scanpy as sc

    ad = a2.copy()
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    sc.pp.pca(ad, n_comps=15, random_state=0)
    from sklearn.cluster import KMeans

    ad.obs["cluster"] = KMeans(6, n_init=10, random_state=0).fit_predict(ad.obsm["X_pca"]).astype(str)
    x_erbb2 = ad[:, "ERBB2"].X
    erbb2 = pd.Series(
        np.asarray(x_erbb2.toarray() if sparse.issparse(x_erbb2) else x_erbb2).ravel(), index=ad.obs_names
    )
    sizes = ad.obs["cluster"].value_counts()
    big = sizes.index[sizes >= 0.1 * ad.n_obs]  # ignore tiny outlier clusters
    cancer = erbb2.groupby(ad.obs["cluster"]).mean().loc[big].idxmax()
    bulk = a2[ad.obs["cluster"] == cancer].copy()
    bulk.obs["kind"] = "A2 cancer cluster"
    lk.tl.annotate(
        a1, bulk, model=MODELS[model_name], groupby="kind", key_added="bulk", label_key="bulk_label"
    )
    score = a1.obsm["bulk"].iloc[:, 0]
    sentence = a1.uns["loki"]["bulk"]["sentences"][0]
    # text-to-text control: the same bulk sentence against each spot's own gene-sentence embedding
    lk.tl.annotate(
        a1,
        bulk,
        model=MODELS[model_name],
        groupby="kind",
        use=lk.Key.TEXT,
        key_added="bulk_t",
        label_key="bulk_t_label",
    )
    score_text = a1.obsm["bulk_t"].iloc[:, 0]
    labels = her2st_labels(a1)
    out = [
        f"A2 cancer cluster = k-means cluster {cancer} of 6 on A2 log-expression PCs (highest mean ERBB2 among clusters holding >= 10% of spots), {bulk.n_obs} spots summed.",
        f"Pseudo-bulk sentence (first 20 genes): {' '.join(sentence.split()[:20])}",
        "",
    ]
    out += [
        "| A1 region (pathologist) | item embedding | spots | mean similarity inside | outside | one-sided Wilcoxon rank-sum p |",
        "|---|---|---|---|---|---|",
    ]
    for region in (["invasive cancer"], ["invasive cancer", "cancer in situ"]):
        inside = labels.isin(region).to_numpy()
        for what, sc_ in (
            ("H&E patch (Loki Annotate)", score),
            ("spot's gene sentence (control)", score_text),
        ):
            p = scipy.stats.mannwhitneyu(sc_[inside], sc_[~inside], alternative="greater").pvalue
            out.append(
                f"| {' + '.join(region)} | {what} | {int(inside.sum())} | {sc_[inside].mean():.4f} | {sc_[~inside].mean():.4f} | {p:.2e} |"
            )
    return out


def retrieval_eval(name: str, table, train_patches, train_expr, test_patches, test_expr) -> list[str]:
    sim = lk.tl._annotate.cosine_scores(table.obsm[lk.Key.IMAGE], table.obsm[lk.Key.TEXT])
    loki = lk.metrics.recall_at_k(sim, [0.05, 0.10])
    ridge = pixel_ridge_recall(train_patches, train_expr, test_patches, test_expr)
    # sanity: the tool's chunked top-k agrees with the full matrix for the top hit
    hits = lk.tl.retrieve(table, table, k=1)
    assert (hits["bank_index"].to_numpy() == sim.argmax(1)).all()
    return [
        f"| {name} | {table.n_obs} | {loki[0]:.3f} | {loki[1]:.3f} | 0.050 / 0.100 | {ridge[0]:.3f} / {ridge[1]:.3f} |"
    ]


def predex_fold(name: str, query, ref, q_patches, r_patches, genes) -> dict:
    y = lognorm(query, genes)
    yr = lognorm(ref, genes)
    ref_ad = lk.tl._predict._concat_reference({"r": _with_x(ref, yr, genes)}, genes, lk.Key.TEXT, None)
    res = {}

    varying = np.ptp(y, axis=0) > 0  # PCC is undefined for genes constant in the held-out section

    def score(pred):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            r = lk.metrics.pearson(y[:, varying], np.asarray(pred)[:, varying], axis=0)
            # a constant prediction (e.g. the training mean) has no PCC: count it as 0
            return float(np.mean(np.nan_to_num(r))), lk.metrics.mse(y, pred), int((~varying).sum())

    for label, kw in (
        ("Loki PredEx, all reference spots (eq. 16)", {}),
        ("Loki PredEx, top-50, T=0.05", {"top_k": 50, "temperature": 0.05}),
    ):
        pred = lk.tl.predict_expression(query, ref_ad, genes=genes, **kw).X
        res[label] = score(pred)
    nn_ref = lk.tl._predict._concat_reference({"r": _with_x(ref, yr, genes)}, genes, lk.Key.IMAGE, None)
    res["nearest neighbour (image embedding, top-1)"] = score(
        lk.tl.predict_expression(query, nn_ref, use_reference=lk.Key.IMAGE, genes=genes, top_k=1).X
    )
    res["training mean"] = score(np.broadcast_to(yr.mean(0), y.shape) + 0.0)
    res["ridge from 12x12 raw pixels"] = score(
        ridge_fit_predict(pixel_features(r_patches), yr, pixel_features(q_patches))
    )
    return res


def _with_x(table, x, genes):
    import anndata as ad

    out = ad.AnnData(X=x, obs=pd.DataFrame(index=table.obs_names), var=pd.DataFrame(index=pd.Index(genes)))
    out.obsm[lk.Key.TEXT] = table.obsm[lk.Key.TEXT]
    out.obsm[lk.Key.IMAGE] = table.obsm[lk.Key.IMAGE]
    return out


MODELS: dict = {}
RECIPE: dict = {}  # overrides of lk.models.TINY_RECIPE (``--epochs`` for a smoke run)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/loki_eval_E"))
    parser.add_argument("--mob-folds", default="MOB4", help="'MOB4' or 'all'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override the training epochs (smoke runs)")
    args = parser.parse_args()
    if args.epochs is not None:
        RECIPE["epochs"] = args.epochs
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    size = lk.models.load("loki-tiny").image_size
    report = ["## Issue 4 evaluation: Annotate, Retrieve, PredEx with loki-tiny (real data)", ""]
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    recipe = {**lk.models.TINY_RECIPE, **RECIPE}
    report += [
        f"{date}; 2 cores, 24 GiB, shared with other engineers' processes. Seed {args.seed}; training recipe {recipe}.",
        "",
    ]

    # her2st A1 / A2
    her = {s: read_her2st(s) for s in ("A1", "A2")}
    tabs = {s: her[s].tables[s] for s in her}
    pats = {s: prepare(her[s], s, size) for s in her}
    for s in her:
        MODELS[f"her_{s}"] = train({s: tabs[s]}, {s: pats[s]}, args.seed)
    embed(MODELS["her_A1"], tabs["A1"], pats["A1"])
    report += ["### Marker-gene annotation of her2st A1 (loki-tiny trained on A1's pairs, no labels)", ""]
    report += annotation_eval(tabs["A1"], "her_A1")
    save(args.out, report)
    report += [
        "",
        "### Bulk annotation (paper Fig. 3 style): pseudo-bulk of A2's cancer cluster vs A1 patches",
        "",
    ]
    report += bulk_eval(tabs["A1"], tabs["A2"], "her_A1")
    save(args.out, report)

    genes785 = [
        g.strip() for g in (HER2 / "hist2st_her_hvg_cut_1000_genes.txt").read_text().split() if g.strip()
    ]
    her_genes = [g for g in genes785 if g in tabs["A1"].var_names and g in tabs["A2"].var_names]
    ret_rows, predex = [], {}
    # fold A2 held out: model trained on A1
    a1_m, a2_m = tabs["A1"].copy(), tabs["A2"].copy()
    embed(MODELS["her_A1"], a1_m, pats["A1"])
    embed(MODELS["her_A1"], a2_m, pats["A2"])
    ret_rows += retrieval_eval(
        "her2st A2 (trained on A1)",
        a2_m,
        pats["A1"],
        lognorm(a1_m, her_genes),
        pats["A2"],
        lognorm(a2_m, her_genes),
    )
    predex["her2st A2 (ref A1)"] = predex_fold("A2", a2_m, a1_m, pats["A2"], pats["A1"], her_genes)
    a1_m, a2_m = tabs["A1"].copy(), tabs["A2"].copy()
    embed(MODELS["her_A2"], a1_m, pats["A1"])
    embed(MODELS["her_A2"], a2_m, pats["A2"])
    predex["her2st A1 (ref A2)"] = predex_fold("A1", a1_m, a2_m, pats["A1"], pats["A2"], her_genes)
    save(args.out, [*report, "", "(partial) retrieval rows:", *ret_rows, "", f"(partial) PredEx: {predex}"])

    # MOB
    mob = lk.datasets.mob()
    mtabs = {k: mob.tables[k] for k in ("MOB1", "MOB2", "MOB3", "MOB4")}
    mpats = {k: prepare(mob, k, size) for k in mtabs}
    folds = ["MOB4"] if args.mob_folds == "MOB4" else list(mtabs)
    for held in folds:
        train_keys = [k for k in mtabs if k != held]
        model = train({k: mtabs[k] for k in train_keys}, mpats, args.seed)
        tt = {k: mtabs[k].copy() for k in mtabs}
        for k in tt:
            embed(model, tt[k], mpats[k])
        genes = list(mtabs[held].var_names)
        ref = _concat_tables([tt[k] for k in train_keys], genes)
        rp = np.concatenate([mpats[k] for k in train_keys])
        if held == "MOB4":
            ret_rows += retrieval_eval(
                "MOB4 (trained on MOB1-3)",
                tt[held],
                rp,
                lognorm(ref, genes),
                mpats[held],
                lognorm(tt[held], genes),
            )
        predex[f"MOB {held} (ref others)"] = predex_fold(held, tt[held], ref, mpats[held], rp, genes)

    report += [
        "",
        "### Retrieval (image -> transcriptome, bank = the held-out section's spots, paper eq. 33)",
        "",
    ]
    report += [
        "| held-out section | spots | Recall@5% | Recall@10% | random | pixel ridge @5% / @10% |",
        "|---|---|---|---|---|---|",
    ]
    report += ret_rows
    report += ["", "### PredEx, leave-one-section-out (log-normalised expression)", ""]
    methods = list(next(iter(predex.values())))
    report += [
        "Cells: mean PCC / MSE. A gene whose prediction is constant over the held-out spots (always the case for the training mean) has no PCC and counts as 0.",
        "",
    ]
    report += ["| method | " + " | ".join(predex) + " |", "|---" * (len(predex) + 1) + "|"]
    for m in methods:
        report.append(
            f"| {m} | " + " | ".join(f"{predex[f][m][0]:.3f} / {predex[f][m][1]:.3f}" for f in predex) + " |"
        )
    nconst = {f: next(iter(predex[f].values()))[2] for f in predex}
    report += [
        "",
        f"Genes scored: her2st {len(her_genes)} of the 785-gene list (present in A1 and A2), MOB all 1000; genes constant in the held-out section (PCC undefined, left out of the mean): {nconst}.",
    ]
    report += ["", f"Total run time {time.perf_counter() - t0:.0f} s."]
    text = "\n".join(report)
    (args.out / "eval_annotate_retrieve_predex.md").write_text(text)
    print(text)


def save(out: Path, lines: list[str]) -> None:
    (out / "eval_annotate_retrieve_predex.md").write_text("\n".join(lines))


def _concat_tables(tables, genes):
    import anndata as ad

    x = sparse.vstack([t[:, genes].X for t in tables], format="csr")
    out = ad.AnnData(
        X=x,
        obs=pd.DataFrame(index=[f"{i}_{o}" for i, t in enumerate(tables) for o in t.obs_names]),
        var=pd.DataFrame(index=pd.Index(genes)),
    )
    out.obsm[lk.Key.TEXT] = np.concatenate([t.obsm[lk.Key.TEXT] for t in tables])
    out.obsm[lk.Key.IMAGE] = np.concatenate([t.obsm[lk.Key.IMAGE] for t in tables])
    return out


if __name__ == "__main__":
    main()
