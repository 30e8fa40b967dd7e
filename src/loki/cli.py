"""Command-line entry point: ``loki demo`` and batch commands."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loki", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every write at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="train loki-tiny on the bundled mouse olfactory bulb sections and run every tool",
        description=(
            "Train the small loki-tiny model from scratch on the bundled MOB sections 1-3, embed both "
            "modalities, evaluate retrieval and expression prediction on held-out MOB4, align MOB1 to "
            "MOB2 and decompose synthetic spots; write figures and metrics.tsv into OUT."
        ),
    )
    demo.add_argument("--out", type=Path, default=Path("loki_demo"), help="output folder (created)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--quick", action="store_true", help="a short smoke run (few epochs): numbers are not meaningful"
    )
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")

    embed = sub.add_parser(
        "embed",
        help="add gene sentences and OmiCLIP embeddings to a SpatialData zarr store",
        description="Read a SpatialData zarr store, add sentences and text/image embeddings to TABLE, write it back.",
    )
    embed.add_argument("zarr", type=Path, help="SpatialData .zarr store (modified in place)")
    embed.add_argument("--table", required=True, help="key of the section's table in sdata.tables")
    embed.add_argument("--model", default="omiclip", help="model name, local checkpoint or hf-hub id")
    embed.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling a .pt checkpoint")
    embed.add_argument("--device", default="auto")
    embed.add_argument("--batch-size", type=int, default=256)
    embed.add_argument("--no-image", action="store_true", help="embed transcriptomes only")
    return parser


def _embed(args: argparse.Namespace) -> None:
    import spatialdata as sd

    import loki as lk

    sdata = sd.read_zarr(args.zarr)
    model = lk.models.load(args.model, device=args.device, trust_checkpoint=args.trust_checkpoint)
    lk.pp.gene_sentences(sdata, table_key=args.table)
    lk.tl.embed_text(sdata, model, table_key=args.table, batch_size=args.batch_size)
    if not args.no_image:
        lk.tl.embed_image(sdata, model, table_key=args.table, batch_size=args.batch_size)
    sdata.write_element(args.table, overwrite=True)


def main(argv: list[str] | None = None) -> int:
    """Run the ``loki`` command line."""
    args = _parser().parse_args(argv)
    logger = logging.getLogger("loki")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s loki: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO if args.verbose else logging.WARNING)

    if args.command == "demo":
        from ._demo import run_demo

        table = run_demo(args.out, seed=args.seed, quick=args.quick, progress=not args.no_progress)
        print(table.to_string(index=False))
        print(f"\nfigures and metrics written to {args.out.resolve()}")
    elif args.command == "embed":
        _embed(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
