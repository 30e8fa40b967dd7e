"""Internal helpers shared by the public modules."""

from __future__ import annotations

from ._progress import block_starts
from ._rng import as_rng, as_seed
from ._validation import (
    check_array_finite,
    check_element_name,
    check_int,
    check_key_name,
    check_labelled,
    check_loki_uns,
    check_obs_key,
    check_obsm_key,
    check_result_key,
    check_unique_var_names,
    check_var_key,
    is_int,
    is_real,
    require_keys,
)
from ._write import (
    all_or_nothing,
    drop_obsm,
    loki_record,
    loki_uns,
    write_layer,
    write_obs,
    write_obsm,
    write_uns,
)

__all__ = [
    "all_or_nothing",
    "drop_obsm",
    "as_rng",
    "as_seed",
    "block_starts",
    "check_array_finite",
    "check_element_name",
    "check_int",
    "check_key_name",
    "check_labelled",
    "check_loki_uns",
    "check_obs_key",
    "check_obsm_key",
    "check_result_key",
    "check_unique_var_names",
    "check_var_key",
    "is_int",
    "is_real",
    "loki_record",
    "loki_uns",
    "require_keys",
    "write_layer",
    "write_obs",
    "write_obsm",
    "write_uns",
]
