"""Train loki-tiny from scratch on MOB1-3 and retrieve transcriptomes from MOB4 patches.

Image -> transcriptome retrieval (paper eq. 33): for each MOB4 patch, the rank of its own spot's text
embedding among all MOB4 text embeddings, divided by the bank size; Recall@5% is the fraction of patches
with quantile <= 0.05. Reported beside a random ranking and a pixel-ridge baseline (ridge regression
from raw 12 x 12 pixels of the same squares the model sees, ``--diameter-um`` around each spot, to the
first 10 expression PCs, fitted on MOB1-3, penalty by cross-validation on MOB1-3; ranking by cosine
similarity of predicted and measured PCs).

Usage::

    flock /tmp/loki_bench.lock python benchmarks/eval_retrieval_mob.py --out benchmarks/_out/retrieval_mob
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np

TRAIN = ("MOB1", "MOB2", "MOB3")
TEST = "MOB4"


def section_pairs(sdata, section: str, size: int, diameter_um: float | None):
    import loki as lk

    lk.pp.gene_sentences(sdata, table_key=section)
    patches = np.asarray(lk.pp.spot_patches(sdata, table_key=section, size=size, diameter_um=diameter_um))
    table = sdata.tables[section]
    return patches, table.obs[lk.Key.SENTENCE].astype(str).tolist(), table


def log_norm(table) -> np.ndarray:
    x = table.X.toarray() if hasattr(table.X, "toarray") else np.asarray(table.X)
    x = x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4
    return np.log1p(x)


def spot_pixels(sdata, section: str, diameter_um: float, side: int = 12) -> np.ndarray:
    """Each spot's ``diameter_um`` square resized to ``side`` x ``side`` RGB, flattened."""
    import loki as lk

    patches = lk.pp.spot_patches(sdata, table_key=section, size=side, diameter_um=diameter_um)
    return np.asarray(patches).reshape(-1, side * side * 3) / 255.0


def pixel_ridge_similarity(train_pix, train_x, test_pix, test_x, n_pcs: int = 10):
    """Cosine similarity of ridge-predicted expression PCs (from pixels) to the spots' own PCs.

    The ridge penalty is chosen by cross-validation on the training sections only.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    pca = PCA(n_pcs, random_state=0).fit(train_x)
    scaler = StandardScaler().fit(train_pix)
    ridge = RidgeCV(alphas=np.logspace(-1, 4, 11)).fit(scaler.transform(train_pix), pca.transform(train_x))
    pred = ridge.predict(scaler.transform(test_pix))
    true = pca.transform(test_x)
    pred /= np.linalg.norm(pred, axis=1, keepdims=True)
    true /= np.linalg.norm(true, axis=1, keepdims=True)
    return pred @ true.T, float(ridge.alpha_)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/_out/retrieval_mob"))
    ap.add_argument("--arch", default="loki-tiny")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument(
        "--diameter-um", type=float, default=None, help="patch side in µm (default lk.models.TINY_PATCH_UM)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import loki as lk

    if args.diameter_um is None:
        args.diameter_um = lk.models.TINY_PATCH_UM
    args.out.mkdir(parents=True, exist_ok=True)
    sdata = lk.datasets.mob()
    probe = lk.models.load(args.arch, device="cpu")
    size = probe.image_size
    t0 = time.perf_counter()
    data = {s: section_pairs(sdata, s, size, args.diameter_um) for s in (*TRAIN, TEST)}
    t_prep = time.perf_counter() - t0
    train_p = np.concatenate([data[s][0] for s in TRAIN])
    train_s = [x for s in TRAIN for x in data[s][1]]
    test_p, test_s, test_table = data[TEST]

    recipe = {
        k: v
        for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch_size", args.batch_size))
        if v is not None
    }
    t0 = time.perf_counter()
    model, history = lk.models.train_tiny(
        train_p, train_s, arch=args.arch, device="cpu", seed=args.seed, progress=False, **recipe
    )
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    img = model.encode_images(test_p)
    txt = model.encode_texts(test_s)
    t_enc = time.perf_counter() - t0
    ks = [0.05, 0.10]
    r_model = lk.metrics.recall_at_k(img @ txt.T, ks)
    rng = np.random.default_rng(args.seed)
    r_random = lk.metrics.recall_at_k(rng.standard_normal((len(test_s), len(test_s))), ks)
    train_x = np.concatenate([log_norm(data[s][2]) for s in TRAIN])
    train_pix = np.concatenate([spot_pixels(sdata, s, args.diameter_um) for s in TRAIN])
    sim_ridge, ridge_alpha = pixel_ridge_similarity(
        train_pix, train_x, spot_pixels(sdata, TEST, args.diameter_um), log_norm(test_table)
    )
    r_ridge = lk.metrics.recall_at_k(sim_ridge, ks)

    lk.pl.loss_curve(history, show=False, save=args.out / "loss_curve.png")
    model.save(args.out / "model")
    result = {
        "recall_at_5pct": {
            args.arch: float(r_model[0]),
            "pixel_ridge": float(r_ridge[0]),
            "random": float(r_random[0]),
        },
        "recall_at_10pct": {
            args.arch: float(r_model[1]),
            "pixel_ridge": float(r_ridge[1]),
            "random": float(r_random[1]),
        },
        "ridge_alpha": ridge_alpha,
        "n_train_pairs": len(train_s),
        "n_test": len(test_s),
        "seconds": {"patches+sentences": t_prep, "train": t_train, "encode_test": t_enc},
        "epoch_loss": history["epoch_loss"],
        "recipe": {
            k: history[k] for k in ("epochs", "lr_max", "batch_size", "weight_decay", "augment", "seed")
        },
        "args": {k: str(v) for k, v in vars(args).items()},
        "n_params": sum(p.numel() for p in model.model.parameters()),
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    md = [
        f"### Retrieval MOB1-3 -> MOB4 ({args.arch}, from scratch) — {date}",
        "",
        f"Machine: 2 CPU cores, 24 GiB, shared with other processes; torch threads {args.threads}. "
        f"{len(train_s)} training pairs (MOB1-3), {len(test_s)} MOB4 queries; patches {args.diameter_um:g} µm "
        f"resized to {size} px; recipe {result['recipe']}.",
        "",
        "| method | Recall@5% | Recall@10% |",
        "|---|---|---|",
    ]
    for m in (args.arch, "pixel_ridge", "random"):
        md.append(f"| {m} | {result['recall_at_5pct'][m]:.3f} | {result['recall_at_10pct'][m]:.3f} |")
    md += [
        "",
        f"pixel_ridge: 12 x 12 px of each {args.diameter_um:g} µm square (the model's) -> 10 expression "
        f"PCs, RidgeCV alpha {ridge_alpha:g}, cosine ranking. random: a random similarity matrix "
        "(expected 0.05 / 0.10).",
        "",
        f"Time: patches+sentences {t_prep:.1f} s, training {t_train:.1f} s "
        f"({history['epochs']} epochs x {history['steps_per_epoch']} steps), encoding MOB4 {t_enc:.1f} s. "
        f"Loss per epoch: {', '.join(f'{v:.3f}' for v in history['epoch_loss'])}.",
        "",
    ]
    (args.out / "section.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
