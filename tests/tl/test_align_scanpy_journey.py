"""A scanpy user's mistakes on the way to ``lk.tl.align``: per-section PCA, a table over missing spots."""

from __future__ import annotations

import inspect
import re
import warnings

import anndata as ad
import pytest
import scanpy as sc

import loki as lk
from loki._keys import Key
from loki.tl._align import align
from loki.tl._cpd import cpd_align

# one start, no mirror: the sections are mounted alike and each alignment takes about a second
_FAST = {"method": "rigid", "mirror": False, "n_rotations": 1, "seed": 0}


def _log_normalised(table: ad.AnnData) -> ad.AnnData:
    out = table.copy()
    sc.pp.normalize_total(out)
    sc.pp.log1p(out)
    return out


def _messages(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, lk.LokiWarning)]


@pytest.mark.parametrize(
    ("loadings", "why"),
    [(True, r"\.varm\['PCs'\].*1000 genes"), (False, "centred with uncorrelated components")],
)
def test_pcas_fitted_on_each_section_separately_are_named(loadings, why):
    """With scanpy's loadings copied along they decide; without (only .obsm copied back), the scores do."""
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    for name in ("MOB1", "MOB2"):
        fitted = _log_normalised(sdata.tables[name])
        sc.pp.pca(fitted, n_comps=10)
        sdata.tables[name].obsm["X_pca"] = fitted.obsm["X_pca"]
        if loadings:
            sdata.tables[name].varm["PCs"] = fitted.varm["PCs"]
    with pytest.warns(lk.LokiWarning, match=f"separate PCA fits: .*{why}"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_pca", inplace=False, **_FAST)


@pytest.mark.parametrize("loadings", [True, False])
def test_one_pca_fitted_on_the_sections_together_is_not_named(loadings):
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    joint = _log_normalised(ad.concat(dict(sdata.tables), label="section", index_unique="-"))
    sc.pp.pca(joint, n_comps=10)
    for name in ("MOB1", "MOB2"):
        part = joint[joint.obs["section"] == name]
        sdata.tables[name].obsm["X_pca"] = part.obsm["X_pca"]
        if loadings:
            sdata.tables[name].varm["PCs"] = part.varm["PCs"]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        lk.tl.align(sdata, source="MOB2", target="MOB1", use="X_pca", inplace=False, **_FAST)
    assert not [m for m in _messages(record) if "PCA" in m]


@pytest.mark.filterwarnings("ignore:CPD stopped at max_iter")
def test_a_table_over_spots_that_are_not_in_the_spatialdata_is_named():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    table = sdata.tables["MOB2"]
    table.uns["spatialdata_attrs"]["region"] = "MOB2_spot"  # a typo: the shapes are "MOB2_spots"
    table.obs["region"] = table.obs["region"].cat.rename_categories(["MOB2_spot"])
    with pytest.warns(lk.LokiWarning, match=r"source table 'MOB2' annotates 'MOB2_spot'.*'MOB2_spots'"):
        lk.tl.align(sdata, source="MOB2", target="MOB1", use=None, **_FAST)
    assert "shapes" not in table.uns[Key.UNS][Key.ALIGNED]
    assert not [name for name in sdata.shapes if name.endswith("_aligned")]


def test_align_and_its_kernel_share_their_defaults():
    """``align`` passes every CPD setting on; their defaults must not drift apart (``method`` aside:
    the user's default is the paper's deformable recipe, the kernel's the plain rigid fit)."""
    public = inspect.signature(align).parameters
    kernel = inspect.signature(cpd_align).parameters
    shared = [name for name in kernel if name in public and name != "method"]
    assert len(shared) >= 10
    differ = {name: (public[name].default, kernel[name].default) for name in shared}
    assert {k: v for k, v in differ.items() if v[0] != v[1]} == {}


@pytest.mark.filterwarnings("ignore:CPD stopped at max_iter")
def test_sections_kept_in_one_anndata_are_told_how_to_be_split():
    sdata = lk.datasets.mob(("MOB1", "MOB2"))
    adata = ad.concat(dict(sdata.tables), label="library_id", index_unique="-")
    with pytest.raises(TypeError, match=r"got one AnnData\. .*adata\.obs\['library_id'\]") as err:
        lk.tl.align_sections(adata, target="MOB1", use=None)
    recipe = re.search(r"pass them as a dict: (\{.*\});", str(err.value)).group(1)
    sections = eval(recipe, {"adata": adata})  # the hint runs as written
    results = lk.tl.align_sections(sections, target="MOB1", use=None, progress=False, **_FAST)
    assert set(results) == {"MOB1", "MOB2"}
    assert sections["MOB2"].obsm[Key.ALIGNED].shape == (sdata.tables["MOB2"].n_obs, 2)
