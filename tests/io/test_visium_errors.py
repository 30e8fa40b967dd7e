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
