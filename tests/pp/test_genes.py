from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from tests.conftest import shared_path

import loki as lk

IDS = ["ENSMUSG01.1", "ENSMUSG02.3", "ENSMUSG03.1", "ENSMUSG04.2", "ENSMUSG05.1"]


def _adata(dense=False) -> ad.AnnData:
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    a = ad.AnnData(
        x if dense else sparse.csr_matrix(x), var=pd.DataFrame({"chrom": list("abcde")}, index=IDS)
    )
    a.layers["counts"] = a.X.copy()
    a.varm["pcs"] = np.ones((5, 2))
    return a


# ids 1 and 3 both map to "Snap25"; id 5 has no symbol
MAPPING = {"ENSMUSG01": "Snap25", "ENSMUSG02": "Actb", "ENSMUSG03": "Snap25", "ENSMUSG04": "Gfap"}


@pytest.mark.parametrize("dense", [False, True])
def test_map_gene_ids_sums_duplicates(dense):
    a = _adata(dense)
    x = np.asarray(a.X.toarray() if sparse.issparse(a.X) else a.X)
    with pytest.warns(
        UserWarning, match=r"1 of 5 gene ids have no symbol.*'ENSMUSG05.1'.*kept as ids"
    ) as record:
        assert lk.pp.map_gene_ids(a, MAPPING) is None
    assert [w.filename for w in record if "no symbol" in str(w.message)] == [
        __file__
    ]  # once, at the caller's line
    assert a.var_names.tolist() == ["Snap25", "Actb", "Gfap", "ENSMUSG05.1"]
    assert a.var["gene_ids"].tolist() == [
        "ENSMUSG01.1;ENSMUSG03.1",
        "ENSMUSG02.3",
        "ENSMUSG04.2",
        "ENSMUSG05.1",
    ]
    assert a.var["chrom"].tolist() == ["a", "b", "d", "e"]
    got = a.X.toarray() if sparse.issparse(a.X) else a.X
    assert sparse.issparse(a.X) != dense
    np.testing.assert_array_equal(got, np.column_stack([x[:, 0] + x[:, 2], x[:, 1], x[:, 3], x[:, 4]]))
    np.testing.assert_array_equal(
        a.layers["counts"].toarray() if sparse.issparse(a.layers["counts"]) else a.layers["counts"], got
    )
    assert "pcs" not in a.varm  # cannot be merged


def test_map_gene_ids_first_drop_and_copy():
    a = _adata()
    with pytest.warns(UserWarning, match="dropped"):
        out = lk.pp.map_gene_ids(a, pd.Series(MAPPING), unmapped="drop", duplicates="first", copy=True)
    assert a.var_names.tolist() == IDS  # original untouched
    assert out.var_names.tolist() == ["Snap25", "Actb", "Gfap"]
    assert out.var["gene_ids"].tolist() == ["ENSMUSG01.1", "ENSMUSG02.3", "ENSMUSG04.2"]
    np.testing.assert_array_equal(out.X.toarray(), a.X.toarray()[:, [0, 1, 3]])
    assert "pcs" in out.varm


def test_map_gene_ids_version_matching():
    a = _adata()
    exact = {i: s for i, s in zip(IDS, ["A", "B", "C", "D", "E"], strict=True)}
    lk.pp.map_gene_ids(
        a, {k.split(".")[0] + ".9": v for k, v in exact.items()}, unmapped="drop", strip_version=True
    )
    assert a.var_names.tolist() == ["A", "B", "C", "D", "E"]
    a = _adata()
    with pytest.raises(ValueError, match="No gene id is in the mapping"):
        lk.pp.map_gene_ids(a, {"ENSMUSG01.9": "A"}, unmapped="drop", strip_version=False)


def test_map_gene_ids_bad_input_writes_nothing():
    a = _adata()
    with pytest.raises(
        ValueError, match=r"1 of 5 gene ids have no symbol in the mapping \(e.g. 'ENSMUSG05.1'\)"
    ):
        lk.pp.map_gene_ids(a, MAPPING, unmapped="raise")
    with pytest.raises(ValueError, match="unmapped must be"):
        lk.pp.map_gene_ids(a, MAPPING, unmapped="ignore")
    with pytest.raises(ValueError, match="duplicates must be"):
        lk.pp.map_gene_ids(a, MAPPING, duplicates="mean")
    with pytest.raises(TypeError, match="mapping must be"):
        lk.pp.map_gene_ids(a, 3)
    with pytest.raises(FileNotFoundError):
        lk.pp.map_gene_ids(a, "/nonexistent/genes.tsv")
    assert a.var_names.tolist() == IDS
    assert "gene_ids" not in a.var
    assert a.n_vars == 5


def test_map_gene_ids_dataframe_columns(tmp_path):
    df = pd.DataFrame(
        {"gene_id": list(MAPPING), "gene_type": "protein_coding", "gene_name": list(MAPPING.values())}
    )
    path = tmp_path / "genes.tsv"
    df.to_csv(path, sep="\t", index=False)
    for mapping in (df, path, str(path)):
        a = _adata()
        with pytest.warns(UserWarning, match="no symbol"):
            lk.pp.map_gene_ids(a, mapping)
        assert a.var_names.tolist() == ["Snap25", "Actb", "Gfap", "ENSMUSG05.1"]


def test_map_gene_ids_on_real_mob_table():
    mob = shared_path("stutility_mob")
    counts = pd.read_csv(mob / "MOB2.tsv", sep="\t", index_col=0)
    a = ad.AnnData(sparse.csr_matrix(counts.to_numpy(dtype=np.float32)), obs=pd.DataFrame(index=counts.index))
    a.var_names = counts.columns
    total = a.X.sum()
    lk.pp.map_gene_ids(a, mob / "mouse_genes.tsv.gz", unmapped="raise")
    assert a.var_names.is_unique
    assert a.X.sum() == pytest.approx(total)  # summing duplicates keeps every count
    table = pd.read_csv(mob / "mouse_genes.tsv.gz", sep="\t", index_col=0)
    first = a.var["gene_ids"].str.split(";").str[0]
    assert (table.loc[first, "gene_name"].to_numpy() == a.var_names.to_numpy()).all()
    assert "Snap25" in a.var_names or "Gfap" in a.var_names


HUMAN_IDS = ["ENSG00000141510", "ENSG00000133703", "ENSG00000119888", "ENSG00000075624"]
HUMAN_SYMBOLS = ["TP53", "KRAS", "EPCAM", "ACTB"]


def _human(versions: bool = False) -> ad.AnnData:
    ids = [f"{i}.7" for i in HUMAN_IDS] if versions else HUMAN_IDS
    return ad.AnnData(np.arange(1, 9, dtype=np.float32).reshape(2, 4), var=pd.DataFrame(index=ids))


def test_map_gene_ids_with_the_var_of_a_10x_anndata():
    # scanpy's .var of a 10x matrix: symbols in the index, gene_ids, one feature type and genome for all
    var = pd.DataFrame(
        {"gene_ids": HUMAN_IDS, "feature_types": "Gene Expression", "genome": "GRCh38"}, index=HUMAN_SYMBOLS
    )
    a = _human()
    lk.pp.map_gene_ids(a, var)
    assert a.var_names.tolist() == HUMAN_SYMBOLS  # not every gene summed into "Gene Expression"
    assert a.var["gene_ids"].tolist() == HUMAN_IDS
    np.testing.assert_array_equal(a.X, np.arange(1, 9, dtype=np.float32).reshape(2, 4))


@pytest.mark.parametrize("reader", ["file", "frame"])
def test_map_gene_ids_with_a_biomart_export(tmp_path, reader):
    mart = pd.DataFrame(
        {
            "Gene stable ID": HUMAN_IDS,
            "Gene stable ID version": [f"{i}.18" for i in HUMAN_IDS],
            "Gene name": HUMAN_SYMBOLS,
        }
    )
    path = tmp_path / "mart_export.txt"
    mart.to_csv(path, sep="\t", index=False)
    a = _human(versions=True)
    lk.pp.map_gene_ids(a, path if reader == "file" else mart)
    assert a.var_names.tolist() == HUMAN_SYMBOLS


def test_map_gene_ids_with_a_headerless_space_ranger_features_file(tmp_path, recwarn):
    path = tmp_path / "features.tsv.gz"
    rows = [(i, s, "Gene Expression") for i, s in zip(HUMAN_IDS, HUMAN_SYMBOLS, strict=True)]
    pd.DataFrame(rows).to_csv(path, sep="\t", header=False, index=False)
    a = _human()
    lk.pp.map_gene_ids(a, path)
    assert a.var_names.tolist() == HUMAN_SYMBOLS  # the first line is a gene, not a header
    assert not [w for w in recwarn if "no symbol" in str(w.message)]
    # its columns are then named by position
    b = _human()
    lk.pp.map_gene_ids(b, path, id_column=0, symbol_column="1")
    assert b.var_names.tolist() == HUMAN_SYMBOLS


def test_map_gene_ids_finds_unnamed_columns_by_content():
    table = pd.DataFrame({"kind": "protein_coding", "a": HUMAN_IDS, "b": HUMAN_SYMBOLS, "n": range(4)})
    a = _human()
    lk.pp.map_gene_ids(a, table)
    assert a.var_names.tolist() == HUMAN_SYMBOLS


def test_map_gene_ids_asks_for_the_columns_when_they_are_ambiguous():
    table = pd.DataFrame(
        {"gene_ids": HUMAN_IDS, "hgnc": HUMAN_SYMBOLS, "alias": ["p53", "KRAS2", "TROP1", "BA1"]}
    )
    a = _human()
    with pytest.raises(ValueError, match=r"gene symbols.*\['gene_ids', 'hgnc', 'alias'\].*symbol_column="):
        lk.pp.map_gene_ids(a, table)
    assert a.var_names.tolist() == HUMAN_IDS  # nothing written
    lk.pp.map_gene_ids(a, table, symbol_column="alias")
    assert a.var_names.tolist() == ["p53", "KRAS2", "TROP1", "BA1"]
    no_ids = pd.DataFrame({"entrez": ["7157", "3845", "4072", "60"], "symbol": HUMAN_SYMBOLS})
    with pytest.raises(ValueError, match=r"gene ids.*\['entrez', 'symbol'\].*id_column="):
        lk.pp.map_gene_ids(_human(), no_ids)
    with pytest.raises(
        KeyError, match=r"symbol_column='gene_name' is not a column.*\['gene_ids', 'hgnc', 'alias'\]"
    ):
        lk.pp.map_gene_ids(_human(), table, symbol_column="gene_name")
    with pytest.raises(ValueError, match="id_column and symbol_column choose the columns of a mapping table"):
        lk.pp.map_gene_ids(_human(), dict(zip(HUMAN_IDS, HUMAN_SYMBOLS, strict=True)), id_column="gene_ids")


def test_map_gene_ids_on_a_spatialdata_table():
    """A SpatialData's table is mapped in place, as the other pp tools take one; copy=True is refused."""
    from spatialdata import SpatialData

    sdata = SpatialData(tables={"section": _adata(dense=True)})
    with pytest.raises(ValueError, match=r"copy=True applies to AnnData input"):
        lk.pp.map_gene_ids(sdata, MAPPING, copy=True)
    with pytest.raises(KeyError, match="nope"):
        lk.pp.map_gene_ids(sdata, MAPPING, table_key="nope")
    assert sdata.tables["section"].var_names.tolist() == IDS
    with pytest.warns(lk.LokiWarning, match="1 of 5 gene ids have no symbol"):
        assert lk.pp.map_gene_ids(sdata, MAPPING) is None
    table = sdata.tables["section"]
    assert table.var_names.tolist() == ["Snap25", "Actb", "Gfap", "ENSMUSG05.1"]
    x = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(table[:, "Snap25"].X.ravel(), x[:, 0] + x[:, 2])


def test_map_gene_ids_refuses_a_backed_table(tmp_path):
    """An AnnData opened with backed='r' failed with scipy's 'Scalar operands are not allowed'."""
    adata = lk.datasets.synthetic_tissue(30, 6, 2, seed=0)
    adata.var_names = [f"ENSG{i:011d}" for i in range(6)]
    adata.write_h5ad(tmp_path / "t.h5ad")
    backed = ad.read_h5ad(tmp_path / "t.h5ad", backed="r")
    with pytest.raises(ValueError, match=r"backed='r'.*adata = adata\.to_memory\(\)"):
        lk.pp.map_gene_ids(backed, {f"ENSG{i:011d}": f"G{i // 2}" for i in range(6)})
    assert list(backed.var_names) == list(adata.var_names)
    backed.file.close()


def test_summing_log_values_warns_and_counts_layer_sums_right():
    """Summing sc.pp.log1p values of ids sharing a symbol gave log(a) + log(b), without a word."""
    import scanpy as sc

    adata = _adata()
    sc.pp.log1p(adata)
    with pytest.warns(lk.LokiWarning, match=r"1 gene ids share a symbol .*\(adata\.uns\['log1p'\] is set"):
        lk.pp.map_gene_ids(adata, MAPPING, unmapped="drop")
    counts = np.arange(15, dtype=np.float32).reshape(3, 5)
    np.testing.assert_array_equal(adata.layers["counts"].toarray()[:, 0], counts[:, 0] + counts[:, 2])
    # keeping the first id, or log values without repeated symbols, say nothing
    complete = {**MAPPING, "ENSMUSG05": "Mbp"}
    for kwargs, mapping in (({"duplicates": "first"}, complete), ({}, {**complete, "ENSMUSG03": "Ttr"})):
        again = _adata()
        sc.pp.log1p(again)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            lk.pp.map_gene_ids(again, mapping, **kwargs)
