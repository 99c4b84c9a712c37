"""Norm + adaLN modulation (Wan2.1 / DiT, Peebles & Xie 2023), one row of C channels per program.

    layer: xn = (x - mean(x)) / sqrt(var(x) + eps)       (no affine, biased variance)
    rms:   xn = x / sqrt(mean(x^2) + eps)
    y = xn * (1 + scale[b, l]) + shift[b, l]              (statistics and y in fp32)
    FP8_OUT: s[b, l] = max(amax_c |y| / 448, 1e-12);  y8 = e4m3(clamp(y / s, +-448))
             -- the per-token activation scale ``fp8_linear`` consumes (quantization fused into
             the producer, so the GEMM reads fp8 activations straight away).

shift/scale are addressed through their own (b, l, c) strides, so per-sample modulation
([B, 1, C] broadcast: stride_l = 0) and per-token modulation, including the strided views
``e.chunk(6, dim=2)`` of a [B, L, 6, C] modulation tensor, are read in place, never copied.

dtypes: x fp32/fp16/bf16, shift/scale any float, y x's dtype (or float8_e4m3fn + fp32 scales).
Limits: one program holds a whole row: C <= 16384 (BLOCK_C = next power of two of C).
"""

import triton
import triton.language as tl

from ._fp import cast_rne

FP8_MAX = tl.constexpr(448.0)


@triton.jit
def _norm_modulate_kernel(
    x_ptr, shift_ptr, scale_ptr, y_ptr, ys_ptr, L, C, eps,
    stride_xb, stride_xl, stride_xc,
    stride_hb, stride_hl, stride_hc,
    stride_sb, stride_sl, stride_sc,
    stride_yb, stride_yl, stride_yc,
    stride_qb, stride_ql,
    BLOCK_C: tl.constexpr, RMS: tl.constexpr, FP8_OUT: tl.constexpr, FIX_ROUND: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // L
    l = row % L
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    x = tl.load(x_ptr + b * stride_xb + l * stride_xl + offs * stride_xc, mask=mask, other=0.0).to(tl.float32)
    if RMS:
        xn = x * tl.rsqrt(tl.sum(x * x, 0) / C + eps)
    else:
        mean = tl.sum(x, 0) / C
        xc = tl.where(mask, x - mean, 0.0)
        xn = xc * tl.rsqrt(tl.sum(xc * xc, 0) / C + eps)
    shift = tl.load(shift_ptr + b * stride_hb + l * stride_hl + offs * stride_hc, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + b * stride_sb + l * stride_sl + offs * stride_sc, mask=mask, other=0.0)
    y = xn * (1.0 + scale.to(tl.float32)) + shift.to(tl.float32)
    y_ptrs = y_ptr + b * stride_yb + l * stride_yl + offs * stride_yc
    if FP8_OUT:
        s = tl.maximum(tl.max(tl.where(mask, tl.abs(y), 0.0), 0) / FP8_MAX, 1e-12)
        tl.store(ys_ptr + b * stride_qb + l * stride_ql, s)
        y = tl.minimum(tl.maximum(y / s, -FP8_MAX), FP8_MAX)
    tl.store(y_ptrs, cast_rne(y, y_ptr.dtype.element_ty, FIX_ROUND), mask=mask)
