"""Tiling a whole-slide-sized H&E image: ``lk.pp.tile_image`` against a per-tile loop.

A synthetic slide of ``--side`` x ``--side`` pixels at 0.25 µm per pixel (a 40x scan), pink tissue in an
ellipse on white glass with noise, is written once as a 5-level SpatialData pyramid in a zarr store
(1,024 px chunks), as slides converted by spatialdata-io are stored, and read back lazily. Tiles of
55 µm (220 px, the Visium spot size) are laid over it.

- loki: ``lk.pp.tile_image`` end to end (tissue mask on the pyramid level of at most 2,048 px, tissue
  fraction of every candidate tile from a summed-area table, shapes and table built);
- baseline 1, per-tile reads: the per-tile loop a script without a mask level would run, reading each
  candidate tile from the store at full resolution (one dask slice per tile) and thresholding its
  saturation, timed on a random sample of tiles and extrapolated. Every 1,024 px chunk is decompressed
  again for each of the ~20 tiles touching it, so this baseline is inflated by repeated reads;
- baseline 2, one streaming pass: the same per-pixel saturation threshold at full resolution, with each
  pixel read once (chunk row by chunk row, tile rows cut by a chunk boundary carried over to the next
  chunk row), each candidate tile's tissue fraction by a reshape-sum, timed over the whole image (no
  extrapolation). This is the fair full-resolution baseline.

All are checked against the ellipse (the fraction of kept tiles whose centre lies inside it), the
streaming pass against loki's kept tiles and against the per-tile loop's decisions on its sample.

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
) -> tuple[float, np.ndarray, np.ndarray]:
    """Per-tile reads: seconds per tile of reading each tile from the store and thresholding its saturation.

    Returns the seconds per tile, the sampled tiles (positions in ``centres``) and whether each is kept.
    """
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(centres), size=min(n, len(centres)), replace=False)
    half = tile / 2
    t0 = time.perf_counter()
    kept = np.zeros(len(pick), dtype=bool)
    for i, (x, y) in enumerate(centres[pick]):
        crop = np.asarray(image[:, int(y - half) : int(y + half), int(x - half) : int(x + half)]).astype(
            np.float32
        )
        hi, lo = crop.max(0), crop.min(0)
        kept[i] = ((hi - lo) / np.maximum(hi, 1) > 0.15).mean() >= 0.5
    return (time.perf_counter() - t0) / len(pick), pick, kept


def saturated(block: np.ndarray) -> np.ndarray:
    """``(hi - lo) / max(hi, 1) > 0.15`` per pixel of a ``(3, y, x)`` uint8 block, as in :func:`per_tile_loop`.

    Max and min are taken on the uint8 values and only the ratio is in float32: bit for bit the loop's values.
    """
    hi, lo = block.max(0), block.min(0)
    return (hi - lo).astype(np.float32) / np.maximum(hi, 1).astype(np.float32) > 0.15


def streaming_pass(image: da.Array, tile: int) -> np.ndarray:
    """Tissue fraction of every square tile of ``tile`` px (the ``tile_centres`` grid), reading each pixel once.

    The full-resolution image is read one chunk row at a time (all its columns that tiles cover); the
    mask rows of a tile row cut by the chunk boundary are carried over to the next chunk row, and every
    complete tile row is reduced to per-tile counts by a reshape-sum. Returns a ``(rows, cols)`` array
    of fractions, in the row-major order of ``tile_centres(..., "square")``.
    """
    _, height, width = image.shape
    ny, nx = height // tile, width // tile
    counts = np.empty((ny, nx), dtype=np.int64)
    carry = np.zeros((0, nx * tile), dtype=bool)
    done, y0 = 0, 0
    for rows in image.chunks[1]:
        y1 = min(y0 + rows, ny * tile)  # rows below the last tile row are never read
        if y1 <= y0:
            break
        mask = saturated(np.asarray(image[:, y0:y1, : nx * tile]))
        mask = np.concatenate([carry, mask]) if len(carry) else mask
        n_full = len(mask) // tile
        if n_full:
            counts[done : done + n_full] = (
                mask[: n_full * tile].reshape(n_full, tile, nx, tile).sum(axis=(1, 3), dtype=np.int64)
            )
            done += n_full
        carry = mask[n_full * tile :]
        y0 += rows
    assert done == ny, (done, ny)
    return counts / float(tile * tile)


def slower(ratio: float) -> str:
    """``ratio`` (baseline time over loki's) as "Nx slower", with one decimal below 10."""
    return f"{ratio:.1f}x slower" if ratio < 10 else f"{ratio:.0f}x slower"


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
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
    xy = table.obsm["spatial"]
    tile_px = TILE_UM / MPP
    candidates = tile_centres(args.side, args.side, tile_px, tile_px, "square")
    n_cand = len(candidates)
    loki_kept = np.zeros(n_cand, dtype=bool)
    n_cols = args.side // int(tile_px)
    loki_kept[table.obs["tile_row"].to_numpy() * n_cols + table.obs["tile_col"].to_numpy()] = True
    assert np.allclose(candidates[loki_kept], xy), "loki's tile rows/cols do not match the candidate grid"

    per_tile, pick, loop_kept = per_tile_loop(full, candidates, tile_px, args.loop_sample)
    loop_s = per_tile * n_cand

    assert tile_px == int(tile_px), "the streaming pass needs a whole number of pixels a tile"
    t0 = time.perf_counter()
    fraction = streaming_pass(full, int(tile_px))
    stream_s = time.perf_counter() - t0
    stream_kept = fraction.ravel() >= 0.5
    assert stream_kept.size == n_cand

    in_cand = inside_ellipse(candidates, ellipse)
    inside = in_cand[loki_kept].mean()
    stream_inside = in_cand[stream_kept].mean()
    expected = in_cand.mean()
    same = int((stream_kept == loki_kept).sum())
    both = int((stream_kept & loki_kept).sum())
    only_stream = int((stream_kept & ~loki_kept).sum())
    only_loki = int((~stream_kept & loki_kept).sum())
    loop_vs_stream = int((loop_kept == stream_kept[pick]).sum())

    lines = [
        "### Tiling a whole-slide-sized image (bench_tiles.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
        f"{args.side:,} x {args.side:,} px synthetic slide at {MPP} µm/px, 5-level pyramid in a zarr store (1,024 px chunks), "
        f"{TILE_UM:.0f} µm tiles ({tile_px:.0f} px); writing the store took {write_s:.0f} s (not timed below).",
        "",
        "| what | time | tiles kept | ratio |",
        "|---|---|---|---|",
        f"| loki `lk.pp.tile_image`: {n_cand:,} candidate tiles | {loki_s:.1f} s | {table.n_obs:,} | 1.0 |",
        f"| baseline 1, per-tile reads: one store read per tile at full resolution, each 1,024 px chunk "
        f"decompressed again for every tile touching it ({args.loop_sample} tiles timed, extrapolated) | "
        f"{loop_s:.0f} s | {loop_kept.mean():.1%} of its sample | {slower(loop_s / loki_s)} |",
        f"| baseline 2, one streaming pass: full resolution, each pixel read once (chunk row by chunk row), "
        f"same per-pixel threshold, whole image timed | {stream_s:.1f} s | {int(stream_kept.sum()):,} | "
        f"{slower(stream_s / loki_s)} |",
        "",
        f"- Peak resident memory of the process (writing the store included, before the baselines): "
        f"{peak_mib:,.0f} MiB (ru_maxrss).",
        f"- Kept tiles with their centre inside the tissue ellipse: loki {inside:.4f}, streaming pass "
        f"{stream_inside:.4f}; the ellipse holds {expected:.1%} of the candidates, loki keeps "
        f"{table.n_obs / n_cand:.1%} of them and the streaming pass {stream_kept.mean():.1%}.",
        f"- Streaming pass vs loki: same decision on {same:,} of {n_cand:,} candidates ({same / n_cand:.2%}); "
        f"kept by both {both:,}, only by the streaming pass {only_stream:,}, only by loki {only_loki:,}.",
        f"- Streaming pass vs per-tile reads on the loop's {len(pick)} sampled tiles: same decision on "
        f"{loop_vs_stream} of {len(pick)}.",
        f"- Baseline 1 over baseline 2 (cost of re-reading the chunks tile by tile): {loop_s / stream_s:.1f}x.",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
