"""A Visium full-resolution image: ``lk.io.read_visium`` against spatialdata-io's array.

``spatialdata_io.visium(..., fullres_image_file=...)`` reads the full-resolution image through
dask_image: one task reads the whole file under all the blocks of its array, so every compute (a
region, a patch, a pyramid level) decodes the whole file. ``lk.io.read_visium`` reads a TIFF as
``lk.io.read_slide`` does: by tiles or strips, an uncompressed one through a memory map; a jpg or png
(which cannot be read by regions) it decodes once, at the first compute, and holds. This script
builds a Space Ranger folder from scanpy's real test folder
(``/work/shared/data/scanpy_visium_testdata``): its real lowres H&E (600 px) upsampled to full
resolution (13,332 px by default, ``600 / tissue_lowres_scalef``) with uniform noise of +-12 so that
compression has texture to encode, written five ways:

- uncompressed TIFF (tifffile's default layout: one strip),
- zlib-compressed TIFF strips (tifffile's default rows per strip),
- JPEG-compressed TIFF tiles of 512 px,
- a JPEG file (PIL, quality 90),
- a PNG file (PIL's default compression).

Each method and file then runs in a fresh process, so that its peak resident memory is its own:

- loki: ``lk.io.read_visium(folder, fullres_image_file=...)``, two 1,000 x 1,000 px regions of the
  full-resolution image computed one after the other, then ``lk.pp.spot_patches(size=224)`` of the
  folder's 100 spots computed;
- baseline: ``spatialdata_io.visium(folder, fullres_image_file=...)`` (the array loki used before;
  loki kept it lazy for uint8), the same two regions, then the same 100 patches cut from its array
  with the same squares (``loki.pp._patches.crop_patches``, the cropping ``spot_patches`` runs).

Both must give identical pixels. The folder is written by a child process too: on Linux a process
starts with its parent's peak resident memory as its own ``ru_maxrss``, so the parent stays small.
Usage: ``flock /tmp/loki_bench.lock python benchmarks/bench_visium_image.py`` (about 4-5 minutes on 2
cores; writes benchmarks/_out/bench_visium_image.md; the folder lives in a temporary directory,
removed at the end; ``--side`` for another image size).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import platform
import resource
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from queue import Empty

import numpy as np
from _report import write_report

SOURCE = Path("/work/shared/data/scanpy_visium_testdata/1.0.0")
#: file name: (what it is, the options of its writer: tifffile for .tif, PIL for others)
FILES = {
    "uncompressed.tif": ("uncompressed, one strip", {}),
    "zlib.tif": ("zlib strips", {"compression": "zlib"}),
    "jpeg.tif": ("JPEG tiles of 512 px", {"compression": "jpeg", "tile": (512, 512)}),
    "full.jpg": ("jpg file, quality 90", {"quality": 90}),
    "full.png": ("png file", {}),
}
PATCH = 224
REGION = 1000


def build_folder(out: Path, side: int | None) -> tuple[int, dict]:
    """Copy the Space Ranger folder to ``out`` and write its full-resolution H&E as each of ``FILES``.

    The lowres PNG is upsampled (bilinear) to ``side`` px, by default the folder's own full
    resolution (spot positions unchanged); another side rescales the positions and scale factors.
    Returns the side and each file's size in bytes.
    """
    import pandas as pd
    import tifffile
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    shutil.copytree(SOURCE, out)
    sf = json.loads((SOURCE / "spatial" / "scalefactors_json.json").read_text())
    with Image.open(SOURCE / "spatial" / "tissue_lowres_image.png") as img:
        low = img.convert("RGB")
    native = round(low.size[0] / sf["tissue_lowres_scalef"])
    side = side or native
    if side != native:  # positions and scale factors into the new full-resolution pixels
        k = side / native
        pos = pd.read_csv(SOURCE / "spatial" / "tissue_positions_list.csv", header=None)
        pos[[4, 5]] = (pos[[4, 5]] * k).round().astype(int)
        pos.to_csv(out / "spatial" / "tissue_positions_list.csv", header=False, index=False)
        for key in ("spot_diameter_fullres", "fiducial_diameter_fullres"):
            sf[key] *= k
        for key in ("tissue_hires_scalef", "tissue_lowres_scalef"):
            sf[key] /= k
        (out / "spatial" / "scalefactors_json.json").write_text(json.dumps(sf))
    full = np.asarray(low.resize((side, side), Image.BILINEAR)).copy()
    del low
    noise = np.random.default_rng(0).integers(-12, 13, (1024, 1024, 3), dtype=np.int16)
    for y in range(0, side, 1024):  # block by block: a whole int16 copy would need 2 GB
        for x in range(0, side, 1024):
            block = full[y : y + 1024, x : x + 1024]
            block[:] = np.clip(block + noise[: block.shape[0], : block.shape[1]], 0, 255)
    sizes = {}
    for name, (_, options) in FILES.items():
        if name.endswith(".tif"):
            tifffile.imwrite(out / name, full, photometric="rgb", metadata=None, **options)
        else:
            Image.fromarray(full).save(out / name, **options)
        sizes[name] = (out / name).stat().st_size
    return side, sizes


def _build_job(out: str, side: int | None, queue) -> None:
    # in a child process: the parent stays small, and a process started from it inherits its peak
    # resident memory as its own starting ru_maxrss (Linux keeps the high-water mark across fork and exec)
    queue.put(build_folder(Path(out), side))


def regions(side: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y0, x0)`` of the two regions, inside the tissue of the default image."""
    return [(round(side * f), round(side * f)) for f in (0.375, 0.525)]


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _run(method: str, folder: str, file: str, squares, queue) -> None:
    import spatialdata_io

    import loki as lk
    from loki.pp._patches import crop_patches

    base_mb = _rss_mb()  # after the imports, the same for both methods

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "loki":
            sdata = lk.io.read_visium(folder, dataset_id="V1", fullres_image_file=file)
            image = sdata.images["V1_full_image"]["scale0"]["image"]
        else:
            sdata = spatialdata_io.visium(folder, dataset_id="V1", fullres_image_file=file)
            image = sdata.images["V1_full_image"]
            image = image["scale0"]["image"] if hasattr(image, "children") else image
    read_s = time.perf_counter() - t0

    side = image.shape[-1]
    region_s, region_px = [], []
    for y0, x0 in regions(side):
        t0 = time.perf_counter()
        region_px.append(np.asarray(image[:, y0 : y0 + REGION, x0 : x0 + REGION].data))
        region_s.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    if method == "loki":
        patches = lk.pp.spot_patches(sdata, table_key="V1", size=PATCH).compute()
    else:  # loki's squares, cut from spatialdata-io's array
        centers = np.column_stack([squares[:, [0, 2]].mean(1), squares[:, [1, 3]].mean(1)])
        sides = squares[:, 2] - squares[:, 0]
        patches, _ = crop_patches(image.data.transpose(1, 2, 0), centers, sides, PATCH)
    patch_s = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(
        {
            "read_s": read_s,
            "region_s": region_s,
            "patch_s": patch_s,
            "base_mb": base_mb,
            "peak_mb": peak_mb,
            "blocks": int(np.prod(image.data.numblocks)),
            "regions": region_px,
            "patches": patches,
        }
    )


def loki_squares(folder: str, file: str) -> tuple[np.ndarray, dict]:
    """The squares ``(x0, y0, x1, y1)`` in level-0 pixels that ``spot_patches`` cuts, and its parameters."""
    import loki as lk
    from loki.pp._patches import _spot_geometry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sdata = lk.io.read_visium(folder, dataset_id="V1", fullres_image_file=file)
    _, boxes, _, meta = _spot_geometry(sdata, table_key="V1", size=PATCH)
    return boxes, meta


def _squares_job(folder: str, file: str, queue) -> None:
    queue.put(loki_squares(folder, file))


def in_process(target, *args):
    """Run ``target(*args, queue)`` in a fresh (spawned) process and return what it puts."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    while True:  # a child that dies (e.g. out of memory) puts nothing: do not wait for it forever
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():
                raise RuntimeError(
                    f"{target.__name__} exited with {proc.exitcode} before answering"
                ) from None
    proc.join()
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", type=int, default=None, help="full-resolution side in px (default 13,332)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "_out" / "bench_visium_image.md"))
    args = ap.parse_args()

    start = datetime.datetime.now(datetime.UTC)
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loki_bench_visium_") as tmp:
        folder = Path(tmp) / "visium"
        t0 = time.perf_counter()
        side, sizes = in_process(_build_job, str(folder), args.side)
        write_s = time.perf_counter() - t0
        squares, meta = in_process(_squares_job, str(folder), "uncompressed.tif")
        if meta["level"] != 0:
            raise RuntimeError(f"spot_patches cut from level {meta['level']}; the baseline cuts from level 0")
        rows, checks = [], []
        for file, (what, _) in FILES.items():
            res = {m: in_process(_run, m, str(folder), file, squares) for m in ("loki", "baseline")}
            new, old = res["loki"], res["baseline"]
            same = all(np.array_equal(a, b) for a, b in zip(new["regions"], old["regions"], strict=True))
            same &= np.array_equal(new["patches"], old["patches"])
            checks.append(f"{what}: {'identical' if same else 'DIFFERENT'}")
            rows.append((what, sizes[file], new, old))
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    total_s = time.perf_counter() - t_all

    def cells(r: dict) -> str:
        regions_s = " + ".join(f"{s:.2f}" for s in r["region_s"])
        return (
            f"{r['read_s']:.1f} s | {regions_s} s | {r['patch_s']:.2f} s | "
            f"{r['peak_mb']:,.0f} MB (+{r['peak_mb'] - r['base_mb']:,.0f}) | {r['blocks']:,}"
        )

    lines = [
        "### A Visium full-resolution image: TIFFs read block by block, jpg/png decoded once (bench_visium_image.py)",
        "",
        f"{start:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {mp.cpu_count()} cores; whole run {total_s:.0f} s. "
        f"scanpy's Space Ranger test folder with its real lowres H&E upsampled to a {side:,} x {side:,} px "
        f"8-bit RGB full-resolution image (+-12 noise; writing the {len(FILES)} files took {write_s:.0f} s, not "
        f"timed), {meta['diameter_px']:.1f} px spots. Each row is a fresh process: read the folder, compute "
        f"two {REGION:,} x {REGION:,} px regions one after the other, then {len(squares)} spot patches of "
        f"{PATCH} px (loki: `lk.pp.spot_patches(size={PATCH}).compute()`; baseline: the same squares cut "
        "from spatialdata-io's array by the same cropping code). Peak: the process's peak resident memory "
        f"(rise over the imports in brackets; the parent's own peak, which a child starts from, was {parent_mb:,.0f} MB).",
        "",
        "| file | reader | read the folder | 2 regions | patches | peak memory | dask blocks |",
        "|---|---|---|---|---|---|---|",
    ]
    for what, size, new, old in rows:
        lines.append(f"| {what} ({size / 2**20:,.0f} MB) | loki `read_visium` | {cells(new)} |")
        lines.append(f"| | spatialdata-io `visium` | {cells(old)} |")
    lines += [
        "",
        "Ratios, baseline / loki (above 1: loki faster or smaller):",
        "",
        "| file | 2 regions | patches | peak memory (rise) |",
        "|---|---|---|---|",
    ]
    for what, _, new, old in rows:
        rise = (old["peak_mb"] - old["base_mb"]) / max(new["peak_mb"] - new["base_mb"], 1)
        lines.append(
            f"| {what} | {sum(old['region_s']) / sum(new['region_s']):.1f}x | "
            f"{old['patch_s'] / new['patch_s']:.1f}x | {old['peak_mb'] / new['peak_mb']:.2f}x ({rise:.2f}x) |"
        )
    lines += [
        "",
        "Pixels, loki against the baseline (both regions and all patches): " + "; ".join(checks) + ".",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
