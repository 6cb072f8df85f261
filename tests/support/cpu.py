"""Skip markers for tests that need a CPU feature, read once from the CPU's flags.

Every CPU-dependent test asks here, so the suite passes on an AVX2-only machine (many cloud
VMs) with a reason that names the missing feature, instead of failing.
"""

from __future__ import annotations

import pytest

from crossrank.backends.local.cpu import cpu_flags, feature_key, has_fast_int8
from crossrank.backends.local.variants import cpu_supports_bf16

#: Flags of a CPU with and without fast int8 / native bf16, for tests of auto's choice.
AVX2_ONLY = frozenset({"avx", "avx2", "fma"})
AVX512_VNNI_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"}

needs_native_bf16 = pytest.mark.skipif(
    not cpu_supports_bf16(),
    reason=f"this CPU has no native bf16 (avx512_bf16 or AMX): {feature_key()}",
)
needs_fast_int8 = pytest.mark.skipif(
    not has_fast_int8(),
    reason=f"this CPU has no int8 dot products (avx512_vnni or AMX): {feature_key()}",
)


def this_cpu() -> frozenset[str]:
    return cpu_flags()
