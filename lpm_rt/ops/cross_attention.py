"""Cross-attention over a short foreign stream (a session's text, a frame's audio window) with
Wan's full-width RMSNorms of q and k fused in.

    q_n = RMSNorm(q.flatten(-2)) * q_weight        (over all H * D channels; skipped if None)
    k_n = RMSNorm(k.flatten(-2)) * k_weight        (likewise; None for keys normed beforehand)
    out[b, i, h] = softmax_j(sm_scale * q_n[b, i, h] . k_n[b, j, h]) v[b, j, h]

q: [B, Lq, H, D]; k, v: [B, Lk, H, D], any strides (views of a fused k|v GEMM's output, or a
session's [B, H, L, D] text keys transposed). Returns [B, Lq, H, D] in q's dtype, contiguous, so
``.flatten(2)`` feeds the output projection without a copy. The Triton kernel needs
Lk <= 128 when it norms the keys (every key in one tile: audio windows are a few tokens).

``cross_attention_out`` is the same attention followed by the output projection and the
residual add, with the projection absorbed into the values (as multi-head latent attention
absorbs its up-projection):

    out = residual + bias + sum_h softmax_j(...)[h] @ vo[:, :, h]
    vo[b, j, h] = v[b, j, h] @ Wo[:, h*D:(h+1)*D]^T            ([B, Lk, H, N], once per key stream)

Exact in real arithmetic. Per query token it costs H * Lk * N multiply-adds instead of the
projection's C * N, fewer while Lk < D (:data:`ABSORB_MAX_KEYS`), and one launch instead of two:
the output projection's GEMM is gone. ``vo`` is made once per stream (a session's text, a
chunk's audio windows) and read by every denoising pass. A program writes whole rows, so with
``next_norm`` the LayerNorm + adaLN that follows the residual add (``norm_modulate`` with e4m3
output) runs in the same launch.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["cross_attention", "cross_attention_ref", "cross_attention_out", "cross_attention_out_ref",
           "ABSORB_MAX_KEYS", "absorbs"]

_LOG2E = 1.4426950408889634
K_NORM_MAX_KEYS = 128
# Triton's default, explicit so that an artifact records what the JIT path runs (the kernel's SASS is
# the same at 1 and 3 stages with Triton 3.6 and 3.9: its loops are not software-pipelined)
LAUNCH_STAGES = 3
MAX_KEY_TILE = 64          # keys per tile of the loop over key tiles (keys not normed in the kernel)
# cross_attention_out holds every key in one tile; up to here it also costs fewer multiply-adds
# than the output projection it absorbs (H * Lk * N against C * N per token: Lk < D = C / H)
ABSORB_MAX_KEYS = 64


def absorbs(n_keys: int, head_dim: int) -> bool:
    """Whether a stream of ``n_keys`` keys takes :func:`cross_attention_out` (the projection
    absorbed): every key in one tile, and fewer multiply-adds than the projection (Lk < D)."""
    return n_keys <= ABSORB_MAX_KEYS and n_keys < head_dim


def launch_warps(head_dim: int) -> int:
    """Warps per program: 8 above d64 (a 64-row d128 tile on 4 warps spills). The AOT tables'
    heuristic for this kernel too (compile/kernels.py), with LAUNCH_STAGES."""
    return 4 if head_dim <= 64 else 8


def key_tile(n_keys: int, k_norm: bool) -> int:
    """BLOCK_N for ``n_keys`` keys: the next power of two from 16, at most MAX_KEY_TILE unless the
    kernel norms the keys (then one tile holds them all). A session's text is a few tags, so the
    text tile is usually 16: an artifact compiles the text kernel at each tile up to its table's
    and the launcher picks this one (``configure(prefer=...)``)."""
    import triton

    bn = max(16, triton.next_power_of_2(n_keys))
    return bn if k_norm else min(MAX_KEY_TILE, bn)


def _rms(x, w, eps):
    B, L, H, D = x.shape
    xf = x.float().reshape(B, L, H * D)
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w
    return y.view(B, L, H, D)


def cross_attention_ref(q, k, v, q_weight=None, k_weight=None, eps: float = 1e-6, sm_scale=None):
    """Pure torch: the norms as ``lpm_rt.model.dit.RMSNorm`` computes them, then SDPA."""
    if q_weight is not None:
        q = _rms(q, q_weight, eps)
    if k_weight is not None:
        k = _rms(k, k_weight, eps)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=sm_scale)
    return out.transpose(1, 2)


def _cross_attention_triton(q, k, v, q_weight, k_weight, eps, sm_scale):
    import triton

    from csrc_triton import cross_attention as kern

    from ._launch import configure
    from ._triton_util import check_device, ieee_dots, interpreting

    if q.dim() != 4 or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"triton cross_attention: q must be [B, Lq, H, D] fp32/fp16/bf16, got "
                         f"{tuple(q.shape)} {q.dtype}")
    B, Lq, H, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[2:] != (H, D) or v.shape != k.shape:
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} must be [B={B}, Lk, H={H}, D={D}]")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}/{k.dtype}/{v.dtype}")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"triton cross_attention: head_dim {D} must be a power of two in [16, 256]")
    Lk = k.shape[1]
    if Lk < 1:
        raise ValueError("cross_attention needs at least one key")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w is not None and tuple(w.shape) != (H * D,):
            raise ValueError(f"{name} must be [H*D={H * D}], got {tuple(w.shape)}")
    if k_weight is not None and Lk > K_NORM_MAX_KEYS:
        raise ValueError(f"triton cross_attention norms at most {K_NORM_MAX_KEYS} keys (one tile), got {Lk}")
    check_device(q, k=k, v=v, q_weight=q_weight, k_weight=k_weight)
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    out = torch.empty(B, Lq, H, D, dtype=q.dtype, device=q.device)
    if out.numel() == 0:
        return out
    dummy = q.new_empty(1)
    bn = key_tile(Lk, k_weight is not None)
    launch = configure(kern._cross_attn_kernel,
                       dict(HEAD_DIM=D, Q_NORM=q_weight is not None, K_NORM=k_weight is not None,
                            IEEE=ieee_dots(q.dtype), FIX_ROUND=interpreting()),
                       dict(BLOCK_M=min(64, max(16, triton.next_power_of_2(Lq))), BLOCK_N=bn),
                       num_warps=launch_warps(D), num_stages=LAUNCH_STAGES, prefer=("BLOCK_N",))
    bm, bn = launch.constexprs["BLOCK_M"], launch.constexprs["BLOCK_N"]
    if k_weight is not None and Lk > bn:
        raise ValueError(f"cross_attention with key norms: {Lk} keys exceed the kernel's tile of {bn}")
    launch[(triton.cdiv(Lq, bm), B)](
        q, k, v, dummy if q_weight is None else q_weight, dummy if k_weight is None else k_weight, out,
        Lq, Lk, H, float(eps), sm_scale * _LOG2E,
        *q.stride(), *k.stride(), *v.stride(), *out.stride())
    return out


@torch.library.custom_op("lpm_rt::cross_attention", mutates_args=())
def _cross_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: Optional[torch.Tensor],
                        k_weight: Optional[torch.Tensor], eps: float, sm_scale: Optional[float]) -> torch.Tensor:
    return _cross_attention_triton(q, k, v, q_weight, k_weight, eps, sm_scale)


@_cross_attention_op.register_fake
def _(q, k, v, q_weight, k_weight, eps, sm_scale):
    return q.new_empty(q.shape)


def cross_attention(q, k, v, q_weight=None, k_weight=None, eps: float = 1e-6, sm_scale=None):
    """Launcher: the selected backend's kernel; same contract as the ref."""
    from . import direct, get_backend

    if get_backend() == "ref":
        return cross_attention_ref(q, k, v, q_weight, k_weight, eps, sm_scale)
    run = _cross_attention_triton if direct(q, k, v, q_weight, k_weight) else torch.ops.lpm_rt.cross_attention
    return run(q, k, v, q_weight, k_weight, float(eps), sm_scale)


def cross_attention_out_ref(q, k, vo, q_weight=None, k_weight=None, eps: float = 1e-6, bias=None,
                            residual=None, sm_scale=None, next_norm=None, split: int = 0, gain: float = 1.0):
    """Pure torch, rounding as the kernel does: the norms as the torch modules, softmax in fp32
    (fp64 for fp64 q) rounded to q's dtype, its product with ``vo`` and the sums in fp32.
    q: [B, Lq, H, D]; k: [B, Lk, H, D]; vo: [B, Lk, H, N]; bias: [N] or None; residual:
    [B, Lq, N]. Returns [B, Lq, N] in the residual's dtype; with ``next_norm`` = (shift, scale,
    eps), shift/scale broadcastable to [B, 1, N], also ``norm_modulate(out, shift, scale, eps,
    out_fp8=True)``: (out, (y8, scales)). ``split`` > 0: keys [0, split) and [split, Lk) are two
    streams, each with its own softmax, P = (1 - gain) P_0 + gain P_1 (guidance: the lerp of the
    two attentions' outputs by ``gain``)."""
    out = _cross_attention_out_ref(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, split, gain)
    if next_norm is None:
        return out
    from .norm_modulate import norm_modulate_ref

    shift, scale, n_eps = next_norm
    return out, norm_modulate_ref(out, shift, scale, n_eps, out_fp8=True)


def _cross_attention_out_ref(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, split=0, gain=1.0):
    if q_weight is not None:
        q = _rms(q, q_weight, eps)
    if k_weight is not None:
        k = _rms(k, k_weight, eps)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    s = torch.einsum("bihd,bjhd->bhij", q.to(cdt), k.to(cdt)) * scale
    if split:
        p = torch.cat([(1 - gain) * torch.softmax(s[..., :split], dim=-1), gain * torch.softmax(s[..., split:], dim=-1)],
                      dim=-1)
    else:
        p = torch.softmax(s, dim=-1)
    p = p.to(q.dtype).to(cdt)
    y = torch.einsum("bhij,bjhn->bin", p, vo.to(cdt))
    if bias is not None:
        y = y + bias.to(cdt)
    return (residual.to(cdt) + y).to(residual.dtype)


def _cross_attention_out_triton(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, split=0, gain=1.0,
                                next_norm=None):
    import triton

    from csrc_triton import cross_attention as kern

    from ._launch import configure
    from ._triton_util import check_device, ieee_dots, interpreting

    if q.dim() != 4 or q.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"triton cross_attention_out: q must be [B, Lq, H, D] fp32/fp16/bf16, got "
                         f"{tuple(q.shape)} {q.dtype}")
    B, Lq, H, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[2:] != (H, D):
        raise ValueError(f"k {tuple(k.shape)} must be [B={B}, Lk, H={H}, D={D}]")
    Lk = k.shape[1]
    if vo.dim() != 4 or vo.shape[:3] != (B, Lk, H):
        raise ValueError(f"vo {tuple(vo.shape)} must be [B={B}, Lk={Lk}, H={H}, N]")
    N = vo.shape[3]
    if residual is None or tuple(residual.shape) != (B, Lq, N):
        raise ValueError(f"residual must be [B={B}, Lq={Lq}, N={N}], got "
                         f"{None if residual is None else tuple(residual.shape)}")
    if k.dtype != q.dtype or vo.dtype != q.dtype:
        raise TypeError(f"q, k, vo must share a dtype, got {q.dtype}/{k.dtype}/{vo.dtype}")
    if D < 16 or D > 256 or D & (D - 1):
        raise ValueError(f"triton cross_attention_out: head_dim {D} must be a power of two in [16, 256]")
    if not 1 <= Lk <= ABSORB_MAX_KEYS:
        raise ValueError(f"cross_attention_out takes 1 to {ABSORB_MAX_KEYS} keys (one tile), got {Lk}")
    if split and not 0 < split < Lk:
        raise ValueError(f"cross_attention_out: split {split} must leave keys on both sides of it (Lk={Lk})")
    for name, w in (("q_weight", q_weight), ("k_weight", k_weight)):
        if w is not None and tuple(w.shape) != (H * D,):
            raise ValueError(f"{name} must be [H*D={H * D}], got {tuple(w.shape)}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"bias must be [N={N}], got {tuple(bias.shape)}")
    check_device(q, k=k, vo=vo, q_weight=q_weight, k_weight=k_weight, bias=bias, residual=residual)
    sm_scale = 1.0 / math.sqrt(D) if sm_scale is None else float(sm_scale)
    out = torch.empty(B, Lq, N, dtype=residual.dtype, device=q.device)
    y8 = torch.empty(B, Lq, N, dtype=torch.float8_e4m3fn, device=q.device) if next_norm else None
    ys = torch.empty(B, Lq, dtype=torch.float32, device=q.device) if next_norm else None
    dummy = q.new_empty(1)
    if next_norm is not None:
        shift, scale, norm_eps = next_norm
        check_device(q, shift=shift, scale=scale)
        try:        # per batch entry: [B, 1, N] views, stride 0 where broadcast
            shift, scale = (t.broadcast_to(B, 1, N)[:, 0] for t in (shift, scale))
        except RuntimeError as e:
            raise ValueError(f"next_norm shift {tuple(shift.shape)} / scale {tuple(scale.shape)} do not "
                             f"broadcast to [B={B}, 1, N={N}]") from e
        norm_args = (shift, scale, y8, ys)
        norm_strides = (*shift.stride(), *scale.stride(), *y8.stride(), *ys.stride())
    else:
        norm_eps, norm_args, norm_strides = 0.0, (dummy,) * 4, (0,) * 9
    if out.numel() == 0:
        return out if next_norm is None else (out, y8, ys)
    launch = configure(kern._cross_attn_out_kernel,
                       dict(HEAD_DIM=D, Q_NORM=q_weight is not None, K_NORM=k_weight is not None,
                            HAS_BIAS=bias is not None, NORM_OUT=next_norm is not None, GUIDED=split > 0,
                            IEEE=ieee_dots(q.dtype), FIX_ROUND=interpreting()),
                       dict(BLOCK_M=min(64, max(16, triton.next_power_of_2(Lq))), BLOCK_N=key_tile(Lk, True),
                            BLOCK_C=out_tile(N)),
                       num_warps=launch_warps(D), num_stages=LAUNCH_STAGES, prefer=("BLOCK_N",))
    bm, bn = launch.constexprs["BLOCK_M"], launch.constexprs["BLOCK_N"]
    if Lk > bn:
        raise ValueError(f"cross_attention_out: {Lk} keys exceed the kernel's tile of {bn}")
    scratch = torch.empty(B, Lq, H, bn, dtype=q.dtype, device=q.device)   # each head's P
    launch[(triton.cdiv(Lq, bm), B)](
        q, k, vo, dummy if q_weight is None else q_weight, dummy if k_weight is None else k_weight,
        dummy if bias is None else bias, residual, out, scratch, *norm_args,
        Lq, Lk, H, N, float(eps), sm_scale * _LOG2E, float(norm_eps), int(split), float(gain),
        *q.stride(), *k.stride(), *vo.stride(), *residual.stride(), *out.stride(), *scratch.stride()[:3],
        *norm_strides)
    return out if next_norm is None else (out, y8, ys)


def out_tile(n: int) -> int:
    """BLOCK_C of ``cross_attention_out``: output columns per step, a power of two in [16, 128]."""
    import triton

    return max(16, min(128, triton.next_power_of_2(n)))


@torch.library.custom_op("lpm_rt::cross_attention_out", mutates_args=())
def _cross_attention_out_op(q: torch.Tensor, k: torch.Tensor, vo: torch.Tensor, q_weight: Optional[torch.Tensor],
                            k_weight: Optional[torch.Tensor], eps: float, bias: Optional[torch.Tensor],
                            residual: torch.Tensor, sm_scale: Optional[float], split: int,
                            gain: float) -> torch.Tensor:
    return _cross_attention_out_triton(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, split, gain)


@_cross_attention_out_op.register_fake
def _(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, split, gain):
    return residual.new_empty(residual.shape)


@torch.library.custom_op("lpm_rt::cross_attention_out_norm", mutates_args=())
def _cross_attention_out_norm_op(q: torch.Tensor, k: torch.Tensor, vo: torch.Tensor, q_weight: Optional[torch.Tensor],
                                 k_weight: Optional[torch.Tensor], eps: float, bias: Optional[torch.Tensor],
                                 residual: torch.Tensor, sm_scale: Optional[float], shift: torch.Tensor,
                                 scale: torch.Tensor, norm_eps: float, split: int,
                                 gain: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _cross_attention_out_triton(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, split, gain,
                                       (shift, scale, norm_eps))


@_cross_attention_out_norm_op.register_fake
def _(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, shift, scale, norm_eps, split, gain):
    return (residual.new_empty(residual.shape), residual.new_empty(residual.shape, dtype=torch.float8_e4m3fn),
            residual.new_empty(residual.shape[:-1], dtype=torch.float32))


def cross_attention_out(q, k, vo, q_weight=None, k_weight=None, eps: float = 1e-6, bias=None, *, residual,
                        sm_scale=None, next_norm=None, split: int = 0, gain: float = 1.0):
    """Launcher: the selected backend's kernel; same contract as the ref. ``next_norm`` =
    (shift, scale, eps): the LayerNorm + adaLN that follows, fused (-> (out, (y8, scales)));
    ``split``/``gain``: two key streams, guided (see the ref)."""
    from . import direct, get_backend

    split, gain = int(split), float(gain)
    if get_backend() == "ref":
        return cross_attention_out_ref(q, k, vo, q_weight, k_weight, eps, bias, residual, sm_scale, next_norm,
                                       split, gain)
    if next_norm is None:
        run = _cross_attention_out_triton if direct(q, k, vo, q_weight, k_weight, bias, residual) \
            else torch.ops.lpm_rt.cross_attention_out
        return run(q, k, vo, q_weight, k_weight, float(eps), bias, residual, sm_scale, split, gain)
    shift, scale, n_eps = next_norm
    if direct(q, k, vo, q_weight, k_weight, bias, residual, shift, scale):
        out, y8, ys = _cross_attention_out_triton(q, k, vo, q_weight, k_weight, float(eps), bias, residual, sm_scale,
                                                  split, gain, (shift, scale, float(n_eps)))
    else:
        out, y8, ys = torch.ops.lpm_rt.cross_attention_out_norm(q, k, vo, q_weight, k_weight, float(eps), bias,
                                                                residual, sm_scale, shift, scale, float(n_eps),
                                                                split, gain)
    return out, (y8, ys)
