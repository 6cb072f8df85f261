"""What this CPU can do fast, read once from the kernel's CPU flags.

The variants of a local cross-encoder differ in speed by the instructions the CPU has, not by
its clock: int8 matmuls are fast with VNNI (or AMX), slow without (torch int8 ran at 0.06x
``predict`` on an AVX2-only EPYC, against 3x on an AVX-512 VNNI Xeon); bf16 needs
``avx512_bf16`` or AMX to beat fp32 at all. ``precision="auto"`` keys its remembered choice by
:func:`feature_key`, so a choice made on one class of CPU is never reused on another.

``CROSSRANK_CPU_FLAGS`` (space- or comma-separated) replaces the detected flags: to describe
the CPU where the kernel hides them, or to try how auto behaves on another class of CPU
(with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2`` torch then runs as on AVX2 too).
"""

from __future__ import annotations

import functools
import os
import platform

#: The flags that change which variant is fastest; others (sse, aes, ...) do not enter keys.
RELEVANT_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
_CPUINFO = "/proc/cpuinfo"


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The flags of the first processor listed in ``/proc/cpuinfo`` text (x86 ``flags``,
    ARM ``Features``)."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """This CPU's flags; empty where the kernel does not list them (macOS, Windows)."""
    override = os.environ.get("CROSSRANK_CPU_FLAGS")
    if override is not None:
        return frozenset(override.replace(",", " ").split())
    try:
        with open(_CPUINFO, encoding="utf-8") as handle:
            return parse_cpuinfo(handle.read())
    except OSError:
        return frozenset()


def has_fast_int8(flags: frozenset[str] | None = None) -> bool:
    """Whether int8 matmuls beat fp32 here: 512-bit VNNI or AMX int8."""
    present = cpu_flags() if flags is None else flags
    return "avx512_vnni" in present or "amx_int8" in present


def has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (otherwise bf16 is emulated, slower than fp32)."""
    present = cpu_flags() if flags is None else flags
    return "avx512_bf16" in present or "amx_bf16" in present


def feature_key(flags: frozenset[str] | None = None) -> str:
    """Machine architecture plus the relevant flags, e.g. ``x86_64:avx2,avx512f,fma``."""
    present = cpu_flags() if flags is None else flags
    relevant = sorted(flag for flag in RELEVANT_FLAGS if flag in present)
    return f"{platform.machine() or 'unknown'}:{','.join(relevant)}"


def cpu_description() -> str:
    """The CPU's model name, core count and :func:`feature_key`, for benchmark and report
    headers: a speed figure means little without the instructions it ran on."""
    name = "unknown CPU"
    try:
        with open(_CPUINFO, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    name = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores; flags {feature_key()}"
