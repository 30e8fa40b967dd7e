from __future__ import annotations

import numpy as np
import pytest
from anndata import AnnData

from loki._utils import check_obs_key, check_obsm_key


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
