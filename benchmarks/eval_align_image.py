"""H&E-to-ST alignment on real MOB sections with a loki-tiny model trained from scratch on MOB1-3.

The source section is described by its H&E patches (``loki_image``), the target by its gene sentences
(``loki_text``): ``lk.tl.align(..., use=("loki_image", "loki_text"))``. Both embeddings come from the
model that ``loki demo`` trains and saves (``<demo out>/loki-tiny-mob``). MOB4 was held out of training.

Part 1, known transforms: MOB4's patches against MOB4's own sentences, the source's coordinates moved
by 30/90/150 deg with and without a mirror and a translation; mean error in spot spacings. Beside it,
the same alignment on coordinates alone (``use=None``).

Part 2, serial pairs without truth (MOB4->MOB3 about 175 deg apart, MOB2->MOB1): median PCC and Kendall's
tau of expression at aligned spots (:func:`loki.metrics.alignment_expression_scores`) for image-to-ST,
text-to-text (ST-to-ST) and coordinates only, with the image-to-ST minus ST-to-ST difference and its
95% paired bootstrap interval.

Part 3, the H&E image alone: the source's image is cut into tiles over its tissue
(:func:`loki.pp.tile_image`, 200 µm squares 100 µm apart), its spots are not used, and the tiles'
image embeddings are aligned onto the target's gene sentences. (a) Known transforms: MOB4's tiles onto
MOB4's own spots moved by 30/90/150 deg with and without a mirror; error of the tiles in spot spacings.
(b) Serial pairs: the rigid part of the tile alignment is applied to the source's spots, which the
alignment never saw, and their expression is scored at the aligned locations beside the rigid parts of
the spot-based image-to-ST and ST-to-ST alignments.

Usage::

    loki demo --out /tmp/demo           # trains and saves loki-tiny-mob
    flock /tmp/loki_bench.lock python benchmarks/eval_align_image.py --model /tmp/demo/loki-tiny-mob
"""

from __future__ import annotations

import argparse
import datetime

import loki as lk
from loki._utils._affine import apply_matrix

SECTIONS = ("MOB1", "MOB2", "MOB3", "MOB4")
USES = {"image-to-ST": (lk.Key.IMAGE, lk.Key.TEXT), "ST-to-ST": lk.Key.TEXT, "coordinates only": None}


def embedded_sections(model) -> tuple:
    """The MOB SpatialData and copies of its four tables with gene sentences, text and image embeddings."""
    sdata = lk.datasets.mob()
    for name in SECTIONS:
        lk.pp.gene_sentences(sdata, table_key=name)
        lk.tl.embed_text(sdata, model, table_key=name)
        lk.tl.embed_image(sdata, model, table_key=name, diameter_um=lk.models.TINY_PATCH_UM)
    return sdata, {name: sdata.tables[name].copy() for name in SECTIONS}


def image_tiles(sdata, model, name: str):
    """Tiles over the tissue of section ``name``'s H&E image, with image embeddings (its spots unused)."""
    mpu = sdata.tables[name].uns[lk.Key.UNS]["microns_per_unit"]
    um = lk.models.TINY_PATCH_UM
    key = f"{name}_he_tiles"
    lk.pp.tile_image(
        sdata, f"{name}_image", microns_per_pixel=mpu, tile_um=um, spacing_um=um / 2, key_added=key
    )
    lk.tl.embed_image(sdata, model, table_key=key)
    return sdata.tables[key].copy()


def _mapped(table, matrix):
    """Copy of ``table`` whose aligned coordinates are its spots moved by the 3x3 ``matrix``."""
    out = table.copy()
    out.obsm[lk.Key.ALIGNED] = apply_matrix(out.obsm[lk.Key.SPATIAL][:, :2], matrix)
    return out


def tiles_known_transforms(tiles, target) -> list[str]:
    rows = ["| rotation | mirror | tiles error | mirror found | tiles |", "|---|---|---|---|---|"]
    for angle in (30.0, 90.0, 150.0):
        for mirror in (False, True):
            moved, truth = lk.datasets.transform_section(
                target, rotation_deg=angle, mirror=mirror, translation=(400.0, -150.0), seed=1
            )
            source = tiles.copy()
            lk.tl.align(source, target=moved, use=USES["image-to-ST"], method="rigid")
            expect = apply_matrix(source.obsm[lk.Key.SPATIAL], truth.matrix)
            err = lk.metrics.alignment_error(source.obsm[lk.Key.ALIGNED], expect, truth.spot_spacing)
            found = source.uns[lk.Key.UNS][lk.Key.ALIGNED]["mirror"]
            rows.append(f"| {angle:.0f} | {mirror} | {err:.4f} | {found == mirror} | {source.n_obs} |")
            print(rows[-1], flush=True)
    return rows


def tiles_serial_pairs(sdata, model, tables) -> list[str]:
    rows = [
        "| pair | tiles | unaligned | H&E alone (tiles) | image-to-ST (spots) | ST-to-ST (spots) "
        "| tiles - spots image-to-ST, PCC [95% CI] | tau [95% CI] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for src, tgt in (("MOB4", "MOB3"), ("MOB2", "MOB1")):
        target, spots = tables[tgt], tables[src]
        tiles = image_tiles(sdata, model, src)
        scores = {"unaligned": lk.metrics.alignment_expression_scores(spots, target, aligned_key="spatial")}
        lk.tl.align(tiles, target=target, use=USES["image-to-ST"])
        scores["tiles"] = lk.metrics.alignment_expression_scores(
            _mapped(spots, tiles.uns[lk.Key.UNS][lk.Key.ALIGNED]["matrix"]), target
        )
        for label in ("image-to-ST", "ST-to-ST"):
            moved = spots.copy()
            lk.tl.align(moved, target=target, use=USES[label])
            matrix = moved.uns[lk.Key.UNS][lk.Key.ALIGNED]["matrix"]
            scores[label] = lk.metrics.alignment_expression_scores(_mapped(spots, matrix), target)
        cells = [f"{src}->{tgt}", str(tiles.n_obs)]
        for label in ("unaligned", "tiles", "image-to-ST", "ST-to-ST"):
            s = scores[label]
            cells.append(f"{s['pearson_median']:.4f} / {s['kendall_tau_median']:.4f} ({s['n_pairs']})")
        for measure in ("pearson", "kendall_tau"):
            d = lk.metrics.paired_median_difference(scores["tiles"], scores["image-to-ST"], measure=measure)
            cells.append(f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def known_transforms(tables: dict) -> list[str]:
    target = tables["MOB4"]
    rows = [
        "| rotation | mirror | image-to-ST error | mirror found | coordinates-only error | mirror found |"
    ]
    rows.append("|---|---|---|---|---|---|")
    for angle in (30.0, 90.0, 150.0):
        for mirror in (False, True):
            cells = [f"{angle:.0f}", str(mirror)]
            for use in (USES["image-to-ST"], None):
                source, truth = lk.datasets.transform_section(
                    target, rotation_deg=angle, mirror=mirror, translation=(400.0, -150.0), seed=1
                )
                lk.tl.align(source, target=target, use=use, method="rigid")
                err = lk.metrics.alignment_error(
                    source.obsm[lk.Key.ALIGNED], truth.coords, truth.spot_spacing
                )
                cells += [f"{err:.4f}", str(source.uns[lk.Key.UNS][lk.Key.ALIGNED]["mirror"])]
            rows.append("| " + " | ".join(cells) + " |")
            print(rows[-1], flush=True)
    return rows


def serial_pairs(tables: dict) -> list[str]:
    rows = [
        "| pair | unaligned | image-to-ST | ST-to-ST | coordinates only "
        "| image - ST PCC [95% CI] | image - ST tau [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for src, tgt in (("MOB4", "MOB3"), ("MOB2", "MOB1")):
        target = tables[tgt]
        scores = {}
        source = tables[src].copy()
        scores["unaligned"] = lk.metrics.alignment_expression_scores(source, target, aligned_key="spatial")
        for label, use in USES.items():
            lk.tl.align(source, target=target, use=use, method="deformable")
            scores[label] = lk.metrics.alignment_expression_scores(source, target)
        cells = [f"{src}->{tgt}"]
        for label in ("unaligned", *USES):
            s = scores[label]
            cells.append(f"{s['pearson_median']:.4f} / {s['kendall_tau_median']:.4f} ({s['n_pairs']})")
        for measure in ("pearson", "kendall_tau"):
            d = lk.metrics.paired_median_difference(
                scores["image-to-ST"], scores["ST-to-ST"], measure=measure
            )
            cells.append(f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]")
        rows.append("| " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="folder written by `loki demo` (loki-tiny-mob)")
    args = ap.parse_args()
    model = lk.models.load(args.model, device="cpu")
    sdata, tables = embedded_sections(model)
    text = [
        f"### H&E-to-ST alignment, MOB, loki-tiny ({datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC)\n"
    ]
    text += ["Known transforms of MOB4 (error in spot spacings):\n", *known_transforms(tables), ""]
    text += ["Serial pairs (median PCC / tau over matched spots, pairs):\n", *serial_pairs(tables), ""]
    tiles = image_tiles(sdata, model, "MOB4")
    text += ["H&E image alone, known transforms of MOB4 (tiles' error in spot spacings):\n"]
    text += [*tiles_known_transforms(tiles, tables["MOB4"]), ""]
    del sdata.tables["MOB4_he_tiles"], sdata.shapes["MOB4_he_tiles_shapes"]
    text += ["H&E image alone, serial pairs (rigid parts applied to the source's spots):\n"]
    text += [*tiles_serial_pairs(sdata, model, tables), ""]
    print("\n".join(text))


if __name__ == "__main__":
    main()
