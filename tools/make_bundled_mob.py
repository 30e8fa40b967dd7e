"""Build the compact mouse olfactory bulb data bundled in ``loki.datasets`` (``lk.datasets.mob()``).

Source: STUtility (MIT licence), ``inst/extdata/counts/`` — four legacy ST sections of the mouse
olfactory bulb (Ståhl et al. 2016, Science), as copied to ``../shared/data/stutility_mob``.

For each section ``MOB{i}`` it writes, under ``src/loki/datasets/data/mob/``:

- ``MOB{i}_counts.npz``: under-tissue spots (``selected == 1``) x genes, raw counts, scipy CSR int32;
- ``MOB{i}_spots.csv``: the spot file rows of those spots (``spot_id`` "XxY", x, y, pixel_x,
  pixel_y, selected), in the row order of the counts;
- ``MOB{i}.jpg``: the H&E image; the source is already a 1905 x 1905 JPEG in the frame of the
  pixel coordinates, so its bytes are copied unchanged (no second lossy encoding) unless
  ``--max-side`` asks for a smaller image, in which case it is resized, re-encoded and the scale is
  recorded as ``image_scale`` in ``manifest.json``;

plus ``genes.csv`` (Ensembl id with version -> gene symbol via STUtility's ``mouse_genes.tsv.gz``;
ids that share a symbol are summed into one column, so symbols stay unique — in this data all
1000 ids map to distinct symbols), ``manifest.json`` and ``LICENSE_ATTRIBUTION.txt``.

Run from the repository root: ``python tools/make_bundled_mob.py [--src DIR] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

SECTIONS = ("MOB1", "MOB2", "MOB3", "MOB4")
ROOT = Path(__file__).resolve().parents[1]

LICENSE = """\
Mouse olfactory bulb legacy Spatial Transcriptomics data bundled with loki
==========================================================================

Data: four sections of the mouse olfactory bulb (MOB1, MOB2 from individual 1; MOB3, MOB4 from
individual 2), legacy Spatial Transcriptomics (100 um spots), as shipped in the STUtility R package.

Original publication:
  Ståhl PL, Salmén F, Vickovic S, et al. Visualization and analysis of gene expression in tissue
  sections by spatial transcriptomics. Science 353(6294):78-82 (2016). doi:10.1126/science.aaf2403

Source repository:
  https://github.com/jbergenstrahle/STUtility  {provenance}
  path inst/extdata/counts/ (MOB{{1..4}}.tsv, alignment_table_MOB{{1..4}}.tsv, MOB{{1..4}}.jpg) and
  inst/extdata/mouse_genes.tsv.gz (Ensembl id -> gene symbol)

Changes made for loki: only spots under tissue (selected == 1) kept; counts stored as sparse
matrices; Ensembl ids mapped to gene symbols (ids kept in genes.csv); images {image_note}.
Built by tools/make_bundled_mob.py.

STUtility licence (DESCRIPTION: "License: MIT + file LICENSE"; LICENSE: "YEAR: 2019,
COPYRIGHT HOLDER: Joseph Bergsntråhle" [sic]):

MIT License

Copyright (c) 2019 Joseph Bergsntråhle

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def gene_table(ensembl_ids: pd.Index, mapping: pd.DataFrame) -> pd.DataFrame:
    """Symbol for each Ensembl id (exact versioned id first, then the id without version)."""
    exact = mapping.set_index("gene_id")["gene_name"]
    base = mapping.assign(base=mapping["gene_id"].str.split(".").str[0]).drop_duplicates("base")
    base = base.set_index("base")["gene_name"]
    symbols = ensembl_ids.map(exact)
    fallback = pd.Index(ensembl_ids.str.split(".").str[0]).map(base)
    symbols = np.where(pd.isna(symbols), fallback, symbols)
    symbols = np.where(pd.isna(symbols), ensembl_ids, symbols)  # unmapped ids keep their id
    return pd.DataFrame({"gene_ids": ensembl_ids, "symbol": symbols.astype(str)})


def collapse_duplicates(
    counts: sparse.csr_matrix, symbols: np.ndarray
) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray]:
    """Sum the columns of ids sharing a symbol; return matrix, unique symbols, column groups."""
    unique, inverse = np.unique(symbols, return_inverse=True)
    order = pd.unique(symbols)  # keep first-appearance order
    pos = {s: i for i, s in enumerate(order)}
    col = np.array([pos[s] for s in unique])[inverse]
    agg = sparse.csr_matrix(
        (np.ones(len(symbols)), (np.arange(len(symbols)), col)), shape=(len(symbols), len(order))
    )
    return (counts @ agg).tocsr(), np.asarray(order), col


def provenance_line(src: Path) -> str:
    """Source commit(s) quoted from the PROVENANCE.txt of the shared copy."""
    text = (src / "PROVENANCE.txt").read_text(encoding="utf-8") if (src / "PROVENANCE.txt").exists() else ""
    commits = re.findall(r"commit ([0-9a-f]{40})", text)
    files_commit = re.findall(r"last changed ([0-9a-f]{40})", text)
    line = f"commit {commits[0]}" if commits else "commit unknown"
    if files_commit:
        line += f" (MOB files last changed in {files_commit[0]})"
    return line


def main(argv: list[str] | None = None) -> None:
    """Write the bundled MOB files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=ROOT.parent / "shared" / "data" / "stutility_mob")
    parser.add_argument("--out", type=Path, default=ROOT / "src" / "loki" / "datasets" / "data" / "mob")
    parser.add_argument("--max-side", type=int, default=None, help="downscale images to this long side")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    args = parser.parse_args(argv)
    src, out = args.src, args.out
    out.mkdir(parents=True, exist_ok=True)

    mapping = pd.read_csv(src / "mouse_genes.tsv.gz", sep="\t")
    genes = None
    manifest = {
        "sections": list(SECTIONS),
        "spot_diameter_um": 100.0,
        "array_step_um": 100.0,
        "image_scale": {},
    }
    for name in SECTIONS:
        counts = pd.read_csv(src / f"{name}.tsv", sep="\t", index_col=0)
        spots = pd.read_csv(src / f"alignment_table_{name}.tsv", sep="\t")
        spots.index = spots["x"].astype(int).astype(str) + "x" + spots["y"].astype(int).astype(str)
        spots.index.name = "spot_id"
        selected = spots.index[spots["selected"] == 1]
        keep = counts.index[counts.index.isin(selected)]
        table = gene_table(pd.Index(counts.columns.astype(str)), mapping)
        if genes is None:
            genes = table
        elif not genes["gene_ids"].equals(table["gene_ids"]):
            raise ValueError(f"{name} has other genes than {SECTIONS[0]}; the bundle assumes one gene list.")
        matrix = sparse.csr_matrix(counts.loc[keep].to_numpy(dtype=np.int32))
        matrix, _, _ = collapse_duplicates(matrix, table["symbol"].to_numpy())
        sparse.save_npz(out / f"{name}_counts.npz", matrix.astype(np.int32), compressed=True)
        spots.loc[keep, ["x", "y", "pixel_x", "pixel_y", "selected"]].rename_axis("spot_id").to_csv(
            out / f"{name}_spots.csv"
        )

        image = src / f"{name}.jpg"
        scale = 1.0
        if args.max_side is None:
            shutil.copyfile(image, out / f"{name}.jpg")
        else:
            from PIL import Image

            with Image.open(image) as img:
                scale = min(1.0, args.max_side / max(img.size))
                size = (round(img.width * scale), round(img.height * scale))
                img.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(
                    out / f"{name}.jpg", quality=args.jpeg_quality
                )
                scale = size[0] / img.width
        manifest["image_scale"][name] = scale
        print(f"{name}: {matrix.shape[0]} spots x {matrix.shape[1]} genes, image scale {scale:.4f}")

    symbols = genes["symbol"].to_numpy()
    _, order, col = collapse_duplicates(sparse.csr_matrix((1, len(symbols))), symbols)
    gene_out = pd.DataFrame(
        {
            "symbol": order,
            "gene_ids": [";".join(genes["gene_ids"].to_numpy()[col == i]) for i in range(len(order))],
        }
    )
    gene_out.to_csv(out / "genes.csv", index=False)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    note = (
        "copied unchanged (1905 x 1905 JPEG)"
        if args.max_side is None
        else f"resized to long side {args.max_side} and re-encoded as JPEG"
    )
    (out / "LICENSE_ATTRIBUTION.txt").write_text(
        LICENSE.format(provenance=provenance_line(src), image_note=note), encoding="utf-8"
    )
    total = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
