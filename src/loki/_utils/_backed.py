"""Reading the expression matrix of an AnnData opened with ``backed="r"``."""

from __future__ import annotations

import h5py
import numpy as np
from scipy import sparse

try:
    from anndata.abc import CSCDataset, CSRDataset
except ImportError:  # anndata < 0.11
    from anndata.experimental import CSCDataset, CSRDataset

#: Values read at a time from a backed matrix of which only some columns are kept.
READ_BLOCK_VALUES = 2**26


def read_matrix(x, columns: np.ndarray | None = None):
    """``x[:, columns]`` (all of ``x`` when None) as a numpy array or scipy sparse matrix.

    The matrix of an AnnData read with ``backed="r"`` - anndata's backed CSR / CSC dataset, or an h5py
    dataset for a dense one - is read from disk: whole, or in blocks of rows when only some columns
    are kept (only those are then held in memory). Other matrices are sliced as they are.
    """
    if isinstance(x, CSCDataset):  # anndata reads all of a backed CSC matrix for any block of rows
        x = x.to_memory()
    elif isinstance(x, CSRDataset | h5py.Dataset):
        n_rows, n_cols = x.shape
        step = n_rows if columns is None else max(1, READ_BLOCK_VALUES // max(n_cols, 1))
        if n_rows <= step:
            x = x.to_memory() if isinstance(x, CSRDataset) else x[()]
        else:  # a CSR block is a scipy matrix, a dense one an array; h5py takes no unsorted columns
            blocks = [x[start : start + step][:, columns] for start in range(0, n_rows, step)]
            return (
                sparse.vstack(blocks, format="csr") if sparse.issparse(blocks[0]) else np.concatenate(blocks)
            )
    return x if columns is None else x[:, columns]
