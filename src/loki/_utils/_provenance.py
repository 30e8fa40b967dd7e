"""Which model made an embedding, read from the record its embedding tool wrote beside it.

:func:`loki.tl.embed_text` and :func:`loki.tl.embed_image` record the model's identity
(:meth:`loki.models.OmiCLIP.info`, with the weights' ``checkpoint_hash``) in
``.uns['loki'][key]``. Tools that compare two embeddings by cosine similarity use it to warn when the
two come from different weights: such similarities mean nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from anndata import AnnData

from loki._logging import LokiWarning, user_stacklevel

from ._spatialdata import get_table, is_spatialdata
from ._write import loki_record


def embedding_model(data, key: str | None, table_key: str | None = None) -> Mapping[str, Any] | None:
    """The model record of the embedding ``.obsm[key]`` of an AnnData / SpatialData table.

    None when ``data`` is a plain array, ``key`` is None, or no loki embedding tool recorded a model
    for ``key`` (an embedding made elsewhere, such as ``X_pca``).
    """
    if key is None or not (isinstance(data, AnnData) or is_spatialdata(data)):
        return None
    record = loki_record(get_table(data, table_key), key)
    if record is None or not isinstance(record.get("checkpoint_hash"), str):
        return None
    return record


def warn_if_models_differ(embeddings: Mapping[str, Mapping[str, Any] | None]) -> None:
    """Warn (:class:`~loki.LokiWarning`) when recorded embeddings come from different weights.

    Parameters
    ----------
    embeddings
        What the caller calls each embedding (e.g. ``"query .obsm['loki_image']"``) -> its model
        record from :func:`embedding_model`; None (not recorded) is left out of the comparison.
    """
    known = {what: record for what, record in embeddings.items() if record is not None}
    hashes = {record["checkpoint_hash"] for record in known.values()}
    if len(hashes) < 2:
        return
    made_by = "; ".join(
        f"{what} by {record.get('model', '?')!r} (weights {record['checkpoint_hash'][:12]})"
        for what, record in known.items()
    )
    warnings.warn(
        f"The embeddings compared come from different model weights: {made_by}. Cosine similarities "
        "between two models' embeddings mean nothing; embed both with one model (weights loaded in "
        "another precision, such as precision='bf16-weights', also count as other weights here).",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )
