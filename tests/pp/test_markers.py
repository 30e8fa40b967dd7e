from __future__ import annotations

import pandas as pd
import pytest
from tests.conftest import shared_path

import loki as lk


def test_sctype_by_tissue():
    path = shared_path("marker_genes", "ScTypeDB_full.xlsx")
    markers = lk.pp.read_markers(path, tissue="immune system")
    table = pd.read_excel(path)
    immune = table[table.tissueType == "Immune system"]
    assert set(markers) == set(immune.cellName)
    first = immune.iloc[0]
    expected = list(dict.fromkeys(g.strip() for g in first.geneSymbolmore1.split(",")))
    assert markers[first.cellName][: len(expected)] == expected
    assert all(len(set(g)) == len(g) for g in markers.values())


def test_panglaodb_species_and_canonical():
    path = shared_path("marker_genes", "PanglaoDB_markers_27_Mar_2020.tsv")
    all_brain = lk.pp.read_markers(path, tissue="Brain")
    mouse = lk.pp.read_markers(path, tissue="Brain", species="mouse", canonical_only=True)
    assert set(mouse) <= set(all_brain)
    assert sum(map(len, mouse.values())) < sum(map(len, all_brain.values()))
    table = pd.read_csv(path, sep="\t")
    astro = table[(table.organ == "Brain") & (table["cell type"] == "Astrocytes")]
    assert set(all_brain["Astrocytes"]) == set(astro["official gene symbol"])


def test_cellmarker_and_class_filter():
    path = shared_path("marker_genes", "CellMarker2_Human_Aug.csv")
    markers = lk.pp.read_markers(path, tissue="Breast", cell_types=["Adipocyte"])
    assert list(markers) == ["Adipocyte"]
    assert markers["Adipocyte"]


def test_errors(tmp_path):
    path = shared_path("marker_genes", "CellMarker2_Human_Aug.csv")
    with pytest.raises(KeyError, match="Tissue"):
        lk.pp.read_markers(path, tissue="Atlantis")
    with pytest.raises(ValueError, match="PanglaoDB"):
        lk.pp.read_markers(path, species="human")
    bad = tmp_path / "x.csv"
    pd.DataFrame({"a": [1]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="format"):
        lk.pp.read_markers(bad)
    with pytest.raises(FileNotFoundError):
        lk.pp.read_markers(tmp_path / "none.csv")
    # a tissue as the user typed it, not lower-cased
    with pytest.raises(
        KeyError, match=r"'Atlantis' not found in the 'Tissue' column of .* \(case-insensitive\)"
    ):
        lk.pp.read_markers(path, tissue="Atlantis")


def test_no_class_left_is_an_error_not_an_empty_table(tmp_path):
    path = shared_path("marker_genes", "CellMarker2_Human_Aug.csv")
    with pytest.raises(
        ValueError,
        match=r"No class with a marker gene is left in CellMarker2_Human_Aug\.csv \(2163 rows, cellmarker "
        r"format\) after tissue='Breast', cell_types=\[\]: no row matched\.",
    ):
        lk.pp.read_markers(path, tissue="Breast", cell_types=[])
    no_genes = tmp_path / "m.csv"
    pd.DataFrame({"Tissue": ["Gut"], "CT": ["T"], "Gene": [" , "]}).to_csv(no_genes, index=False)
    with pytest.raises(ValueError, match=r"after no filter: 1 row matched, none with a gene in 'Gene'"):
        lk.pp.read_markers(no_genes)


def test_generic_csv_roundtrip(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame(
        {"Tissue": ["Gut", "Gut", "Skin"], "CT": ["T", "T", "K"], "Gene": ["CD3E, CD2", "CD2,CD8A", "KRT5"]}
    ).to_csv(path, index=False)
    assert lk.pp.read_markers(path) == {"T": ["CD3E", "CD2", "CD8A"], "K": ["KRT5"]}
    assert lk.pp.read_markers(path, tissue=["skin"]) == {"K": ["KRT5"]}
