from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

from loki._utils import check_int, check_obs_key, check_obsm_key, loki_record, loki_uns


def test_key_checks_name_the_container_they_look_in():
    adata = AnnData(np.zeros((2, 1)))
    adata.obs["cell_type"] = "a"
    adata.obsm["spatial"] = np.zeros((2, 2))
    with pytest.raises(KeyError, match=r"^\"'type' not found in adata\.obs; available: 'cell_type'\.\"$"):
        check_obs_key(adata, "type")  # the default text is unchanged
    with pytest.raises(KeyError, match=r"'type' not found in reference\.obs; available: 'cell_type'\.\"$"):
        check_obs_key(adata, "type", where="reference")
    with pytest.raises(KeyError, match=r"'xy' not found in adata\.obsm; available: 'spatial'\.\"$"):
        check_obsm_key(adata, "xy")
    with pytest.raises(
        KeyError, match=r"'xy' not found in sdata\.tables\['A'\]\.obsm; available: 'spatial'\. Run it first\."
    ):
        check_obsm_key(adata, "xy", where="sdata.tables['A']", hint="Run it first.")
    check_obs_key(adata, "cell_type", where="reference")
    check_obsm_key(adata, "spatial", where="reference")


def test_a_missing_key_is_paired_with_one_differing_only_in_case():
    from loki._utils._validation import require_keys

    genes = ["Penk", "Gad1", "GAD1", "Th"]
    with pytest.raises(
        KeyError,
        match=r"available: .*'Th'\. Differing only in case: 'PENK' -> 'Penk', 'gad1' -> 'Gad1'\. See",
    ):
        require_keys(genes, ["PENK", "Th", "gad1", "Nope"], "adata.var_names", hint="See the docs.")
    with pytest.raises(KeyError, match=r"available: 'Penk'\.\"$"):
        require_keys(["Penk"], ["Nope"], "adata.var_names")


@pytest.mark.parametrize("as_sparse", [False, True])
def test_non_finite_values_are_counted_with_their_rows(as_sparse):
    from scipy import sparse

    from loki._utils._validation import check_array_finite

    xy = np.arange(12, dtype=float).reshape(6, 2)
    xy[[0, 2, 4]] = np.nan  # three spots without coordinates
    xy[5, 1] = np.inf
    x = sparse.csr_matrix(xy) if as_sparse else xy
    with pytest.raises(
        ValueError,
        match=r"^xy contains 7 non-finite value\(s\) \(NaN or inf\) in 4 row\(s\), e.g. rows \[0, 2, 4, 5\]\.$",
    ):
        check_array_finite(x, "xy")
    check_array_finite(sparse.csr_matrix(np.ones((2, 2))) if as_sparse else np.ones((2, 2)), "xy")


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_check_int_refuses_non_integers_and_out_of_range(value):
    with pytest.raises(ValueError, match=rf"^n must be a positive integer, got {value!r}\.$"):
        check_int(value, "n")


def test_check_int_bounds_none_and_reason():
    assert type(check_int(np.int64(3), "n")) is int
    assert check_int(np.int64(3), "n") == 3
    assert check_int(None, "n", optional=True) is None
    with pytest.raises(ValueError, match=r"^n must be a positive integer or None, got 'a'\.$"):
        check_int("a", "n", optional=True)
    with pytest.raises(ValueError, match=r"^k must be an integer >= 2 \(two at least\), got 1\.$"):
        check_int(1, "k", minimum=2, why="two at least")
    with pytest.raises(ValueError, match=r"^fill must be an integer in \[0, 255\], got 256\.$"):
        check_int(256, "fill", minimum=0, maximum=255)
    assert check_int(0, "fill", minimum=0, maximum=255) == 0


def test_loki_records_read_only_loki_mappings():
    adata = AnnData(np.zeros((2, 1)))
    assert loki_uns(adata) == {}
    assert loki_record(adata, "x") is None
    adata.uns["loki"] = "another tool's value"
    assert loki_uns(adata) == {}
    assert loki_record(adata, "x") is None
    adata.uns["loki"] = {"x": {"target": "A"}, "image_key": "img"}
    assert loki_record(adata, "x") == {"target": "A"}
    assert loki_record(adata, "image_key") is None  # a value, not a record
    assert loki_uns(adata)["image_key"] == "img"


def test_a_derived_key_may_replace_only_the_record_of_its_own_tool():
    """embed_image's patch flags: their record is pp.spot_patches', which a rerun replaces; a text
    embedding recorded under the flags' key is refused (it was replaced)."""
    from loki._utils import check_result_key

    adata = AnnData(np.zeros((3, 2), dtype=np.float32))
    adata.uns["loki"] = {"x_patch_ok": {"tool": "pp.spot_patches"}}
    derived = [("x_patch_ok", ("obs", "uns"), "pp.spot_patches")]
    check_result_key(adata, "x", ("obsm", "uns"), derived=derived, tool="tl.embed_image")
    adata.uns["loki"]["x_patch_ok"] = {"tool": "tl.embed_text"}
    with pytest.raises(
        ValueError,
        match=r"also takes 'x_patch_ok' for its results, which would replace the result "
        r"'x_patch_ok' of lk\.tl\.embed_text",
    ):
        check_result_key(adata, "x", ("obsm", "uns"), derived=derived, tool="tl.embed_image")
