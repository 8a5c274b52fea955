"""Ingle's own GGUF metadata keys, in one place (the standard ones come from gguf-py's `gguf.Keys`)."""

from __future__ import annotations


class IngleKeys:
    """Keys Ingle writes into the adapters and merged models it exports (all under the `ingle.` prefix)."""

    PREFIX = "ingle."
    BASE_MODEL_SHA256 = "ingle.base_model.sha256"  # the base model an adapter was trained on
    DATASET_SHA256 = "ingle.dataset.sha256"  # the training data, as a file hash
    TRAINING_SETTINGS = "ingle.training.settings"  # TrainSettings as JSON
    EXPORT_QUANT = "ingle.export.quant"  # the quantization of a merged export
    EXPORT_SCALE = "ingle.export.scale"  # the adapter scale merged in
