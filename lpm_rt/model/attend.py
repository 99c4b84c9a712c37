"""Attention providers for :class:`lpm_rt.model.dit.Block`.

A block hands ``attend(q, k, v)`` its un-rotated q, k, v ([B, N, H, D]); the provider applies
RoPE and decides what the queries see:

* :class:`DenseAttention` -- a whole clip at once (Base LPM; training of the online model).
  References attend to references; video tokens attend to all references plus the video
  tokens a mask allows (bidirectional, or block-causal with a history window).
* :class:`PagedAttention` -- one streamed chunk: K/V go into the paged cache through the slot
  mapping (``ops.cache_write``, RoPE fused) and queries attend over the block table
  (``ops.paged_attention``). Same numbers as the dense block-causal form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import ops
from ..ops.cache_write import rms_rows
from .rope import grid_positions, rope_apply, rope_cos_sin

__all__ = ["block_causal_mask", "token_positions", "DenseAttention", "PagedAttention", "RefPrefill"]


def token_positions(t_index, h: int, w: int, rope_dims, theta: float):
    """cos, sin [len(t_index) * h * w, D/2] for patch tokens at time indices ``t_index``."""
    return rope_cos_sin(grid_positions(torch.as_tensor(t_index), h, w), rope_dims, theta)


def block_causal_mask(frames: int, tokens_per_frame: int, chunk_frames: int | None,
                      window: int | None) -> torch.Tensor | None:
    """Boolean [N, N] mask (True = may attend) among video tokens: a query in chunk c sees the
    frames of chunks <= c, minus frames older than ``window`` frames before c's first frame.
    ``chunk_frames=None``: bidirectional (returns None)."""
    if chunk_frames is None:
        return None
    f = torch.arange(frames)
    chunk = f // chunk_frames
    first = chunk * chunk_frames                                   # first frame of each frame's chunk
    lo = first - (window if window is not None else frames)
    ok = (f[None, :] < first[:, None] + chunk_frames) & (f[None, :] >= lo[:, None])   # (F, F)
    return ok.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


def _sdpa(q, k, v, mask=None):
    """q: [B, Lq, H, D], k/v: [B, Lk, H, D] -> [B, Lq, H, D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _qk_norm(q, k, norm):
    """Apply an ``attend(..., norm=(q_weight, k_weight, eps))`` request in torch (module rounding)."""
    if norm is None:
        return q, k
    qw, kw, eps = norm
    return rms_rows(q.flatten(0, -3), qw, eps).view(q.shape), rms_rows(k.flatten(0, -3), kw, eps).view(k.shape)


class DenseAttention:
    """Whole-clip attention. ``ref_rope``/``video_rope``: (cos, sin) of the reference / video
    tokens; ``mask``: [Nv, Nv] bool among video tokens or None (bidirectional)."""

    def __init__(self, ref_rope, video_rope, mask=None):
        self.ref_rope, self.video_rope = ref_rope, video_rope
        self.ref_kv: dict = {}
        self.mask = mask

    def ref(self, i):
        def attend(q, k, v, norm=None):
            q, k = _qk_norm(q, k, norm)
            q, k = rope_apply(q, *self.ref_rope), rope_apply(k, *self.ref_rope)
            self.ref_kv[i] = (k, v)
            return _sdpa(q, k, v)
        return attend

    def video(self, i):
        def attend(q, k, v, norm=None):
            q, k = _qk_norm(q, k, norm)
            q, k = rope_apply(q, *self.video_rope), rope_apply(k, *self.video_rope)
            mask = self.mask
            if i in self.ref_kv:
                rk, rv = self.ref_kv[i]
                k, v = torch.cat([rk, k], 1), torch.cat([rv, v], 1)
                if mask is not None:
                    mask = torch.cat([mask.new_ones(mask.shape[0], rk.shape[1]), mask], 1)
            return _sdpa(q, k, v, mask)
        return attend


class PagedAttention:
    """One chunk through the paged cache of ``pool`` (batch 1: one session).

    block_table [1, max_pages] int32, kv_len [1] int32 (tokens of refs + history + this chunk),
    slot_mapping [N] int64 of this chunk's tokens, rope: (cos, sin) [N, D/2];
    k_shift: [layers, H, D] K smoothing of the session's references (fp8 pools) or None.
    One launch writes K/V and rotates q (``cache_write(q=...)``; with ``norm`` it RMS-norms q and k
    first, the fp8 block form's request), one attends."""

    def __init__(self, pool, block_table, kv_len, slot_mapping, rope, k_shift=None):
        self.pool, self.table, self.kv_len, self.slots = pool, block_table, kv_len, slot_mapping
        self.cos, self.sin = rope
        self.k_shift = k_shift

    def layer(self, i):
        shift = None if self.k_shift is None else self.k_shift[i]

        def attend(q, k, v, norm=None):
            kp, vp, ks, vs = self.pool.layer(i)
            q = ops.cache_write(k[0], v[0], kp, vp, self.slots, ks, vs, self.cos, self.sin, q=q[0], k_shift=shift,
                                qk_norm=norm)
            return ops.paged_attention(q[None], kp, vp, self.table, self.kv_len, ks, vs)
        return attend


class RefPrefill:
    """Reference pass of a session: writes each layer's reference K/V into the pinned pages
    (``slot_mapping``) and attends among the references exactly as :class:`DenseAttention` does.
    ``k_shift`` ([layers, H, D], filled here; fp8 pools): per layer and head, the mean of the
    rotated reference keys -- the K-smoothing vector the session's later writes reuse."""

    def __init__(self, pool, slot_mapping, rope, k_shift=None):
        self.pool, self.slots = pool, slot_mapping
        self.cos, self.sin = rope
        self.k_shift = k_shift

    def layer(self, i):
        def attend(q, k, v, norm=None):
            kp, vp, ks, vs = self.pool.layer(i)
            q, k = _qk_norm(q, k, norm)
            q, k = rope_apply(q, self.cos, self.sin), rope_apply(k, self.cos, self.sin)
            shift = None
            if self.k_shift is not None:
                shift = self.k_shift[i]
                shift.copy_(k[0].float().mean(0))
            ops.cache_write(k[0], v[0], kp, vp, self.slots, ks, vs, k_shift=shift)
            return _sdpa(q, k, v)
        return attend
