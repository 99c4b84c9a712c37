"""Write a chunk's K/V into cache pages: RoPE on K, per-page per-head scale, quantize, scatter.

    k_rot = rope(k, cos, sin)                       (interleaved pairs, Wan's complex layout)
    slot  = slot_mapping[n] = page * page_size + offset
    fp8 pages: scale[p, h] = amax over the tokens written to page p of |x[:, h]| / 448,
               pages[p][off, h] = (x / scale[p, h]).to(float8_e4m3fn)
    other page dtypes: a plain cast; scales are left untouched (pass None).

A call writes whole pages' worth of tokens (the cache writes a latent frame, and page_size
divides a frame's tokens), so a page's scale always covers every token it holds.
"""

from __future__ import annotations

import torch

from ..model.rope import rope_apply

__all__ = ["cache_write", "cache_write_ref", "FP8_MAX"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def _write(x, pages, scale, slot_mapping):
    page_size = pages.shape[1]
    flat = pages.view(-1, *pages.shape[2:])                          # (P * page_size, H, D)
    if scale is None:
        flat.index_copy_(0, slot_mapping, x.to(pages.dtype))
        return
    page_ids = torch.div(slot_mapping, page_size, rounding_mode="floor")
    amax = torch.zeros(scale.shape, dtype=torch.float32, device=x.device)  # (P, H)
    amax.index_reduce_(0, page_ids, x.abs().amax(-1).float(), "amax")
    s = (amax / FP8_MAX).clamp_min(1e-12)
    scale.index_copy_(0, page_ids.unique(), s.index_select(0, page_ids.unique()))
    q = (x.float() / s.index_select(0, page_ids)[:, :, None]).clamp(-FP8_MAX, FP8_MAX)
    flat.index_copy_(0, slot_mapping, q.to(pages.dtype))


def cache_write_ref(k, v, k_pages, v_pages, slot_mapping, k_scale=None, v_scale=None,
                    cos=None, sin=None):
    """k, v: [N, H, D]; pages [P, page_size, H, D]; slot_mapping: [N] int64;
    k_scale/v_scale: [P, H] fp32 for fp8 pages (written); cos/sin: [N, D/2] (RoPE on k) or None."""
    if cos is not None:
        k = rope_apply(k, cos, sin)
    _write(k, k_pages, k_scale, slot_mapping)
    _write(v, v_pages, v_scale, slot_mapping)


def cache_write(k, v, k_pages, v_pages, slot_mapping, k_scale=None, v_scale=None, cos=None, sin=None):
    """Launcher: the selected backend's kernel; same contract as the ref."""
    from . import get_backend

    if get_backend() == "triton":
        raise NotImplementedError("triton cache_write is not built yet")
    cache_write_ref(k, v, k_pages, v_pages, slot_mapping, k_scale, v_scale, cos, sin)
