"""Hardware detection agrees with what the operating system reports independently of llama.cpp."""

import os
from pathlib import Path

import psutil

from engine.hardware import cpu_flags, default_threads, detect


def test_memory_and_cores_match_the_operating_system():
    hw = detect()
    assert hw.ram_total == psutil.virtual_memory().total
    assert 0 < hw.ram_available <= hw.ram_total  # free memory moves with other processes: only its range
    assert hw.logical_cores == os.cpu_count()
    assert 1 <= default_threads() <= hw.logical_cores


def test_cpu_features_match_proc_cpuinfo():
    hw = detect()
    flags = cpu_flags()
    if not Path("/proc/cpuinfo").exists():
        return  # no independent source on this system
    # llama.cpp's own system info names the features its CPU backend uses; they must be the CPU's real ones
    for feature, flag in (("AVX2", "avx2"), ("AVX", "avx"), ("F16C", "f16c"), ("FMA", "fma")):
        if feature in hw.cpu_features:
            assert hw.cpu_features[feature] == (flag in flags), feature
    assert hw.has_amx == bool({"amx_int8", "amx_tile"} & flags)


def test_a_cpu_only_build_offers_no_gpu():
    hw = detect()
    assert any(d.kind == "CPU" for d in hw.devices) and "CPU" in hw.backends
    if not hw.gpu_offload:
        assert hw.gpus == () and hw.vram_total == 0
    assert "GPU offload: " + ("yes" if hw.gpu_offload else "no") in hw.describe()
