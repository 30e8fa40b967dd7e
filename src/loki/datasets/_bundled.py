"""Small real data bundled with loki: four legacy ST sections of the mouse olfactory bulb (MIT)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from loki._logging import logger
from loki.io import read_legacy_st_sections
from loki.io._legacy_st import ANISOTROPY_RECORD

if TYPE_CHECKING:
    from spatialdata import SpatialData

_MOB = ("data", "mob")


def _mob_dir():
    return resources.files("loki.datasets").joinpath(*_MOB)


class _KnownAnisotropy(logging.Filter):
    """Leaves out the reader's anisotropy warning, which :func:`mob`'s docstring states once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, ANISOTROPY_RECORD, False)


def mob_manifest() -> dict:
    """Section names, spot geometry and image scales of the bundled mouse olfactory bulb data."""
    return json.loads(_mob_dir().joinpath("manifest.json").read_text(encoding="utf-8"))


def mob(sections: Sequence[str] | str = ("MOB1", "MOB2", "MOB3", "MOB4")) -> SpatialData:
    """Mouse olfactory bulb, legacy ST, four sections with H&E (bundled, no download).

    Ståhl et al. 2016 (Science) sections as shipped in STUtility (MIT licence; see
    ``loki/datasets/data/mob/LICENSE_ATTRIBUTION.txt``): MOB1/MOB2 are serial sections of one
    mouse, MOB3/MOB4 of another. Only spots under tissue are kept (379/407/438/403); genes are
    the 1000 of the STUtility subset, named by symbol. The spots lie on a legacy ST 2k array
    (100 µm spots; array coordinates in steps of 100 µm, neighbouring spots ~141 µm apart);
    images are the 1905 x 1905 px JPEGs the spot pixel coordinates refer to (about 4.4 µm per
    pixel). In every section the spot pixel coordinates of STUtility's alignment tables are
    anisotropic (21.6 px per array step along x, 24.1 along y, 11 % apart): ``microns_per_unit``
    is their geometric mean, so lengths along x and y are off by about ±5 %. The reader's warning
    about it is left out here.

    Parameters
    ----------
    sections
        Which of ``"MOB1"`` .. ``"MOB4"`` to load.

    Returns
    -------
    A SpatialData built by :func:`loki.io.read_legacy_st_sections`, so each section ``S`` has the
    standard layout: ``images[f"{S}_image"]``, ``shapes[f"{S}_spots"]``, ``tables[S]`` (raw counts,
    CSR float32, ``var_names`` gene symbols, ``var['gene_ids']`` Ensembl ids, ``uns['loki']``).

    """
    manifest = mob_manifest()
    if isinstance(sections, str):
        sections = (sections,)
    sections = list(sections)
    if not sections:
        raise ValueError(f"No section given; choose at least one of {manifest['sections']}.")
    unknown = [s for s in sections if s not in manifest["sections"]]
    if unknown:
        raise ValueError(f"Unknown section(s) {unknown}; choose among {manifest['sections']}.")
    folder = _mob_dir()
    with folder.joinpath("genes.csv").open("rb") as f:
        genes = pd.read_csv(f)
    specs = {}
    for name in sections:
        with folder.joinpath(f"{name}_counts.npz").open("rb") as f:
            counts = sparse.load_npz(f)
        with folder.joinpath(f"{name}_spots.csv").open("rb") as f:
            spots = pd.read_csv(f, index_col=0)
        with resources.as_file(folder.joinpath(f"{name}.jpg")) as path:
            from PIL import Image

            with Image.open(path) as img:
                image = np.asarray(img.convert("RGB"))
        specs[name] = {
            "counts": pd.DataFrame(
                counts.toarray(), index=spots.index.astype(str), columns=genes["symbol"].to_numpy()
            ),
            "spots": spots,
            "image": image,
            "image_scale": manifest["image_scale"][name],
        }
    quiet = _KnownAnisotropy()
    logger.addFilter(quiet)
    try:
        sdata = read_legacy_st_sections(
            specs, spot_diameter_um=manifest["spot_diameter_um"], array_step_um=manifest["array_step_um"]
        )
    finally:
        logger.removeFilter(quiet)
    gene_ids = genes.set_index("symbol")["gene_ids"]
    for name in sections:
        table = sdata.tables[name]
        table.var["gene_ids"] = gene_ids.reindex(table.var_names).to_numpy()
    return sdata
