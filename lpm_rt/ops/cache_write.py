"""Write a chunk's K/V into cache pages: RoPE on K, per-page per-head scale, quantize, scatter.

    k_rot = rope(k, cos, sin)                       (interleaved pairs, Wan's complex layout)
    k_rot = k_rot - k_shift[h]                      (optional K smoothing, see below)
    slot  = slot_mapping[n] = page * page_size + offset
    fp8 pages: scale[p, h] = amax over the tokens written to page p of |x[:, h]| / 448,
               pages[p][off, h] = (x / scale[p, h]).to(float8_e4m3fn)
    other page dtypes: a plain cast; scales are left untouched (pass None).
    K and V pages share a dtype, or K's are fp8 and V's wider (an fp8k pool: v_scale None).

K smoothing (SageAttention, Zhang et al. 2024): keys after RMSNorm share a large per-channel
offset. Subtracting one vector per head from *every* key a query attends to changes each score
row by a constant (q . k_shift), so softmax and the attention output are unchanged, while the
per-page fp8 scales -- and the fp8 Q.K^T of the FP8-Q path -- resolve what varies between keys.
The caller keeps the shift fixed for all pages one query sees (the session's reference entry).

A call writes whole pages' worth of tokens (the cache writes a latent frame, and page_size
divides a frame's tokens), so a page's scale always covers every token it holds.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..model.rope import rope_apply

__all__ = ["cache_write", "cache_write_ref", "rms_rows", "FP8_MAX"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def launch_warps(page_size: int, half_d: int) -> int:
    """Warps per program: one program per page (and tensor), a [page, head_dim / 2] tile per head;
    8 from 4096 elements up. The AOT tables' heuristic for this kernel too (compile/kernels.py)."""
    import triton

    return 8 if triton.next_power_of_2(page_size) * half_d >= 4096 else 4


def _write(x, pages, scale, slot_mapping):
    page_size = pages.shape[1]
    flat = pages.view(-1, *pages.shape[2:])                          # (P * page_size, H, D)
    if scale is None:
        flat.index_copy_(0, slot_mapping, x.to(pages.dtype))
        return
    page_ids = torch.div(slot_mapping, page_size, rounding_mode="floor")
    amax = torch.zeros(scale.shape, dtype=torch.float32, device=x.device)  # (P, H)
    src = x.abs().amax(-1).float()                                         # (N, H)
    amax.scatter_reduce_(0, page_ids[:, None].expand_as(src), src, "amax")
    s = (amax / FP8_MAX).clamp_min(1e-12)
    # every token of a page carries its page's scale: repeated indices copy equal values (no
    # data-dependent unique(), so torch.compile traces it whole)
    scale.index_copy_(0, page_ids, s.index_select(0, page_ids))
    q = (x.float() / s.index_select(0, page_ids)[:, :, None]).clamp(-FP8_MAX, FP8_MAX)
    # CPU has no fp8 index_copy: scatter the raw bytes
    flat.view(torch.uint8).index_copy_(0, slot_mapping, q.to(pages.dtype).view(torch.uint8))


def rms_rows(x, w, eps):
    """Wan's RMSNorm over all H * D channels of each token, rounded as the torch module does:
    x [N, H, D], w [H * D] -> [N, H, D] in x's dtype."""
    N, H, D = x.shape
    xf = x.float().reshape(N, H * D)
    return ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w).view(N, H, D)


def cache_write_ref(k, v, k_pages, v_pages, slot_mapping, k_scale=None, v_scale=None,
                    cos=None, sin=None, *, q=None, k_shift=None, qk_norm=None):
    """k, v: [N, H, D]; pages [P, page_size, H, D]; slot_mapping: [N] int64;
    k_scale/v_scale: [P, H] fp32 for fp8 pages (written); cos/sin: [N, D/2] (RoPE on k) or None.
    q: optional [N, H, D] queries of the same tokens: returns rope(q) (a new tensor), else None.
    k_shift: optional [H, D] fp32 subtracted from the rotated keys (K smoothing).
    qk_norm: optional (q_weight [H*D], k_weight [H*D], eps): RMSNorm q and k first (:func:`rms_rows`)."""
    if qk_norm is not None:
        qw, kw, eps = qk_norm
        k = rms_rows(k, kw, eps)
        q = rms_rows(q, qw, eps) if q is not None else None
    if cos is not None:
        k = rope_apply(k, cos, sin)
    if k_shift is not None:
        k = k.float() - k_shift.float()
    _write(k, k_pages, k_scale, slot_mapping)
    _write(v, v_pages, v_scale, slot_mapping)
    if q is not None:
        return rope_apply(q, cos, sin) if cos is not None else q.clone()
    return None


def _cache_write_triton(k, v, k_pages, v_pages, slot_mapping, k_scale, v_scale, cos, sin, q=None, k_shift=None,
                        q_weight=None, k_weight=None, eps=1e-6):
    import triton

    from csrc_triton import cache_write as kern

    from ._launch import configure
    from ._triton_util import check_device, check_page_scales, interpreting

    N, H, D = k.shape
    page_size = k_pages.shape[1]
    fp8 = k_pages.dtype == torch.float8_e4m3fn
    v16 = fp8 and v_pages.dtype != k_pages.dtype                 # fp8 K pages, V pages of a wider dtype
    if tuple(v.shape) != (N, H, D) or tuple(k_pages.shape[2:]) != (H, D) or v_pages.shape != k_pages.shape:
        raise ValueError(f"k/v {tuple(k.shape)}/{tuple(v.shape)} do not match pages {tuple(k_pages.shape)}")
    if v_pages.dtype != k_pages.dtype and not v16:
        raise TypeError(f"k_pages and v_pages must share a dtype (or be fp8 K beside wider V), got "
                        f"{k_pages.dtype} and {v_pages.dtype}")
    half = D // 2
    if D % 2 or half & (half - 1):
        raise ValueError(f"triton cache_write: head_dim {D} must be 2 * a power of two")
    if N % page_size:
        raise ValueError(f"triton cache_write writes whole pages: N={N} is not a multiple of {page_size}")
    if tuple(slot_mapping.shape) != (N,) or slot_mapping.dtype not in (torch.int64, torch.int32):
        raise ValueError("slot_mapping must be [N] int64/int32")
    check_page_scales(k_pages, v_pages, k_scale, v_scale, " (written)")
    if (cos is None) != (sin is None) or (cos is not None and (tuple(cos.shape) != (N, half)
                                                             or tuple(sin.shape) != (N, half))):
        raise ValueError(f"cos/sin must both be [N={N}, D/2={half}] or None")
    if q is not None and (tuple(q.shape) != (N, H, D) or cos is None):
        raise ValueError(f"q must be [N={N}, H={H}, D={D}] and needs cos/sin")
    if k_shift is not None and tuple(k_shift.shape) != (H, D):
        raise ValueError(f"k_shift must be [H={H}, D={D}]")
    norm = k_weight is not None
    if norm and (q is None or q_weight is None or tuple(q_weight.shape) != (H * D,)
                 or tuple(k_weight.shape) != (H * D,) or not q_weight.is_contiguous() or not k_weight.is_contiguous()):
        raise ValueError(f"qk_norm needs q and contiguous q/k weights [H*D={H * D}]")
    check_device(k, v=v, k_pages=k_pages, v_pages=v_pages, slot_mapping=slot_mapping,
                 k_scale=k_scale, v_scale=v_scale, cos=cos, sin=sin, q=q, k_shift=k_shift)
    q_out = torch.empty(q.shape if q is not None else (0, H, D), dtype=q.dtype if q is not None else k.dtype,
                        device=k.device)
    if N == 0:
        return q_out
    dummy = torch.empty(1, 1, dtype=torch.float32, device=k.device)
    ks = k_scale if fp8 else dummy
    vs = v_scale if fp8 and not v16 else dummy
    c, s = (cos, sin) if cos is not None else (dummy, dummy)
    qi = q if q is not None else k
    # without q the third program row never runs: a placeholder of q's dtype and page layout
    qo = q_out.view(N // page_size, page_size, H, D) if q is not None else k.new_empty(1, page_size, H, D)
    sh = k_shift if k_shift is not None else dummy
    launch = configure(kern._cache_write_kernel,
                       dict(PAGE_SIZE=page_size, BLOCK_T=triton.next_power_of_2(page_size), HALF_D=half,
                            ROPE=cos is not None, FP8=fp8, FIX_ROUND=interpreting(), SHIFT=k_shift is not None,
                            QK_NORM=norm, V16=v16),
                       {}, num_warps=launch_warps(page_size, half))
    wq, wk = (q_weight, k_weight) if norm else (qi.new_empty(1), qi.new_empty(1))
    launch[(N // page_size, 1 if norm else H, 3 if q is not None else 2)](
        k, v, c, s, slot_mapping, k_pages, v_pages, ks, vs, qi, qo, sh, wq, wk, H, float(eps),
        *k.stride(), *v.stride(), *qi.stride(), *qo.stride(),
        *c.stride(), *s.stride(), *k_pages.stride(), *v_pages.stride(),
        *ks.stride(), *vs.stride(), *sh.stride())
    return q_out


@torch.library.custom_op("lpm_rt::cache_write", mutates_args=("k_pages", "v_pages", "k_scale", "v_scale"))
def _cache_write_op(k: torch.Tensor, v: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor,
                    slot_mapping: torch.Tensor, k_scale: Optional[torch.Tensor],
                    v_scale: Optional[torch.Tensor], cos: Optional[torch.Tensor],
                    sin: Optional[torch.Tensor], q: Optional[torch.Tensor],
                    k_shift: Optional[torch.Tensor], q_weight: Optional[torch.Tensor],
                    k_weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """Returns rope(q), or an empty [0, H, D] tensor when q is None (custom ops return tensors)."""
    return _cache_write_triton(k, v, k_pages, v_pages, slot_mapping, k_scale, v_scale, cos, sin, q, k_shift,
                               q_weight, k_weight, eps)


@_cache_write_op.register_fake
def _(k, v, k_pages, v_pages, slot_mapping, k_scale, v_scale, cos, sin, q, k_shift, q_weight, k_weight, eps):
    return k.new_empty(q.shape if q is not None else (0, *k.shape[1:]), dtype=q.dtype if q is not None else k.dtype)


def cache_write(k, v, k_pages, v_pages, slot_mapping, k_scale=None, v_scale=None, cos=None, sin=None,
                *, q=None, k_shift=None, qk_norm=None):
    """Launcher: the selected backend's kernel; same contract as the ref (returns rope(q) when q
    is given, else None), except that the triton kernel writes whole pages (N a multiple of
    page_size, each page_size-group of slots one page)."""
    from . import direct, get_backend

    if get_backend() == "ref":
        return cache_write_ref(k, v, k_pages, v_pages, slot_mapping, k_scale, v_scale, cos, sin, q=q,
                               k_shift=k_shift, qk_norm=qk_norm)
    qw, kw, eps = qk_norm if qk_norm is not None else (None, None, 1e-6)
    run = _cache_write_triton if direct(k, v, q, qw, kw) else torch.ops.lpm_rt.cache_write
    q_rot = run(k, v, k_pages, v_pages, slot_mapping, k_scale, v_scale, cos, sin, q, k_shift, qw, kw, float(eps))
    return q_rot if q is not None else None
