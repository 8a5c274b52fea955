"""Ingle's engine: GGUF inspection, model library, llama.cpp runtime and its host process. No Qt here."""
