"""Time ``lk.io.read_legacy_st`` on the real legacy ST sections of ``../shared/data``.

her2st A1-A6 (~350 spots x ~15,000 genes, gzip; A1 and A2 with their 2000 px H&E) and the STUtility
mouse olfactory bulb MOB1-MOB4 (~1,930 spots x 1,000 genes, with their 1905 px H&E). For each
section: the median of ``--repeats`` calls of the reader, and the median of as many calls of what
reading the counts alone costs without loki, ``pandas.read_csv(counts, sep="\\t", index_col=0)``.
Usage: ``flock /tmp/loki_bench.lock python benchmarks/bench_read_legacy_st.py`` (writes
benchmarks/_out/bench_read_legacy_st.md).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import logging
import platform
import statistics
import time
import warnings
from pathlib import Path

import pandas as pd
from _report import write_report

import loki as lk

SHARED = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()


def sections() -> dict[str, tuple[tuple, dict]]:
    """``{name: (read_legacy_st's positional arguments, its keyword arguments)}`` of every section."""
    her2st, mob = SHARED / "her2st_A", SHARED / "stutility_mob"
    widths = pd.read_csv(her2st / "images" / "image_dims_from_app_dims_list.csv", index_col=0)["orig_width"]
    out = {}
    for name in ("A1", "A2", "A3", "A4", "A5", "A6"):
        args = (her2st / "counts" / f"{name}.tsv.gz", her2st / "spotfiles" / f"{name}_selection.tsv")
        image = her2st / "images" / f"{name}_HE_image_dark.png"  # the app's copies, 2000 px wide
        if image.is_file():
            out[name] = ((*args, image), {"image_scale": 2000 / widths[name]})
        else:
            out[name] = (args, {})
    for name in ("MOB1", "MOB2", "MOB3", "MOB4"):
        args = (mob / f"{name}.tsv", mob / f"alignment_table_{name}.tsv", mob / f"{name}.jpg")
        out[name] = (args, {"array_step_um": 100.0})  # a 2k array
    return out


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=Path(__file__).parent / "_out" / "bench_read_legacy_st.md")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"The real datasets are not available: {SHARED} does not exist.")
    logging.getLogger("loki").setLevel(logging.ERROR)  # MOB's known warnings, once per call
    warnings.simplefilter("ignore")
    lines = [
        f"# read_legacy_st, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"median of {args.repeats}",
        "",
        "| section | spots x genes | image | read_legacy_st (s) | pandas.read_csv of the counts alone (s) |",
        "|---|---|---|---|---|",
    ]
    for name, (positional, keywords) in sections().items():
        read = functools.partial(lk.io.read_legacy_st, *positional, name=name, **keywords)
        table = read().tables[name]  # also warms up
        loki_s = median_seconds(read, args.repeats)
        pandas_s = median_seconds(
            functools.partial(pd.read_csv, positional[0], sep="\t", index_col=0), args.repeats
        )
        image = "yes" if len(positional) == 3 else "no"
        lines.append(f"| {name} | {table.n_obs} x {table.n_vars} | {image} | {loki_s:.2f} | {pandas_s:.2f} |")
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
