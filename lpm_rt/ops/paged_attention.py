"""Attention of queries over K/V held in a paged cache.

    out[b, i, h] = sum_j softmax_j(sm_scale * q[b, i, h] . K_b[j, h]) V_b[j, h],   j < kv_lens[b]

where K_b / V_b are the pages ``block_table[b, :]`` concatenated in table order
(token j of row b lives at page ``block_table[b, j // page_size]``, offset ``j % page_size``).
No mask: every query sees all ``kv_lens[b]`` tokens; causality is what the table holds.
FP8 pages are dequantized with per-page per-head scales: K = k_pages[p].float() * k_scale[p, h].
"""

from __future__ import annotations

import math
from typing import Optional

import torch

__all__ = ["paged_attention", "paged_attention_ref", "gather_pages"]

_LOG2E = 1.4426950408889634


def gather_pages(pages: torch.Tensor, scale: torch.Tensor | None, table_row: torch.Tensor,
                 n: int, dtype: torch.dtype) -> torch.Tensor:
    """First ``n`` tokens of the pages named by ``table_row``: [n, H, D] in ``dtype``."""
    page_size = pages.shape[1]
    n_pages = -(-n // page_size)
    ids = table_row[:n_pages].long()
    kv = pages.index_select(0, ids).to(dtype)                      # (n_pages, page_size, H, D)
    if scale is not None:
        kv = kv * scale.index_select(0, ids).to(dtype)[:, None, :, None]
    return kv.flatten(0, 1)[:n]                                     # (n, H, D)


def _paged_attention_masked(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale, sm_scale, cdt):
    """The reference as ``torch.compile`` traces it: no host read of ``kv_lens`` (a data-dependent
    length is a graph break), so every page of the table is gathered and keys at or past
    ``kv_lens[b]`` are masked; the product is SDPA's (the fused attention Inductor keeps), in ``cdt``."""
    B, Lq, H, D = q.shape
    page_size = k_pages.shape[1]
    n = block_table.shape[1] * page_size
    lens = kv_lens.to(q.device)
    out = []
    for b in range(B):
        ids = block_table[b].long()
        k = gather_pages(k_pages, k_scale, ids, n, cdt).transpose(0, 1)        # (H, N, D)
        v = gather_pages(v_pages, v_scale, ids, n, cdt).transpose(0, 1)
        keep = torch.arange(n, device=q.device) < lens[b]                       # (N,)
        o = torch.nn.functional.scaled_dot_product_attention(
            q[b].to(cdt).transpose(0, 1), k, v, attn_mask=keep[None, None, :], scale=sm_scale)
        out.append(o.transpose(0, 1).to(q.dtype))
    return torch.stack(out)


def paged_attention_ref(q, k_pages, v_pages, block_table, kv_lens,
                        k_scale=None, v_scale=None, sm_scale=None, upcast=True):
    """Pure-torch reference (and CPU fallback).

    q: [B, Lq, H, D]; k_pages, v_pages: [P, page_size, H, D]; block_table: [B, max_pages] int32;
    kv_lens: [B] int32 (a host tensor avoids a device sync); k_scale, v_scale: [P, H] fp32 when
    pages are fp8. Returns [B, Lq, H, D] in q's dtype. ``upcast`` computes in fp32 (fp64 if q is).
    """
    B, Lq, H, D = q.shape
    if k_pages.shape[2] != H or k_pages.shape[3] != D:
        raise ValueError(f"pages {tuple(k_pages.shape)} do not match q heads/dim {H}/{D}")
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else sm_scale
    cdt = (torch.float64 if q.dtype == torch.float64 else torch.float32) if upcast else q.dtype
    if torch.compiler.is_compiling():
        return _paged_attention_masked(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale,
                                       sm_scale, cdt)
    lens = kv_lens.tolist() if kv_lens.device.type == "cpu" else kv_lens.cpu().tolist()
    out = torch.empty_like(q)
    for b in range(B):
        k = gather_pages(k_pages, k_scale, block_table[b], lens[b], cdt)   # (N, H, D)
        v = gather_pages(v_pages, v_scale, block_table[b], lens[b], cdt)
        s = torch.einsum("qhd,nhd->hqn", q[b].to(cdt), k) * sm_scale      # (H, Lq, N)
        p = torch.softmax(s, dim=-1)
        out[b] = torch.einsum("hqn,nhd->qhd", p, v).to(q.dtype)
    return out


def page_tiles_fit(block_n: int, page_size: int) -> bool:
    """Whether one page per key block (PAGE_TILES) fills a BLOCK_N tile at least half way."""
    return block_n // 2 < page_size <= block_n


def _config(Lq: int, D: int, page_size: int, device: torch.device, capability=None):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages, PAGE_TILES). On a GPU, once Lq fills 128-row query
    tiles (two warpgroups): on Hopper the H200 sweep's winner (compile/targets.py, h100) -- one
    page per 128-key block on 2 stages where the page fills most of the block (160 KB of shared
    memory in bf16) -- else 128x64 blocks crossing pages (96 KB: sm_80-sm_89 fit it). Checked to
    fit by ``python -m lpm_rt.benchmark.sass`` (which passes the ``capability`` it compiles for)."""
    import triton

    small_m = min(64, max(16, triton.next_power_of_2(Lq)))
    if device.type != "cuda":
        return small_m, (64 if D <= 64 else 32), 4, 2, False   # interpreter: fewer, larger numpy ops
    if Lq >= 128 and D <= 128:
        major = (capability or torch.cuda.get_device_capability(device))[0]
        if page_tiles_fit(128, page_size) and major == 9:
            return 128, 128, 8, 2, True
        return 128, 64, 8, 3, False
    return small_m, 64 if D <= 128 else 32, 4, 3 if D <= 128 else 2, False


def f16_dots(q_dtype, kv_dtype, v_dtype=None) -> bool:
    """Whether attention over fp8 pages under bf16 q runs its dots in fp16 (F16_DOTS): e4m3 -> fp16
    is one packed convert per two values on sm_89+, e4m3 -> bf16 that plus one convert per value on
    the conversion pipe -- 128 per thread per 128x128 block on sm_90a, which F16_DOTS removes
    (``python -m lpm_rt.benchmark.sass``). fp16 holds e4m3 exactly and P with 3 more bits than bf16.
    With ``fp8_q`` Q.K^T is an fp8 dot and P.V the fp16 one (an fp8 P.V, P rounded to e4m3, is the
    F16_DOTS=False form). Not for bf16 V pages under fp8 K (``v_dtype``): P.V stays in V's type."""
    v_fp8 = v_dtype is None or v_dtype == torch.float8_e4m3fn
    return kv_dtype == torch.float8_e4m3fn and v_fp8 and q_dtype == torch.bfloat16


def _tma_kv_ready(k_pages, v_pages, page_tiles: bool) -> None:
    """TMA_KV reads a page's rows of one head as a [page, D] box of pages viewed [P, page, H * D]:
    one page per key block, unit d stride, heads adjacent, 16-byte aligned rows (raise, never fall back)."""
    from ._triton_util import tma_allocator

    if not page_tiles:
        raise ValueError("triton paged_attention: TMA_KV needs PAGE_TILES")
    for name, t in (("k_pages", k_pages), ("v_pages", v_pages)):
        P, ps, H, D = t.shape
        if t.stride(3) != 1 or t.stride(2) != D or any((s * t.element_size()) % 16 for s in t.stride()[:2]) \
                or t.data_ptr() % 16:
            raise ValueError(f"triton paged_attention TMA_KV: {name} needs [P, page, H, D] rows with unit d "
                             f"stride, heads adjacent and 16-byte aligned rows, got strides {tuple(t.stride())}")
    tma_allocator(k_pages.device)


def _pick_splits(n_ctas: int, kv_max: int, block_n: int, device: torch.device) -> int:
    """Split-KV when the (m-block, batch, head) grid cannot fill the GPU (small Lq, long history)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    if n_ctas >= sms:
        return 1
    return max(1, min(-(-2 * sms // n_ctas), -(-kv_max // (4 * block_n)), 32))


def _paged_attention_triton(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale,
                            sm_scale, fp8_q, num_splits):
    import triton

    from csrc_triton import paged_attention as kern

    from ._launch import configure
    from ._triton_util import check_device, check_page_scales, ieee_dots, interpreting

    B, Lq, H, D = q.shape
    P, page_size = k_pages.shape[:2]
    kv_fp8 = k_pages.dtype == torch.float8_e4m3fn
    v16 = kv_fp8 and v_pages.dtype == q.dtype                  # e4m3 K, V in q's type (no V scales)
    if q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"triton paged_attention: q dtype {q.dtype} not in fp32/fp16/bf16")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"triton paged_attention: head_dim {D} must be a power of two in [16, 256]")
    if tuple(v_pages.shape) != tuple(k_pages.shape) or (v_pages.dtype != k_pages.dtype and not v16):
        raise ValueError("k_pages and v_pages must have one shape and one dtype (or fp8 K pages with V "
                         f"pages in q's dtype), got {k_pages.dtype} {tuple(k_pages.shape)} and "
                         f"{v_pages.dtype} {tuple(v_pages.shape)}")
    if not kv_fp8 and k_pages.dtype != q.dtype:
        raise TypeError(f"pages {k_pages.dtype} must be fp8 e4m3 or q's dtype {q.dtype}")
    check_page_scales(k_pages, v_pages, k_scale, v_scale)
    if fp8_q and not kv_fp8:
        raise ValueError("fp8_q needs fp8 pages")
    if block_table.dim() != 2 or block_table.shape[0] != B or block_table.dtype != torch.int32:
        raise ValueError(f"block_table must be [B={B}, max_pages] int32, got "
                         f"{tuple(block_table.shape)} {block_table.dtype}")
    if tuple(kv_lens.shape) != (B,) or kv_lens.dtype != torch.int32:
        raise ValueError(f"kv_lens must be [B={B}] int32")
    check_device(q, k_pages=k_pages, v_pages=v_pages, block_table=block_table, k_scale=k_scale,
                 v_scale=v_scale)
    kv_lens = kv_lens.to(q.device, non_blocking=True)
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    dummy = torch.empty(1, 1, dtype=torch.float32, device=q.device)
    ks = k_scale if kv_fp8 else dummy
    vs = v_scale if kv_fp8 and not v16 else dummy

    block_m, block_n, warps, stages, page_tiles = _config(Lq, D, page_size, q.device)
    kv_max = block_table.shape[1] * page_size
    splits = num_splits or _pick_splits(triton.cdiv(Lq, block_m) * B * H, kv_max, block_n, q.device)
    launch = configure(kern._paged_attn_fwd_kernel,
                       dict(PAGE_SIZE=page_size, HEAD_DIM=D, KV_FP8=kv_fp8, FP8_Q=bool(fp8_q),
                            IEEE=ieee_dots(q.dtype), FIX_ROUND=interpreting(), V16=v16),
                       dict(BLOCK_M=block_m, BLOCK_N=block_n, SPLIT=splits > 1, PAGE_TILES=page_tiles,
                            V_TRANS_LOAD=False, TMA_KV=False, PEEL_LAST=True,   # (see the kernel)
                            F16_DOTS=f16_dots(q.dtype, k_pages.dtype, v_pages.dtype)), warps, stages)
    cx = launch.constexprs                      # an artifact's frozen tiles and split choice win
    block_m, block_n = cx["BLOCK_M"], cx["BLOCK_N"]
    page_tiles = bool(cx.get("PAGE_TILES", False))
    if cx.get("V_TRANS_LOAD") and not page_tiles:
        raise ValueError("triton paged_attention: V_TRANS_LOAD needs PAGE_TILES")
    if page_tiles and block_n < page_size:
        raise ValueError(f"triton paged_attention: PAGE_TILES needs BLOCK_N >= page size, got {block_n} < {page_size}")
    if cx.get("TMA_KV"):
        _tma_kv_ready(k_pages, v_pages, page_tiles)
    if cx.get("OVERLAP") and not page_tiles:
        raise ValueError("triton paged_attention: OVERLAP needs PAGE_TILES")
    if cx.get("F16_DOTS") and not f16_dots(q.dtype, k_pages.dtype, v_pages.dtype):
        raise ValueError("triton paged_attention: F16_DOTS needs fp8 K and V pages and bf16 q")
    step = page_size if page_tiles else block_n  # split boundaries: whole pages for page tiles
    grid_m = triton.cdiv(Lq, block_m)
    combine = None
    if not cx["SPLIT"]:
        splits = 1
    else:
        splits = num_splits or _pick_splits(grid_m * B * H, kv_max, block_n, q.device)
        combine = configure(kern._paged_attn_combine_kernel, dict(HEAD_DIM=D, FIX_ROUND=interpreting()),
                            dict(BLOCK_S=triton.next_power_of_2(splits)), 4 if D <= 64 else 8)
        splits = min(splits, combine.constexprs["BLOCK_S"])
    kv_per_split = triton.cdiv(triton.cdiv(kv_max, splits), step) * step
    out = torch.empty(B, Lq, H, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    if cx["SPLIT"]:
        part = torch.empty(B, splits, Lq, H, D, dtype=torch.float32, device=q.device)
        lse = torch.empty(B, splits, Lq, H, dtype=torch.float32, device=q.device)
        o, ostr, lstr = part, part.stride(), lse.stride()
    else:
        o, lse = out, dummy
        ostr = (out.stride(0), 0, *out.stride()[1:])
        lstr = (0, 0, 0, 0)
    launch[(grid_m, B * H, splits)](
        q, k_pages, v_pages, ks, vs, block_table, kv_lens, o, lse,
        sm_scale * _LOG2E, Lq, H, kv_per_split, P,
        *q.stride(), *k_pages.stride(), *v_pages.stride(), *ks.stride(), *vs.stride(),
        *block_table.stride(), *ostr, *lstr)
    if combine is not None:
        combine[(Lq, B * H)](part, lse, out, H, splits, *part.stride(), *lse.stride(), *out.stride())
    return out


@torch.library.custom_op("lpm_rt::paged_attention", mutates_args=())
def _paged_attention_op(q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
                        block_table: torch.Tensor, kv_lens: torch.Tensor,
                        k_scale: Optional[torch.Tensor], v_scale: Optional[torch.Tensor],
                        sm_scale: Optional[float], fp8_q: bool, num_splits: int) -> torch.Tensor:
    return _paged_attention_triton(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale,
                                   sm_scale, fp8_q, num_splits)


@_paged_attention_op.register_fake
def _(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale, sm_scale, fp8_q, num_splits):
    return q.new_empty(q.shape)


def paged_attention(q, k_pages, v_pages, block_table, kv_lens,
                    k_scale=None, v_scale=None, sm_scale=None, *, fp8_q=None, num_splits=0):
    """Launcher: the selected backend's kernel (``lpm_rt.ops.set_backend``); same contract as the ref.

    Pages: both in q's dtype, both fp8 e4m3 (with k_scale and v_scale), or fp8 K pages (with
    k_scale) beside V pages in q's dtype (no v_scale): the mixed form, where the e4m3 K codes feed an
    fp8 Q.K^T as stored and P.V runs in q's type (SageAttention's split of the precision: 8 bits
    for the scores, 16 for the values).

    Triton-only knobs (keyword, ignored by the ref): ``fp8_q`` runs Q.K^T as an fp8 dot (needs fp8
    K pages, sm_89+ and head_dim >= 32, the fp8 MMA's K); P.V then runs in fp16 over fp8 V pages
    under bf16 q (see :func:`f16_dots`), in fp8 otherwise. Default: on for mixed pages where those
    hold (as the h100 artifacts compile them), off for fp8 K and V (on an H200 with Triton 3.6 the
    form with an fp8 P.V measured slower than the bf16 dots over dequantized fp8 pages, with 14x
    their error -- bench/results/gpu-20261204-2; the fp16 P.V form is untimed).
    ``num_splits`` forces split-KV (0 = heuristic: split when the grid cannot fill the GPU).
    Without fp8_q, fp8 pages under bf16 q run both dots in fp16.
    """
    from . import direct, get_backend

    if get_backend() == "ref":
        return paged_attention_ref(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale, sm_scale)
    if fp8_q is None:
        fp8_q = (k_pages.dtype == torch.float8_e4m3fn and v_pages.dtype == q.dtype and q.shape[-1] >= 32
                 and (q.device.type != "cuda" or torch.cuda.get_device_capability(q.device) >= (8, 9)))
    run = _paged_attention_triton if direct(q, k_pages, v_pages) else torch.ops.lpm_rt.paged_attention
    return run(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale, sm_scale, bool(fp8_q), int(num_splits))
