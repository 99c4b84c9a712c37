"""Rounding helpers shared by the kernels.

``cast_rne(x, DST, FIX)`` is ``x.to(DST)`` with round-to-nearest-even. On a GPU the hardware
convert already rounds that way and FIX is False (no extra instructions). Under
TRITON_INTERPRET=1 (triton 3.9) the CPU emulation of fp32 -> bf16 truncates, and fp32 -> fp8e4nv
drops the carry when the mantissa rounds up (up to 50% error on ~1% of values); with FIX the
mantissa is first rounded in integer arithmetic, so the final convert is exact.
"""

import triton
import triton.language as tl


@triton.jit
def rne_mantissa(x, DROP: tl.constexpr):
    """Round fp32 ``x`` to 23 - DROP mantissa bits, nearest-even; the carry may bump the exponent."""
    b = x.to(tl.int32, bitcast=True)
    b = b + ((1 << (DROP - 1)) - 1) + ((b >> DROP) & 1)
    b = b & (-(1 << DROP))
    return b.to(tl.float32, bitcast=True)


@triton.jit
def cast_rne(x, DST: tl.constexpr, FIX: tl.constexpr):
    if FIX:
        if DST == tl.bfloat16:
            x = rne_mantissa(x.to(tl.float32), 16)
        elif DST == tl.float8e4nv:
            x = rne_mantissa(x.to(tl.float32), 20)
    return x.to(DST)
