"""Embed spots' gene sentences and H&E patches with an OmiCLIP model (AnnData / SpatialData glue)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from loki._keys import Key
from loki._logging import LokiWarning, logger, user_stacklevel
from loki._utils import (
    all_or_nothing,
    check_int,
    check_obs_key,
    check_result_key,
    loki_uns,
    write_obsm,
    write_uns,
)
from loki._utils._spatialdata import check_write_mode, get_table, is_spatialdata, section_shapes
from loki._utils._validation import is_pil_image
from loki.pp._patches import MICRONS_PER_UNIT_HINT, check_flags_not_owned, shape_diameter

if TYPE_CHECKING:
    from anndata import AnnData
    from spatialdata import SpatialData


def _sentences_of(table, sentence_key: str) -> list[str]:
    try:
        check_obs_key(table, sentence_key)
    except KeyError as err:
        raise KeyError(
            f"{err.args[0]} Run lk.pp.gene_sentences(data) first to build the gene sentences."
        ) from None
    values = table.obs[sentence_key]
    bad = values.isna().to_numpy()
    if bad.any():
        raise ValueError(
            f"adata.obs[{sentence_key!r}] has {int(bad.sum())} missing sentence(s), "
            f"e.g. {list(table.obs_names[bad][:3])}"
        )
    return values.astype(str).tolist()


def empty_sentences(table, sentence_key: str, sentences: list[str]) -> np.ndarray:
    """Boolean mask of the spots with an empty sentence.

    Those flagged in ``.obs[Key.empty_of(sentence_key)]`` (written by :func:`loki.pp.gene_sentences`)
    and any whose sentence names no gene (``""`` or only whitespace, also when the flag column is absent).
    """
    from loki.models._finetune import blank_sentences

    empty = blank_sentences(sentences)
    flag = Key.empty_of(sentence_key)
    if flag in table.obs:
        empty |= table.obs[flag].to_numpy(dtype=bool)
    return empty


def _patches_of(
    data,
    table,
    *,
    table_key,
    image_key,
    patches,
    size: int,
    diameter_um: float | None = None,
    coordinate_system: str | None = None,
    by_area: bool = False,
    chunk_size: int = 256,
):
    """Return ``(patches, flags, order)``: the given patches, or those cut from the section's image.

    ``flags`` is None for given patches, else the border flags and parameters ``(ok, meta)`` of the cut,
    not yet written anywhere. ``order`` is None when the patches are in table order; with ``by_area``
    patches are cut area by area (each batch then reads a few image blocks, not most of the image)
    and ``patches[i]`` belongs to spot ``order[i]``. Cut patches come ``chunk_size`` spots a chunk.
    """
    if patches is not None:
        choices = (
            ("image_key", image_key is not None),
            ("diameter_um", diameter_um is not None),
            ("coordinate_system", coordinate_system is not None),
        )
        unused = [name for name, given in choices if given]
        if unused:
            raise ValueError(
                f"{' and '.join(unused)} choose how patches are cut here; with patches= they do nothing."
            )
        patches = _as_patch_array(patches)
        shape = getattr(patches, "shape", None)
        if shape is None or len(shape) != 4 or shape[-1] != 3:
            hint = ""
            if shape is not None and len(shape) == 4 and shape[1] == 3:
                hint = "; channels come last: pass patches.transpose(0, 2, 3, 1) (or .permute for torch)"
            elif shape is not None and len(shape) == 4 and shape[-1] == 4:
                hint = "; drop the alpha channel: pass patches[..., :3]"
            raise ValueError(
                f"patches must be a (n_spots, height, width, 3) uint8 array, got shape {shape}{hint}"
            )
        if shape[0] != table.n_obs:
            raise ValueError(f"patches has {shape[0]} rows but the table has {table.n_obs} spots")
        if not _is_uint8(patches.dtype):
            raise ValueError(
                f"patches must be uint8 (RGB 0-255), got {patches.dtype}; convert them, e.g. "
                "(patches * 255).round().astype('uint8') for floats in [0, 1]."
            )
        return patches, None, None
    if not is_spatialdata(data):
        raise ValueError(_no_image_message(table))
    from loki.pp._patches import _cut_spot_patches, _cut_spot_patches_by_area

    where = {
        "table_key": table_key,
        "image_key": image_key,
        "diameter_um": diameter_um,
        "coordinate_system": coordinate_system,
        "chunk_size": chunk_size,
    }
    if by_area:
        cut, order, ok, meta = _cut_spot_patches_by_area(data, size=size, **where)
        return cut, (ok, meta), order
    cut, ok, meta = _cut_spot_patches(data, size=size, **where)
    return cut, (ok, meta), None


def _as_patch_array(patches):
    """``patches`` as an array: numpy, dask and torch as they are, a list or tuple of patches stacked."""
    if not isinstance(patches, list | tuple):
        return patches
    if any(is_pil_image(p) for p in patches):
        raise ValueError(
            "patches is a list of PIL images; pass one uint8 (n_spots, height, width, 3) array, e.g. "
            "np.stack([np.asarray(im.convert('RGB')) for im in patches])."
        )
    try:
        return np.stack([np.asarray(p) for p in patches]) if len(patches) else np.asarray(patches)
    except ValueError as err:
        shapes = sorted({np.shape(p) for p in patches})
        raise ValueError(
            f"patches is a list of {len(patches)} patches of different shapes ({', '.join(map(str, shapes[:3]))}"
            f"{', ...' if len(shapes) > 3 else ''}); pass one uint8 (n_spots, height, width, 3) array."
        ) from err


def _is_uint8(dtype) -> bool:
    """Whether a numpy, dask or torch dtype is uint8."""
    try:
        return np.dtype(dtype) == np.uint8
    except TypeError:  # torch's dtypes are not numpy's
        return str(dtype) == "torch.uint8"


def _no_image_message(table) -> str:
    """Why patches cannot be cut from an AnnData, and the way in for scanpy/squidpy's image layout."""
    plain = "an AnnData has no image: pass patches= (n_spots, h, w, 3) uint8, or a SpatialData"
    spatial = table.uns.get("spatial")
    libraries = (
        [k for k, v in spatial.items() if isinstance(v, dict) and v.get("images")]
        if isinstance(spatial, dict)
        else []
    )
    if not libraries:
        return f"{plain}."
    lib = libraries[0]
    images = ", ".join(map(repr, spatial[lib]["images"]))
    spot = spatial[lib].get("scalefactors", {}).get("spot_diameter_fullres")
    scale = (
        f"55 / spot_diameter_fullres = 55 / {spot:.4g} = {55 / spot:.4g} for Visium"
        if isinstance(spot, int | float) and spot > 0
        else "55 / the spot diameter in coordinate units for Visium"
    )
    return (
        f"{plain}. Its images in .uns['spatial'][{lib!r}]['images'] ({images}) are in scanpy/squidpy's "
        "layout, which loki does not read. Convert it with "
        "sdata = spatialdata_io.experimental.from_legacy_anndata(adata) (or read the Space Ranger folder "
        "with lk.io.read_visium, which also records the µm scale); then record the µm per coordinate unit "
        f"of the spots, sdata.tables[table_key].uns.setdefault('loki', {{}})['microns_per_unit'] = ... ({scale}), and "
        f"pass image_key= and coordinate_system= of the converted image (e.g. {lib + '_hires'!r})."
    )


def patch_diameter_um(model, diameter_um: float | None, table) -> tuple[float | None, str]:
    """The side in µm of the squares to cut (None: each spot's diameter) and where it comes from.

    ``diameter_um`` wins, then the model's ``patch_um``; a model's size needs the table's µm scale.
    """
    if diameter_um is not None:
        return diameter_um, "argument"
    patch_um = getattr(model, "patch_um", None)
    if patch_um is None:
        return None, "spot"
    mpu = loki_uns(table).get("microns_per_unit")
    if mpu is None:
        raise ValueError(
            f"model {model.name!r} was trained on {patch_um:g} µm patches (model.patch_um), but the table "
            "records no µm per coordinate unit (.uns['loki']['microns_per_unit']) to cut squares of that "
            f"size. {MICRONS_PER_UNIT_HINT} Or set model.patch_um = None to cut each spot's own diameter."
        )
    return patch_um, "model"


def spot_diameter_um(data, table) -> float:
    """Median spot diameter of a section in µm, as :func:`loki.pp.spot_patches` sizes spots; NaN if unknown.

    The spot shapes' size (:func:`~loki.pp._patches.shape_diameter`) times
    ``.uns['loki']['microns_per_unit']``, else ``.uns['loki']['spot_diameter_um']``.
    """
    meta = loki_uns(table)
    size = shape_diameter(section_shapes(data, table) if is_spatialdata(data) else None)
    if size is not None:
        mpu = meta.get("microns_per_unit")
        return np.nan if mpu is None else size * float(mpu)
    return float(meta.get("spot_diameter_um", np.nan))


class ImageEmbedding(NamedTuple):
    """What :func:`embed_image` returns with ``inplace=False``: the results it would write."""

    embedding: np.ndarray
    """Float32 ``(n_spots, embed_dim)`` L2-normalised embedding (``.obsm[key_added]``)."""
    patch_ok: pd.Series | None
    """Bool flags of the patches cut here, indexed by ``obs_names`` and named after their column
    (``.obs[f"{key_added}_patch_ok"]``), or None with ``patches=``."""


def _write(table, key_added: str, emb: np.ndarray, params: dict, copy: bool, flags=None):
    """Write the embedding (and the flags of its cut) into the table or its copy."""
    from loki.pp._patches import write_patch_flags

    target = table.copy() if copy else table
    with all_or_nothing():
        if flags is not None:
            write_patch_flags(target, Key.patch_ok_of(key_added), *flags)
        write_obsm(target, key_added, emb)
        write_uns(target, key_added, params)
    return target if copy else None


def _check_encoder(model, needs: tuple[str, ...], tool: str) -> None:
    """Refuse a ``model`` without the attributes ``needs`` of a :class:`loki.models.OmiCLIP`, before anything runs."""
    missing = [name for name in needs if not hasattr(model, name)]
    if not missing:
        return
    bare = (
        " It looks like a bare torch module: pass the loki model that holds it (lk.models.load(...) "
        "returns one; its .model is such a module)."
        if hasattr(model, "state_dict") and hasattr(model, "forward")
        else ""
    )
    raise TypeError(
        f"{tool}: model must be a loki.models.OmiCLIP (from lk.models.load), got a "
        f"{type(model).__name__} without {', '.join(missing)}.{bare}"
    )


def embed_text(
    data: AnnData | SpatialData,
    model,
    *,
    table_key: str | None = None,
    sentence_key: str = Key.SENTENCE,
    key_added: str = Key.TEXT,
    batch_size: int = 512,
    progress: bool = False,
    copy: bool = False,
    inplace: bool = True,
) -> AnnData | np.ndarray | None:
    """Embed each spot's gene sentence with OmiCLIP's text encoder.

    The text encoder reads a fixed context (``model.context_length``: 76 tokens for OmiCLIP) and gene
    symbols mostly take several tokens each: of a 50-gene sentence only about the first 18 to 27 genes
    reach it (median 23 on the bundled mouse olfactory bulb sections), as in the paper's pipeline, and
    changing lower-ranked genes does not change the embedding. The ``.uns`` entry records how many
    sentences were cut and the median number of genes kept, and one line is logged at INFO level.

    Parameters
    ----------
    data
        AnnData or SpatialData whose table has gene sentences (:func:`loki.pp.gene_sentences`).
    model
        :class:`loki.models.OmiCLIP` (from :func:`loki.models.load`).
    table_key
        Table of a SpatialData; may be omitted when it holds one table.
    sentence_key
        Column of ``.obs`` with the sentences.
    key_added
        Key of the embedding in ``.obsm`` and of its parameters in ``.uns['loki']``.
    batch_size
        Sentences per forward pass.
    progress
        Show a progress bar.
    copy
        AnnData input: return a modified copy instead of writing in place.
    inplace
        Write the results into the table (or the copy). ``False`` writes nothing and returns them.

    Returns
    -------
    ``None``, the modified copy when ``copy=True``, or with ``inplace=False`` the embedding, the
    float32 array ``.obsm[key_added]`` would hold. Unless ``inplace=False``, writes:

    - ``.obsm[key_added]``: float32 ``(n_spots, embed_dim)``, L2-normalised. Spots with an empty
      sentence (``""``, or flagged by :func:`loki.pp.gene_sentences`) carry no expression
      information: empty sentences all get the same vector, that of the empty text. A warning says
      how many there are.
    - ``.uns['loki'][key_added]``: the model's identity (:meth:`~loki.models.OmiCLIP.info`: name,
      architecture, ``checkpoint_hash`` of the weights' content, ...), batch size, source key,
      ``n_empty`` (spots with an empty sentence), ``n_truncated`` (sentences cut by the context) and
      ``median_genes_kept`` (median number of whole genes of the non-empty sentences that reach the
      encoder; NaN when all are empty).

    """
    _check_encoder(model, ("encode_texts", "context_length"), "tl.embed_text")
    check_write_mode(data, copy, inplace)
    batch_size = check_int(batch_size, "batch_size")
    table = get_table(data, table_key)
    check_result_key(table, key_added, ("obsm", "uns"), tool="tl.embed_text")
    sentences = _sentences_of(table, sentence_key)
    empty = empty_sentences(table, sentence_key, sentences)
    emb, words = model.encode_texts(
        sentences, batch_size=batch_size, progress=progress, return_word_counts=True
    )
    if empty.any():
        logger.warning(
            "%d of %d spots have an empty gene sentence (.obs[%r]): their embeddings carry no "
            "expression information; leave them out of downstream analyses",
            int(empty.sum()),
            len(sentences),
            Key.empty_of(sentence_key),
        )
    kept, n_words = words[:, 0], words[:, 1]
    cut = kept < n_words
    known = kept[(n_words > 0) & (kept >= 0)]
    median_kept = float(np.median(known)) if len(known) else float("nan")
    if cut.any():
        logger.info(
            "%d of %d sentences are longer than the model's %d-token context: only their first genes "
            "reach the text encoder (median %g genes kept)",
            int(cut.sum()),
            len(sentences),
            model.context_length,
            median_kept,
        )
    params = {
        "tool": "tl.embed_text",
        **model.info(),
        "batch_size": int(batch_size),
        "sentence_key": sentence_key,
        "modality": "text",
        "n_empty": int(empty.sum()),
        "n_truncated": int(cut.sum()),
        "median_genes_kept": median_kept,
    }
    if not inplace:
        return emb
    return _write(table, key_added, emb, params, copy)


def _warn_if_all_alike(emb: np.ndarray, what: str, tol: float = 1e-4) -> None:
    """Warn when every row of ``emb`` is the same (to ``tol``): the patches were, e.g. a blank image's."""
    if len(emb) < 2 or float(np.ptp(emb, axis=0).max()) > tol:
        return
    warnings.warn(
        f"All {len(emb)} image embeddings are the same (to {tol:g}): {what} look alike, e.g. cut from a "
        "blank or uniform image (some Space Ranger hires PNGs are blank). Look at the patches "
        "(lk.pp.spot_patches) or pass image_key= naming another image.",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def embed_image(
    data: AnnData | SpatialData,
    model,
    *,
    table_key: str | None = None,
    image_key: str | None = None,
    patches=None,
    diameter_um: float | None = None,
    coordinate_system: str | None = None,
    key_added: str = Key.IMAGE,
    batch_size: int = 256,
    progress: bool = False,
    copy: bool = False,
    inplace: bool = True,
) -> AnnData | ImageEmbedding | None:
    """Embed each spot's H&E patch with OmiCLIP's image encoder.

    Parameters
    ----------
    data
        SpatialData of a section (patches are cut with :func:`loki.pp.spot_patches` at the model's input
        size), or an AnnData together with ``patches``. A scanpy/squidpy AnnData with images in
        ``.uns['spatial']`` converts with ``spatialdata_io.experimental.from_legacy_anndata`` (the
        error says how to then record the section's µm scale).
    model
        :class:`loki.models.OmiCLIP`.
    table_key
        Table of a SpatialData; may be omitted when it holds one table.
    image_key
        Image of the section (default: the one named in the table's ``.uns['loki']``).
    patches
        uint8 ``(n_spots, h, w, 3)`` array (numpy, dask or torch; a list of ``(h, w, 3)`` arrays is
        stacked) in table order, instead of cutting them.
    diameter_um
        Side of the cut squares in µm. By default the size the model was trained on
        (``model.patch_um``, recorded by :func:`loki.tl.finetune`, :func:`loki.models.finetune` and
        :func:`loki.models.train_tiny` and saved with the model; it needs the table's
        ``.uns['loki']['microns_per_unit']``), else, when the model does not know it (published
        weights), the spot diameter.
    coordinate_system
        Coordinate system shared by the spots and the image; default ``"global"``, or the only one
        they share when they are not in ``"global"`` (``spatialdata-io`` names it after the dataset;
        :func:`loki.pp.tile_image` lays tiles in the image's).
    key_added
        Key of the embedding in ``.obsm`` and of its parameters in ``.uns['loki']``.
    batch_size
        Patches per forward pass. Patches are cut in chunks of a multiple of it (about 256 spots), each
        chunk once.
    progress
        Show a progress bar.
    copy
        AnnData input: return a modified copy instead of writing in place.
    inplace
        Write the results into the table (or the copy). ``False`` writes nothing and returns them.

    Returns
    -------
    ``None``, the modified copy when ``copy=True``, or with ``inplace=False`` an
    :class:`~loki.tl.ImageEmbedding` named tuple ``(embedding, patch_ok)`` of what would be written:
    the float32 array ``.obsm[key_added]`` would hold and, when patches are cut here, the bool
    ``pd.Series`` of their flags indexed by ``obs_names`` and named after the flag column (None with
    ``patches=``). Unless ``inplace=False``, writes:

    - ``.obsm[key_added]``: float32 ``(n_spots, embed_dim)``, L2-normalised.
    - ``.uns['loki'][key_added]``: the model's identity (:meth:`~loki.models.OmiCLIP.info`: name,
      architecture, ``checkpoint_hash`` of the weights' content, ...), batch size, patch source;
      when patches are cut here also ``diameter_um`` (the side of the cut squares in µm; NaN when they
      are spot-sized and the section records no µm scale), ``diameter_source`` (``"argument"``,
      ``"model"`` or ``"spot"``) and ``coordinate_system``.
    - ``.obs['loki_patch_ok']`` (``.obs[f"{key_added}_patch_ok"]`` for another ``key_added``, so that
      each embedding keeps the flags of its own cut) and its cut's parameters under the same key in
      ``.uns['loki']``, when patches are cut here (see :func:`loki.pp.spot_patches`); with
      ``patches=`` they are not written, and an earlier cut's flags describe that cut only.

    """
    _check_encoder(model, ("encode_images", "image_size"), "tl.embed_image")
    check_write_mode(data, copy, inplace)
    batch_size = check_int(batch_size, "batch_size")
    table = get_table(data, table_key)
    cut_here = patches is None
    flag_key = Key.patch_ok_of(key_added)  # the flags of patches cut here
    if cut_here:  # first: it says whose flags they are
        check_flags_not_owned(table, flag_key, owner=key_added)
    check_result_key(
        table,
        key_added,
        ("obsm", "uns"),
        derived=[(flag_key, ("obs", "uns"), "pp.spot_patches")] if cut_here else (),
        tool="tl.embed_image",
    )
    diameter, diameter_source = diameter_um, None
    if cut_here and is_spatialdata(data):
        diameter, diameter_source = patch_diameter_um(model, diameter_um, table)
        if diameter_source == "model":  # tell when the model's size overrides the spots' own
            own = spot_diameter_um(data, table)
            if not abs(own - diameter) <= 0.1 * diameter:
                logger.info(
                    "cutting %g µm squares around each spot, the size model %r was trained on "
                    "(model.patch_um), not the spots' own %s; pass diameter_um= to cut another size",
                    diameter,
                    model.name,
                    f"{own:g} µm" if np.isfinite(own) else "size (unknown)",
                )
    patches, flags, order = _patches_of(
        data,
        table,
        table_key=table_key,
        image_key=image_key,
        patches=patches,
        size=model.image_size,
        diameter_um=diameter,
        coordinate_system=coordinate_system,
        by_area=True,
        chunk_size=_chunk_size(batch_size),
    )
    emb = model.encode_images(patches, batch_size=batch_size, progress=progress)
    if order is not None:
        emb[order] = emb.copy()  # back to table order
    _warn_if_all_alike(emb, "the patches cut from the section's image" if cut_here else "patches=")
    source = "spot_patches" if cut_here else "patches"
    params = {
        "tool": "tl.embed_image",
        **model.info(),
        "batch_size": int(batch_size),
        "patch_source": source,
        "modality": "image",
    }
    if flags is not None:
        params.update(
            diameter_um=float(spot_diameter_um(data, table) if diameter is None else diameter),
            diameter_source=diameter_source,
            coordinate_system=flags[1]["coordinate_system"],  # the one the patches were cut in
            patch_ok_key=flag_key,
        )
    if not inplace:
        patch_ok = None if flags is None else pd.Series(flags[0], index=table.obs_names, name=flag_key)
        return ImageEmbedding(emb, patch_ok)
    return _write(table, key_added, emb, params, copy, flags)


def _chunk_size(batch_size: int, target: int = 256) -> int:
    """Spots per cut chunk: the multiple of ``batch_size`` nearest below ``target`` (at least one batch).

    Aligned chunks split into whole batches, so no batch straddles two chunks.
    """
    return batch_size * max(1, target // batch_size)
