"""LoRA fine-tuning of local GGUF models: datasets, training, GGUF export, evaluation (no Qt; torch imported lazily)."""
