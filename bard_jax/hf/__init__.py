"""Hugging Face checkpoints <-> our parameter tree: name table, streaming load, export, our converted format.

    config, raw = read_hf_config(path)                       # ModelConfig + the config.json dict (either dialect)
    params = load_hf_params(path, config, dtype="bfloat16", sharding_fn=None)
    save_converted(params, config, raw, out_dir, side_files_from=path)
    convert_hf(path, out_dir, dtype=None, overwrite=False)  # the same, streaming (never holds the model)
    params, config, raw = load_converted(out_dir, dtype="bfloat16", sharding_fn=None)
    export_hf(params, config, raw, hf_out_dir, max_shard_bytes="5GB", side_files_from=out_dir)

Writers replace `out_dir` atomically (temp dir + rename); `check_output_dir(src, dst, overwrite=..., kind=...)` is
the convert commands' guard against replacing anything but their own earlier output, and `check_weights_dir(path)`
says what to pass instead of a training workdir or another non-weights directory.
`param_shapes(config)` is the shape contract of the parameter tree; `name_table(config)` lists every parameter
with its HF tensor name and layout transform. Every loader problem is reported in one `CheckpointError`.
No torch anywhere: safetensors are parsed and written here (bf16 via ml_dtypes).
"""

from bard_jax.atomic_dir import atomic_dir, clean_stale_temp_dirs
from bard_jax.hf.common import CONVERTED_MARKER, CheckpointError, copy_side_files, parse_size, resolve_dtype
from bard_jax.hf.converted import (
    convert_hf,
    is_converted_dir,
    load_converted,
    read_converted_config,
    save_converted,
)
from bard_jax.hf.dirs import check_export_dir, check_output_dir, check_weights_dir
from bard_jax.hf.export import export_hf
from bard_jax.hf.load import HFCheckpoint, ShardingFn, check_checkpoint, load_hf_params, read_hf_config
from bard_jax.hf.table import (
    Entry,
    canonical_name,
    from_hf_layout,
    hf_tensor_order,
    name_table,
    param_shapes,
    to_hf_layout,
)

__all__ = [
    "CONVERTED_MARKER", "CheckpointError", "Entry", "HFCheckpoint", "ShardingFn", "atomic_dir", "canonical_name",
    "check_checkpoint", "check_export_dir", "check_output_dir", "check_weights_dir", "clean_stale_temp_dirs",
    "convert_hf", "copy_side_files", "export_hf", "from_hf_layout", "hf_tensor_order", "is_converted_dir",
    "load_converted", "load_hf_params", "name_table", "param_shapes", "parse_size", "read_converted_config",
    "read_hf_config", "resolve_dtype", "save_converted", "to_hf_layout",
]
