"""3-D rotary position embedding (Wan2.1 layout).

Head dim D holds D/2 complex pairs (x[2i], x[2i+1]), split over (t, h, w) as
``ModelConfig.rope_dims`` = (c - 2(c//3), c//3, c//3), c = D/2. Pair i of an axis rotates by
``pos * theta ** (-2i / (2 * n_axis))``. Angles are computed from positions on the fly (no
1024-entry table), so time indices may be negative (references) or grow without bound.
"""

from __future__ import annotations

import torch

__all__ = ["rope_angles", "rope_cos_sin", "rope_apply", "rope_rotate_real", "grid_positions"]


def _inv_freq(n: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, 2 * n, 2, dtype=torch.float64) / (2 * n))


def rope_angles(pos: torch.Tensor, rope_dims, theta: float = 10000.0) -> torch.Tensor:
    """pos: [N, 3] (t, h, w) integer positions -> angles [N, D/2] (float64)."""
    parts = [pos[:, i, None].double() * _inv_freq(n, theta)[None] for i, n in enumerate(rope_dims)]
    return torch.cat(parts, dim=1)


def rope_cos_sin(pos, rope_dims, theta=10000.0, dtype=torch.float32):
    a = rope_angles(pos, rope_dims, theta)
    return a.cos().to(dtype), a.sin().to(dtype)


def rope_rotate_real(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """rope_apply's rotation in real arithmetic (its ONNX-export form): x [..., N, H, D],
    c / s [N, 1, D/2] in x's dtype."""
    xr, xi = x.unflatten(-1, (-1, 2)).unbind(-1)                     # (..., N, H, D/2) each
    return torch.stack((xr * c - xi * s, xr * s + xi * c), dim=-1).flatten(-2)


def rope_apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [N, H, D] or [B, N, H, D]; cos/sin: [N, D/2]. Computes in fp32 (fp64 if x is): each
    pair times cos + i sin, one complex multiply (the real-arithmetic form under ONNX export,
    which has no complex type)."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xd = x.to(dt)
    c, s = cos.to(x.device, dt)[:, None, :], sin.to(x.device, dt)[:, None, :]   # (N, 1, D/2)
    if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():   # no complex type / codegen
        return rope_rotate_real(xd, c, s).to(x.dtype)
    if xd.stride(-1) != 1 or xd.storage_offset() % 2 or any(st % 2 for st in xd.stride()[:-1]):
        xd = xd.clone(memory_format=torch.contiguous_format)        # view_as_complex: (re, im) adjacent, even offset
    out = torch.view_as_complex(xd.unflatten(-1, (-1, 2))) * torch.complex(c, s)
    return torch.view_as_real(out).flatten(-2).to(x.dtype)


def grid_positions(t_index: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Positions [len(t_index) * h * w, 3] of patch tokens, time-major then row-major."""
    t = t_index.long()[:, None, None].expand(-1, h, w)
    hh = torch.arange(h)[None, :, None].expand(len(t_index), h, w)
    ww = torch.arange(w)[None, None, :].expand(len(t_index), h, w)
    return torch.stack((t, hh, ww), dim=-1).reshape(-1, 3)
