"""Where the time of ``loki align`` goes: the command's phases, each run in a fresh process.

A store is built once in a temporary folder, as a user would: the bundled MOB sections MOB1 and MOB2
(``lk.datasets.mob``, each with its H&E image) written with ``sdata.write``, with a joint expression
PCA of the two tables (scanpy: total counts, log1p, 30 components over the shared genes) in
``.obsm['X_pca']`` of both, the cheapest honest embedding to align on (``--use X_pca``; ``--use
none`` aligns the spot coordinates alone). Each run then aligns MOB2 onto MOB1 in a fresh copy of
that store (a first alignment: no earlier shapes to replace), in a fresh Python process started as
the ``loki`` console script starts (``from loki.cli import main``), under ``-X importtime``. The
process times the command's phases by wrapping the functions ``loki.cli`` calls:

- python start and exit: the interpreter's start, until the child's first line, and its finalisation
  once the command returned (the process's wall time, measured by this script, less the time the
  child measured itself; freeing the scientific stack's modules takes most of it);
- imports: every module imported while the command ran (``-X importtime``, top-level imports only),
  whichever phase imported it (spatialdata on the first read, ``loki.tl`` on the first use, ...);
- read the store (``read_store``), the checks and the snapshots of the placements to put back,
  ``lk.tl.align``, and the writes: the aligned shapes, the placements (``write_transformations``)
  and the table (``rewrite_table``), each net of the imports made within it;
- other: the rest (parsing the arguments, the message printed).

Every run must give the same aligned coordinates (the same seed, the same result). A run of the
command without the wrappers (and without ``-X importtime``) gives the plain wall time beside it.
Usage: ``flock /tmp/loki_bench.lock python benchmarks/bench_cli_align.py`` (about 1-2 minutes on 2
cores; ``--runs`` for another number of runs; writes benchmarks/_out/bench_cli_align.md). To time
another checkout, put its ``src`` first on ``PYTHONPATH``: the runs import loki from there.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCE, TARGET = "MOB2", "MOB1"
#: The phases in the order of the table, with the functions of ``loki.cli`` (or of the SpatialData
#: class) whose calls count towards each; a call made within another wrapped call counts to the outer.
PHASES = {
    "read the store": ["cli.read_store"],
    "checks and snapshots": [
        "cli.check_writable",
        "cli._check_table",
        "cli._require_in_store",
        "cli._check_coordinate_system",
        "cli._check_embeddings",
        "cli.transformations",
        "cli.placements",
    ],
    "lk.tl.align": ["tl.align"],
    "write the shapes": ["cli.delete_if_on_disk", "SpatialData.write_element"],
    "write the placements": ["SpatialData.write_transformations"],
    "write the table": ["cli.rewrite_table"],
}
MARK = "@@loki-bench"


def _child(argv: list[str]) -> None:
    """Run ``loki`` with ``argv`` in this process, printing each wrapped call's span to stderr.

    Each span is printed when the call starts and ends, so that the lines of ``-X importtime``
    between the two are the imports the call made.
    """
    print(f"{MARK} start", file=sys.stderr, flush=True)
    start = time.perf_counter()
    active: list[str] = []

    def wrap(owner, attribute: str, phase: str) -> None:
        function = getattr(owner, attribute)

        def timed(*args, **kwargs):
            if active:  # within another wrapped call: counted there
                return function(*args, **kwargs)
            active.append(phase)
            print(f"{MARK} enter {phase}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                print(f"{MARK} exit {phase} {time.perf_counter() - t0:.6f}", file=sys.stderr, flush=True)
                active.pop()

        setattr(owner, attribute, timed)

    import loki
    import loki.cli as cli

    later = []  # loki.tl and spatialdata: imported by the command itself, not before it
    for phase, names in PHASES.items():
        for name in names:
            owner, attribute = name.split(".")
            if owner == "cli":
                wrap(cli, attribute, phase)
            else:
                later.append((owner, attribute, phase))
    namespace = loki.__getattr__

    def first_use(name: str):  # lk.tl's first use (before the writes): wrap what it and SpatialData hold
        module = namespace(name)
        if name == "tl" and later:
            import spatialdata as sd

            for owner, attribute, phase in later:
                wrap(module if owner == "tl" else sd.SpatialData, attribute, phase)
            later.clear()
        return module

    loki.__getattr__ = first_use
    print(f"{MARK} main", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    cli.main(argv)
    main_s = time.perf_counter() - t0
    print(f"{MARK} done {time.perf_counter() - start:.6f} {main_s:.6f}", file=sys.stderr, flush=True)


def parse_child(stderr: str) -> dict:
    """Seconds per phase (net of the imports made within it), and of imports, from the child's stderr.

    Only the imports after the child's first line count (not this script's own), each top-level
    import once with its nested ones; ``main_imports`` are those made while the command ran.
    """
    seconds = dict.fromkeys(PHASES, 0.0)
    imports = main_imports = phase_imports = 0.0
    started = in_main = False
    for line in stderr.splitlines():
        if line.startswith("import time:") and started:
            _, cumulative, name = line.split("|")
            if cumulative.strip().isdigit() and not name.startswith("  "):  # top-level
                imports += int(cumulative) / 1e6
                main_imports += in_main * int(cumulative) / 1e6
                phase_imports += int(cumulative) / 1e6
        elif line.startswith(MARK):
            event, *words = line.split()[1:]
            if event == "start":
                started = True
            elif event == "main":
                in_main = True
            elif event == "enter":
                phase_imports = 0.0
            elif event == "exit":
                seconds[" ".join(words[:-1])] += float(words[-1]) - phase_imports
            elif event == "done":
                own_s, main_s = map(float, words)
    return {
        "phases": seconds,
        "imports": imports,
        "main_imports": main_imports,
        "own_s": own_s,
        "main_s": main_s,
    }


def build_store(path: Path) -> str:
    """MOB1 and MOB2 with their images, and a joint expression PCA of the two in ``.obsm['X_pca']``.

    Returns the sections' sizes, in words.
    """
    import warnings

    import anndata as ad
    import scanpy as sc

    import loki as lk

    sdata = lk.datasets.mob((TARGET, SOURCE))
    tables = [sdata.tables[TARGET], sdata.tables[SOURCE]]
    joint = ad.concat(tables, join="inner", label="section", keys=[TARGET, SOURCE], index_unique="-")
    sc.pp.normalize_total(joint, target_sum=1e4)
    sc.pp.log1p(joint)
    sc.pp.pca(joint, n_comps=30, random_state=0)
    for table, name in zip(tables, (TARGET, SOURCE), strict=True):
        table.obsm["X_pca"] = joint.obsm["X_pca"][(joint.obs["section"] == name).to_numpy()]
    with warnings.catch_warnings():  # anndata's notice of a coming zarr default, once per array
        warnings.simplefilter("ignore", UserWarning)
        sdata.write(path)
    sides = {name: sdata.images[f"{name}_image"]["scale0"]["image"].shape[1:] for name in (SOURCE, TARGET)}
    return " and ".join(
        f"{name} {sdata.tables[name].n_obs} spots, {' x '.join(map(str, sides[name]))} px H&E"
        for name in (SOURCE, TARGET)
    )


def run_once(base: Path, folder: Path, argv: list[str], *, instrumented: bool) -> dict:
    """Align in a fresh copy of the store ``base``; the phases (instrumented) or the plain wall time."""
    store = folder / "store.zarr"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(base, store)
    args = ["align", str(store), *argv]
    if instrumented:
        cmd = [sys.executable, "-X", "importtime", __file__, "--child", *args]
    else:
        cmd = [sys.executable, "-c", "import sys; from loki.cli import main; sys.exit(main())", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = {"wall_s": wall, "message": proc.stdout.strip(), "aligned": aligned_of(store)}
    if instrumented:
        result.update(parse_child(proc.stderr))
    return result


def aligned_of(store: Path):
    """The source's aligned coordinates, as the run wrote them."""
    import anndata as ad

    return ad.read_zarr(store / "tables" / SOURCE).obsm["spatial_aligned"]


def table(runs: list[dict], plain: list[dict]) -> list[str]:
    rows: list[tuple[str, list[float]]] = [
        ("python start and exit (interpreter, finalisation)", [r["wall_s"] - r["own_s"] for r in runs]),
        ("imports (all, whichever phase made them)", [r["imports"] for r in runs]),
    ]
    rows += [(f"{phase} (net of imports)", [r["phases"][phase] for r in runs]) for phase in PHASES]
    rows.append(
        (
            "other (arguments, message)",
            [r["main_s"] - sum(r["phases"].values()) - r["main_imports"] for r in runs],
        )
    )
    rows.append(("**whole command, wall**", [r["wall_s"] for r in runs]))
    rows.append(("whole command, wall, without the timers", [r["wall_s"] for r in plain]))
    total = statistics.median(r["wall_s"] for r in runs)
    lines = ["| phase | median s | min - max s | share of the median wall |", "|---|---|---|---|"]
    for name, values in rows:
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median:.2f} | {min(values):.2f} - {max(values):.2f} | {100 * median / total:.0f} % |"
        )
    return lines


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3, help="runs of the command (each in a fresh process)")
    ap.add_argument("--use", default="X_pca", help="--use of the command: X_pca (default) or none")
    ap.add_argument("--out", default=str(Path(__file__).parent / "_out" / "bench_cli_align.md"))
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _report import write_report

    import loki

    argv = ["--source", SOURCE, "--target", TARGET, "--use", args.use]
    start = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="loki_bench_cli_align_") as tmp:
        base = Path(tmp) / "mob12.zarr"
        t0 = time.perf_counter()
        sections = build_store(base)
        build_s = time.perf_counter() - t0
        runs, plain = [], []
        for _ in range(args.runs):  # interleaved: a load that changes over the run weighs on both
            runs.append(run_once(base, Path(tmp), argv, instrumented=True))
            plain.append(run_once(base, Path(tmp), argv, instrumented=False))
    import numpy as np

    same = all(np.array_equal(r["aligned"], runs[0]["aligned"]) for r in runs + plain)
    messages = {r["message"] for r in runs + plain}
    lines = [
        "### `loki align` phase by phase (bench_cli_align.py)",
        "",
        f"{start:%Y-%m-%d %H:%M} UTC, {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, loki from {Path(loki.__file__).parent}. {SOURCE} aligned onto {TARGET} "
        f"({sections}) with `--use {args.use}`, in a fresh copy of the "
        f"store each run (building it took {build_s:.0f} s, not timed); {args.runs} runs in fresh "
        "processes under `-X importtime`, each followed by one without the timers.",
        "",
        *table(runs, plain),
        "",
        f"Aligned coordinates identical in every run: {'yes' if same else 'NO'}. "
        + ("Same message every run." if len(messages) == 1 else f"{len(messages)} different messages!"),
        "",
        f"Message: {runs[0]['message']}",
    ]
    write_report(lines, args.out)


if __name__ == "__main__":
    main()
