"""Paged attention: flash-attention forward over K/V pages named by a block table.

    out[b, i, h] = sum_j softmax_j(sm_scale * q[b, i, h] . K_b[j, h]) V_b[j, h],   j < kv_lens[b]
    K_b[j] = k_pages[block_table[b, j // PAGE_SIZE], j % PAGE_SIZE]   (times k_scale[page, h] for fp8)

Online softmax in base 2 (FlashAttention-2, Dao 2023): running row max ``m``, running sum ``l``,
fp32 accumulator rescaled by ``exp2(m_old - m_new)``. Tokens are gathered one by one from their
page, so any PAGE_SIZE works (8, 32, 120: not a power of two) and kv_lens need not be page multiples.

dtypes: q fp32/fp16/bf16; pages the same dtype as q, or float8_e4m3fn with per-page per-head
scales [P, H] fp32, or (V16) e4m3 K pages with their scales beside V pages in q's dtype. fp32
uses IEEE dots (no TF32) so it matches the fp32 reference; IEEE is also set for bf16 under
TRITON_INTERPRET (see ``_mma``); FIX_ROUND likewise (see ``_fp.py``).
FP8_Q (sm_89+/sm_90a, fp8 pages only): Q is quantized per (BLOCK_M rows, head) block to e4m3
with its own scale (SageAttention's per-block Q scale, sm_scale folded in first), Q.K^T runs
as an fp8 dot; with fp8 V pages and not F16_DOTS, P is rescaled by v_scale[token] / max(v_scale
in block) and by 448 so it fills e4m3's range, P.V runs as an fp8 dot, and every block's product
is accumulated in fp32 registers (FA3's fix for the fp8 MMA's limited accumulator precision);
with F16_DOTS (or V16) P.V is a 16-bit dot. K smoothing (SageAttention) needs
nothing here: ``cache_write`` stores K minus a per-head mean, which shifts every score of a
query by the same q.mean and leaves the softmax unchanged.

PAGE_TILES: each key block is one page (BLOCK_N >= PAGE_SIZE, the rest of the tile masked):
one table read and one scale per block instead of one per token, and contiguous page rows
instead of a per-token gather, for (BLOCK_N - PAGE_SIZE) / BLOCK_N masked work (6% at 120-token
pages in 128-row tiles). The launcher's GPU choice and the h100 table where a page fills at least
half the block (1.27x the gathered 128x64 blocks at lpm-17b on an H200); ``scripts/tune_kernels.py``
times both forms.
TMA_KV (with PAGE_TILES): K and V page tiles through device-side tensor descriptors (Hopper's TMA)
instead of per-thread cp.async copies: no per-thread address arithmetic, the rows past the page
zero-filled by the hardware. Needs the [P, page, H, D] layout with unit d stride. Off by default:
an experiment for the sweep.
V_TRANS_LOAD (with PAGE_TILES): V's tile is loaded as its transpose [D, BLOCK_N] and viewed
back, so that pages whose tokens are contiguous (V stored [P, H, D, page]) land in shared memory
K-major, the operand order e4m3 wgmma takes for P.V; with the standard layout the kernel
transposes each V tile through registers. An experiment for the sweep: the cache does not
store V that way (yet).

OVERLAP (with PAGE_TILES): the loop issues block j + 1's Q.K^T, then finishes block j (scale, online
softmax, P.V) and carries the product to the next iteration (the first block's product before the
loop, the last block's rest after it): FlashAttention-3's intra-warpgroup pipelining, the softmax's
exponentials on the SFU while the tensor cores multiply. Triton makes the carried product an async
wgmma only in some forms (SASS, sm_90a, Triton 3.9): 16-bit pages in 64-key tiles at 3 or more
stages (the MUFU.EX2 of block j between block j + 1's HGMMA and its wait; 255 registers, no
spills, 446 instructions per block against 529 in the plain order: every block in the loop is a
whole page, so its key mask is the constant tile mask -- a carried mask vector costs a predicate
pack and unpack -- and the scale is folded into the exponent, FOLD_SCALE). 128-key tiles spill
(two [64, 128] fp32 score tiles per thread plus the accumulator), and fp8 pages and FP8-Q keep
their dots synchronous in either order (the widened K tile, or the transposed V tile, is written to shared memory every
block). Exact reordering: the same sums in another association. Off by default: an experiment for
the sweep, untimed. The block's page scales are loaded where its product is issued and carried
with it: loaded at the softmax, Triton copies a scale through shared memory with the pipelined
loads, and the CTA barrier of that copy sits between the product's wait and the exponentials, so
no fp8 form overlapped.

V16 (fp8 K pages, V pages in q's dtype, no V scales): with FP8_Q the e4m3 K codes go from memory
to the fp8 Q.K^T untouched and P.V runs in q's type on V as stored, so no operand of either dot is
rewritten in registers -- the one fp8 form whose Q.K^T Triton 3.9 keeps in flight under OVERLAP
(sm_90a SASS, 60-token pages in 128x64 tiles, 3 stages: 4 QGMMA + 4 HGMMA, 441 instructions per
64-key block, 17 of the 34 MUFU.EX2 between the QGMMAs and their wait, 241 registers, no spills).
SageAttention's split of the precision (8-bit scores, 16-bit values); the cache's fp8k pools
store pages that way.

F16_DOTS (fp8 pages under bf16 q): Q and P in fp16 (a Q tile beyond fp16's range is
scaled by a power of two, the scores by its inverse), so the pages' e4m3 codes widen to the dot
type with one packed convert per two values (cvt.rn.f16x2.e4m3x2). Widening to bf16 instead takes
that plus one convert per value on the conversion pipe (e4m3 -> f16 -> bf16): on sm_90a 128 per
thread per 128x128 key block, by estimate (16 per clock per SM) the order of the block's MMA time
on the tensor cores; F16_DOTS removes them (SASS: no F2F in the loop, 907 instructions per block
instead of 1103, no spills). fp16 holds every e4m3 value exactly and P with 3 more bits than
bf16. With PAGE_TILES a block's K and V scales are one scalar each (the whole block is one page),
loaded once per block. With FP8_Q, Q.K^T runs on fp8 over the K codes as stored and only P.V is an
fp16 dot (P not rounded to e4m3): sm_90a SASS at lpm-17b's page tiles, last page peeled, 704
instructions per block against 743 for fp16 dots and 864 for FP8-Q with an fp8 P.V, no spills, no
conversion-pipe converts, Q.K^T's MMA at the fp8 rate. Untimed.

PEEL_LAST (the plain order; OVERLAP peels its own first and last blocks and ignores it): the
range's last key block, the only one that may be partial, first (the online softmax is
order-free), then a loop over whole blocks whose key mask is constant (page tiles: the tile mask;
gathered blocks: none), its compares hoisted. SASS (Triton 3.9, instructions per key block at
lpm-17b's tiles): sm_90a page tiles over bf16 pages 628 instead of 827, fp8 pages with fp16 dots
743 instead of 907, FP8-Q 864 instead of 1032 (its 56-byte spill gone), TMA page tiles 598 instead
of 908; sm_87 gathered blocks fp16 d128 641 instead of 829, bf16 d64 420 instead of 504. Peeled
after the loop instead, ptxas serialized every wgmma of the bf16 page-tile kernel (each HGMMA
waited on alone); before it, none is. The launchers' and the tables' pick (untimed: the sweep
times both forms).

SPLIT (split-KV, FlashDecoding): program (m, bh, s) covers kv tokens [s * KV_PER_SPLIT, ...),
writes its normalized partial output and log2-sum-exp to fp32 workspaces, and
``_paged_attn_combine_kernel`` merges the splits. Without SPLIT the output is written directly.

Limits: HEAD_DIM a power of two in [16, 256]; a row with kv_lens[b] == 0 yields zeros.
"""

import triton
import triton.language as tl

from ._fp import cast_rne

FP8_MAX = tl.constexpr(448.0)


@triton.jit
def _mma(a, b, IEEE: tl.constexpr):
    """a @ b with fp32 accumulation. IEEE: upcast the (already rounded) operands to fp32 and use
    exact fp32 products -- for fp32 inputs (no TF32) and for bf16 under the CPU interpreter,
    whose numpy dot has no bf16 type; bf16 products are exact in fp32, so the math is unchanged."""
    if IEEE:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _qk(q, k, cdt: tl.constexpr, FP8_Q: tl.constexpr, IEEE: tl.constexpr):
    """Q.K^T of one key block, unscaled."""
    if FP8_Q:
        qk = tl.dot(q, tl.trans(k))
    else:
        qk = _mma(q, tl.trans(k.to(cdt)), IEEE)
    return qk


@triton.jit
def _finish_block(qk, v, ks_ptrs, vs_ptrs, valid, m_i, l_i, acc, qk_mul, cdt: tl.constexpr,
                  KV_FP8: tl.constexpr, FP8_Q: tl.constexpr, IEEE: tl.constexpr, FIX_ROUND: tl.constexpr,
                  PAGE_SCALES: tl.constexpr, EMPTY_OK: tl.constexpr, FOLD_SCALE: tl.constexpr = False,
                  V16: tl.constexpr = False, F16_DOTS: tl.constexpr = False):
    """The rest of a key block once its Q.K^T is there: scale and mask, online softmax, P.V.
    FOLD_SCALE (one K scale per block): the max taken on the raw products and the scale folded into
    the exponent's FFMA, exp2(qk * s - m), one multiply and one rounding fewer per score (exact for
    the max: s > 0 and rounding is monotonic); ks_ptrs/vs_ptrs are then the block's scales
    themselves, loaded by the caller (see OVERLAP)."""
    if FOLD_SCALE:
        tl.static_assert(PAGE_SCALES or not KV_FP8, "FOLD_SCALE: one K scale per block")
        s = qk_mul
        if KV_FP8:
            s = qk_mul * ks_ptrs
        m_new, l_i, alpha, p = _softmax_step(tl.where(valid[None, :], qk, float("-inf")), m_i, l_i, EMPTY_OK, s)
    else:
        qk = _scale_scores(qk, ks_ptrs, valid, qk_mul, KV_FP8, PAGE_SCALES)
        m_new, l_i, alpha, p = _softmax_step(qk, m_i, l_i, EMPTY_OK)
    acc = acc * alpha[:, None]
    return m_new, l_i, _pv(p, v, vs_ptrs, valid, acc, cdt, KV_FP8 and not V16, FP8_Q and not V16 and not F16_DOTS,
                           IEEE, FIX_ROUND, PAGE_SCALES, FOLD_SCALE)


@triton.jit
def _scale_scores(qk, ks_ptrs, valid, qk_mul, KV_FP8: tl.constexpr, PAGE_SCALES: tl.constexpr):
    """Base-2 scores: Q.K^T times sm_scale * log2(e) (and the K scales), -inf at the invalid keys.
    For fp8 pages ks_ptrs points at the K scales: [BLOCK_N] pointers, one per token, or with
    PAGE_SCALES (the block is one page) one scalar pointer. Scales are loaded where used (loaded up
    front, a per-token vector stays live across the QK^T product and spills)."""
    if KV_FP8:
        if PAGE_SCALES:       # a scalar: no per-token copies of it through shared memory
            qk = qk * (qk_mul * tl.load(ks_ptrs))
        else:
            ks = tl.load(ks_ptrs, mask=valid, other=0.0)
            qk = qk * (qk_mul * ks)[None, :]
    else:
        qk = qk * qk_mul
    return tl.where(valid[None, :], qk, float("-inf"))


@triton.jit
def _softmax_step(qk, m_i, l_i, EMPTY_OK: tl.constexpr, s=None):
    """Online softmax over one block of scores (qk times s where s is given, s > 0): -> (m_new, l_new,
    alpha, p), alpha = 2^(m_i - m_new) the factor for what was accumulated against m_i. EMPTY_OK: a
    block may hold no valid key (then p = 0, where -inf - -inf would make it NaN)."""
    if s is None:
        m_new = tl.maximum(m_i, tl.max(qk, 1))
    else:
        m_new = tl.maximum(m_i, tl.max(qk, 1) * s)
    if EMPTY_OK:
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    else:
        m_use = m_new
    alpha = tl.exp2(m_i - m_use)
    if s is None:
        p = tl.exp2(qk - m_use[:, None])
    else:
        p = tl.exp2(qk * s - m_use[:, None])
    return m_new, l_i * alpha + tl.sum(p, 1), alpha, p


@triton.jit
def _pv(p, v, vs_ptrs, valid, acc, cdt: tl.constexpr, KV_FP8: tl.constexpr, FP8_Q: tl.constexpr,
        IEEE: tl.constexpr, FIX_ROUND: tl.constexpr, PAGE_SCALES: tl.constexpr, LOADED: tl.constexpr = False):
    """acc + P.V, the V scales (fp8 pages) folded into P: vs_ptrs as ks_ptrs in ``_scale_scores``
    (LOADED: the block's scale itself). KV_FP8 and FP8_Q here are V's: fp8 V pages, an fp8 P.V."""
    if KV_FP8:
        if PAGE_SCALES:
            if LOADED:
                vs = vs_ptrs
            else:
                vs = tl.load(vs_ptrs)
            if FP8_Q:         # one scale for the block: P times 448 fills e4m3's range
                p8 = cast_rne(p * FP8_MAX, tl.float8e4nv, FIX_ROUND)
                acc += tl.dot(p8, v) * (vs / FP8_MAX)
            else:
                acc += _mma(cast_rne(p * vs, cdt, FIX_ROUND), v.to(cdt), IEEE)
        else:
            vs = tl.load(vs_ptrs, mask=valid, other=0.0)
            if FP8_Q:
                vmax = tl.maximum(tl.max(vs, 0), 1e-30)
                p8 = cast_rne(p * (vs * (FP8_MAX / vmax))[None, :], tl.float8e4nv, FIX_ROUND)
                acc += tl.dot(p8, v) * (vmax / FP8_MAX)
            else:
                acc += _mma(cast_rne(p * vs[None, :], cdt, FIX_ROUND), v.to(cdt), IEEE)
    else:
        acc += _mma(cast_rne(p, cdt, FIX_ROUND), v, IEEE)
    return acc


@triton.jit
def _attend_block(q, k, v, ks_ptrs, vs_ptrs, valid, m_i, l_i, acc, qk_mul, cdt: tl.constexpr,
                  KV_FP8: tl.constexpr, FP8_Q: tl.constexpr, IEEE: tl.constexpr, FIX_ROUND: tl.constexpr,
                  PAGE_SCALES: tl.constexpr, V16: tl.constexpr = False, F16_DOTS: tl.constexpr = False,
                  EMPTY_OK: tl.constexpr = False):
    """One key block of the online softmax: k, v [BLOCK_N, D] as stored, valid [BLOCK_N]; for fp8
    pages ks_ptrs/vs_ptrs point at the scales (see ``_scale_scores``). EMPTY_OK: the block may hold
    no valid key (see ``_softmax_step``). -> updated (m_i, l_i, acc)."""
    return _finish_block(_qk(q, k, cdt, FP8_Q, IEEE), v, ks_ptrs, vs_ptrs, valid, m_i, l_i, acc, qk_mul, cdt,
                         KV_FP8, FP8_Q, IEEE, FIX_ROUND, PAGE_SCALES, EMPTY_OK, False, V16, F16_DOTS)


@triton.jit
def _page_scales(ks_ptr, vs_ptr, page, h, stride_ksp, stride_ksh, stride_vsp, stride_vsh, mask,
                 KV_FP8: tl.constexpr, V16: tl.constexpr):
    """The K and V scales of head h in one page, loaded (1.0 where the pages carry none)."""
    ks = tl.full([], 1.0, tl.float32)
    vs = tl.full([], 1.0, tl.float32)
    if KV_FP8:
        ks = tl.load(ks_ptr + page * stride_ksp + h * stride_ksh, mask=mask, other=1.0)
        if not V16:
            vs = tl.load(vs_ptr + page * stride_vsp + h * stride_vsh, mask=mask, other=1.0)
    return ks, vs


@triton.jit
def _k_tile(k_ptr, k_desc, page, h, valid, offs_t, offs_d, stride_kp, stride_ks, stride_kh, stride_kd,
            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TMA_KV: tl.constexpr):
    """K rows of head h in one page, [BLOCK_N, HEAD_DIM] (rows past the page: zeros)."""
    if TMA_KV:
        k = tl.reshape(k_desc.load([page.to(tl.int32), 0, h * HEAD_DIM]), [BLOCK_N, HEAD_DIM])
    else:
        k = tl.load(k_ptr + page * stride_kp + offs_t[:, None] * stride_ks + h * stride_kh
                    + offs_d[None, :] * stride_kd, mask=valid[:, None], other=0.0)
    return k


@triton.jit
def _v_tile(v_ptr, v_desc, page, h, valid, offs_t, offs_d, stride_vp, stride_vs, stride_vh, stride_vd,
            BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, TMA_KV: tl.constexpr, V_TRANS_LOAD: tl.constexpr):
    """V rows of head h in one page, [BLOCK_N, HEAD_DIM]; rows past kv_len are zeros (P is 0 there,
    but 0 * NaN is not)."""
    if TMA_KV:
        v = tl.reshape(v_desc.load([page.to(tl.int32), 0, h * HEAD_DIM]), [BLOCK_N, HEAD_DIM])
        v = tl.where(valid[:, None], v, tl.zeros_like(v))
    elif V_TRANS_LOAD:   # V read as its transpose [D, BLOCK_N], then viewed back
        v = tl.trans(tl.load(v_ptr + page * stride_vp + offs_t[None, :] * stride_vs + h * stride_vh
                             + offs_d[:, None] * stride_vd, mask=valid[None, :], other=0.0))
    else:
        v = tl.load(v_ptr + page * stride_vp + offs_t[:, None] * stride_vs + h * stride_vh
                    + offs_d[None, :] * stride_vd, mask=valid[:, None], other=0.0)
    return v


@triton.jit
def _gather_kv(k_ptr, v_ptr, table_row, offs_n, valid, h, offs_d, stride_tp, stride_kp, stride_ks, stride_kh,
               stride_kd, stride_vp, stride_vs, stride_vh, stride_vd, PAGE_SIZE: tl.constexpr):
    """The gather: each token's page from the table (pages may lie anywhere) -> (page ids [BLOCK_N],
    K and V rows [BLOCK_N, D] of head h; zeros where not valid)."""
    page = tl.load(table_row + (offs_n // PAGE_SIZE) * stride_tp, mask=valid, other=0).to(tl.int64)
    off = offs_n % PAGE_SIZE
    k = tl.load(k_ptr + page[:, None] * stride_kp + off[:, None] * stride_ks + h * stride_kh
                + offs_d[None, :] * stride_kd, mask=valid[:, None], other=0.0)
    v = tl.load(v_ptr + page[:, None] * stride_vp + off[:, None] * stride_vs + h * stride_vh
                + offs_d[None, :] * stride_vd, mask=valid[:, None], other=0.0)
    return page, k, v


@triton.jit
def _paged_attn_fwd_kernel(
    q_ptr, k_ptr, v_ptr, ks_ptr, vs_ptr, table_ptr, lens_ptr, o_ptr, lse_ptr,
    qk_scale, Lq, H, kv_per_split, num_pages,
    stride_qb, stride_ql, stride_qh, stride_qd,
    stride_kp, stride_ks, stride_kh, stride_kd,
    stride_vp, stride_vs, stride_vh, stride_vd,
    stride_ksp, stride_ksh, stride_vsp, stride_vsh,
    stride_tb, stride_tp,
    stride_ob, stride_os, stride_ol, stride_oh, stride_od,
    stride_lb, stride_ls, stride_ll, stride_lh,
    PAGE_SIZE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    KV_FP8: tl.constexpr, FP8_Q: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr,
    FIX_ROUND: tl.constexpr, PAGE_TILES: tl.constexpr, V_TRANS_LOAD: tl.constexpr,
    TMA_KV: tl.constexpr = False, F16_DOTS: tl.constexpr = False, OVERLAP: tl.constexpr = False,
    V16: tl.constexpr = False, PEEL_LAST: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // H
    h = pid_bh % H
    kv_len = tl.load(lens_ptr + b)
    lo = pid_s * kv_per_split
    hi = tl.minimum(lo + kv_per_split, kv_len)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_m = offs_m < Lq
    q_ptrs = q_ptr + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=mask_m[:, None], other=0.0)
    cdt = q_ptr.dtype.element_ty
    if FP8_Q:
        qf = q.to(tl.float32) * qk_scale
        q_sc = tl.maximum(tl.max(tl.max(tl.abs(qf), 1), 0) / FP8_MAX, 1e-12)
        q = cast_rne(qf / q_sc, tl.float8e4nv, FIX_ROUND)
        qk_mul = q_sc
    else:
        qk_mul = qk_scale
    if F16_DOTS:
        # fp8 pages under bf16 q: Q and P in fp16, the pages' e4m3 -> fp16 one packed convert per
        # two values, where e4m3 -> bf16 takes that plus a convert per value on the slow conversion
        # pipe (SASS: F2F.BF16.F16). A Q tile beyond fp16's range (bf16 reaches 3e38; RMS-normed q
        # stays far inside) is scaled by a power of two, exactly, and the scores by its inverse.
        # Under FP8_Q only P.V is a 16-bit dot (Q is e4m3 already).
        tl.static_assert(KV_FP8 and not V16, "F16_DOTS: fp8 pages with 16-bit dots")
        if not FP8_Q:
            qf = q.to(tl.float32)
            q_amax = tl.max(tl.max(tl.abs(qf), 1), 0)
            q_pow2 = tl.where(q_amax > 32768.0, tl.exp2(tl.ceil(tl.log2(q_amax / 32768.0))), 1.0)
            q = (qf / q_pow2).to(tl.float16)
            qk_mul = qk_mul * q_pow2
        cdt = tl.float16

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    table_row = table_ptr + b * stride_tb
    offs_t = tl.arange(0, BLOCK_N)
    if PAGE_TILES:
        # one page per block (BLOCK_N >= PAGE_SIZE, the rows past it masked): one table entry and
        # one scale per block, and the tile is contiguous rows of one page (the launcher makes
        # kv_per_split a multiple of PAGE_SIZE, so lo starts a page)
        if TMA_KV:
            # a page's rows of head h through the tensor memory accelerator: pages viewed as
            # [num_pages, PAGE_SIZE, H * HEAD_DIM] (the launcher checks the head-major row layout);
            # the block's rows past PAGE_SIZE are out of that view and read as zeros
            k_desc = tl.make_tensor_descriptor(k_ptr, shape=[num_pages, PAGE_SIZE, H * HEAD_DIM],
                                               strides=[stride_kp, stride_ks, 1], block_shape=[1, BLOCK_N, HEAD_DIM])
            v_desc = tl.make_tensor_descriptor(v_ptr, shape=[num_pages, PAGE_SIZE, H * HEAD_DIM],
                                               strides=[stride_vp, stride_vs, 1], block_shape=[1, BLOCK_N, HEAD_DIM])
        else:
            k_desc = k_ptr
            v_desc = v_ptr
        pg_lo = lo // PAGE_SIZE
        if OVERLAP:
            # Q.K^T of block j + 1 issued before the softmax of block j and carried to the next
            # iteration, so the tensor cores work on it while the softmax runs (FlashAttention-3's
            # intra-warpgroup pipelining). Block pg_lo's product first, on its own (the range may
            # be empty: a split past kv_len, a row with kv_len 0 -- masked, nothing read).
            has = lo < hi
            page = tl.load(table_row + pg_lo * stride_tp, mask=has, other=0).to(tl.int64)
            valid = (offs_t < PAGE_SIZE) & (pg_lo * PAGE_SIZE + offs_t < hi)
            k = _k_tile(k_ptr, k_desc, page, h, valid, offs_t, offs_d, stride_kp, stride_ks, stride_kh,
                        stride_kd, BLOCK_N, HEAD_DIM, TMA_KV)
            qk = _qk(q, k, cdt, FP8_Q, IEEE)
            # the block's scales travel with its product: loaded where the product is issued, they
            # are registers by the softmax (loaded there, Triton's pipelined copy of a scale puts a
            # CTA barrier between the product's wait and the exponentials, and no softmax overlaps)
            ks, vs = _page_scales(ks_ptr, vs_ptr, page, h, stride_ksp, stride_ksh, stride_vsp, stride_vsh,
                                  has, KV_FP8, V16)
            n_prev = tl.minimum(hi - pg_lo * PAGE_SIZE, PAGE_SIZE)     # valid keys of the carried block
            for pg in range(pg_lo + 1, tl.cdiv(hi, PAGE_SIZE)):
                page_n = tl.load(table_row + pg * stride_tp).to(tl.int64)
                valid_n = (offs_t < PAGE_SIZE) & (pg * PAGE_SIZE + offs_t < hi)
                # block pg - 1 is not the range's last, so it is a whole page (only the last page of
                # a row is partial, and splits start on pages): the constant tile mask, its compares
                # hoisted (446 instructions per block against 475 with bf16 pages). Under FP8_Q the
                # mask comes from a carried bound instead (equal here): with the constant one ptxas
                # issues the QGMMAs before the softmax's max and waits on them with no exponential
                # in flight (sm_90a, Triton 3.9), with the bound it overlaps 17 of 34
                if FP8_Q:
                    valid = offs_t < n_prev
                else:
                    valid = offs_t < PAGE_SIZE
                k = _k_tile(k_ptr, k_desc, page_n, h, valid_n, offs_t, offs_d, stride_kp, stride_ks,
                            stride_kh, stride_kd, BLOCK_N, HEAD_DIM, TMA_KV)
                qk_n = _qk(q, k, cdt, FP8_Q, IEEE)
                ks_n, vs_n = _page_scales(ks_ptr, vs_ptr, page_n, h, stride_ksp, stride_ksh, stride_vsp,
                                          stride_vsh, True, KV_FP8, V16)
                v = _v_tile(v_ptr, v_desc, page, h, valid, offs_t, offs_d, stride_vp, stride_vs, stride_vh,
                            stride_vd, BLOCK_N, HEAD_DIM, TMA_KV, V_TRANS_LOAD)
                m_i, l_i, acc = _finish_block(qk, v, ks, vs, valid, m_i, l_i, acc, qk_mul, cdt, KV_FP8, FP8_Q,
                                              IEEE, FIX_ROUND, True, False, True, V16, F16_DOTS)
                qk = qk_n
                ks = ks_n
                vs = vs_n
                page = page_n
                n_prev = tl.minimum(hi - pg * PAGE_SIZE, PAGE_SIZE)
            valid = offs_t < n_prev                                     # the last block: maybe partial
            v = _v_tile(v_ptr, v_desc, page, h, valid, offs_t, offs_d, stride_vp, stride_vs, stride_vh,
                        stride_vd, BLOCK_N, HEAD_DIM, TMA_KV, V_TRANS_LOAD)
            m_i, l_i, acc = _finish_block(qk, v, ks, vs, valid, m_i, l_i, acc, qk_mul, cdt, KV_FP8, FP8_Q,
                                          IEEE, FIX_ROUND, True, True, True, V16, F16_DOTS)
        else:
            # PEEL_LAST: the range's last page, maybe partial or absent, first (the softmax is
            # order-free), then a loop over whole pages whose key mask is the constant tile mask
            pg_end = tl.cdiv(hi, PAGE_SIZE)
            if PEEL_LAST:
                pg_end -= 1
                has = lo < hi          # (a split past kv_len: nothing read, nothing added)
                page = tl.load(table_row + pg_end * stride_tp, mask=has, other=0).to(tl.int64)
                key = pg_end * PAGE_SIZE + offs_t
                valid = (offs_t < PAGE_SIZE) & (key < hi) & (key >= lo)          # [lo, hi) may be empty
                k = _k_tile(k_ptr, k_desc, page, h, valid, offs_t, offs_d, stride_kp, stride_ks, stride_kh,
                            stride_kd, BLOCK_N, HEAD_DIM, TMA_KV)
                v = _v_tile(v_ptr, v_desc, page, h, valid, offs_t, offs_d, stride_vp, stride_vs, stride_vh,
                            stride_vd, BLOCK_N, HEAD_DIM, TMA_KV, V_TRANS_LOAD)
                m_i, l_i, acc = _attend_block(q, k, v, ks_ptr + page * stride_ksp + h * stride_ksh,
                                              vs_ptr + page * stride_vsp + h * stride_vsh, valid,
                                              m_i, l_i, acc, qk_mul, cdt, KV_FP8, FP8_Q, IEEE, FIX_ROUND, True,
                                              V16, F16_DOTS, True)
            for pg in range(pg_lo, pg_end):
                page = tl.load(table_row + pg * stride_tp).to(tl.int64)
                if PEEL_LAST:
                    valid = offs_t < PAGE_SIZE
                else:
                    valid = (offs_t < PAGE_SIZE) & (pg * PAGE_SIZE + offs_t < hi)
                k = _k_tile(k_ptr, k_desc, page, h, valid, offs_t, offs_d, stride_kp, stride_ks, stride_kh,
                            stride_kd, BLOCK_N, HEAD_DIM, TMA_KV)
                v = _v_tile(v_ptr, v_desc, page, h, valid, offs_t, offs_d, stride_vp, stride_vs, stride_vh,
                            stride_vd, BLOCK_N, HEAD_DIM, TMA_KV, V_TRANS_LOAD)
                m_i, l_i, acc = _attend_block(q, k, v, ks_ptr + page * stride_ksp + h * stride_ksh,
                                              vs_ptr + page * stride_vsp + h * stride_vsh, valid,
                                              m_i, l_i, acc, qk_mul, cdt, KV_FP8, FP8_Q, IEEE, FIX_ROUND, True,
                                              V16, F16_DOTS)
    else:
        tl.static_assert(not OVERLAP, "OVERLAP needs PAGE_TILES")
        end = hi
        if PEEL_LAST:
            # the range's last block, the only one that may be partial, first; then whole blocks
            end = lo + tl.maximum(hi - lo - 1, 0) // BLOCK_N * BLOCK_N
            offs_n = end + offs_t
            valid = offs_n < hi                  # (end >= lo: an empty range leaves nothing valid)
            page, k, v = _gather_kv(k_ptr, v_ptr, table_row, offs_n, valid, h, offs_d, stride_tp, stride_kp,
                                    stride_ks, stride_kh, stride_kd, stride_vp, stride_vs, stride_vh, stride_vd,
                                    PAGE_SIZE)
            m_i, l_i, acc = _attend_block(q, k, v, ks_ptr + page * stride_ksp + h * stride_ksh,
                                          vs_ptr + page * stride_vsp + h * stride_vsh, valid,
                                          m_i, l_i, acc, qk_mul, cdt, KV_FP8, FP8_Q, IEEE, FIX_ROUND, False, V16,
                                          F16_DOTS, True)
        for start in range(lo, end, BLOCK_N):
            offs_n = start + offs_t
            if PEEL_LAST:
                valid = offs_t < BLOCK_N
            else:
                valid = offs_n < hi
            page, k, v = _gather_kv(k_ptr, v_ptr, table_row, offs_n, valid, h, offs_d, stride_tp, stride_kp,
                                    stride_ks, stride_kh, stride_kd, stride_vp, stride_vs, stride_vh, stride_vd,
                                    PAGE_SIZE)
            m_i, l_i, acc = _attend_block(q, k, v, ks_ptr + page * stride_ksp + h * stride_ksh,
                                          vs_ptr + page * stride_vsp + h * stride_vsh, valid,
                                          m_i, l_i, acc, qk_mul, cdt, KV_FP8, FP8_Q, IEEE, FIX_ROUND, False, V16,
                                          F16_DOTS)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    out = acc / l_safe[:, None]
    o_ptrs = (o_ptr + b * stride_ob + pid_s * stride_os + h * stride_oh
              + offs_m[:, None] * stride_ol + offs_d[None, :] * stride_od)
    tl.store(o_ptrs, cast_rne(out, o_ptr.dtype.element_ty, FIX_ROUND), mask=mask_m[:, None])
    if SPLIT:
        lse = tl.where(l_i > 0.0, m_i + tl.log2(l_safe), float("-inf"))
        tl.store(lse_ptr + b * stride_lb + pid_s * stride_ls + h * stride_lh + offs_m * stride_ll,
                 lse, mask=mask_m)


@triton.jit
def _paged_attn_combine_kernel(
    part_ptr, lse_ptr, o_ptr, H, num_splits,
    stride_pb, stride_ps, stride_pl, stride_ph, stride_pd,
    stride_lb, stride_ls, stride_ll, stride_lh,
    stride_ob, stride_ol, stride_oh, stride_od,
    HEAD_DIM: tl.constexpr, BLOCK_S: tl.constexpr, FIX_ROUND: tl.constexpr,
):
    """out = sum_s 2^(lse_s - m) o_s / sum_s 2^(lse_s - m), m = max_s lse_s; empty splits have lse -inf."""
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    mask_s = offs_s < num_splits
    lse = tl.load(lse_ptr + b * stride_lb + pid_l * stride_ll + h * stride_lh + offs_s * stride_ls,
                  mask=mask_s, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)                                            # 0 for empty splits
    part = tl.load(part_ptr + b * stride_pb + pid_l * stride_pl + h * stride_ph
                   + offs_s[:, None] * stride_ps + offs_d[None, :] * stride_pd,
                   mask=mask_s[:, None], other=0.0)
    den = tl.sum(w, 0)
    out = tl.sum(part * w[:, None], 0) / tl.where(den > 0.0, den, 1.0)
    tl.store(o_ptr + b * stride_ob + pid_l * stride_ol + h * stride_oh + offs_d * stride_od,
             cast_rne(out, o_ptr.dtype.element_ty, FIX_ROUND))
