"""Hardware detection reports what the installed llama.cpp build can use."""

from engine.hardware import default_threads, detect


def test_detect_reports_cpu_devices_and_memory():
    hw = detect()
    assert hw.cpu_features, "llama.cpp's system info lists CPU features"
    assert any(d.kind == "CPU" for d in hw.devices) and "CPU" in hw.backends
    assert hw.ram_total > 0 and 0 < hw.ram_available <= hw.ram_total
    assert hw.vram_total == sum(d.memory_total for d in hw.gpus)
    if not hw.gpu_offload:  # a CPU-only build has no GPU devices to offload to
        assert hw.gpus == ()
    text = hw.describe()
    assert "llama.cpp backends" in text and "RAM" in text and "GPU offload" in text
    assert 1 <= default_threads() <= hw.logical_cores
