"""Attention of queries over K/V held in a paged cache.

    out[b, i, h] = sum_j softmax_j(sm_scale * q[b, i, h] . K_b[j, h]) V_b[j, h],   j < kv_lens[b]

where K_b / V_b are the pages ``block_table[b, :]`` concatenated in table order
(token j of row b lives at page ``block_table[b, j // page_size]``, offset ``j % page_size``).
No mask: every query sees all ``kv_lens[b]`` tokens; causality is what the table holds.
FP8 pages are dequantized with per-page per-head scales: K = k_pages[p].float() * k_scale[p, h].
"""

from __future__ import annotations

import math

import torch

__all__ = ["paged_attention", "paged_attention_ref", "gather_pages"]


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
    lens = kv_lens.tolist() if kv_lens.device.type == "cpu" else kv_lens.cpu().tolist()
    out = torch.empty_like(q)
    for b in range(B):
        k = gather_pages(k_pages, k_scale, block_table[b], lens[b], cdt)   # (N, H, D)
        v = gather_pages(v_pages, v_scale, block_table[b], lens[b], cdt)
        s = torch.einsum("qhd,nhd->hqn", q[b].to(cdt), k) * sm_scale      # (H, Lq, N)
        p = torch.softmax(s, dim=-1)
        out[b] = torch.einsum("hqn,nhd->qhd", p, v).to(q.dtype)
    return out


def paged_attention(q, k_pages, v_pages, block_table, kv_lens,
                    k_scale=None, v_scale=None, sm_scale=None):
    """Launcher: the selected backend's kernel (``lpm_rt.ops.set_backend``); same contract as the ref."""
    from . import get_backend

    if get_backend() == "triton":
        raise NotImplementedError("triton paged_attention is not built yet")
    return paged_attention_ref(q, k_pages, v_pages, block_table, kv_lens, k_scale, v_scale, sm_scale)
