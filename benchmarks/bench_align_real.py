"""Loki Align on real sections, side by side with PASTE (benchmark environment only).

Usage::

    pip install paste-bio pot   # benchmark only, not a loki dependency
    flock /tmp/loki_bench.lock python benchmarks/bench_align_real.py [--no-paste] [--quick]

Part 1, known transforms: MOB1 (bundled), her2st A1 and Stahl layer 1 moved by 30/90/150 deg, with
and without a mirror, counts thinned to half; mean distance to the truth in spot spacings.
Part 1b, torn sections: the left 87.5%, 70% or 50% of each of those sections (by x) moved by 30 deg, or by
150 deg and mirrored, counts halved, aligned onto the whole section, with ``moving="auto"`` (the target
moves) and ``moving="source"`` (the behaviour before that option existed).
Part 1c, torn on both sides: the source holds the left 80/75/70/65/60% of a section, the target the
right 80/75/70/65/60%, the source moved by 33 deg, or by 137 deg and mirrored, counts halved; loki with
and without ``partial=True``; error over the shared spots.
Part 2, serial pairs without truth (MOB2->MOB1, MOB4->MOB3, A2->A1, Stahl 2->1, 3->2, 4->3, 4->1, and
2->3, the ~137 deg pair in the direction the issue names; ``--pairs`` runs a subset; ``--extra`` adds
her2st A3->A2 .. A6->A5, Stahl 3->1 and 4->2, never used to choose loki's settings): median PCC and
Kendall's tau of the target's 200 most variable genes at aligned locations
(:func:`loki.metrics.alignment_expression_scores`).

Loki Align uses ``use="X_expr"`` (log expression of the target's 1000 most variable shared genes; no
trained OmiCLIP checkpoint is available here) with ``method="deformable"``. PASTE gets the genes of
its tutorial's preprocessing (shared genes with at least 15 counts in each section), ``alpha=0.1``
and ``norm=True`` (coordinates normalised), and its pairwise coupling is turned into coordinates by
its own ``stack_slices_pairwise``, then expressed in the target's frame. For each serial pair the
difference loki - PASTE of each median comes with a 95% paired bootstrap interval over the target's
spots (:func:`loki.metrics.paired_median_difference`, 2,000 samples).
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import numpy as np
from bench_align_data import her2st, mob, stahl, with_shared_embedding

import loki as lk

HERE = Path(__file__).resolve().parent


def paste_genes(source, target, min_counts: int = 15):
    """Shared genes with at least ``min_counts`` counts in each section (PASTE tutorial's gene filter)."""
    shared = target.var_names.intersection(source.var_names)
    counts = [np.asarray(a[:, shared].X.sum(axis=0)).ravel() for a in (source, target)]
    return shared[(counts[0] >= min_counts) & (counts[1] >= min_counts)]


def paste_align(source, target, genes):
    import paste as pst

    s = source[:, genes].copy()
    t = target[:, genes].copy()
    s.obsm["spatial"] = np.asarray(s.obsm["spatial"], dtype=float)
    t.obsm["spatial"] = np.asarray(t.obsm["spatial"], dtype=float)
    pi = pst.pairwise_align(t, s, alpha=0.1, norm=True)
    new_t, new_s = pst.stack_slices_pairwise([t, s], [pi])
    offset = np.asarray(t.obsm["spatial"])[0] - np.asarray(new_t.obsm["spatial"])[0]
    return np.asarray(new_s.obsm["spatial"]) + offset


def loki_align(source, target):
    lk.tl.align(source, target=target, use="X_expr", method="deformable")
    return np.asarray(source.obsm["spatial_aligned"])


SECTIONS = {"MOB1": lambda: mob("MOB1"), "her2st A1": lambda: her2st("A1"), "Stahl 1": lambda: stahl(1)}
# every bundled or shared section, for the torn-section part run on sections never used in development
ALL_SECTIONS = {
    **{f"MOB{i}": (lambda i=i: mob(f"MOB{i}")) for i in range(1, 5)},
    **{f"her2st A{i}": (lambda i=i: her2st(f"A{i}")) for i in range(1, 7)},
    **{f"Stahl {i}": (lambda i=i: stahl(i)) for i in range(1, 5)},
}


def _moved(section, target, angle: float, mirror: bool):
    """``section`` moved by ``angle`` (and mirrored), counts halved, with the embedding shared with ``target``."""
    source, truth = lk.datasets.transform_section(
        section, rotation_deg=angle, mirror=mirror, translation=(50.0, -20.0), thin_counts=0.5, seed=1
    )
    with_shared_embedding(source, target)
    return source, truth


def _paste_error(row: dict, source, target, truth) -> None:
    t = time.perf_counter()
    aligned = paste_align(source, target, paste_genes(source, target))
    row["paste_s"] = time.perf_counter() - t
    row["paste_err"] = lk.metrics.alignment_error(aligned, truth.coords, truth.spot_spacing)


def known_transforms(use_paste: bool, quick: bool):
    rows = []
    angles = (30.0, 150.0) if quick else (30.0, 90.0, 150.0)
    for name, load in SECTIONS.items():
        target = load()
        for angle in angles:
            for mirror in (False, True):
                source, truth = _moved(target, target, angle, mirror)
                t = time.perf_counter()
                ours = loki_align(source, target)
                t_ours = time.perf_counter() - t
                row = {
                    "section": name,
                    "rotation": angle,
                    "mirror": mirror,
                    "loki_err": lk.metrics.alignment_error(ours, truth.coords, truth.spot_spacing),
                    "loki_s": t_ours,
                    "loki_mirror_found": source.uns["loki"]["spatial_aligned"]["mirror"],
                }
                if use_paste:
                    _paste_error(row, source, target, truth)
                rows.append(row)
                print(row, flush=True)
    return rows


def partial_sections(use_paste: bool):
    """Torn sections: the left 87.5%, 70% or 50% of a section (by x), moved, onto the whole section."""
    rows = []
    for name, load in SECTIONS.items():
        target = load()
        xy = np.asarray(target.obsm["spatial"])
        for keep in (0.875, 0.7, 0.5):
            part = target[xy[:, 0] <= np.quantile(xy[:, 0], keep)].copy()
            for angle, mirror in ((30.0, False), (150.0, True)):
                source, truth = _moved(part, target, angle, mirror)
                row = {"section": name, "kept": keep, "rotation": angle, "mirror": mirror}
                for moving in ("auto", "source"):
                    t = time.perf_counter()
                    lk.tl.align(source, target=target, use="X_expr", method="deformable", moving=moving)
                    row[f"loki_{moving}_err"] = lk.metrics.alignment_error(
                        source.obsm["spatial_aligned"], truth.coords, truth.spot_spacing
                    )
                    row[f"loki_{moving}_mirror_found"] = source.uns["loki"]["spatial_aligned"]["mirror"]
                    row[f"loki_{moving}_s"] = time.perf_counter() - t
                if use_paste:
                    _paste_error(row, source, target, truth)
                rows.append(row)
                print(row, flush=True)
    return rows


def serial_pairs(use_paste: bool, only=None, extra: bool = False):
    pairs = [
        ("MOB2->MOB1", lambda: (mob("MOB2"), mob("MOB1"))),
        ("MOB4->MOB3", lambda: (mob("MOB4"), mob("MOB3"))),
        ("A2->A1", lambda: (her2st("A2"), her2st("A1"))),
        ("Stahl 2->1", lambda: (stahl(2), stahl(1))),
        ("Stahl 3->2", lambda: (stahl(3), stahl(2))),
        ("Stahl 4->3", lambda: (stahl(4), stahl(3))),
        ("Stahl 4->1", lambda: (stahl(4), stahl(1))),
        ("Stahl 2->3", lambda: (stahl(2), stahl(3))),
    ]
    if extra:
        # more serial pairs, never used to choose loki's settings
        pairs += [
            (f"A{i + 1}->A{i}", lambda i=i: (her2st(f"A{i + 1}"), her2st(f"A{i}"))) for i in range(2, 6)
        ]
        pairs += [("Stahl 3->1", lambda: (stahl(3), stahl(1))), ("Stahl 4->2", lambda: (stahl(4), stahl(2)))]
    names = [name for name, _ in pairs]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise SystemExit(f"unknown pair(s) {unknown}; pairs are {names}")
    rows = []
    for name, load in pairs:
        if only and name not in only:
            continue
        source, target = load()
        with_shared_embedding(source, target)
        before = lk.metrics.alignment_expression_scores(source, target, aligned_key="spatial")
        t = time.perf_counter()
        loki_align(source, target)
        t_ours = time.perf_counter() - t
        ours = lk.metrics.alignment_expression_scores(source, target)
        info = source.uns["loki"]["spatial_aligned"]
        angle = float(np.degrees(np.arctan2(info["matrix"][1, 0], info["matrix"][0, 0])))
        row = {
            "pair": name,
            "unaligned_pcc": before["pearson_median"],
            "unaligned_tau": before["kendall_tau_median"],
            "loki_pcc": ours["pearson_median"],
            "loki_tau": ours["kendall_tau_median"],
            "loki_pairs": ours["n_pairs"],
            "loki_angle": angle,
            "loki_mirror": info["mirror"],
            "loki_s": t_ours,
        }
        if use_paste:
            t = time.perf_counter()
            source.obsm["paste_aligned"] = paste_align(source, target, paste_genes(source, target))
            row["paste_s"] = time.perf_counter() - t
            pas = lk.metrics.alignment_expression_scores(source, target, aligned_key="paste_aligned")
            row.update(
                paste_pcc=pas["pearson_median"],
                paste_tau=pas["kendall_tau_median"],
                paste_pairs=pas["n_pairs"],
            )
            for measure, short in (("pearson", "pcc"), ("kendall_tau", "tau")):
                d = lk.metrics.paired_median_difference(ours, pas, measure=measure)
                row[f"{short}_diff_ci95"] = f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
        rows.append(row)
        print(row, flush=True)
    return rows


def torn_both_sides(use_paste: bool, sections=None):
    """Sections torn on both sides: the source holds the left ``keep`` of a section (by x), the target
    the right ``keep``; each holds tissue the other lacks. Error over the shared spots."""
    rows = []
    chosen = SECTIONS if sections is None else {n: ALL_SECTIONS[n] for n in sections}
    for name, load in chosen.items():
        whole = load()
        xy = np.asarray(whole.obsm["spatial"])
        for keep in (0.8, 0.75, 0.7, 0.65, 0.6):
            part = whole[xy[:, 0] <= np.quantile(xy[:, 0], keep)].copy()
            target = whole[xy[:, 0] >= np.quantile(xy[:, 0], 1 - keep)].copy()
            for angle, mirror in ((33.0, False), (137.0, True)):
                source, truth = _moved(part, target, angle, mirror)
                shared = np.isin(source.obs_names, target.obs_names)
                row = {
                    "section": name,
                    "kept": keep,
                    "shared": shared.mean(),
                    "rotation": angle,
                    "mirror": mirror,
                }
                for label, partial in (("partial", True), ("default", False)):
                    t = time.perf_counter()
                    lk.tl.align(source, target=target, use="X_expr", method="deformable", partial=partial)
                    row[f"loki_{label}_err"] = lk.metrics.alignment_error(
                        source.obsm["spatial_aligned"][shared], truth.coords[shared], truth.spot_spacing
                    )
                    row[f"loki_{label}_mirror_found"] = source.uns["loki"]["spatial_aligned"]["mirror"]
                    row[f"loki_{label}_s"] = time.perf_counter() - t
                if use_paste:
                    aligned = paste_align(source, target, paste_genes(source, target))
                    row["paste_err"] = lk.metrics.alignment_error(
                        aligned[shared], truth.coords[shared], truth.spot_spacing
                    )
                rows.append(row)
                print(row, flush=True)
    return rows


def _table(rows):
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append(
            "| "
            + " | ".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols)
            + " |"
        )
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-paste", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--part", choices=["both", "known", "partial", "torn2", "pairs"], default="both")
    ap.add_argument("--pairs", nargs="+", default=None, help="serial pairs to run, e.g. 'Stahl 2->3'")
    ap.add_argument("--extra", action="store_true", help="also her2st A3->A2 .. A6->A5, Stahl 3->1 and 4->2")
    ap.add_argument(
        "--sections",
        nargs="+",
        default=None,
        choices=list(ALL_SECTIONS),
        help="torn2: sections (default MOB1, A1, Stahl 1)",
    )
    args = ap.parse_args()
    paste = not args.no_paste
    parts = {
        "known": ("Known transforms (error in spot spacings)", lambda: known_transforms(paste, args.quick)),
        "partial": (
            "Torn sections, part of a section onto the whole (error in spot spacings; `auto` moves the"
            " target, `source` is the previous behaviour)",
            lambda: partial_sections(paste),
        ),
        "torn2": (
            "Sections torn on both sides (error over the shared spots, in spot spacings; `partial` is"
            " `lk.tl.align(..., partial=True)`, `default` the same call without it)",
            lambda: torn_both_sides(paste, args.sections),
        ),
        "pairs": (
            "Serial pairs (median over matched spots)",
            lambda: serial_pairs(paste, args.pairs, args.extra),
        ),
    }
    text = [f"### Loki Align on real sections ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)\n"]
    for name, (heading, run) in parts.items():
        if args.part in ("both", name):
            text += [f"{heading}:\n", _table(run()), ""]
    out = "\n".join(text)
    print(out)
    with open(HERE / "results_align_real.md", "a") as fh:
        fh.write(out + "\n")


if __name__ == "__main__":
    main()
