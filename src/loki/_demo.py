"""``loki demo``: every tool end to end on the bundled mouse olfactory bulb sections.

The demo trains ``loki-tiny`` from scratch on MOB1-3 (the published OmiCLIP weights are not shipped),
then evaluates on the held-out MOB4 and on MOB1/MOB2 (and MOB4's H&E image alone, tiled, onto MOB3),
always beside a baseline measured in the same run (the pixel ridge on crops of the squares the model
sees). Its numbers describe a tiny model trained on ~1,200 spots, not the published model. They also
move with torch's CPU thread count (sums split over threads round differently, and training a tiny
model amplifies that: MOB2 -> MOB1's median PCC was 0.679 with 2 threads and 0.605 with 1): compare
runs made with the same number of threads, which ``metrics.tsv`` and ``metrics.md`` record. Runs
with the same seed and thread count are identical.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from loki._utils import check_int

TRAIN = ("MOB1", "MOB2", "MOB3")
TEST = "MOB4"
QUICK_EPOCHS = 2
#: Side in pixels of the pixel-ridge baseline's crops (it block-averages them to ``PixelRidge.side``).
RIDGE_CROP_PX = 32
#: Seeds every consumer of the seed accepts (scikit-learn's and numpy's legacy range).
SEED_RANGE = (0, 2**32 - 1)


class _Table:
    """Rows of the metrics table: step, metric, value, and the baseline measured beside it."""

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, step: str, metric: str, value: float, baseline: str = "", baseline_value: float = np.nan):
        self.rows.append(
            {
                "step": step,
                "metric": metric,
                "value": round(float(value), 4),
                "baseline": baseline,
                "baseline_value": round(float(baseline_value), 4),
            }
        )

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _train(sdata, out: Path, table: _Table, *, field_um: float, seed: int, quick: bool, progress: bool):
    """Train loki-tiny on MOB1-3 on squares of ``field_um``; return the model and torch's thread count."""
    import torch

    import loki as lk

    model = lk.models.load("loki-tiny", device="cpu", seed=seed)
    recipe = dict(lk.models.TINY_RECIPE)
    if quick:
        recipe["epochs"] = QUICK_EPOCHS
    # read when training starts: the trained model, and so every number after it, depends on it
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    model, history = lk.tl.finetune(
        sdata,
        model,
        table_keys=list(TRAIN),
        diameter_um=field_um,
        seed=seed,
        progress=progress,
        **recipe,
    )
    table.add("train", "training pairs (MOB1-3)", history["n_pairs"])
    table.add("train", "epochs", recipe["epochs"])
    table.add("train", "seconds", time.perf_counter() - t0)
    table.add("train", "first epoch loss", history["epoch_loss"][0])
    table.add("train", "last epoch loss", history["epoch_loss"][-1])
    lk.pl.loss_curve(history, save=out / "loss_curve.png", show=False)
    model.save(out / "loki-tiny-mob")
    return model, threads


def _crops(sdata, section: str, size: int, field_um: float) -> np.ndarray:
    """Squares of ``field_um`` around a section's spots at ``size`` px, in table order (no flags written)."""
    import loki as lk

    return np.asarray(lk.pp.spot_patches(sdata, table_key=section, size=size, diameter_um=field_um))


def _ridge_label(ridge, field_um: float) -> str:
    """The pixel ridge's name in the metrics table: the tissue it sees, its pixel grid and its targets."""
    return f"pixel ridge ({field_um:g} µm at {ridge.side}x{ridge.side} px -> {ridge.n_pcs} PCs)"


def _retrieval(sdata, model, out: Path, table: _Table, *, field_um: float, seed: int):
    """Recall@K of MOB4 image -> text beside a pixel ridge fitted on MOB1-3 crops of the same squares."""
    import loki as lk
    from loki.baselines import PixelRidge, log_normalized

    test = sdata.tables[TEST]
    sim = test.obsm[lk.Key.IMAGE] @ test.obsm[lk.Key.TEXT].T
    ks = [0.05, 0.10]
    recall = lk.metrics.recall_at_k(sim, ks)

    ridge = PixelRidge(n_pcs=10, seed=seed).fit(
        np.concatenate([_crops(sdata, s, RIDGE_CROP_PX, field_um) for s in TRAIN]),
        np.concatenate([log_normalized(sdata.tables[s].X) for s in TRAIN]),
    )
    ridge_recall = lk.metrics.recall_at_k(
        ridge.retrieval_similarity(_crops(sdata, TEST, RIDGE_CROP_PX, field_um), log_normalized(test.X)), ks
    )
    random_recall = lk.metrics.recall_at_k(np.random.default_rng(seed).random(sim.shape), ks)
    for k, r, b, c in zip(ks, recall, ridge_recall, random_recall, strict=True):
        table.add("retrieve", f"Recall@{k:.0%} MOB4 image->text", r, _ridge_label(ridge, field_um), b)
        table.add("retrieve", f"Recall@{k:.0%} MOB4 image->text", r, "random ranking", c)

    hits = lk.tl.retrieve(test, test, k=5)
    view = _crops(sdata, TEST, 96, field_um)
    lk.pl.retrieval_gallery(
        hits,
        view,
        view,
        n_queries=4,
        n_hits=5,
        truth=np.arange(test.n_obs),
        save=out / "retrieval_gallery.png",
        show=False,
    )
    return ridge


def _predex(sdata, ridge, out: Path, table: _Table, *, field_um: float):
    import anndata as ad

    import loki as lk
    from loki.baselines import log_normalized

    reference = ad.concat([sdata.tables[s] for s in TRAIN], index_unique="-", merge="same")
    reference.X = log_normalized(reference.X).astype(np.float32)
    test = sdata.tables[TEST]
    measured = log_normalized(test.X)
    pred = lk.tl.predict_expression(
        test, reference, use_query=lk.Key.IMAGE, use_reference=lk.Key.TEXT, top_k=50
    )
    expressed = measured.std(0) > 0
    pcc = np.nanmean(lk.metrics.pearson(measured[:, expressed], np.asarray(pred.X)[:, expressed], axis=0))
    ridge_pred = ridge.predict_expression(_crops(sdata, TEST, RIDGE_CROP_PX, field_um))
    ridge_pcc = np.nanmean(lk.metrics.pearson(measured[:, expressed], ridge_pred[:, expressed], axis=0))
    table.add(
        "predex",
        "mean PCC over genes, MOB4 from MOB1-3 (top-50)",
        pcc,
        _ridge_label(ridge, field_um),
        ridge_pcc,
    )
    train_mean = np.asarray(reference.X.mean(0)).ravel()
    mse = lk.metrics.mse(measured, np.asarray(pred.X))
    table.add(
        "predex",
        "MSE, MOB4 from MOB1-3 (top-50)",
        mse,
        "training mean",
        lk.metrics.mse(measured, np.broadcast_to(train_mean, measured.shape)),
    )
    shown = test.copy()
    shown.X = measured.astype(np.float32)
    top = np.argsort(-np.nan_to_num(lk.metrics.pearson(measured, np.asarray(pred.X), axis=0)))[:3]
    lk.pl.expression(
        shown, list(test.var_names[top]), predicted=pred, save=out / "predex_mob4.png", show=False
    )


#: CPD iteration cap of the demo's alignments, above ``lk.tl.align``'s 200: MOB2 -> MOB1's deformable
#: stage converges at 224 iterations (benchmarks/RESULTS.md, "Do the CPD stages run to convergence?")
ALIGN_MAX_ITER = 1000


def _align(sdata, out: Path, table: _Table, *, seed: int):
    import loki as lk

    lk.tl.align(sdata, source="MOB2", target="MOB1", use=lk.Key.TEXT, seed=seed, max_iter=ALIGN_MAX_ITER)
    scores = lk.metrics.alignment_expression_scores(sdata.tables["MOB2"], sdata.tables["MOB1"])
    before = sdata.tables["MOB2"].copy()
    before.obsm[lk.Key.ALIGNED] = before.obsm[lk.Key.SPATIAL]
    unaligned = lk.metrics.alignment_expression_scores(before, sdata.tables["MOB1"])
    table.add(
        "align",
        "median PCC of HVG expression at aligned spots (MOB2->MOB1)",
        scores["pearson_median"],
        "unaligned",
        unaligned["pearson_median"],
    )
    table.add(
        "align",
        "median Kendall tau at aligned spots (MOB2->MOB1)",
        scores["kendall_tau_median"],
        "unaligned",
        unaligned["kendall_tau_median"],
    )
    lk.pl.alignment(
        sdata, sections=["MOB1", "MOB2"], use=lk.Key.TEXT, save=out / "alignment_mob2_mob1.png", show=False
    )


def _align_image_alone(sdata, model, out: Path, table: _Table, *, field_um: float, seed: int):
    """MOB4's H&E image alone (tiles over its tissue, its spots unused) aligned onto MOB3's transcriptome.

    The rigid part of the alignment is then applied to MOB4's spots, which carry expression, and scored
    like an ST-to-ST alignment.
    """
    import loki as lk
    from loki._utils._affine import apply_matrix

    mpu = sdata.tables[TEST].uns[lk.Key.UNS]["microns_per_unit"]
    key = f"{TEST}_he_tiles"
    tiles = lk.pp.tile_image(
        sdata,
        f"{TEST}_image",
        microns_per_pixel=mpu,
        tile_um=field_um,
        spacing_um=field_um / 2,
        key_added=key,
    )
    lk.tl.embed_image(sdata, model, table_key=key)
    lk.tl.align(
        sdata, source=key, target="MOB3", use=(lk.Key.IMAGE, lk.Key.TEXT), seed=seed, max_iter=ALIGN_MAX_ITER
    )
    matrix = tiles.uns[lk.Key.UNS][lk.Key.ALIGNED]["matrix"]
    spots = sdata.tables[TEST].copy()
    spots.obsm[lk.Key.ALIGNED] = apply_matrix(np.asarray(spots.obsm[lk.Key.SPATIAL])[:, :2], matrix)
    scores = lk.metrics.alignment_expression_scores(spots, sdata.tables["MOB3"])
    unaligned = lk.metrics.alignment_expression_scores(
        spots, sdata.tables["MOB3"], aligned_key=lk.Key.SPATIAL
    )
    for name, measure in (
        ("median PCC of HVG expression", "pearson_median"),
        ("median Kendall tau", "kendall_tau_median"),
    ):
        table.add(
            "align",
            f"{name} at aligned spots (MOB4 H&E alone, {tiles.n_obs} tiles -> MOB3 ST)",
            scores[measure],
            "unaligned",
            unaligned[measure],
        )
    lk.pl.alignment(
        sdata,
        sections=["MOB3", key],
        use=[lk.Key.TEXT, lk.Key.IMAGE],
        save=out / "alignment_he_mob4_mob3.png",
        show=False,
    )


def _decompose(out: Path, table: _Table, *, seed: int):
    import loki as lk

    spots = lk.datasets.synthetic_tissue(n_spots=1500, n_genes=300, n_cell_types=6, seed=seed)
    reference = lk.datasets.synthetic_reference(spots, seed=seed + 1)
    truth = spots.obsm["proportions"]
    lk.tl.decompose(spots, reference=reference, cell_type_key="cell_type", use="X", method="nnls")
    est = spots.obsm[lk.Key.PROPORTIONS][truth.columns].to_numpy()
    uniform = np.full_like(est, 1.0 / est.shape[1])
    # eq. 27: each cell type's spatial distribution against the truth's, averaged over the types (as
    # the tutorial and eval_decompose.py); 1e-12 keeps a type that NNLS gave no spot comparable
    js = float(np.mean(lk.metrics.js_divergence(truth.to_numpy() + 1e-12, est + 1e-12, axis=0)))
    js_uniform = float(np.mean(lk.metrics.js_divergence(truth.to_numpy() + 1e-12, uniform + 1e-12, axis=0)))
    table.add(
        "decompose",
        "mean JS divergence vs truth over cell types (eq. 27; synthetic, NNLS on X)",
        js,
        "uniform proportions",
        js_uniform,
    )
    lk.pl.proportions(spots, save=out / "proportions_synthetic.png", show=False)


def _markdown(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _check_arguments(out: Path, seed) -> None:
    """Refuse a seed out of range and an output path that is a file, before any work."""
    low, high = SEED_RANGE
    check_int(seed, "seed", minimum=low, maximum=high)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{str(out)!r} exists and is not a folder; pass another output folder")


def _run_record(table: _Table, threads: int) -> str:
    """Add torch's CPU thread count of training to the metrics; return a line naming it and the versions."""
    import torch

    import loki as lk

    table.add("demo", "torch CPU threads", threads)
    return (
        f"loki {lk.__version__}, torch {torch.__version__}, {threads} CPU thread(s): the numbers move with "
        "the thread count; compare runs made with the same count.\n\n"
    )


def run_demo(out: str | Path, *, seed: int = 0, quick: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run every loki tool on the bundled data; write figures, metrics and the trained model into ``out``.

    Parameters
    ----------
    out
        Output folder (created; must not be a file).
    seed
        Seed of training, baselines and alignment, from 0 to 2**32 - 1.
    quick
        Train for only a few epochs (a smoke run: its numbers mean nothing).
    progress
        Show progress bars.

    Returns
    -------
    The metrics table (also written to ``out/metrics.tsv`` and ``out/metrics.md``). Its ``demo`` rows
    give the total seconds and torch's CPU thread count during training, on which the numbers
    depend; ``metrics.md`` opens with the loki and torch versions and that thread count. The trained
    model is saved to ``out/loki-tiny-mob``.

    Raises
    ------
    ValueError
        For a seed out of range; nothing is written.
    FileExistsError
        When ``out`` is a file; nothing is written.
    """
    out = Path(out)
    _check_arguments(out, seed)
    import matplotlib

    matplotlib.use("Agg")
    import loki as lk

    out.mkdir(parents=True, exist_ok=True)
    table = _Table()
    t0 = time.perf_counter()
    sdata = lk.datasets.mob()
    for section in (*TRAIN, TEST):
        lk.pp.gene_sentences(sdata, table_key=section)
    # One field of view for all the H&E: the model's patches and tiles, its pixel baseline's crops
    # and the gallery, so that model and baseline see the same tissue.
    field_um = lk.models.TINY_PATCH_UM
    model, threads = _train(sdata, out, table, field_um=field_um, seed=seed, quick=quick, progress=progress)
    for section in (*TRAIN, TEST):
        lk.tl.embed_text(sdata, model, table_key=section)
        lk.tl.embed_image(sdata, model, table_key=section, diameter_um=field_um)
    ridge = _retrieval(sdata, model, out, table, field_um=field_um, seed=seed)
    _predex(sdata, ridge, out, table, field_um=field_um)
    _align(sdata, out, table, seed=seed)
    _align_image_alone(sdata, model, out, table, field_um=field_um, seed=seed)
    _decompose(out, table, seed=seed)
    table.add("demo", "total seconds", time.perf_counter() - t0)
    record = _run_record(table, threads)
    frame = table.frame()
    frame.to_csv(out / "metrics.tsv", sep="\t", index=False)
    note = "quick smoke run: numbers are not meaningful\n\n" if quick else ""
    (out / "metrics.md").write_text(note + record + _markdown(frame))
    return frame
