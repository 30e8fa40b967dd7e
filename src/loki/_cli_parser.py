"""The ``loki`` command line's argument parser: its commands, their options and the option types."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path


def _global_options(default) -> argparse.ArgumentParser:
    """The options taken before the command and after it too (``loki -v tile`` and ``loki tile -v``).

    The commands' copies default to ``argparse.SUPPRESS``: a default of their own would overwrite the
    value given before the command.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="log every write at INFO level, and show tracebacks of errors",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loki",
        description=(
            "Loki (OmiCLIP) from the command line: `loki demo` trains loki-tiny on bundled data and runs "
            "every tool; slide, visium and st write SpatialData zarr stores, tile, embed and align work on them. "
            "`loki COMMAND --help` describes each."
        ),
        parents=[_global_options(False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    command_options = _global_options(argparse.SUPPRESS)

    def add_command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[command_options], **kwargs)

    demo = add_command(
        "demo",
        help="train loki-tiny on the bundled mouse olfactory bulb sections and run every tool",
        description=(
            "Train the small loki-tiny model from scratch on the bundled MOB sections 1-3, embed both "
            "modalities, evaluate retrieval and expression prediction on held-out MOB4, align MOB2 onto "
            "MOB1 and MOB4's H&E image alone onto MOB3, and decompose synthetic spots. Writes into OUT: "
            "figures, the metrics table as metrics.tsv and metrics.md (both record torch's CPU thread count "
            "during training; metrics.md also names the loki and torch versions), and the trained model as "
            "the folder loki-tiny-mob/ (load it with lk.models.load or `loki embed --model "
            "OUT/loki-tiny-mob`)."
        ),
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("loki_demo"),
        help="output folder (created; default: %(default)s); one that holds files is refused unless "
        "--overwrite is given",
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out folder that holds files (earlier results): the demo's outputs replace "
        "theirs, other files stay",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of training, baselines and alignment (default: %(default)s)"
    )
    demo.add_argument(
        "--quick", action="store_true", help="a short smoke run (few epochs): numbers are not meaningful"
    )
    demo.add_argument(
        "--no-progress",
        action="store_true",
        help="hide progress bars (hidden anyway when stderr is not a terminal, e.g. a log file)",
    )

    embed = add_command(
        "embed",
        help="add gene sentences and OmiCLIP embeddings to a SpatialData zarr store",
        description="Read a SpatialData zarr store, add sentences and text/image embeddings to TABLE, write it back.",
    )
    embed.add_argument("zarr", type=Path, help="SpatialData .zarr store (modified in place)")
    embed.add_argument("--table", required=True, help="key of the section's table in sdata.tables")
    embed.add_argument(
        "--model",
        default="omiclip",
        help="model name, local checkpoint or folder saved by OmiCLIP.save, or hf-hub id (default: "
        "%(default)s, the published OmiCLIP weights)",
    )
    embed.add_argument("--trust-checkpoint", action="store_true", help="allow unpickling a .pt checkpoint")
    embed.add_argument(
        "--device",
        default="auto",
        help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:N' (default: %(default)s)",
    )
    embed.add_argument(
        "--batch-size",
        type=_positive_int,
        default=256,
        help="image patches, and gene sentences, encoded at a time: one size for both encoders "
        "(default: %(default)s; in Python, lk.tl.embed_text defaults to 512 sentences)",
    )
    embed.add_argument(
        "--no-image",
        action="store_true",
        help="embed the gene sentences only (for a section without an image; not with --image-key, "
        "--coordinate-system or --diameter-um)",
    )
    _add_where(
        embed, ["--image-key"], "image of the section in sdata.images (default: the one the table names)"
    )
    embed.add_argument(
        "--diameter-um",
        type=_positive_float,
        default=None,
        help="side of the cut squares in µm (default: the size the model was trained on, when it records "
        "one, else the spot diameter)",
    )
    embed.add_argument(
        "--microns-per-unit",
        type=_positive_float,
        default=None,
        help="µm per unit of the table's coordinates, for a table that does not record it (needed to cut "
        "squares given in µm; Visium: 55 / the spot diameter in coordinate units); stored in the table",
    )
    embed.add_argument(
        "--gene-map",
        type=Path,
        default=None,
        help="table of gene ids and symbols (e.g. Space Ranger's features.tsv.gz) to build the gene "
        "sentences from symbols when var_names are Ensembl ids (lk.pp.map_gene_ids); the table keeps "
        "its genes (cannot be combined with --use-raw: it maps .var_names, not those of .raw)",
    )
    _add_sentence_options(embed)

    slide = add_command(
        "slide",
        help="write an H&E slide scan (SVS, NDPI, OME-TIFF, TIFF, jpg, png) into a SpatialData zarr store",
        description=(
            "Read SLIDE with lk.io.read_slide (pyramid levels read lazily, pixel size from the file) and "
            "write it as the image of a new SpatialData zarr store, or with --append beside the elements "
            "of an existing one; `loki tile` then covers its tissue."
        ),
    )
    slide.add_argument("slide", type=Path, help="the slide file")
    slide.add_argument(
        "zarr", type=Path, help="SpatialData .zarr store to create (must not exist, unless --append)"
    )
    slide.add_argument("--name", default=None, help="image key (default: the file name without suffixes)")
    slide.add_argument(
        "--series", type=int, default=0, help="image of a TIFF holding several (default 0: the slide)"
    )
    _add_mpp(slide, "micrometres per pixel, when the file does not say or says wrong")
    _add_append(slide, "the image")

    visium = add_command(
        "visium",
        help="write a 10x Visium or Visium HD Space Ranger folder into a SpatialData zarr store, as a section",
        description=(
            "Read a Space Ranger output folder (outs/) with lk.io.read_visium, or with lk.io.read_visium_hd "
            "when it is a Visium HD one (it holds binned_outputs/), and write it as a section of a SpatialData "
            "zarr store: table NAME, the spots' shapes NAME_spots and images NAME_hires_image, "
            "NAME_lowres_image (NAME_full_image with --fullres-image), in coordinate system 'global', the "
            "table recording the spot size and µm per pixel. ZARR must not exist, unless --append adds the "
            "section beside those it holds (e.g. a second section, for `loki align`). `loki embed ZARR "
            "--table NAME` then embeds it."
        ),
    )
    visium.add_argument(
        "folder",
        type=Path,
        help="Space Ranger output folder: filtered_feature_bc_matrix.h5 and spatial/, or for Visium HD "
        "binned_outputs/ and spatial/",
    )
    visium.add_argument(
        "zarr", type=Path, help="SpatialData .zarr store to create (must not exist, unless --append)"
    )
    visium.add_argument(
        "--name",
        default=None,
        help="section name: the table key, and the start of its elements' names (default: the library id "
        "in the counts file, else the folder name)",
    )
    visium.add_argument(
        "--fullres-image",
        type=Path,
        default=None,
        help="the full-resolution H&E image the spots were placed on (the image given to Space Ranger; "
        "not in outs/): `loki embed` cuts its patches there (default: none; patches come from the hires "
        "image, about 15 px a Visium spot)",
    )
    visium.add_argument(
        "--bin-size",
        type=_positive_int,
        default=None,
        help="Visium HD: bin size in µm, one of the folder's binned_outputs/square_XXXum (Space Ranger "
        "writes 2, 8 and 16; default for a Visium HD folder: 8)",
    )
    _add_append(visium, "the section")

    st = add_command(
        "st",
        help="write a legacy ST section (counts table, spot file, H&E image) into a SpatialData zarr store",
        description=(
            "Read a legacy Spatial Transcriptomics section (100 µm spots) with lk.io.read_legacy_st and "
            "write it as a section of a SpatialData zarr store: table NAME, the spots' shapes NAME_spots "
            "and image NAME_image (unless --no-image), in coordinate system 'global', the table "
            "recording the spot size and µm per pixel. ZARR must not exist, unless --append adds the section beside those it holds "
            "(e.g. a second section, for `loki align`). `loki embed ZARR --table NAME` then embeds it."
        ),
    )
    st.add_argument(
        "counts",
        type=Path,
        help="counts table: tab-separated (gzip allowed), a row per spot, the first column the spot ids "
        "'XxY' (array x, y), a column per gene",
    )
    st.add_argument(
        "spots",
        type=Path,
        help="spot file: tab-separated, columns x, y (array), pixel_x, pixel_y (spot centres in pixels "
        "of the full-resolution image) and optionally selected (1 under tissue)",
    )
    st.add_argument(
        "image",
        type=Path,
        nargs="?",
        default=None,
        help="the H&E image the spots were placed on (jpg, png, tif); left out with --no-image",
    )
    st.add_argument(
        "zarr", type=Path, help="SpatialData .zarr store to create (must not exist, unless --append)"
    )
    st.add_argument(
        "--name",
        default=None,
        help="section name: the table key, and the start of its elements' names (default: the counts "
        "file's name without suffixes)",
    )
    st.add_argument(
        "--spot-diameter-um",
        type=_positive_float,
        default=100.0,
        help="spot diameter in µm (default: 100, legacy ST)",
    )
    st.add_argument(
        "--array-step-um",
        type=_positive_float,
        default=200.0,
        help="µm per step of the spot file's x, y: 200 on 1k arrays, 100 on 2k arrays, whose spots sit "
        "on a checkerboard (default: 200)",
    )
    st.add_argument(
        "--image-scale",
        type=_positive_ratio,
        default=1.0,
        help="IMAGE's pixels per full-resolution pixel, for an IMAGE downscaled from it, e.g. 2000/6954 "
        "(default: 1)",
    )
    st.add_argument(
        "--no-image",
        action="store_true",
        help="no H&E image: COUNTS SPOTS ZARR write a section of spots alone (`loki embed --no-image` then "
        "embeds its gene sentences, `loki align --use none` aligns it)",
    )
    st.add_argument(
        "--all-spots",
        action="store_true",
        help="keep every spot of the counts table, not only those the spot file selects (selected 1)",
    )
    _add_append(st, "the section")

    tile = add_command(
        "tile",
        help="cover the tissue of an H&E image with tiles, as a section of its own",
        description=(
            "Read a SpatialData zarr store, cover the tissue of IMAGE with square tiles (lk.pp.tile_image; on a square or hexagonal grid) "
            "and write the tiles' shapes and table into the store; `loki embed --table` then embeds them."
        ),
    )
    tile.add_argument("zarr", type=Path, help="SpatialData .zarr store (modified in place)")
    _add_where(tile, ["--image", "--image-key"], "key of the H&E image in sdata.images", required=True)
    _add_mpp(
        tile,
        "micrometres per pixel of the image's finest level (default: recorded by `loki slide` or a reader)",
    )
    tile.add_argument(
        "--tile-um", type=_positive_float, default=55.0, help="tile side in µm (default: 55, a Visium spot)"
    )
    tile.add_argument(
        "--spacing-um",
        type=_positive_float,
        default=None,
        help="centre-to-centre distance in µm (default: tile side)",
    )
    tile.add_argument(
        "--grid",
        choices=["square", "hex"],
        default="square",
        help="square rows and columns, or hexagonal: rows closer, every other one shifted by half "
        "(default: square)",
    )
    tile.add_argument(
        "--min-tissue",
        type=_fraction,
        default=0.5,
        help="least tissue fraction of a kept tile, 0 to 1 (default: %(default)s)",
    )
    tile.add_argument(
        "--within", default=None, help="shapes element of regions (e.g. annotations); only tiles inside them"
    )
    tile.add_argument("--key-added", default=None, help="table key (default IMAGE_tiles)")

    align = add_command(
        "align",
        help="align one section onto another in a SpatialData zarr store",
        description=(
            "Read a SpatialData zarr store holding both sections, align SOURCE onto TARGET (lk.tl.align) and "
            "write the result into the store: the source table's aligned coordinates and record, the aligned "
            "spots' shapes, and the transformations that place the sections in the aligned coordinate system "
            "(named after --key-added: 'aligned' by default)."
        ),
    )
    align.add_argument("zarr", type=Path, help="SpatialData .zarr store (modified in place)")
    align.add_argument("--source", required=True, help="table key of the section that moves")
    align.add_argument("--target", required=True, help="table key of the section it is aligned onto")
    align.add_argument(
        "--use",
        default="loki_text",
        help="embedding in .obsm of both tables (e.g. loki_text, loki_image, X_pca), or 'none' for the spot "
        "coordinates alone (default: loki_text, from `loki embed`)",
    )
    align.add_argument(
        "--method",
        choices=["deformable", "rigid", "similarity", "affine"],
        default="deformable",
        help="transform fitted (default deformable: a rigid/affine start, then a smooth warp kept in .obsm)",
    )
    align.add_argument("--no-mirror", action="store_true", help="do not try the mirrored source")
    align.add_argument(
        "--key-added",
        default="spatial_aligned",
        help=".obsm key of the aligned coordinates (default: %(default)s)",
    )
    align.add_argument(
        "--coordinate-system",
        default=None,
        help="coordinate system both sections are placed in before the alignment (default: each "
        "section's own: global, else the one its spots and image share)",
    )
    align.add_argument(
        "--aligned-coordinate-system",
        default=None,
        help="coordinate system that receives the placement (default: --key-added without 'spatial_', "
        "so 'aligned')",
    )
    for flag, whose in (("--image-key", "source"), ("--target-image-key", "target")):
        align.add_argument(
            flag,
            action="append",
            default=None,
            help=f"image of the {whose} section placed with it (repeat for several, e.g. hires and lowres; "
            "default: the one its table names, or the one named after the section)",
        )
    align.add_argument(
        "--max-iter",
        type=_positive_int,
        default=200,
        help="iteration cap of each stage of the registration (default: %(default)s)",
    )
    align.add_argument(
        "--seed", type=int, default=0, help="seed of subsampling and landmarks (default: %(default)s)"
    )
    return parser


def _add_sentence_options(embed: argparse.ArgumentParser) -> None:
    """The options of the gene sentences (lk.pp.gene_sentences), one for each keyword, with its default."""
    from ._defaults import REFERENCE_EXCLUDE_PATTERNS

    group = embed.add_argument_group(
        "gene sentences",
        "how each spot's gene sentence is built (lk.pp.gene_sentences) before it is embedded",
    )
    group.add_argument(
        "--n-genes",
        type=_positive_int,
        default=50,
        help="genes per sentence, the most expressed first (default: %(default)s, as in the paper; only "
        "about the first 18 to 27 reach the text encoder)",
    )
    group.add_argument("--layer", default=None, help="layer of the table holding counts (default: .X)")
    group.add_argument(
        "--use-raw",
        action="store_true",
        help="rank the genes of the table's .raw (e.g. all genes of a table cut to its highly variable ones)",
    )
    group.add_argument(
        "--housekeeping",
        choices=["hsiao", "none"],
        default="hsiao",
        help="housekeeping genes left out: 'hsiao', the MSigDB HSIAO_HOUSEKEEPING_GENES list OmiCLIP "
        "used, or 'none' (default: %(default)s)",
    )
    group.add_argument(
        "--exclude-patterns",
        nargs="*",
        type=_regex,
        metavar="REGEX",
        default=None,
        help="regular expressions; genes whose name matches one are left out (default: "
        f"{' '.join(REFERENCE_EXCLUDE_PATTERNS)}, the reference recipe: every name holding '-' or '.', "
        "MT- genes among them); given without one, no gene is left out by name",
    )
    group.add_argument(
        "--exclude-mito", action="store_true", help="also leave out mitochondrial genes (MT-, any case)"
    )
    group.add_argument(
        "--exclude-ribo",
        action="store_true",
        help="also leave out ribosomal protein genes (RPS, RPL, any case)",
    )


def _version() -> str:
    import loki

    return loki.__version__


def _add_append(parser: argparse.ArgumentParser, what: str) -> None:
    """The ``--append`` option of a command that creates a store (slide, visium, st)."""
    parser.add_argument(
        "--append",
        action="store_true",
        help=f"add {what} to ZARR if it exists (it is created otherwise); names it holds are refused "
        "and nothing of it is changed",
    )


def _add_mpp(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--mpp", type=_positive_float, default=None, help=help)


def _add_where(
    parser: argparse.ArgumentParser, image_flags: list[str], image_help: str, required: bool = False
):
    """The image option (``args.image``) and the coordinate-system option."""
    parser.add_argument(*image_flags, dest="image", required=required, default=None, help=image_help)
    parser.add_argument(
        "--coordinate-system",
        default=None,
        help="coordinate system of the image (and spots) to work in; spatialdata-io names it after the "
        "dataset (default: global, else the one the image and the spots share)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as err:
        raise argparse.ArgumentTypeError(f"not a regular expression ({err}): {text!r}") from None
    return text


def _float_or_nan(text: str) -> float:
    """``float(text)``, NaN for text that is not a number (refused by every range check)."""
    try:
        return float(text)
    except ValueError:
        return math.nan


def _positive_float(text: str) -> float:
    value = _float_or_nan(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _positive_ratio(text: str) -> float:
    """A positive number, also written as a ratio of two (``2000/6954``)."""
    numerator, _, denominator = text.partition("/")
    value = _float_or_nan(numerator)
    if denominator:
        below = _float_or_nan(denominator)
        value = value / below if below > 0 else math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive number, or a ratio of two (e.g. 2000/6954), got {text!r}"
        )
    return value


def _fraction(text: str) -> float:
    value = _float_or_nan(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value
