"""What ``loki embed`` and ``loki tile`` tell a user who asks for what cannot be done (W8's findings)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import loki as lk
from loki.cli import main

MOB_FILES = Path(lk.__file__).parent / "datasets" / "data" / "mob"


def _legacy_st_files(folder: Path, section: str) -> tuple[Path, Path]:
    """The bundled MOB section as the files ``loki st`` reads: a spots x genes counts .tsv and a spot file."""
    import scipy.sparse as sp

    genes = pd.read_csv(MOB_FILES / "genes.csv")["symbol"]
    spots = pd.read_csv(MOB_FILES / f"{section}_spots.csv")
    counts = sp.load_npz(MOB_FILES / f"{section}_counts.npz").toarray()
    counts_path, spots_path = folder / f"{section}_counts.tsv", folder / f"{section}_spots.tsv"
    pd.DataFrame(counts, index=spots["spot_id"], columns=genes).to_csv(counts_path, sep="\t")
    spots.drop(columns="spot_id").to_csv(spots_path, sep="\t", index=False)
    return counts_path, spots_path


def test_embed_of_a_section_without_image_points_at_no_image(mob4_zarr, tmp_path):
    counts, spots = _legacy_st_files(tmp_path, "MOB1")
    add = ["st", str(counts), str(spots), str(mob4_zarr), "--no-image", "--append", "--name", "B"]
    assert main([*add, "--array-step-um", "100"]) == 0
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(mob4_zarr), "--table", "B", "--model", "loki-tiny", "--device", "cpu"])
    message = str(exit_.value.code)
    assert "--no-image" in message  # old: "Cannot tell which image ...; pass --image-key"
    assert "table 'B' has no image of its own" in message
    assert "'MOB4_image' (table 'MOB4')" in message  # the image there is named with its owner
    assert lk.Key.TEXT not in sd.read_zarr(mob4_zarr).tables["B"].obsm


def test_embed_of_a_table_in_a_store_without_images_points_at_no_image(tmp_path):
    path = tmp_path / "no_images.zarr"
    sdata = lk.datasets.mob("MOB4")
    del sdata.images["MOB4_image"]
    sdata.tables["MOB4"].uns[lk.Key.UNS].pop("image_key")
    sdata.write(path)
    with pytest.raises(SystemExit) as exit_:
        main(["embed", str(path), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"])
    message = str(exit_.value.code)
    assert "table 'MOB4' has no image of its own" in message
    assert "holds no image" in message
    assert "--no-image" in message


@pytest.mark.parametrize(
    "option",
    [["--image-key", "MOB4_image"], ["--diameter-um", "50"], ["--coordinate-system", "global"]],
)
def test_embed_no_image_refuses_image_options(mob4_zarr, capsys, option):
    embed = ["embed", str(mob4_zarr), "--table", "MOB4", "--model", "loki-tiny", "--device", "cpu"]
    with pytest.raises(SystemExit) as exit_:
        main([*embed, "--no-image", *option])
    assert exit_.value.code == 2
    assert f"argument {option[0]}: not allowed with argument --no-image" in capsys.readouterr().err
    assert lk.Key.TEXT not in sd.read_zarr(mob4_zarr).tables["MOB4"].obsm


def test_tile_warning_of_an_image_without_glass_reads_whole(tmp_path, caplog):
    from spatialdata.models import Image2DModel

    rng = np.random.default_rng(0)  # an H&E crop inside the tissue: purple everywhere, no glass
    rgb = np.stack([rng.integers(120, 170, (400, 400)), rng.integers(60, 100, (400, 400))], axis=0)
    rgb = np.concatenate([rgb, rng.integers(150, 200, (1, 400, 400))]).astype(np.uint8)
    store = tmp_path / "crop.zarr"
    sd.SpatialData(images={"crop": Image2DModel.parse(rgb, dims=("c", "y", "x"))}).write(store)
    assert main(["tile", str(store), "--image", "crop", "--mpp", "1", "--tile-um", "50"]) == 0
    (warning,) = (r.getMessage() for r in caplog.records if "shows no glass" in r.getMessage())
    assert "backgroundlk." not in warning
    assert "lk.pp.tissue_mask" not in warning  # the CLI has no mask option: name what it has
    assert "mask" not in warning
    # its last sentence is whole: it starts after the one before, names the option and ends the warning
    assert re.search(
        r"tissue\. If it does show glass with a tinted background, pass --within \w.*\.$", warning
    )


def test_cli_rewording_of_api_hints_drops_no_words():
    """Each rewording replaces a whole phrase: one that deletes a fragment garbles what is left around it."""
    from loki._cli_messages import API_ONLY_HINTS

    deleting = [
        (command, hint)
        for command, hints in API_ONLY_HINTS.items()
        for hint, instead in hints.items()
        if not instead.strip()
    ]
    assert deleting == []
