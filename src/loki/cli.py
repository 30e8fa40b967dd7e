"""Command-line entry point: ``loki demo`` and the batch commands (slide, visium, st, tile, embed, align)."""

from __future__ import annotations

import argparse
import gc
import math
import re
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from ._cli_messages import cli_message, logging_to_stderr, one_line_errors, user_warnings_logged
from ._cli_parser import build_parser
from ._cli_store import (
    ElementsTaken,
    backup_name,
    changed_placements,
    check_writable,
    delete_if_on_disk,
    describe_element,
    element_folder,
    placement_matrices,
    placements,
    read_store,
    rewrite_table,
    store_lock,
    undo_align_writes,
    write_new_elements,
    write_new_store,
)


def _embed(args: argparse.Namespace) -> None:
    import loki as lk
    from loki.models._omiclip import resolve_device

    if args.use_raw and args.gene_map is not None:
        raise _UsageError(
            "--use-raw", "not allowed with argument --gene-map, which maps .var_names, not .raw's"
        )
    if args.no_image:
        _refuse_image_options(args)
    resolve_device(args.device)  # a bad or missing device fails before any work
    gene_map = None if args.gene_map is None else _read_gene_map(args.gene_map)
    sdata = read_store(args.zarr, args.command)
    check_writable(args.zarr, "embed")
    _check_embed_target(sdata, args)
    table = sdata.tables[args.table]
    if args.microns_per_unit is not None:
        _set_microns_per_unit(table, args.microns_per_unit)
    model = lk.models.load(args.model, device=args.device, trust_checkpoint=args.trust_checkpoint)
    writes = [key for key, yes in ((lk.Key.TEXT, table.n_vars > 0), (lk.Key.IMAGE, not args.no_image)) if yes]
    _check_same_model(table, model, writes, args)
    if not args.no_image:
        _check_scale(table, model, args.diameter_um)
        _check_patch_size(sdata, args, model)
    if table.n_vars > 0:
        _gene_sentences(table, gene_map, args.gene_map, _sentence_options(args))
        lk.tl.embed_text(sdata, model, table_key=args.table, batch_size=args.batch_size)
    else:
        print(f"table {args.table!r} holds no genes (an image-only section): embedding its image only")
    if not args.no_image:
        lk.tl.embed_image(
            sdata,
            model,
            table_key=args.table,
            image_key=args.image,
            diameter_um=args.diameter_um,
            coordinate_system=args.coordinate_system,
            batch_size=args.batch_size,
        )
    rewrite_table(sdata, args.table)
    print(
        f"{' and '.join(f'.obsm[{key!r}]' for key in writes)} of table {args.table!r} written to {args.zarr}"
    )


def _refuse_image_options(args: argparse.Namespace) -> None:
    """With ``--no-image``, refuse the options that only place and cut patches: they would do nothing."""
    given = {
        "--image-key": args.image,
        "--coordinate-system": args.coordinate_system,
        "--diameter-um": args.diameter_um,
    }
    for option, value in given.items():
        if value is not None:
            raise _UsageError(
                option, "not allowed with argument --no-image, which embeds the gene sentences only"
            )


def _check_same_model(table, model, writes: list[str], args: argparse.Namespace) -> None:
    """Refuse to leave in the table an embedding of another model beside the ones this run writes.

    Text and image embeddings are compared with each other (retrieval, prediction, alignment on
    either): replacing one modality with another checkpoint's would leave the two silently
    incomparable. Each embedding's record holds the ``checkpoint_hash`` of the weights that made it.
    """
    import loki as lk
    from loki._utils import loki_record
    from loki._utils._provenance import same_weights

    for key in (lk.Key.TEXT, lk.Key.IMAGE):
        record = loki_record(table, key)
        if key in writes or key not in table.obsm or record is None:
            continue
        recorded = record.get("checkpoint_hash")
        if recorded is None or same_weights(record, model.info()):  # one file in two precisions too
            continue
        written = " and ".join(f".obsm[{k!r}]" for k in writes)
        if key == lk.Key.IMAGE:
            instead = f"leave out --no-image to embed both with --model {args.model}"
        else:  # an image-only run of a table whose texts were embedded
            instead = f"embed the texts too with --model {args.model}"
        raise SystemExit(
            f"loki embed: table {args.table!r} holds .obsm[{key!r}] of model {record.get('model')!r} "
            f"(checkpoint {recorded[:12]}), and this run would replace only {written}, with --model "
            f"{args.model} (model {model.name!r}, checkpoint {model.checkpoint_hash[:12]}): the two "
            f"modalities' embeddings would not be comparable. Either {instead}, or pass the --model "
            f"that embedded .obsm[{key!r}]."
        )


def _sentence_options(args: argparse.Namespace) -> dict:
    """The keywords of :func:`loki.pp.gene_sentences` that ``loki embed`` has options for."""
    from ._defaults import REFERENCE_EXCLUDE_PATTERNS

    return {
        "n_genes": args.n_genes,
        "layer": args.layer,
        "use_raw": True if args.use_raw else None,  # None: ranks .X, warns of a .raw with more genes
        "housekeeping": None if args.housekeeping == "none" else args.housekeeping,
        "exclude_patterns": REFERENCE_EXCLUDE_PATTERNS
        if args.exclude_patterns is None
        else tuple(args.exclude_patterns),
        "exclude_mito": args.exclude_mito,
        "exclude_ribo": args.exclude_ribo,
    }


def _check_embed_target(sdata, args: argparse.Namespace) -> None:
    """Refuse, before any work, what the command cannot embed into.

    A leftover copy, a missing table, another tool's ``.uns['loki']``, nothing to embed, or a missing
    image or coordinate system.
    """
    from loki._utils import check_loki_uns
    from loki._utils._spatialdata import section_image_key

    _check_table(sdata, args.table, args.zarr, "embed", option="--table")
    table = sdata.tables[args.table]
    check_loki_uns(table)  # the command records its results there
    if table.n_vars > 0:  # its gene sentences are built
        where = f"table {args.table!r} of {args.zarr}"
        if args.layer is not None:
            _require_in_store("--layer", args.layer, table.layers, "layers", where)
        if args.use_raw and table.raw is None:
            raise _UsageError("--use-raw", f"{where} has no .raw")
    if args.no_image:
        if sdata.tables[args.table].n_vars == 0:
            raise SystemExit(
                f"loki embed: table {args.table!r} holds no genes (an image-only section) and --no-image "
                "was given: nothing to embed."
            )
        return
    if args.image is not None:
        _require_in_store("--image-key", args.image, sdata.images, "images", args.zarr)
    else:
        _refuse_table_without_image(sdata, args)
    section_image_key(sdata, args.table, args.image)
    _check_coordinate_system(sdata, args.coordinate_system, args.zarr)


def _refuse_table_without_image(sdata, args: argparse.Namespace) -> None:
    """Refuse to cut patches for a table none of the store's images belongs to: point at --no-image.

    :func:`~loki._utils._spatialdata.section_image_key` would ask for ``image_key=``, which on the
    command line cuts the section's patches from another section's image.
    """
    from loki._utils._spatialdata import has_own_image, other_tables_images

    if has_own_image(sdata, args.table):
        return  # its own image, or images that may be its: section_image_key decides
    owners = other_tables_images(sdata, args.table)
    held = ", ".join(f"{image!r} (table {owner!r})" for image, owner in sorted(owners.items()))
    held = f"only other tables' images: {held}" if held else "no image"
    if sdata.tables[args.table].n_vars > 0:
        instead = "Pass --no-image to embed its gene sentences only."
    else:
        instead = "It holds no genes either: nothing to embed."
    raise SystemExit(
        f"loki embed: table {args.table!r} has no image of its own (e.g. a section written by `loki st "
        f"--no-image`): {args.zarr} holds {held}. {instead}"
    )


def _check_coordinate_system(sdata, name: str | None, zarr: Path) -> None:
    """A ``--coordinate-system`` given must be one of the store's (without it, the API chooses)."""
    if name is None:
        return
    held = sorted(sdata.coordinate_systems)
    _require_in_store("--coordinate-system", name, held, "coordinate systems", zarr)


def _check_scale(table, model, diameter_um: float | None) -> None:
    """Squares given in µm need the table's µm per coordinate unit: say which option gives it."""
    from loki._utils import loki_uns

    size = diameter_um if diameter_um is not None else model.patch_um
    if size is None or loki_uns(table).get("microns_per_unit") is not None:
        return
    what = (
        "--diameter-um needs"
        if diameter_um is not None
        else f"model {model.name!r} was trained on {size:g} µm patches; cutting those needs"
    )
    raise ValueError(
        f"{what} the table's µm per coordinate unit, which it does not record: pass --microns-per-unit "
        "(Visium: 55 / the spot diameter in coordinate units)"
    )


def _check_patch_size(sdata, args: argparse.Namespace, model) -> None:
    """Place the squares as :func:`loki.tl.embed_image` will, before any embedding, without reading pixels.

    Squares wider than the whole image are refused there (``--diameter-um 1e9`` asked numpy for
    43.8 PiB after the texts were embedded).
    """
    from loki.pp._patches import _spot_geometry
    from loki.tl._embed import patch_diameter_um

    diameter_um, _ = patch_diameter_um(model, args.diameter_um, sdata.tables[args.table])
    _spot_geometry(
        sdata,
        size=model.image_size,
        table_key=args.table,
        image_key=args.image,
        diameter_um=diameter_um,
        coordinate_system=args.coordinate_system,
    )


def _set_microns_per_unit(table, value: float) -> None:
    """Record ``--microns-per-unit`` in the table, unless it records another value."""
    from loki._utils import loki_uns, write_uns

    recorded = loki_uns(table).get("microns_per_unit")
    if recorded is not None and not math.isclose(float(recorded), value, rel_tol=1e-6):
        raise ValueError(
            f"the table records {float(recorded):g} µm per coordinate unit, not --microns-per-unit {value:g}"
        )
    write_uns(table, "microns_per_unit", value)


def _read_gene_map(path: Path):
    """The id -> symbol table of ``--gene-map``, read before the store and the model."""
    from loki.pp._genes import read_gene_table

    if not path.is_file():
        raise FileNotFoundError(f"--gene-map: no such file: {str(path)!r}")
    try:
        return read_gene_table(path)
    except (ValueError, OSError) as err:  # not text, a broken .gz, columns that cannot be told apart
        raise ValueError(f"--gene-map {str(path)!r} is not a table of gene ids and symbols: {err}") from err


def _gene_sentences(table, gene_map, path: Path | None, options: dict) -> None:
    """Add gene sentences to ``table``; with ``gene_map`` (read from ``path``), built from gene symbols.

    ``options`` are keywords of :func:`loki.pp.gene_sentences`. With a gene map, the symbols replace
    the ids on a view of the table (its ``.X`` and layers), which keeps its own genes: only the
    sentences, their empty-spot flags and parameters are copied.
    """
    import anndata as ad
    import pandas as pd

    import loki as lk
    from loki._utils import write_obs, write_uns

    if gene_map is None:
        lk.pp.gene_sentences(table, **options)
        return
    genes = ad.AnnData(
        X=table.X,
        obs=pd.DataFrame(index=table.obs_names),
        var=pd.DataFrame(index=table.var_names),
        layers=dict(table.layers),
    )
    lk.pp.map_gene_ids(genes, gene_map)
    lk.pp.gene_sentences(genes, **options)
    for column in (lk.Key.SENTENCE, lk.Key.empty_of(lk.Key.SENTENCE)):
        write_obs(table, column, genes.obs[column].to_numpy())
    write_uns(table, lk.Key.SENTENCE, {**genes.uns[lk.Key.UNS][lk.Key.SENTENCE], "gene_map": str(path)})


class _UsageError(Exception):
    """An option naming what the store does not hold: reported as argparse reports a bad value (exit 2)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def _require_in_store(option: str, value: str, held, kind: str, where: Path | str) -> None:
    """Refuse ``value`` of ``option`` unless ``where`` (the store, or one of its tables) holds it.

    The message names what it holds: ``kind``, plural.
    """
    held = list(held)
    if value not in held:
        singular = "shapes element" if kind == "shapes" else kind.removesuffix("s")
        raise _UsageError(
            option,
            f"no {singular} {value!r} in {where}; its {kind}: {', '.join(map(repr, held)) or 'none'}",
        )


def _check_table(sdata, table: str, zarr: Path, command: str, *, option: str, written: bool = True) -> None:
    """Refuse a missing table, and (for a table the command rewrites) a copy an interrupted run left."""
    prefix = f"loki {command}: {option}: "
    backup = backup_name(table)
    if written and backup in sdata.tables:
        raise SystemExit(
            f"{prefix}{zarr} holds table {backup!r}, a full copy of {table!r} with the results of an "
            f"interrupted `loki embed` or `loki align`. Check table {table!r} (if it is missing or "
            f"unreadable, the copy holds it whole, with that run's results), then delete the copy: "
            f"sdata.delete_element_from_disk({backup!r})."
        )
    _require_in_store(option, table, sdata.tables, "tables", zarr)


def _slide(args: argparse.Namespace) -> None:
    import loki as lk

    store = _store_to_append(args, "the image")
    if store is not None and args.name is not None:  # known before the slide is read
        _check_new_names(
            store, [args.name], args, default_of="the file's default image name", listed="images"
        )
    sdata = lk.io.read_slide(args.slide, name=args.name, microns_per_pixel=args.mpp, series=args.series)
    (name,) = sdata.images.keys()
    if store is None:
        write_new_store(sdata, args.zarr)
    else:
        _check_new_names(store, [name], args, default_of="the file's default image name", listed="images")
        _add_to_store(store, sdata, [name])
    mpp = sdata.attrs.get(lk.Key.UNS, {}).get("microns_per_pixel", {}).get(name)
    size = (
        "; its pixel size is unknown: pass --mpp to `loki tile`"
        if mpp is None
        else f" ({mpp:.4g} µm per pixel)"
    )
    print(f"image {name!r} {'added to' if store is not None else 'written to'} {args.zarr}{size}")


def _refuse_existing_store(args: argparse.Namespace, what: str) -> None:
    """Refuse an existing ``zarr`` without ``--append``: a command creating a store never writes into one by chance."""
    if args.zarr.exists() and not args.append:
        raise SystemExit(
            f"loki {args.command}: {str(args.zarr)!r} exists; name a new store, or pass --append to add "
            f"{what} to it."
        )


def _store_to_append(args: argparse.Namespace, what: str):
    """The store ``--append`` adds ``what`` to (read, and checked writable), or None for a new store."""
    _refuse_existing_store(args, what)
    if not args.zarr.exists():
        return None
    store = read_store(args.zarr, args.command)
    check_writable(args.zarr, args.command)
    return store


def _add_to_store(store, section, names: list[str]) -> None:
    """Write the elements ``names`` of ``section`` (and the pixel sizes it records) into ``store``, all or none.

    The pixel sizes are merged into the store's attrs as they are on disk when written: another job
    may have added its own slide since ``store`` was read.
    """
    import loki as lk

    for kind in ("images", "shapes", "tables"):
        getattr(store, kind).update(getattr(section, kind))
    sizes = section.attrs.get(lk.Key.UNS, {}).get("microns_per_pixel", {})
    added = {lk.Key.UNS: {"microns_per_pixel": sizes}} if sizes else None
    try:
        write_new_elements(store, names, attrs_added=added)
    except ElementsTaken as err:  # by another command since the names were checked
        raise _UsageError("--name", f"{err} (--append adds only new elements); pass another --name") from None


def _visium(args: argparse.Namespace) -> None:
    import loki as lk

    append = args.append and args.zarr.exists()
    _refuse_existing_store(args, "the section")
    hd = (args.folder / "binned_outputs").is_dir()
    if args.bin_size is not None and not hd and (args.folder / "filtered_feature_bc_matrix.h5").is_file():
        raise _UsageError(
            "--bin-size",
            f"{str(args.folder)!r} is a Visium folder, not a Visium HD one (it has no binned_outputs/): "
            "leave out --bin-size",
        )
    hd = hd or args.bin_size is not None  # else the HD reader says what the folder lacks
    options = {"dataset_id": args.name}
    if args.fullres_image is not None:
        if not args.fullres_image.is_file():
            raise FileNotFoundError(f"--fullres-image: no such file: {str(args.fullres_image)!r}")
        # the reader takes it relative to the folder; the command line, to the working directory
        options["fullres_image_file"] = args.fullres_image.absolute()
    store = _store_to_append(args, "the section")
    if store is not None:
        if args.name is not None:  # the table and its spots: known before the folder is read
            _check_new_names(store, [args.name, f"{args.name}_spots"], args)
    if hd:
        bin_size = 8 if args.bin_size is None else args.bin_size
        section = lk.io.read_visium_hd(args.folder, bin_size=bin_size, **options)
    else:
        section = lk.io.read_visium(args.folder, **options)
    (name,) = section.tables
    names = [*section.images, *section.shapes, name]
    if store is None:
        write_new_store(section, args.zarr)
    else:
        _check_new_names(store, names, args)
        _add_to_store(store, section, names)
    table = section.tables[name]
    what = f"bins of {bin_size} µm" if hd else "spots"
    print(
        f"section {name!r} ({table.n_obs} {what} x {table.n_vars} genes) "
        f"{'added to' if append else 'written to'} {args.zarr}: table {name!r}, shapes {name + '_spots'!r}, "
        f"images {', '.join(map(repr, section.images)) or 'none'}"
    )


def _st(args: argparse.Namespace) -> None:
    import loki as lk
    from loki._utils._spatialdata import recorded_microns_per_pixel
    from loki.io._names import check_section_name

    if args.image is None and not args.no_image:  # e.g. ZARR forgotten: IMAGE would be taken for it
        raise ValueError(
            f"give COUNTS SPOTS IMAGE ZARR, or COUNTS SPOTS ZARR with --no-image for a section without an "
            f"H&E image; got COUNTS SPOTS and {str(args.zarr)!r}"
        )
    if args.image is not None and args.no_image:
        raise ValueError(f"--no-image was given with IMAGE {str(args.image)!r}: leave out one of them")
    _refuse_existing_store(args, "the section")
    for what, path in (("COUNTS", args.counts), ("SPOTS", args.spots), ("IMAGE", args.image)):
        if path is not None:
            _require_file(what, path)
    if args.name is not None:
        name = args.name
        check_section_name(name, f"name={name!r}")
    else:  # SpatialData names allow letters, digits, '_', '-' and '.'
        name = re.sub(r"[^0-9A-Za-z_.-]", "_", args.counts.name.split(".")[0]) or "section"
        try:
            check_section_name(name, f"the counts file's default section name {name!r}")
        except ValueError as err:
            raise ValueError(f"{err} Pass --name.") from None
    store = _store_to_append(args, "the section")
    names = [f"{name}_spots", name]  # lk.io.read_legacy_st's names
    if args.image is not None:
        names.insert(0, f"{name}_image")
    default_of = "the counts file's default section name"
    if store is not None:  # before the files are read
        _check_new_names(store, names, args, default_of=default_of)
    section = lk.io.read_legacy_st(
        args.counts,
        args.spots,
        args.image,
        name=name,
        spot_diameter_um=args.spot_diameter_um,
        array_step_um=args.array_step_um,
        image_scale=args.image_scale,
        selected_only=not args.all_spots,
    )
    names = [*section.images, *section.shapes, *section.tables]
    if store is None:
        write_new_store(section, args.zarr)
    else:
        _check_new_names(store, names, args, default_of=default_of)
        _add_to_store(store, section, names)
    table = section.tables[name]
    if section.images:
        (image,) = section.images
        image_text = f", image {image!r} ({recorded_microns_per_pixel(section, image):.4g} µm per pixel)"
    else:
        image_text = ", no image"
    print(
        f"section {name!r} ({table.n_obs} spots x {table.n_vars} genes) "
        f"{'written to' if store is None else 'added to'} {args.zarr}: table {name!r}, shapes "
        f"{name + '_spots'!r}{image_text}"
    )


def _require_file(what: str, path: Path) -> None:
    """Refuse a ``path`` (of argument ``what``) that is not a file, naming what its folder holds."""
    if path.is_file():
        return
    if path.is_dir():
        raise ValueError(f"{what}: {str(path)!r} is a folder, not a file")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{what}: no such file: {str(path)!r} (there is no folder {str(folder)!r})")
    held = sorted(entry.name for entry in folder.iterdir() if not entry.name.startswith("."))
    listed = ", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")
    raise FileNotFoundError(f"{what}: no such file: {str(path)!r} (its folder holds {listed or 'nothing'})")


def _check_new_names(
    store,
    names: list[str],
    args: argparse.Namespace,
    *,
    default_of: str = "the folder's default section name",
    listed: str = "tables",
) -> None:
    """Refuse a section whose element names the store holds (as elements of any kind): --append adds only.

    SpatialData tells names apart regardless of case (``a`` clashes with ``A``): so does this check.
    ``default_of`` says where the name came from when ``--name`` was not given (the last of ``names``
    is the section's name); ``listed`` is the kind of element whose names the message lists.
    """
    held = {name.lower(): (kind, name) for kind, name, _ in store.gen_elements()}
    taken = [(name, *held[name.lower()]) for name in names if name.lower() in held]
    if not taken:
        return
    taken_list = ", ".join(describe_element(kind, held_name) for _, kind, held_name in taken)
    case = any(name != held_name for name, _, held_name in taken)
    note = "; SpatialData element names must differ by more than case" if case else ""
    section = "" if args.name is not None else f"{default_of} {names[-1]!r} is taken: "
    held_names = ", ".join(map(repr, getattr(store, listed))) or "none"
    raise _UsageError(
        "--name",
        f"{section}{args.zarr} holds {taken_list} already (--append adds only new elements{note}); pass "
        f"another --name (its {listed}: {held_names})",
    )


def _tile(args: argparse.Namespace) -> None:
    import loki as lk
    from loki._utils._spatialdata import table_key_of

    sdata = read_store(args.zarr, args.command)
    check_writable(args.zarr, "tile")
    _require_in_store("--image/--image-key", args.image, sdata.images, "images", args.zarr)
    if args.within is not None:
        _require_in_store("--within", args.within, sdata.shapes, "shapes", args.zarr)
    _check_coordinate_system(sdata, args.coordinate_system, args.zarr)
    table = lk.pp.tile_image(
        sdata,
        args.image,
        coordinate_system=args.coordinate_system,
        microns_per_pixel=args.mpp,
        tile_um=args.tile_um,
        spacing_um=args.spacing_um,
        grid=args.grid,
        min_tissue=args.min_tissue,
        within=args.within,
        key_added=args.key_added,
    )
    key = table_key_of(sdata, table)
    shapes = table.uns["spatialdata_attrs"]["region"]
    try:
        write_new_elements(sdata, [shapes, key])
    except ElementsTaken as err:  # by another command since tile_image checked the names
        raise _UsageError("--key-added", f"{err}; pass another --key-added") from None
    print(f"{table.n_obs} tiles written to {args.zarr} as shapes {shapes!r} and table {key!r}")


def _align(args: argparse.Namespace) -> None:
    import loki as lk

    sdata = read_store(args.zarr, args.command)
    check_writable(args.zarr, "align")
    _check_table(sdata, args.source, args.zarr, "align", option="--source")
    _check_table(sdata, args.target, args.zarr, "align", option="--target", written=False)
    for option, images in (("--image-key", args.image_key), ("--target-image-key", args.target_image_key)):
        for image in images or ():
            _require_in_store(option, image, sdata.images, "images", args.zarr)
    _check_coordinate_system(sdata, args.coordinate_system, args.zarr)
    if args.use != "none":
        _check_embeddings(sdata, args)
    before = placement_matrices(sdata)
    held = placements(sdata)  # the objects, to put back if writing fails
    shapes_before = dict(sdata.shapes)
    lk.tl.align(
        sdata,
        source=args.source,
        target=args.target,
        use=None if args.use == "none" else args.use,
        method=args.method,
        mirror=not args.no_mirror,
        key_added=args.key_added,
        input_coordinate_system=args.coordinate_system,
        coordinate_system=args.aligned_coordinate_system,
        image_key=args.image_key,
        target_image_key=args.target_image_key,
        max_iter=args.max_iter,
        seed=args.seed,
    )
    record = sdata.tables[args.source].uns[lk.Key.UNS][args.key_added]
    # everything is computed and checked in memory; now the store: shapes, placements, the table
    shapes = record.get("shapes")
    placed = changed_placements(before, placement_matrices(sdata))
    written: list[str] = []  # placements written, to put back if a later write fails
    with store_lock(args.zarr):  # each write rewrites the store's metadata
        try:
            if shapes is not None:
                delete_if_on_disk(sdata, shapes)  # an earlier run's: replaced on disk
                sdata.write_element(shapes)
            for name in placed:
                if name != shapes:
                    written.append(name)
                    sdata.write_transformations(name)
            rewrite_table(sdata, args.source)
        except BaseException:
            # the table is as it was (see rewrite_table): so are the shapes and placements, unless the
            # swap failed twice and left the new table as a copy that the next run names
            if element_folder(sdata, backup_name(args.source)) is None:
                undo_align_writes(sdata, shapes, shapes_before.get(shapes), held, written)
            raise
    print(
        f"{args.source!r} aligned onto {args.target!r} ({args.method}, mirror {record['mirror']}, "
        f"{record['n_iter']} iterations): .obsm[{args.key_added!r}] of table {args.source!r}"
        + ("" if shapes is None else f", shapes {shapes!r}")
        + f"; coordinate system {record['coordinate_system']!r} written on {', '.join(map(repr, placed)) or 'no element (unchanged)'}"
    )


def _check_embeddings(sdata, args: argparse.Namespace) -> None:
    """Refuse sections without the ``--use`` embedding, saying how to add it or do without."""
    import loki as lk

    for option, name in (("--source", args.source), ("--target", args.target)):
        held = list(sdata.tables[name].obsm)
        if args.use in held:
            continue
        instead = "pass --use none to align the spot coordinates alone"
        if args.use in (lk.Key.TEXT, lk.Key.IMAGE):  # `loki embed` writes both
            instead = f"run `loki embed {shlex.quote(str(args.zarr))} --table {name}` first, or {instead}"
        raise SystemExit(
            f"loki align: --use {args.use!r}: the {option} table {name!r} has no such embedding in .obsm "
            f"(it holds: {', '.join(map(repr, held)) or 'nothing'}); {instead}."
        )


def main(argv: list[str] | None = None) -> int:
    """Run the ``loki`` command line.

    Parameters
    ----------
    argv
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    0 on success; a failure raises :class:`SystemExit` with its message and exit status.

    Notes
    -----
    Run as the command (``argv`` not given), the objects left when it ends are frozen
    (:func:`gc.freeze`): the process exits next, and the collection at interpreter exit no longer
    examines them (0.4-2 s per command). Output is flushed and files are closed as before; a call
    with ``argv`` (from Python, or tests) leaves the caller's objects to its collector.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    with _frozen_when_done(argv is None), logging_to_stderr(args.verbose):
        try:
            with user_warnings_logged(args.command), _terminate_as_interrupt():
                _run(args)
        except _UsageError as err:  # a value the store does not hold: argparse's usage error, exit 2
            _subcommand(parser, args.command).error(f"argument {err.option}: {err}")
        except KeyboardInterrupt as err:  # Ctrl-C, `timeout`, a batch scheduler's time limit
            if args.verbose:
                raise
            terminated = isinstance(err, _Terminated)
            print(f"loki {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
            raise SystemExit(128 + (signal.SIGTERM if terminated else signal.SIGINT)) from None
        except Exception as err:
            if args.verbose or not isinstance(err, one_line_errors()):
                raise
            raise SystemExit(f"loki {args.command}: {cli_message(err, args.command)}") from err
    return 0


@contextmanager
def _frozen_when_done(ending: bool):
    """On the way out, with ``ending`` (the process exits next), freeze every object (:func:`gc.freeze`).

    The collection at interpreter exit then skips them: it examined spatialdata's, zarr's and torch's
    objects for 0.4-2 s per command, to free memory the exit frees anyway.
    """
    try:
        yield
    finally:
        if ending:
            gc.freeze()


def _subcommand(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    (sub,) = (action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return sub.choices[command]


class _Terminated(KeyboardInterrupt):
    """SIGTERM (``timeout``, ``kill``, a batch scheduler's time limit), raised where the command is."""


@contextmanager
def _terminate_as_interrupt():
    """Within it, SIGTERM interrupts the command as Ctrl-C does, so that it cleans up what it wrote.

    Python's default for SIGTERM ends the process at once, which leaves a store half written. Only
    the main thread can set a handler; elsewhere (a command run from a thread) nothing changes.
    """

    def terminate(signum, frame):
        raise _Terminated

    try:
        previous = signal.signal(signal.SIGTERM, terminate)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _check_demo_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder holding files, unless ``--overwrite``.

    As ``loki slide`` refuses an existing store: the demo writes every output under a fixed name, so
    a second run would replace an earlier run's trained model and metrics, and one that fails midway
    would leave the two runs' files mixed.
    """
    if overwrite or not out.is_dir():
        return
    held = sorted(path.name for path in out.iterdir() if not path.name.startswith("."))  # e.g. .DS_Store
    if held:
        listed = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        raise SystemExit(
            f"loki demo: --out {str(out)!r} holds files ({listed}), e.g. an earlier run's results; pass "
            "--overwrite to write over them, or another --out."
        )


def _run(args: argparse.Namespace) -> None:
    if args.command == "demo":
        from ._demo import run_demo

        _check_demo_out(args.out, args.overwrite)
        # a bar redrawn ten times a second is thousands of lines in a batch job's log
        progress = not args.no_progress and sys.stderr.isatty()
        table = run_demo(args.out, seed=args.seed, quick=args.quick, progress=progress)
        print(table.to_string(index=False))
        print(f"\nfigures and metrics written to {args.out.resolve()}")
    elif args.command == "embed":
        _embed(args)
    elif args.command == "slide":
        _slide(args)
    elif args.command == "visium":
        _visium(args)
    elif args.command == "st":
        _st(args)
    elif args.command == "tile":
        _tile(args)
    elif args.command == "align":
        _align(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
