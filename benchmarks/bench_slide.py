"""From a whole-slide file to tiles: ``lk.io.read_slide`` (lazy levels) against loading the image whole.

The synthetic slide of ``bench_tiles.py`` (``--side`` px at 0.25 µm per pixel, a tissue ellipse on glass)
is written once as an Aperio SVS-style TIFF: JPEG tiles of 240 px, a baseline and reduced levels at 1/4,
1/16 and 1/64, ``MPP`` in the description. Each method then runs in a fresh process, so that its peak
resident memory is its own:

- loki: ``lk.io.read_slide`` then ``lk.pp.tile_image`` with the pixel size read from the file, then
  every kept tile's patch read from the finest level (``lk.pp.spot_patches``); the patch reading is
  repeated with every level read through tifffile's zarr store instead of loki's tile reader;
- baseline: what loki did with an image file before ``read_slide`` and what a script without a WSI
  reader does: decode the whole baseline into memory (``loki.io._image.read_rgb``, PIL), build the
  SpatialData image from it (``parse_rgb_image``), then the same ``tile_image`` call.

Both must keep the same tiles. Usage: ``flock /tmp/loki_bench.lock python benchmarks/bench_slide.py``
(writes benchmarks/_out/bench_slide.md and a scratch file, by default /tmp/loki_bench_slide.svs).
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

import numpy as np
from _report import write_report
from bench_tiles import MPP, TILE_UM, inside_ellipse, slide_ellipse, slide_region

TILE = 240
STEPS = (1, 4, 16, 64)


def write_svs(path: str, side: int) -> None:
    """Write the synthetic slide tile by tile (never whole in memory) in Aperio's page layout."""
    import tifffile

    ellipse = slide_ellipse(side)

    def tiles(size: int, step: int):
        for y0 in range(0, size, TILE):
            for x0 in range(0, size, TILE):
                tile = np.full((TILE, TILE, 3), 242, np.uint8)
                block = slide_region(y0, min(y0 + TILE, size), x0, min(x0 + TILE, size), ellipse, step)
                tile[: block.shape[1], : block.shape[2]] = np.moveaxis(block, 0, -1)
                yield tile

    description = f"Aperio Image Library (synthetic)\r\n{side}x{side} ({TILE}x{TILE}) JPEG/RGB Q=80|AppMag = 40|MPP = {MPP}"
    options = {
        "tile": (TILE, TILE),
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": 80},
        "metadata": None,
    }
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, step in enumerate(STEPS):
            size = -(-side // step)
            tif.write(
                tiles(size, step),
                shape=(size, size, 3),
                dtype=np.uint8,
                description=description if i == 0 else None,
                **options,
            )
            if i == 0:  # the thumbnail page Aperio puts second
                thumb = np.moveaxis(slide_region(0, side // 64, 0, side // 64, ellipse, 64), 0, -1)
                tif.write(thumb, photometric="rgb", metadata=None)


def _run(method: str, path: str, queue) -> None:
    import loki as lk

    t0 = time.perf_counter()
    if method in ("loki", "zarr"):
        if method == "zarr":  # every level through tifffile's zarr store, as before TileReader
            from loki.io._tiff_tiles import TileReader

            TileReader.supports = staticmethod(lambda page: False)
        sdata = lk.io.read_slide(path, name="slide")
        table = lk.pp.tile_image(sdata, "slide", tile_um=TILE_UM)
    else:
        import spatialdata as sd
        from spatialdata.transformations import Identity

        from loki.io._image import parse_rgb_image, read_rgb

        image = parse_rgb_image(read_rgb(path), {"global": Identity()})
        sdata = sd.SpatialData(images={"slide": image})
        table = lk.pp.tile_image(sdata, "slide", microns_per_pixel=MPP, tile_um=TILE_UM)
    seconds = time.perf_counter() - t0
    patch_s = None
    if method != "whole":  # every kept tile's 224 px patch, read from the slide's finest level
        patches = lk.pp.spot_patches(sdata, table_key="slide_tiles", size=224)
        t0 = time.perf_counter()
        for start in range(0, patches.shape[0], 2048):
            np.asarray(patches[start : start + 2048])
        patch_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put((seconds, peak_mb, table.obsm["spatial"], patch_s))


def measure(method: str, path: str):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(method, path, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=40_000)
    ap.add_argument("--path", default="/tmp/loki_bench_slide.svs", help="scratch slide file (replaced)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "_out" / "bench_slide.md"))
    args = ap.parse_args()

    t0 = time.perf_counter()
    write_svs(args.path, args.side)
    write_s = time.perf_counter() - t0
    size_mb = Path(args.path).stat().st_size / 2**20
    loki_s, loki_mb, loki_xy, loki_patch_s = measure("loki", args.path)
    _, _, _, zarr_patch_s = measure("zarr", args.path)
    base_s, base_mb, base_xy, _ = measure("whole", args.path)
    # Both lay the same grid over the same pixels; they differ only in the mask level they threshold.
    loki_keys = {tuple(xy) for xy in np.round(loki_xy, 3)}
    base_keys = {tuple(xy) for xy in np.round(base_xy, 3)}
    common = loki_keys & base_keys
    inside = inside_ellipse(loki_xy, slide_ellipse(args.side)).mean()

    lines = [
        "### From a slide file to tiles (bench_slide.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, {mp.cpu_count()} cores. "
        f"Synthetic {args.side:,} x {args.side:,} px slide at {MPP} µm/px written as an SVS-style TIFF "
        f"(JPEG tiles of {TILE} px, levels 1, 1/4, 1/16, 1/64; {size_mb:,.0f} MB; writing took {write_s:.0f} s, "
        f"not timed); {TILE_UM:.0f} µm tiles. Each row is a fresh process.",
        "",
        "| what | time | peak resident memory of the process (patch reading included for loki) | ratio (time, memory) |",
        "|---|---|---|---|",
        f"| loki `read_slide` + `tile_image` (pixel size from the file) | {loki_s:.1f} s | {loki_mb:,.0f} MB | 1.0, 1.0 |",
        f"| whole image decoded (PIL) + `parse_rgb_image` + `tile_image` | {base_s:.1f} s | {base_mb:,.0f} MB | "
        f"{base_s / loki_s:.0f}x, {base_mb / loki_mb:.0f}x |",
        "",
        f"Reading every kept tile's 224 px patch (`lk.pp.spot_patches`, materialised in batches of 2,048) from "
        f"the finest level: {loki_patch_s:.1f} s ({len(loki_xy) / loki_patch_s:.0f} patches/s) with loki's tile "
        f"reader, {zarr_patch_s:.1f} s ({len(loki_xy) / zarr_patch_s:.0f} patches/s, {zarr_patch_s / loki_patch_s:.1f}x "
        "slower) with every level read through tifffile's zarr store.",
        "",
        f"- Tiles kept: loki {len(loki_keys):,}, baseline {len(base_keys):,}, {len(common):,} by both "
        f"({len(common) / len(loki_keys | base_keys):.1%} of either's); they differ at the tissue's edge, where "
        "the masks differ (loki thresholds a level stored in the file, read with a stride when none has "
        "1,024-2,048 px; the baseline a level averaged from the full resolution).",
        f"- Kept tiles with their centre inside the tissue ellipse: {inside:.4f}.",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
