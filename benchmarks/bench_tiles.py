"""Tiling a whole-slide-sized H&E image: ``lk.pp.tile_image`` against a per-tile loop.

A synthetic slide of ``--side`` x ``--side`` pixels at 0.25 µm per pixel (a 40x scan), pink tissue in an
ellipse on white glass with noise, is written once as a 5-level SpatialData pyramid in a zarr store
(1,024 px chunks), as slides converted by spatialdata-io are stored, and read back lazily. Tiles of
55 µm (220 px, the Visium spot size) are laid over it.

- loki: ``lk.pp.tile_image`` end to end (tissue mask on the pyramid level of at most 2,048 px, tissue
  fraction of every candidate tile from a summed-area table, shapes and table built);
- baseline: the per-tile loop a script without a mask level would run, reading each candidate tile
  from the store at full resolution and thresholding its saturation, timed on a random sample of tiles
  and extrapolated.

Both are checked against the ellipse: the fraction of kept tiles whose centre lies inside it.

Usage: ``flock /tmp/loki_bench.lock python benchmarks/bench_tiles.py`` (writes benchmarks/_out/bench_tiles.md
and a scratch store, by default /tmp/loki_bench_slide.zarr).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import shutil
import time
from pathlib import Path

import dask.array as da
import numpy as np
from _report import write_report

import loki as lk

MPP = 0.25
TILE_UM = 55.0


def slide_ellipse(side: int) -> tuple[float, float, float, float]:
    """Centre and radii (y, x) of the synthetic slide's tissue ellipse, in full-resolution pixels."""
    return side * 0.5, side * 0.5, side * 0.35, side * 0.42


def slide_region(y0: int, y1: int, x0: int, x1: int, ellipse, step: int = 1) -> np.ndarray:
    """(3, y, x) uint8 pixels of the synthetic slide; ``step`` samples every step-th pixel (a coarser level)."""
    cy, cx, ry, rx = ellipse
    yy, xx = np.mgrid[y0:y1, x0:x1] * step
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    rng = np.random.default_rng(y0 * 7 + x0)
    out = np.where(inside, np.array([200, 110, 180])[:, None, None], 242).astype(np.int16)
    out = out + rng.integers(-8, 9, out.shape, dtype=np.int16)
    return np.clip(out, 0, 255).astype(np.uint8)


def synthetic_slide(side: int, chunk: int = 1024):
    """Lazy (3, side, side) uint8 slide: tissue ellipse (pink) on glass, with pixel noise."""
    ellipse = slide_ellipse(side)

    def block(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"][1:]
        return slide_region(y0, y1, x0, x1, ellipse)

    chunks = ((3,), *[tuple(min(chunk, side - s) for s in range(0, side, chunk))] * 2)
    return da.map_blocks(block, chunks=chunks, dtype=np.uint8), ellipse


def inside_ellipse(xy: np.ndarray, ellipse) -> np.ndarray:
    cy, cx, ry, rx = ellipse
    return ((xy[:, 1] - cy) / ry) ** 2 + ((xy[:, 0] - cx) / rx) ** 2 <= 1


def per_tile_loop(
    image: da.Array, centres: np.ndarray, tile: float, n: int, seed: int = 0
) -> tuple[float, float]:
    """Seconds per tile of reading each tile at full resolution and thresholding its saturation."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(centres), size=min(n, len(centres)), replace=False)
    half = tile / 2
    t0 = time.perf_counter()
    kept = 0
    for x, y in centres[pick]:
        crop = np.asarray(image[:, int(y - half) : int(y + half), int(x - half) : int(x + half)]).astype(
            np.float32
        )
        hi, lo = crop.max(0), crop.min(0)
        kept += ((hi - lo) / np.maximum(hi, 1) > 0.15).mean() >= 0.5
    return (time.perf_counter() - t0) / len(pick), kept / len(pick)


def main() -> None:
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    from loki.pp._tiles import tile_centres

    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=40_000)
    ap.add_argument("--loop-sample", type=int, default=300)
    ap.add_argument("--store", default="/tmp/loki_bench_slide.zarr", help="zarr store written (and replaced)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "_out" / "bench_tiles.md"))
    args = ap.parse_args()

    pixels, ellipse = synthetic_slide(args.side)
    image = Image2DModel.parse(pixels, dims=("c", "y", "x"), scale_factors=[2, 2, 2, 2, 2], chunks=1024)
    shutil.rmtree(args.store, ignore_errors=True)
    t0 = time.perf_counter()
    sd.SpatialData(images={"slide": image}).write(args.store)
    write_s = time.perf_counter() - t0
    sdata = sd.read_zarr(args.store)
    full = next(iter(sdata.images["slide"]["scale0"].data_vars.values())).data
    t0 = time.perf_counter()
    table = lk.pp.tile_image(sdata, "slide", microns_per_pixel=MPP, tile_um=TILE_UM)
    loki_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    xy = table.obsm["spatial"]
    tile_px = TILE_UM / MPP
    candidates = tile_centres(args.side, args.side, tile_px, tile_px, "square")
    per_tile, loop_kept = per_tile_loop(full, candidates, tile_px, args.loop_sample)
    loop_s = per_tile * len(candidates)
    inside = inside_ellipse(xy, ellipse).mean()
    expected = inside_ellipse(candidates, ellipse).mean()

    lines = [
        "### Tiling a whole-slide-sized image (bench_tiles.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{args.side:,} x {args.side:,} px synthetic slide at {MPP} µm/px, 5-level pyramid in a zarr store (1,024 px chunks), "
        f"{TILE_UM:.0f} µm tiles ({tile_px:.0f} px); writing the store took {write_s:.0f} s (not timed below).",
        "",
        "| what | time | ratio |",
        "|---|---|---|",
        f"| loki `lk.pp.tile_image`: {len(candidates):,} candidate tiles, {table.n_obs:,} kept | {loki_s:.1f} s | 1.0 |",
        f"| per-tile loop at full resolution ({args.loop_sample} tiles timed, extrapolated) | {loop_s:.0f} s | "
        f"{loop_s / loki_s:.0f}x slower |",
        "",
        f"- Peak resident memory of the process (writing the store included): {peak_mb:,.0f} MB.",
        f"- Kept tiles with their centre inside the tissue ellipse: {inside:.4f}; the ellipse holds "
        f"{expected:.1%} of the candidates and the kept tiles are {table.n_obs / len(candidates):.1%} of them.",
        f"- The per-tile loop kept {loop_kept:.1%} of its sample.",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
