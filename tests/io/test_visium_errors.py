from __future__ import annotations

import pytest

import loki as lk


def test_read_visium_given_a_file_asks_for_its_folder(tmp_path):
    counts = tmp_path / "filtered_feature_bc_matrix.h5"
    counts.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="expects the Space Ranger output folder") as err:
        lk.io.read_visium(counts)
    message = str(err.value)
    assert repr(str(counts)) in message  # the file given
    assert f"pass the folder that holds it: {str(tmp_path)!r}" in message


def _space_ranger_images(folder, sizes: dict[str, tuple[int, int]], scalefactors: dict[str, float]):
    """A ``spatial/`` folder with Space Ranger's downscaled PNGs of ``sizes`` (width, height) and scale factors."""
    import json

    import numpy as np
    from PIL import Image

    (folder / "spatial").mkdir(parents=True)
    for res, (width, height) in sizes.items():
        pixels = np.full((height, width, 3), 200, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "spatial" / f"tissue_{res}_image.png")
    (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    return folder / "spatial" / "scalefactors_json.json"


def _image_file(path, width: int, height: int):
    import numpy as np
    import tifffile
    from PIL import Image

    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if path.suffix == ".tif":
        tifffile.imwrite(path, pixels, photometric="rgb")
    else:
        Image.fromarray(pixels).save(path)
    return path


def test_read_visium_refuses_a_fullres_image_of_another_size_than_the_scale_factors_give(tmp_path):
    """The old reader took it: later every spot fell off the image (embed failed) or on the wrong tissue."""
    from tests.conftest import shared_path

    folder = shared_path("scanpy_visium_testdata", "1.0.0")
    wrong = _image_file(tmp_path / "other.png", 2000, 2000)  # hires 2000 px / tissue_hires_scalef 0.150015
    with pytest.raises(ValueError, match="give a full-resolution image of") as err:
        lk.io.read_visium(folder, fullres_image_file=wrong)
    message = str(err.value)
    assert f"fullres_image_file={str(wrong)!r} is 2000x2000 px" in message
    assert "about 13332x13332 px" in message  # 2000 / 0.150015
    assert "tissue_hires_scalef 0.150015" in message
    assert "tissue_hires_image.png (2000x2000 px)" in message


@pytest.mark.parametrize(
    ("size", "refused"),
    [
        ((1333, 1000), False),  # 1333.33 x 1000 scaled by 0.15 is 200 x 150: rounded down
        ((1334, 1000), False),  # rounded up
        ((1344, 1000), True),  # 201.6 px wide at 0.15: not the image the PNG was made from
        ((1333, 1020), True),  # 153 px high
        ((1000, 1333), True),  # turned a quarter
    ],
)
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_fullres_size_is_checked_within_the_rounding_of_the_hires_image(tmp_path, size, refused, suffix):
    from loki.io._visium import check_fullres_size

    scalefactors = _space_ranger_images(
        tmp_path,
        {"hires": (200, 150), "lowres": (60, 45)},
        {"tissue_hires_scalef": 0.15, "tissue_lowres_scalef": 0.045},
    )
    image = _image_file(tmp_path / f"full{suffix}", *size)
    if refused:
        with pytest.raises(ValueError, match=rf"is {size[0]}x{size[1]} px .* about 1333x1000 px"):
            check_fullres_size(image, tmp_path, scalefactors)
    else:
        check_fullres_size(image, tmp_path, scalefactors)


def test_fullres_size_is_checked_against_the_lowres_image_without_a_hires_one(tmp_path):
    from loki.io._visium import check_fullres_size

    scalefactors = _space_ranger_images(tmp_path, {"lowres": (60, 45)}, {"tissue_lowres_scalef": 0.045})
    check_fullres_size(_image_file(tmp_path / "right.png", 1333, 1000), tmp_path, scalefactors)
    with pytest.raises(
        ValueError, match=r"tissue_lowres_image\.png \(60x45 px\) .* tissue_lowres_scalef 0\.045"
    ):
        check_fullres_size(_image_file(tmp_path / "wrong.png", 1400, 1000), tmp_path, scalefactors)


def test_fullres_size_is_read_from_the_header_only(tmp_path):
    """A truncated copy of the right size passes the check: no pixel of it was decoded."""
    from loki.io._image import header_size
    from loki.io._visium import check_fullres_size

    scalefactors = _space_ranger_images(tmp_path, {"hires": (200, 150)}, {"tissue_hires_scalef": 0.15})
    whole = _image_file(tmp_path / "whole.png", 1333, 1000).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    assert header_size(cut) == (1333, 1000)
    check_fullres_size(cut, tmp_path, scalefactors)


def test_read_visium_given_the_sample_folder_points_at_its_outs_folder(tmp_path):
    """Given the sample folder holding Space Ranger's ``outs/``, the message listed ['outs'] without
    saying to pass it."""
    sample = tmp_path / "sample"
    (sample / "outs" / "spatial").mkdir(parents=True)
    (sample / "outs" / "filtered_feature_bc_matrix.h5").write_bytes(b"")
    hint = f"Its 'outs' folder holds it: pass {str(sample / 'outs')!r}, the Space Ranger output folder."
    with pytest.raises(FileNotFoundError, match="No 'filtered_feature_bc_matrix.h5'") as err:
        lk.io.read_visium(sample)
    assert str(err.value).endswith(f"it holds ['outs']. {hint}")
    # a spot file found in outs/ only, next to a counts file in the folder given: the same hint
    (sample / "filtered_feature_bc_matrix.h5").write_bytes(b"")
    (sample / "outs" / "spatial" / "scalefactors_json.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="No 'spatial/scalefactors_json.json'") as err:
        lk.io.read_visium(sample)
    assert str(err.value).endswith(hint)
    # without the file in outs/ there is nothing to point at
    with pytest.raises(FileNotFoundError, match="No 'filtered_feature_bc_matrix.h5'") as err:
        lk.io.read_visium(sample / "outs" / "spatial")
    assert "outs' folder" not in str(err.value)
