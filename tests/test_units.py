"""Byte and duration formatting shared by the app and the CLIs, and the CPU flags both llama.cpp and training read."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from engine import units
from engine.hardware import cpu_flags, parse_cpu_flags


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0.0 MiB"),
        (1536 << 10, "1.5 MiB"),
        ((1 << 30) - (1 << 20), "1,023.0 MiB"),
        (1 << 30, "1.00 GiB"),
        (int(4.5 * 2**30), "4.50 GiB"),
    ],
)
def test_size_switches_from_mib_to_gib_at_one_gib(n, text):
    assert units.size(n) == text


def test_size_can_show_mib_to_two_decimals_and_gib_keeps_two():
    assert (
        units.size(27 << 20, mib_digits=2) == "27.00 MiB"
        and units.size(1536 << 10, mib_digits=2) == "1.50 MiB"
    )
    assert units.size(int(4.5 * 2**30), mib_digits=0) == "4.50 GiB"


def test_mib_and_gib_round_and_group_thousands():
    assert units.mib(3 << 20) == "3 MiB" and units.mib(5000 << 20) == "5,000 MiB"
    assert units.mib(2.25 * 2**20, 2) == "2.25 MiB" and units.gib(3 << 30) == "3.0 GiB"
    assert units.gib(2**30 / 3, 2) == "0.33 GiB"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0 s"), (89.4, "89 s"), (90, "2 min"), (5399, "90 min"), (5400, "1.5 h"), (36000, "10.0 h")],
)
def test_duration_uses_seconds_minutes_then_hours(seconds, text):
    assert units.duration(seconds) == text


CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer invvpid ept_x_only
bugs\t\t: spectre_v1 spectre_v2

processor\t: 1
flags\t\t: fpu vme avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8
"""


def test_cpu_flags_are_read_from_the_flags_line_only():
    flags = parse_cpu_flags(CPUINFO)
    assert {"fpu", "avx2", "avx512_bf16", "amx_tile", "amx_int8"} <= flags
    assert "ept_x_only" not in flags and "spectre_v1" not in flags  # other lines
    assert parse_cpu_flags("processor\t: 0\nmodel name\t: Apple M2\n") == frozenset()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="no /proc/cpuinfo on this system")
def test_this_machines_cpu_flags_are_found():
    flags = cpu_flags()
    assert flags and all(" " not in f for f in flags)
    if platform.machine() in ("x86_64", "AMD64"):
        assert {"fpu", "sse2"} <= flags


def test_any_size_and_quantity_pick_the_unit_that_fits():
    assert [units.any_size(n) for n in (512, 50_000, 3 << 20, 5 << 30)] == [
        "512 B",
        "48.8 KiB",
        "3.0 MiB",
        "5.0 GiB",
    ]
    assert [units.quantity(n) for n in (999, 1500, 270_000_000, 7_000_000_000)] == [
        "999",
        "1.5 K",
        "270.0 M",
        "7.0 B",
    ]
