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

    Two records name the same weights when their ``checkpoint_hash`` is equal, or when both hold the
    same ``file_sha256``: one weights file, loaded in two precisions (``precision="bf16-weights"``
    rounds the weights, and with them the hash, but not what the model computes beyond rounding).

    Parameters
    ----------
    embeddings
        What the caller calls each embedding (e.g. ``"query .obsm['loki_image']"``) -> its model
        record from :func:`embedding_model`; None (not recorded) is left out of the comparison.
    """
    known = {what: record for what, record in embeddings.items() if record is not None}
    if same_weights(*known.values()):
        return
    made_by = "; ".join(
        f"{what} by {record.get('model', '?')!r} (weights {record['checkpoint_hash'][:12]})"
        for what, record in known.items()
    )
    warnings.warn(
        f"The embeddings compared come from different model weights: {made_by}. Cosine similarities "
        "between two models' embeddings mean nothing; embed both with one model (the same weights file "
        "loaded in another precision, such as precision='bf16-weights', counts as the same model).",
        LokiWarning,
        stacklevel=user_stacklevel(),
    )


def same_weights(*records: Mapping[str, Any]) -> bool:
    """Whether model records (:meth:`loki.models.OmiCLIP.info`, or an embedding's) all name one weights.

    Records are linked by an equal ``checkpoint_hash`` or an equal ``file_sha256`` (one weights file
    loaded in two precisions); True for fewer than two records.
    """
    return len(_same_weights_groups(list(records))) < 2


def _same_weights_groups(records: list[Mapping[str, Any]]) -> list[set[int]]:
    """The records grouped by the weights they name: linked by an equal hash or an equal weights file."""
    groups: list[set[int]] = []
    for i, record in enumerate(records):
        ids = _ids(record)
        joined, rest = {i}, []
        for members in groups:
            if any(_ids(records[j]) & ids for j in members):
                joined |= members
            else:
                rest.append(members)
        groups = [*rest, joined]
    return groups


def _ids(record: Mapping[str, Any]) -> set[tuple[str, str]]:
    ids = {("hash", record["checkpoint_hash"])}
    if isinstance(record.get("file_sha256"), str):
        ids.add(("file", record["file_sha256"]))
    return ids
