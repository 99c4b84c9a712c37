"""Normalize then adaLN-modulate (Wan2.1's convention):

    y = norm(x) * (1 + scale) + shift
    norm = LayerNorm without affine (Wan's norm1/norm2) or RMSNorm, over the last dim, in fp32.

x: [B, L, C]; shift, scale: broadcastable to x -- [B, 1, C] (per sample), [B, L, C] (per token,
e.g. per-frame modulation expanded over the frame's tokens), possibly strided views of a
``chunk(6)`` of the modulation tensor. Returns x's dtype, or with ``out_fp8=True`` the pair
(y float8_e4m3fn [B, L, C], per-token scales [B, L] fp32) that ``fp8_linear`` consumes:
y ~= y8 * scale[..., None].
"""

from __future__ import annotations

import torch

__all__ = ["norm_modulate", "norm_modulate_ref", "quantize_fp8_rows", "FP8_MAX"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn


def launch_warps(C: int) -> int:
    """Warps per program (one row of C channels each): 8 past 2048 channels. The AOT tables'
    heuristic for this kernel too (compile/kernels.py)."""
    return 4 if C <= 2048 else 8


def quantize_fp8_rows(y: torch.Tensor):
    """Per-row (per-token) e4m3 quantization: scale = max(amax|row| * fp32(1/448), 1e-12).
    The scale multiplies by the reciprocal on every device (torch divides by a Python scalar that
    way on a GPU but truly on the CPU; a one-ulp scale flips e4m3 ties, frequent on bf16 rows),
    so the kernels that quantize rows match it bit for bit on both."""
    s = (y.abs().amax(-1).float() * (1.0 / FP8_MAX)).clamp_min(1e-12)          # (..., )
    q = (y.float() / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, s


def norm_modulate_ref(x, shift, scale, eps: float = 1e-6, norm: str = "layer", *, out_fp8: bool = False):
    xf = x.float() if x.dtype != torch.float64 else x
    if norm == "layer":
        xn = torch.nn.functional.layer_norm(xf, xf.shape[-1:], eps=eps)
    elif norm == "rms":
        xn = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        raise ValueError(f"norm {norm!r} not in layer/rms")
    y = xn * (1 + scale.to(xf.dtype)) + shift.to(xf.dtype)
    return quantize_fp8_rows(y) if out_fp8 else y.to(x.dtype)


def _norm_modulate_triton(x, shift, scale, eps, norm, out_fp8):
    import triton

    from csrc_triton import norm_modulate as kern

    from ._launch import configure
    from ._triton_util import check_device, interpreting

    if norm not in ("layer", "rms"):
        raise ValueError(f"norm {norm!r} not in layer/rms")
    if x.dim() != 3 or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"triton norm_modulate: x must be [B, L, C] fp32/fp16/bf16, got "
                         f"{tuple(x.shape)} {x.dtype}")
    B, L, C = x.shape
    if C > 16384:
        raise ValueError(f"triton norm_modulate: C={C} > 16384")
    check_device(x, shift=shift, scale=scale)
    try:
        shift, scale = shift.broadcast_to(x.shape), scale.broadcast_to(x.shape)  # views: stride 0
    except RuntimeError as e:
        raise ValueError(f"shift {tuple(shift.shape)} / scale {tuple(scale.shape)} do not broadcast "
                         f"to x {tuple(x.shape)}") from e
    y = torch.empty(B, L, C, dtype=torch.float8_e4m3fn if out_fp8 else x.dtype, device=x.device)
    ys = torch.empty(B, L, dtype=torch.float32, device=x.device) if out_fp8 else y.new_empty(1, 1, dtype=torch.float32)
    if B * L:
        launch = configure(kern._norm_modulate_kernel, dict(BLOCK_C=triton.next_power_of_2(C), RMS=norm == "rms",
                                                            FP8_OUT=out_fp8, FIX_ROUND=interpreting()),
                           {}, num_warps=launch_warps(C))
        launch[(B * L,)](x, shift, scale, y, ys, L, C, float(eps),
                         *x.stride(), *shift.stride(), *scale.stride(), *y.stride(), *ys.stride())
    return (y, ys) if out_fp8 else y


@torch.library.custom_op("lpm_rt::norm_modulate", mutates_args=())
def _norm_modulate_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                      norm: str) -> torch.Tensor:
    return _norm_modulate_triton(x, shift, scale, eps, norm, False)


@_norm_modulate_op.register_fake
def _(x, shift, scale, eps, norm):
    return x.new_empty(x.shape)


@torch.library.custom_op("lpm_rt::norm_modulate_fp8", mutates_args=())
def _norm_modulate_fp8_op(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                          norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _norm_modulate_triton(x, shift, scale, eps, norm, True)


@_norm_modulate_fp8_op.register_fake
def _(x, shift, scale, eps, norm):
    return x.new_empty(x.shape, dtype=torch.float8_e4m3fn), x.new_empty(x.shape[:-1], dtype=torch.float32)


def norm_modulate(x, shift, scale, eps: float = 1e-6, norm: str = "layer", *, out_fp8: bool = False):
    """Launcher: the selected backend's kernel; same contract as the ref."""
    from . import direct, get_backend

    if get_backend() == "ref":
        return norm_modulate_ref(x, shift, scale, eps, norm, out_fp8=out_fp8)
    if direct(x, shift, scale):
        return _norm_modulate_triton(x, shift, scale, float(eps), norm, out_fp8)
    op = torch.ops.lpm_rt.norm_modulate_fp8 if out_fp8 else torch.ops.lpm_rt.norm_modulate
    return op(x, shift, scale, float(eps), norm)
