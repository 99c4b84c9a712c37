"""FP8 e4m3 GEMM with per-token activation scales, per-channel or 1x128-block weight scales, and
fused epilogues (bias, GELU(tanh), gated residual).

    acc[m, n] = sum_kb ( sum_{k in kb} x8[m, k] w8[n, k] ) * ws[n, kb]     (BLOCK_SCALE, kb = k // 128;
                                                                         DeepSeek-V3-style 1x128 blocks)
              = ( sum_k x8[m, k] w8[n, k] ) * ws[n]                     (per-channel)
    y = acc * xs[m] (+ bias[n]);  GELU: y = 0.5 y (1 + tanh(sqrt(2/pi) (y + 0.044715 y^3)))
    RESIDUAL: out = residual[m, n] + gate[m, n] * y    (Wan's x + gate * f(x) after attention/FFN)

The fp8 x fp8 products run on the FP8 tensor cores (QGMMA on sm_90a), accumulated in fp32;
block scales are applied to each 128-wide K slab's fp32 partial sum, so the accumulator never
holds an unscaled sum across blocks with different scales. Rows of residual/gate are addressed
as (m // L, m % L) with their own strides, so a per-sample gate ([B, 1, N], stride 0 over L) or
a strided ``chunk(6)`` view is read in place.

TMA (a tile choice): operand tiles through device-side tensor descriptors (Hopper's TMA) instead
of per-thread pointer loads; needs unit inner strides and 16-byte aligned rows. Off by default.

FAST_ACCUM (per-channel scales only; a tile choice, not a semantic one): no promotion, the FP8
MMA accumulates the whole K loop (``torch._scaled_mm(use_fast_accum=True)``'s trade). On in the
h100 table and the JIT autotune tiles since the H200 sweep of 2026-12-04
(``bench/results/gpu-20261204-2``): at [9360x5120]x[5120x13824] 1.06 ms (1253 TFLOP/s) against
1.61 ms promoting every 128 products, relative L2 vs the fp32 product of the same e4m3 inputs
2.3e-3 against 1.7e-3, which is the bf16 output's rounding alone; quantizing the inputs to e4m3
costs 3.7e-2 against the fp32 product (Gaussian data, measured on the CPU). On the H200 at the
same shape: 2.0e-3 against 1.66e-3, the worst element 0.043 against 0.016 (bench/results/
gpu-20261204-3). Off, the kernel promotes every 128 products.

QUANT_X: x is a bf16/fp16/fp32 activation instead of (x8, xs): the kernel takes each row's
scale from a first pass over K (amax * fp32(1/448)) and quantizes tiles to e4m3 as it loads them, so a
producer that cannot see whole rows (attention, the FFN's first GEMM) needs no quantize launch.

dtypes: x8, w8 float8_e4m3fn (sm_89+), scales fp32, bias/residual/gate any float, out fp32/fp16/bf16.
Limits: with BLOCK_SCALE, K % 128 == 0 and BLOCK_K divides 128.
"""

import triton
import triton.language as tl

from ._fp import cast_rne

# Scales are amax * fp32(1 / 448), as lpm_rt.ops.quantize_fp8_rows makes them on every device:
# torch's GPU division by a Python scalar multiplies by its reciprocal, its CPU division divides.
INV_FP8_MAX = tl.constexpr(1.0 / 448.0)

SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)


@triton.jit
def _fp8_linear_kernel(
    x_ptr, w_ptr, xs_ptr, ws_ptr, bias_ptr, res_ptr, gate_ptr, out_ptr,
    M, N, K, L,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_wsn, stride_wsk,
    stride_rb, stride_rl, stride_rn, stride_gb, stride_gl, stride_gn,
    stride_om, stride_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    BLOCK_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, GELU: tl.constexpr,
    RESIDUAL: tl.constexpr, FIX_ROUND: tl.constexpr, QUANT_X: tl.constexpr, FAST_ACCUM: tl.constexpr,
    TMA: tl.constexpr,
):
    # grouped launch order: GROUP_M row-tiles sweep the N tiles together, so a weight tile is
    # reused from L2 by GROUP_M programs in flight instead of being re-read from HBM
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % rows
    pid_n = (pid % per_group) // rows
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk
    if TMA:
        # tiles through the tensor memory accelerator (cp.async.bulk.tensor): one descriptor per
        # operand, out-of-range rows and columns read as zeros (the launcher checks unit inner
        # strides and 16-byte alignment)
        x_desc = tl.make_tensor_descriptor(x_ptr, shape=[M, K], strides=[stride_xm, 1], block_shape=[BLOCK_M, BLOCK_K])
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[N, K], strides=[stride_wn, 1], block_shape=[BLOCK_N, BLOCK_K])
    if QUANT_X:
        # the producer left x in bf16/fp16/fp32: per-token scales from a first pass over the
        # row, then each tile is quantized as it is loaded (quantize_fp8_rows, bit for bit)
        amax = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            if TMA:
                a = x_desc.load([pid_m * BLOCK_M, k0])
            else:
                mask_k = (k0 + offs_k) < K
                a = tl.load(x_ptrs + k0 * stride_xk, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(a.to(tl.float32)), axis=1))
        xs = tl.maximum(amax * INV_FP8_MAX, 1e-12)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if TMA:
            a = x_desc.load([pid_m * BLOCK_M, k0])
            b = w_desc.load([pid_n * BLOCK_N, k0])
        else:
            mask_k = (k0 + offs_k) < K
            a = tl.load(x_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            b = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if QUANT_X:
            a = cast_rne(tl.clamp(a.to(tl.float32) / xs[:, None], -448.0, 448.0), tl.float8e4nv, FIX_ROUND)
        if BLOCK_SCALE:
            ws = tl.load(ws_ptr + offs_n * stride_wsn + (k0 // 128) * stride_wsk, mask=mask_n, other=0.0)
            acc += tl.dot(a, tl.trans(b)) * ws[None, :]
        else:
            if FAST_ACCUM:
                # the whole K loop in the FP8 MMA's own accumulator (Triton's sm_90 default; one
                # register set, no promotion adds; its precision loss grows with K)
                acc = tl.dot(a, tl.trans(b), acc)
            else:
                # promote the fp8 MMA's partial sums to the fp32 accumulator every 128 products
                acc = tl.dot(a, tl.trans(b), acc, max_num_imprecise_acc=128)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    if not QUANT_X:
        xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0)
    y = acc * xs[:, None]
    if not BLOCK_SCALE:
        ws = tl.load(ws_ptr + offs_n * stride_wsn, mask=mask_n, other=0.0)
        y = y * ws[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if GELU:
        u = SQRT_2_OVER_PI * (y + 0.044715 * y * y * y)
        y = 0.5 * y * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))        # 1 + tanh(u), overflow-safe
    mask = mask_m[:, None] & mask_n[None, :]
    if RESIDUAL:
        rb = offs_m // L
        rl = offs_m % L
        r = tl.load(res_ptr + rb[:, None] * stride_rb + rl[:, None] * stride_rl + offs_n[None, :] * stride_rn,
                    mask=mask, other=0.0)
        g = tl.load(gate_ptr + rb[:, None] * stride_gb + rl[:, None] * stride_gl + offs_n[None, :] * stride_gn,
                    mask=mask, other=0.0)
        y = r.to(tl.float32) + g.to(tl.float32) * y
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             cast_rne(y, out_ptr.dtype.element_ty, FIX_ROUND), mask=mask)


# Tile configs for the GPU autotuner (launcher: CUDA only; the interpreter takes one fixed tile).
# 128-wide K slabs match the 1x128 weight-scale blocks; all fit sm_90a shared memory (checked by
# ``python -m lpm_rt.benchmark.sass``, which also reports each one's stack frame: spilled
# registers). Promoting partial sums (or scaling 1x128 blocks) needs a second accumulator, so a
# 128x256 tile on 8 warps or 128x128 on 4 spill 0.2-1.3 KB per thread: not offered. FAST_ACCUM
# applies to per-channel weights (the block-scaled form promotes by construction); the last
# tile is the H200 sweep's winner at every production shape it timed.
FP8_LINEAR_CONFIGS = [
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, FAST_ACCUM=True, TMA=False, num_warps=8, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, FAST_ACCUM=True, TMA=False, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, FAST_ACCUM=True, TMA=False, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, FAST_ACCUM=True, TMA=False, num_warps=8, num_stages=3),
]


def autotuned_fp8_linear():
    """The kernel wrapped in ``triton.autotune`` over FP8_LINEAR_CONFIGS, keyed on (M, N, K)."""
    global _AUTOTUNED
    if _AUTOTUNED is None:
        cfgs = [triton.Config({k: v for k, v in c.items() if k.isupper()}, num_warps=c["num_warps"],
                              num_stages=c["num_stages"]) for c in FP8_LINEAR_CONFIGS]
        _AUTOTUNED = triton.autotune(configs=cfgs, key=["M", "N", "K", "BLOCK_SCALE", "QUANT_X"])(_fp8_linear_kernel)
    return _AUTOTUNED


_AUTOTUNED = None


@triton.jit
def _quantize_rows_kernel(
    x_ptr, q_ptr, s_ptr, K,
    stride_xm, stride_xk, stride_qm, stride_qk,
    BLOCK_K: tl.constexpr, FIX_ROUND: tl.constexpr,
):
    """Per-token e4m3 quantization of a GEMM input, one row per program (memory-bound: one read of
    the row, one e4m3 write): s = max(amax |x| * fp32(1/448), 1e-12), q = e4m3(clamp(x / s, +-448)).
    What the GEMM's QUANT_X does inside every N tile, done once: the launcher runs it first when
    the GEMM has more than one N tile (each would repeat it). Bit-identical to
    ``lpm_rt.ops.quantize_fp8_rows`` (the scale by reciprocal, x / s by IEEE division, e4m3 rounded
    to nearest even): bf16 rows land on e4m3 rounding ties often, so one ulp of scale flips codes."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    mask = offs < K
    x = tl.load(x_ptr + row * stride_xm + offs * stride_xk, mask=mask, other=0.0).to(tl.float32)
    # x / s as an IEEE division (div.rn; Triton's "/" is div.full, within 2 ulp): torch's codes
    s = tl.maximum(tl.max(tl.abs(x), 0) * INV_FP8_MAX, 1e-12)
    tl.store(s_ptr + row, s)
    q = tl.minimum(tl.maximum(tl.math.div_rn(x, s), -448.0), 448.0)
    tl.store(q_ptr + row * stride_qm + offs * stride_qk, cast_rne(q, q_ptr.dtype.element_ty, FIX_ROUND), mask=mask)
