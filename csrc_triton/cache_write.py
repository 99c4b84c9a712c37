"""Cache write: RoPE on K, per-page per-head fp8 scale, quantize, scatter into pages -- one launch.

    k_rot[n, h, 2i]   = k[n, h, 2i] cos[n, i] - k[n, h, 2i+1] sin[n, i]     (Wan's interleaved pairs,
    k_rot[n, h, 2i+1] = k[n, h, 2i] sin[n, i] + k[n, h, 2i+1] cos[n, i]      RoFormer, Su et al. 2021)
    k_rot -= k_shift[h]                       (optional K smoothing, SageAttention: one vector per
                                               head for every key a query sees -> softmax unchanged)
    page = slot_mapping[n] // PAGE_SIZE,  off = slot_mapping[n] % PAGE_SIZE
    fp8:  scale[page, h] = max(amax_{tokens of the page, d} |x| / 448, 1e-12)
          pages[page, off, h] = e4m3(x / scale[page, h])          (x = k_rot for K, v for V)
    else: pages[page, off, h] = x.to(page dtype)

One program per (group of PAGE_SIZE consecutive tokens, head): the cache writes whole latent
frames and PAGE_SIZE divides a frame's tokens, so each group of PAGE_SIZE consecutive tokens
fills exactly one page (the launcher checks N % PAGE_SIZE == 0; the slot mapping must map a
group to one page -- the general case is ``cache_write_ref``). K, V and optionally Q share the
launch: grid axis 2 picks K (RoPE, scatter), V (scatter) or Q (RoPE, written in token order to
a fresh tensor for the attention that follows).

QK_NORM: Wan's full-width RMSNorms of q and k run here too, before RoPE, rounded as the torch
module rounds (``(x * rsqrt(mean x^2 + eps)).to(dtype) * w``). A norm needs every head of a
token, so then one program per (group, tensor) walks all H heads (grid axis 1 is 1): a first
pass over the heads gives each token's RMS, the second writes head by head.

dtypes: k/v fp32/fp16/bf16, cos/sin fp32, pages fp32/fp16/bf16/float8_e4m3fn (V16: fp8 K pages
beside V pages of a 16- or 32-bit dtype, V written by a plain cast). HEAD_DIM even, HEAD_DIM / 2 a
power of two.
"""

import triton
import triton.language as tl

from ._fp import cast_rne

FP8_MAX = tl.constexpr(448.0)


@triton.jit
def _cache_write_kernel(
    k_ptr, v_ptr, cos_ptr, sin_ptr, slot_ptr, kp_ptr, vp_ptr, ks_ptr, vs_ptr, q_ptr, qo_ptr, shift_ptr,
    qw_ptr, kw_ptr, H, eps,
    stride_kn, stride_kh, stride_kd, stride_vn, stride_vh, stride_vd,
    stride_qn, stride_qh, stride_qd, stride_qop, stride_qos, stride_qoh, stride_qod,
    stride_cn, stride_cd, stride_sn, stride_sd,
    stride_kpp, stride_kps, stride_kph, stride_kpd,
    stride_vpp, stride_vps, stride_vph, stride_vpd,
    stride_ksp, stride_ksh, stride_vsp, stride_vsh, stride_shh, stride_shd,
    PAGE_SIZE: tl.constexpr, BLOCK_T: tl.constexpr, HALF_D: tl.constexpr,
    ROPE: tl.constexpr, FP8: tl.constexpr, FIX_ROUND: tl.constexpr, SHIFT: tl.constexpr,
    QK_NORM: tl.constexpr, V16: tl.constexpr = False,
):
    pid_g = tl.program_id(0)
    which = tl.program_id(2)
    if QK_NORM:
        heads = H                             # this program writes every head of its tokens
        h0 = 0
    else:
        heads = 1
        h0 = tl.program_id(1)
    if which == 0:
        rstd = _rstd(k_ptr, pid_g, H, eps, stride_kn, stride_kh, stride_kd, PAGE_SIZE, BLOCK_T, HALF_D, QK_NORM)
        for h in range(h0, h0 + heads):
            _write_group(k_ptr, cos_ptr, sin_ptr, slot_ptr, kp_ptr, ks_ptr, shift_ptr, kw_ptr, rstd, pid_g, h,
                         stride_kn, stride_kh, stride_kd, stride_cn, stride_cd, stride_sn, stride_sd,
                         stride_kpp, stride_kps, stride_kph, stride_kpd, stride_ksp, stride_ksh,
                         stride_shh, stride_shd,
                         PAGE_SIZE, BLOCK_T, HALF_D, ROPE, FP8, FIX_ROUND, False, SHIFT, QK_NORM)
    elif which == 1:
        for h in range(h0, h0 + heads):
            _write_group(v_ptr, cos_ptr, sin_ptr, slot_ptr, vp_ptr, vs_ptr, shift_ptr, kw_ptr, 0.0, pid_g, h,
                         stride_vn, stride_vh, stride_vd, stride_cn, stride_cd, stride_sn, stride_sd,
                         stride_vpp, stride_vps, stride_vph, stride_vpd, stride_vsp, stride_vsh, 0, 0,
                         PAGE_SIZE, BLOCK_T, HALF_D, False, FP8 and not V16, FIX_ROUND, False, False, False)
    else:
        # rotated q, written row for row ([N, H, D] seen as [N / PAGE_SIZE, PAGE_SIZE, H, D])
        rstd = _rstd(q_ptr, pid_g, H, eps, stride_qn, stride_qh, stride_qd, PAGE_SIZE, BLOCK_T, HALF_D, QK_NORM)
        for h in range(h0, h0 + heads):
            _write_group(q_ptr, cos_ptr, sin_ptr, slot_ptr, qo_ptr, ks_ptr, shift_ptr, qw_ptr, rstd, pid_g, h,
                         stride_qn, stride_qh, stride_qd, stride_cn, stride_cd, stride_sn, stride_sd,
                         stride_qop, stride_qos, stride_qoh, stride_qod, 0, 0, 0, 0,
                         PAGE_SIZE, BLOCK_T, HALF_D, True, False, FIX_ROUND, True, False, QK_NORM)


@triton.jit
def _rstd(x_ptr, pid_g, H, eps, stride_xn, stride_xh, stride_xd,
          PAGE_SIZE: tl.constexpr, BLOCK_T: tl.constexpr, HALF_D: tl.constexpr, NORM: tl.constexpr):
    """1 / RMS over all H * 2 * HALF_D channels of the group's tokens (zeros when not NORM)."""
    offs_t = tl.arange(0, BLOCK_T)
    ss = tl.zeros([BLOCK_T], tl.float32)
    if NORM:
        mask_t = offs_t < PAGE_SIZE
        tok = pid_g * PAGE_SIZE + offs_t
        d = tl.arange(0, 2 * HALF_D)
        for h in range(H):
            x = tl.load(x_ptr + tok[:, None] * stride_xn + h * stride_xh + d[None, :] * stride_xd,
                        mask=mask_t[:, None], other=0.0).to(tl.float32)
            ss += tl.sum(x * x, axis=1)
        ss = tl.rsqrt(ss / (H * 2 * HALF_D) + eps)
    return ss


@triton.jit
def _write_group(
    x_ptr, cos_ptr, sin_ptr, slot_ptr, pages_ptr, scale_ptr, shift_ptr, w_ptr, rstd, pid_g, h,
    stride_xn, stride_xh, stride_xd, stride_cn, stride_cd, stride_sn, stride_sd,
    stride_pp, stride_ps, stride_ph, stride_pd, stride_scp, stride_sch, stride_shh, stride_shd,
    PAGE_SIZE: tl.constexpr, BLOCK_T: tl.constexpr, HALF_D: tl.constexpr,
    ROPE: tl.constexpr, FP8: tl.constexpr, FIX_ROUND: tl.constexpr, DIRECT: tl.constexpr,
    SHIFT: tl.constexpr, NORM: tl.constexpr,
):
    offs_t = tl.arange(0, BLOCK_T)
    mask_t = offs_t < PAGE_SIZE
    tok = pid_g * PAGE_SIZE + offs_t
    pair = tl.arange(0, HALF_D)
    d = tl.arange(0, 2 * HALF_D)
    # whole rows, contiguous (vector loads), then the pairs (2i, 2i+1) as two [BLOCK_T, HALF_D]
    # halves; loading the halves with stride-2 pointers kept two 64-bit addresses per element
    # live and spilled (sass: 304 B of stack at a 120-token page, d128, fp8 with q/k norms)
    x = tl.load(x_ptr + tok[:, None] * stride_xn + h * stride_xh + d[None, :] * stride_xd, mask=mask_t[:, None],
                other=0.0).to(tl.float32)
    if NORM:                                  # RMSNorm as the module rounds it, in x's dtype
        xdt = x_ptr.dtype.element_ty
        w = tl.load(w_ptr + h * 2 * HALF_D + d).to(tl.float32)
        x = cast_rne(cast_rne(x * rstd[:, None], xdt, FIX_ROUND).to(tl.float32) * w[None, :], xdt,
                     FIX_ROUND).to(tl.float32)
    xr, xi = tl.split(tl.reshape(x, [BLOCK_T, HALF_D, 2]))
    if ROPE:
        c = tl.load(cos_ptr + tok[:, None] * stride_cn + pair[None, :] * stride_cd, mask=mask_t[:, None], other=0.0)
        s = tl.load(sin_ptr + tok[:, None] * stride_sn + pair[None, :] * stride_sd, mask=mask_t[:, None], other=0.0)
        c = c.to(tl.float32)
        s = s.to(tl.float32)
        xr, xi = xr * c - xi * s, xr * s + xi * c
    if SHIFT:
        sr, si = tl.split(tl.reshape(tl.load(shift_ptr + h * stride_shh + d * stride_shd).to(tl.float32), [HALF_D, 2]))
        xr = xr - sr[None, :]
        xi = xi - si[None, :]

    if DIRECT:
        slot = tok.to(tl.int64)
    else:
        slot = tl.load(slot_ptr + tok, mask=mask_t, other=0)
    page = slot // PAGE_SIZE
    off = slot % PAGE_SIZE
    if FP8:
        amax = tl.maximum(tl.max(tl.max(tl.abs(xr), 1), 0), tl.max(tl.max(tl.abs(xi), 1), 0))
        sc = tl.maximum(amax / FP8_MAX, 1e-12)
        # the group's page: every token of the group lands in it (launcher contract)
        page0 = tl.load(slot_ptr + pid_g * PAGE_SIZE) // PAGE_SIZE
        tl.store(scale_ptr + page0 * stride_scp + h * stride_sch, sc)
        xr = tl.minimum(tl.maximum(xr / sc, -FP8_MAX), FP8_MAX)
        xi = tl.minimum(tl.maximum(xi / sc, -FP8_MAX), FP8_MAX)
    dst = pages_ptr + page[:, None] * stride_pp + off[:, None] * stride_ps + h * stride_ph + d[None, :] * stride_pd
    pdt = pages_ptr.dtype.element_ty
    y = tl.reshape(tl.join(xr, xi), [BLOCK_T, 2 * HALF_D])
    tl.store(dst, cast_rne(y, pdt, FIX_ROUND), mask=mask_t[:, None])
