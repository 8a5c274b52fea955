"""LoadSettings as llama.cpp's model and context parameters: one translation for the engine and the benchmark's
reference loop, so both measure the same workload."""

from __future__ import annotations

import llama_cpp

from engine.hardware import cpu_has_amx, default_threads
from engine.settings import FlashAttention, LoadSettings, RopeScaling

_FLASH = {FlashAttention.AUTO: -1, FlashAttention.OFF: 0, FlashAttention.ON: 1}
_ROPE = {
    RopeScaling.NONE: llama_cpp.LLAMA_ROPE_SCALING_TYPE_NONE,
    RopeScaling.LINEAR: llama_cpp.LLAMA_ROPE_SCALING_TYPE_LINEAR,
    RopeScaling.YARN: llama_cpp.LLAMA_ROPE_SCALING_TYPE_YARN,
}
_LOAD_MODE = {
    (True, False): llama_cpp.LLAMA_LOAD_MODE_MMAP,
    (True, True): llama_cpp.LLAMA_LOAD_MODE_MMAP_MLOCK,
    (False, True): llama_cpp.LLAMA_LOAD_MODE_MLOCK,
    (False, False): llama_cpp.LLAMA_LOAD_MODE_NONE,
}


def model_params(settings: LoadSettings, n_layer: int = 0):
    """llama_model_params for `settings`. Weight repacking is off on AMX CPUs, where it crashes (DESIGN.md 4).
    With RPC workers (`settings.rpc`) the model's `n_layer` layers are split across this machine and them."""
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = settings.n_gpu_layers if settings.n_gpu_layers >= 0 else 999
    params.use_extra_bufts = settings.repack and not cpu_has_amx()
    params.load_mode = _LOAD_MODE[(settings.use_mmap, settings.use_mlock)]
    if settings.rpc:
        from engine.rpc import apply_split  # connects to the workers: only when asked for

        apply_split(params, settings, n_layer)
    return params


def context_params(settings: LoadSettings, n_ctx_train: int = 0):
    """llama_context_params for `settings` (threads default to the physical cores); `n_ctx_train`, the model's
    trained context, sets the RoPE stretch when scaling is asked for without a factor."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = settings.n_ctx
    params.n_batch = settings.n_batch
    params.n_ubatch = settings.n_ubatch
    threads = settings.n_threads or default_threads()
    params.n_threads = threads
    params.n_threads_batch = settings.n_threads_batch or threads
    params.flash_attn_type = _FLASH[settings.flash_attn]
    params.type_k = getattr(llama_cpp, f"GGML_TYPE_{settings.type_k.name}")
    params.type_v = getattr(llama_cpp, f"GGML_TYPE_{settings.type_v.name}")
    # the sliding-window cache holds the window only unless asked for full size (Gemma 3)
    params.swa_full = settings.swa_full
    if settings.rope_scaling != RopeScaling.MODEL:
        params.rope_scaling_type = _ROPE[settings.rope_scaling]
        # 0: stretch the trained length over the whole context (never squeeze a shorter one)
        scale = settings.rope_freq_scale or min(1.0, (n_ctx_train or settings.n_ctx) / max(1, settings.n_ctx))
        if settings.rope_scaling != RopeScaling.NONE:
            params.rope_freq_scale = scale
    # -1 and 0 are llama.cpp's own "use the default / the model's value". Its attention factor is not offered:
    # under yarn llama.cpp 0.3.36 replaces it with its own (a value set there changed no logit, measured)
    params.yarn_ext_factor = settings.yarn_ext_factor
    params.yarn_beta_fast = settings.yarn_beta_fast
    params.yarn_beta_slow = settings.yarn_beta_slow
    params.yarn_orig_ctx = settings.yarn_orig_ctx
    params.no_perf = True
    return params


def free_context(ctx, batch) -> None:
    """Free a llama_context and the llama_batch made for it (either may be None); the caller drops its
    references."""
    if batch is not None:
        llama_cpp.llama_batch_free(batch)
    if ctx:
        llama_cpp.llama_free(ctx)
