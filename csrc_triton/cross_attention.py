"""Cross-attention of video tokens over a short foreign stream (text or audio tokens), with the
full-width RMSNorms of Wan's attention fused in.

    q_n = RMSNorm_C(q) * wq            over all H*D channels of a token (Q_NORM)
    k_n = RMSNorm_C(k) * wk            likewise per key token (K_NORM; needs Lk <= BLOCK_N)
    out[b, i, h] = softmax_j(qk_scale * q_n[b, i, h] . k_n[b, j, h]) v[b, j, h]

One program owns BLOCK_M query rows of one batch entry and walks every head, so it sees whole
rows: a first pass over the heads gives each row's RMS, the second normalizes each head's tile
as it attends. The key/value stream is short (a session's text, a frame's audio window), so the
softmax runs online over BLOCK_N-key tiles; with K_NORM the keys fit one tile and their RMS is
taken once per program. Output [B, Lq, H, D] in q's dtype, laid out for the o projection.

``_cross_attn_out_kernel`` is the same attention with the output projection absorbed into the
values and the residual added (``lpm_rt.ops.cross_attention_out``): one launch for what was the
attention and the projection's GEMM.

The norms round as the torch modules do (``(x * rsqrt(mean x^2 + eps)).to(dtype) * w``); dots
accumulate in fp32 (IEEE: fp32 operands, no TF32).
"""

import triton
import triton.language as tl

from ._fp import cast_rne

FP8_MAX = tl.constexpr(448.0)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _row_rstd(rows, stride_h, mask, H, C, eps, N: tl.constexpr):
    """1 / RMS over the full width C = H * D of each of N rows (``rows``: head 0's [N, D] pointers)."""
    ss = tl.zeros([N], tl.float32)
    for h in range(H):
        x = tl.load(rows + h * stride_h, mask=mask[:, None], other=0.0).to(tl.float32)
        ss += tl.sum(x * x, axis=1)
    return tl.rsqrt(ss / C + eps)


@triton.jit
def _rms_head(x, rstd, w_ptr, h, offs_d, HEAD_DIM: tl.constexpr, cdt: tl.constexpr, FIX_ROUND: tl.constexpr):
    """Head h's tile of RMSNorm(x) * w, rounded as the torch module: (x * rstd).to(cdt) * w."""
    w = tl.load(w_ptr + h * HEAD_DIM + offs_d).to(tl.float32)
    xn = cast_rne(x.to(tl.float32) * rstd[:, None], cdt, FIX_ROUND).to(tl.float32)
    return cast_rne(xn * w[None, :], cdt, FIX_ROUND)


@triton.jit
def _cross_attn_kernel(
    q_ptr, k_ptr, v_ptr, qw_ptr, kw_ptr, o_ptr,
    Lq, Lk, H, eps, qk_scale,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kl, stride_kh, stride_kd,
    stride_vb, stride_vl, stride_vh, stride_vd,
    stride_ob, stride_ol, stride_oh, stride_od,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    Q_NORM: tl.constexpr, K_NORM: tl.constexpr, IEEE: tl.constexpr, FIX_ROUND: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < Lq
    C = H * HEAD_DIM
    cdt = q_ptr.dtype.element_ty
    q_rows = q_ptr + b * stride_qb + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd
    k_rows = k_ptr + b * stride_kb + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd
    v_rows = v_ptr + b * stride_vb + offs_n[:, None] * stride_vl + offs_d[None, :] * stride_vd
    if Q_NORM:
        q_rstd = _row_rstd(q_rows, stride_qh, mask_m, H, C, eps, BLOCK_M)
    if K_NORM:                                     # every key in one tile (launcher: Lk <= BLOCK_N)
        k_rstd = _row_rstd(k_rows, stride_kh, offs_n < Lk, H, C, eps, BLOCK_N)
    for h in range(H):
        q = tl.load(q_rows + h * stride_qh, mask=mask_m[:, None], other=0.0)
        if Q_NORM:
            q = _rms_head(q, q_rstd, qw_ptr, h, offs_d, HEAD_DIM, cdt, FIX_ROUND)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        for n0 in range(0, Lk, BLOCK_N):
            mask_n = (n0 + offs_n) < Lk
            k = tl.load(k_rows + n0 * stride_kl + h * stride_kh, mask=mask_n[:, None], other=0.0)
            if K_NORM:
                k = _rms_head(k, k_rstd, kw_ptr, h, offs_d, HEAD_DIM, cdt, FIX_ROUND)
            s = _dot(q, tl.trans(k.to(cdt)), IEEE) * qk_scale
            s = tl.where(mask_n[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_rows + n0 * stride_vl + h * stride_vh, mask=mask_n[:, None], other=0.0)
            acc = acc * alpha[:, None] + _dot(cast_rne(p, cdt, FIX_ROUND), v.to(cdt), IEEE)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(o_ptr + b * stride_ob + offs_m[:, None] * stride_ol + h * stride_oh + offs_d[None, :] * stride_od,
                 cast_rne(out, o_ptr.dtype.element_ty, FIX_ROUND), mask=mask_m[:, None])


@triton.jit
def _cross_attn_out_kernel(
    q_ptr, k_ptr, vo_ptr, qw_ptr, kw_ptr, bias_ptr, res_ptr, o_ptr, p_ptr,
    shift_ptr, scale_ptr, y8_ptr, ys_ptr,
    Lq, Lk, H, N, eps, qk_scale, norm_eps, split, gain,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kb, stride_kl, stride_kh, stride_kd,
    stride_vb, stride_vl, stride_vh, stride_vn,
    stride_rb, stride_rl, stride_rn,
    stride_ob, stride_ol, stride_on,
    stride_pb, stride_pl, stride_ph,
    stride_hb, stride_hn, stride_sb, stride_sn,
    stride_yb, stride_yl, stride_yn, stride_zb, stride_zl,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    Q_NORM: tl.constexpr, K_NORM: tl.constexpr, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    FIX_ROUND: tl.constexpr, NORM_OUT: tl.constexpr = False, GUIDED: tl.constexpr = False,
):
    """The cross-attention with its output projection absorbed into the values, and the residual:

        out[b, i] = res[b, i] + bias + sum_h sum_j P[b, h, i, j] * vo[b, j, h, :]

    vo[b, j, h] = Wo[:, h*D:(h+1)*D] @ v[b, j, h] (width N, made once per key stream), P the
    softmax of ``_cross_attn_kernel``. Every key fits one BLOCK_N tile, so each head's softmax is
    final after one tile: a first loop stores every head's P (q's dtype) to the scratch rows
    p[b, i, h, :BLOCK_N] of this program, a second reads them back per BLOCK_C output columns --
    the q rows are read once however wide the output (no recomputation per column tile).

    GUIDED: the keys are two streams, [0, split) and [split, Lk), each with its own softmax; P is
    (1 - gain) P_0 + gain P_1, which is classifier-free guidance lerp(out_0, out_1, gain) of the
    two attentions' outputs (the residual and bias carry weight 1 either way).

    NORM_OUT: a program has written whole rows, so the next LayerNorm + adaLN modulation of them
    runs here too (``norm_modulate(out, shift[b], scale[b], norm_eps, out_fp8=True)``: its
    statistics of the rounded rows, two-pass variance, e4m3 with per-row scales into y8/ys),
    reading the rows back from this program's own writes."""
    pid_m = tl.program_id(0)
    b = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_c = tl.arange(0, BLOCK_C)
    mask_m = offs_m < Lq
    mask_n = offs_n < Lk
    C = H * HEAD_DIM
    cdt = q_ptr.dtype.element_ty
    q_rows = q_ptr + b * stride_qb + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd
    k_rows = k_ptr + b * stride_kb + offs_n[:, None] * stride_kl + offs_d[None, :] * stride_kd
    p_rows = p_ptr + b * stride_pb + offs_m[:, None] * stride_pl + offs_n[None, :]
    if Q_NORM:
        q_rstd = _row_rstd(q_rows, stride_qh, mask_m, H, C, eps, BLOCK_M)
    if K_NORM:
        k_rstd = _row_rstd(k_rows, stride_kh, mask_n, H, C, eps, BLOCK_N)
    for h in range(H):
        q = tl.load(q_rows + h * stride_qh, mask=mask_m[:, None], other=0.0)
        if Q_NORM:
            q = _rms_head(q, q_rstd, qw_ptr, h, offs_d, HEAD_DIM, cdt, FIX_ROUND)
        k = tl.load(k_rows + h * stride_kh, mask=mask_n[:, None], other=0.0)
        if K_NORM:
            k = _rms_head(k, k_rstd, kw_ptr, h, offs_d, HEAD_DIM, cdt, FIX_ROUND)
        s = _dot(q, tl.trans(k.to(cdt)), IEEE) * qk_scale
        if GUIDED:
            first = offs_n < split
            p = (1.0 - gain) * _softmax(s, mask_n & first) + gain * _softmax(s, mask_n & (offs_n >= split))
        else:
            p = _softmax(s, mask_n)
        tl.store(p_rows + h * stride_ph, cast_rne(p, cdt, FIX_ROUND), mask=mask_m[:, None])
    tl.debug_barrier()                             # every thread's P rows, before any is read back
    o_rows = o_ptr + b * stride_ob + offs_m[:, None] * stride_ol
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    for c0 in range(0, N, BLOCK_C):
        cols = c0 + offs_c
        mask_c = cols < N
        y = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
        for h in range(H):
            p = tl.load(p_rows + h * stride_ph, mask=mask_m[:, None], other=0.0)
            vo = tl.load(vo_ptr + b * stride_vb + offs_n[:, None] * stride_vl + h * stride_vh
                         + cols[None, :] * stride_vn, mask=mask_n[:, None] & mask_c[None, :], other=0.0)
            y += _dot(p, vo.to(cdt), IEEE)
        if HAS_BIAS:
            y += tl.load(bias_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)[None, :]
        io = mask_m[:, None] & mask_c[None, :]
        r = tl.load(res_ptr + b * stride_rb + offs_m[:, None] * stride_rl + cols[None, :] * stride_rn,
                    mask=io, other=0.0).to(tl.float32)
        out = cast_rne(r + y, o_ptr.dtype.element_ty, FIX_ROUND)
        tl.store(o_rows + cols[None, :] * stride_on, out, mask=io)
        if NORM_OUT:
            row_sum += tl.sum(tl.where(io, out.to(tl.float32), 0.0), axis=1)
    if NORM_OUT:
        tl.debug_barrier()                         # the rows as stored, before they are read back
        mean = row_sum / N
        row_ss = tl.zeros([BLOCK_M], tl.float32)
        for c0 in tl.range(0, N, BLOCK_C, num_stages=1):
            cols = c0 + offs_c
            io = mask_m[:, None] & (cols < N)[None, :]
            xc = tl.load(o_rows + cols[None, :] * stride_on, mask=io, other=0.0).to(tl.float32) - mean[:, None]
            xc = tl.where(io, xc, 0.0)
            row_ss += tl.sum(xc * xc, axis=1)
        rstd = tl.rsqrt(row_ss / N + norm_eps)
        amax = tl.zeros([BLOCK_M], tl.float32)
        for c0 in tl.range(0, N, BLOCK_C, num_stages=1):
            y = _modulated(o_rows, shift_ptr, scale_ptr, b, c0 + offs_c, mask_m, N, mean, rstd,
                           stride_on, stride_hb, stride_hn, stride_sb, stride_sn)
            amax = tl.maximum(amax, tl.max(tl.abs(y), axis=1))
        sc = tl.maximum(amax / FP8_MAX, 1e-12)
        tl.store(ys_ptr + b * stride_zb + offs_m * stride_zl, sc, mask=mask_m)
        for c0 in tl.range(0, N, BLOCK_C, num_stages=1):
            cols = c0 + offs_c
            y = _modulated(o_rows, shift_ptr, scale_ptr, b, cols, mask_m, N, mean, rstd,
                           stride_on, stride_hb, stride_hn, stride_sb, stride_sn)
            y = tl.minimum(tl.maximum(y / sc[:, None], -FP8_MAX), FP8_MAX)
            tl.store(y8_ptr + b * stride_yb + offs_m[:, None] * stride_yl + cols[None, :] * stride_yn,
                     cast_rne(y, y8_ptr.dtype.element_ty, FIX_ROUND), mask=mask_m[:, None] & (cols < N)[None, :])


@triton.jit
def _softmax(s, keys):
    """Row softmax (base 2) of the scores s over the columns ``keys``; 0 elsewhere."""
    s = tl.where(keys[None, :], s, float("-inf"))
    p = tl.exp2(s - tl.max(s, axis=1)[:, None])
    return p / tl.sum(p, axis=1)[:, None]


@triton.jit
def _modulated(o_rows, shift_ptr, scale_ptr, b, cols, mask_m, N, mean, rstd,
               stride_on, stride_hb, stride_hn, stride_sb, stride_sn):
    """((x - mean) * rstd) * (1 + scale[b]) + shift[b] of the stored rows' columns ``cols`` (0 outside)."""
    mask_c = cols < N
    io = mask_m[:, None] & mask_c[None, :]
    x = tl.load(o_rows + cols[None, :] * stride_on, mask=io, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + b * stride_hb + cols * stride_hn, mask=mask_c, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr + b * stride_sb + cols * stride_sn, mask=mask_c, other=0.0).to(tl.float32)
    y = (x - mean[:, None]) * rstd[:, None] * (1.0 + scale[None, :]) + shift[None, :]
    return tl.where(io, y, 0.0)
