"""Normalize then adaLN-modulate (Wan2.1's convention):

    y = norm(x) * (1 + scale) + shift
    norm = LayerNorm without affine (Wan's norm1/norm2) or RMSNorm, over the last dim, in fp32.

x: [B, L, C]; shift, scale: broadcastable to x -- [B, 1, C] (per sample), [B, L, C] (per token,
e.g. per-frame modulation expanded over the frame's tokens), possibly strided views of a
``chunk(6)`` of the modulation tensor. Returns x's dtype.
"""

from __future__ import annotations

import torch

__all__ = ["norm_modulate", "norm_modulate_ref"]


def norm_modulate_ref(x, shift, scale, eps: float = 1e-6, norm: str = "layer"):
    xf = x.float() if x.dtype != torch.float64 else x
    if norm == "layer":
        xn = torch.nn.functional.layer_norm(xf, xf.shape[-1:], eps=eps)
    elif norm == "rms":
        xn = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        raise ValueError(f"norm {norm!r} not in layer/rms")
    return (xn * (1 + scale.to(xf.dtype)) + shift.to(xf.dtype)).to(x.dtype)


def norm_modulate(x, shift, scale, eps: float = 1e-6, norm: str = "layer"):
    """Launcher: the selected backend's kernel; same contract as the ref."""
    from . import get_backend

    if get_backend() == "triton":
        raise NotImplementedError("triton norm_modulate is not built yet")
    return norm_modulate_ref(x, shift, scale, eps, norm)
