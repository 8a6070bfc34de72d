"""The model layer: one way to name, fetch and load a causal LM, online or offline.

    from reasonlab.models import resolve_model, load_model
    resolved = resolve_model("smollm2-135m-instruct")   # registry name, local HF folder, or Hub id
    model, tokenizer = load_model(resolved)

`spec` is the registry of offline models, `sources` turns a registry entry into an HF folder,
`loader` resolves and loads (with a weights fingerprint for cache keys), `blocks` finds the decoder
blocks that the project's hooks index.
"""

from reasonlab.models.blocks import decoder_layers, num_layers
from reasonlab.models.loader import (ResolvedModel, folder_fingerprint, forward_passes, load_fresh, load_model,
                                     load_tokenizer, pick_device, pick_dtype, resolve_model, unload_all)
from reasonlab.models.sources import MANIFEST, is_materialized, materialize, materialized_path
from reasonlab.models.spec import DEFAULT_MODEL, REGISTRY, ModelSpec, OfflineSource, WheelPart

__all__ = ["DEFAULT_MODEL", "MANIFEST", "REGISTRY", "ModelSpec", "OfflineSource", "ResolvedModel", "WheelPart",
           "decoder_layers", "folder_fingerprint", "forward_passes", "is_materialized", "load_fresh", "load_model",
           "load_tokenizer", "materialize", "materialized_path", "num_layers", "pick_device", "pick_dtype",
           "resolve_model", "unload_all"]
