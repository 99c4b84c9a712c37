"""FP8 linear layer with fused epilogues.

    y   = (x8 * xs[..., None]) @ (w8 * ws)^T            (ws: [N] per channel, or [N, K/128] per 1x128 block)
    y   = act(y + bias)                                  (act: "none" or "gelu_tanh")
    out = residual + gate * y   if residual is given     (gate broadcastable to residual)

x8: [..., K] float8_e4m3fn with per-token scales xs: [...] fp32 (``norm_modulate(..., out_fp8=True)``
or ``quantize_fp8_rows`` produce them), or a bf16/fp16/fp32 activation with ``xs=None``: then it
is quantized per token inside the GEMM (``quantize_fp8_rows``'s math, no extra launch); w8: [N, K] float8_e4m3fn from ``quantize_fp8_weight``
(offline, in the AOT pipeline). Returns [..., N] in ``out_dtype``.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch

from .norm_modulate import quantize_fp8_rows

__all__ = ["fp8_linear", "fp8_linear_ref", "quantize_fp8_weight", "quantize_fp8_rows", "dequantize_fp8_weight"]

WEIGHT_BLOCK = 128
# A GEMM fed bf16 activations (x_scale None) quantizes them per token. Inside the GEMM (QUANT_X)
# every N tile redoes it, so past this N the launcher quantizes once in its own launch and runs
# the e4m3 GEMM: on the H200 (2026-12-04) even the torch quantizer then won at every lpm-17b shape
# (2.24 against 3.73 ms at [9360x5120]x[5120x13824]), in-GEMM only where N was 1536 (0.86 against
# 1.23 ms) or the call was launch-bound; the Triton pass here reads each row once.
QUANT_SPLIT_N = 128


def quantize_separately(N: int) -> bool:
    """Whether a bf16-input GEMM with N outputs quantizes its input in a launch of its own (the
    AOT pipeline compiles what this picks)."""
    return N > QUANT_SPLIT_N


def _quantize_rows_triton(x2: torch.Tensor):
    """(M, K) float -> (e4m3 (M, K), fp32 scales (M,)): ``quantize_fp8_rows`` as one Triton pass."""
    import triton

    from csrc_triton import fp8_linear as kern

    from ._launch import configure
    from ._triton_util import interpreting

    M, K = x2.shape
    if K > 16384:
        raise ValueError(f"fp8_linear: rows of {K} > 16384 channels cannot be quantized in one program")
    q = torch.empty(M, K, dtype=torch.float8_e4m3fn, device=x2.device)
    s = torch.empty(M, dtype=torch.float32, device=x2.device)
    block = triton.next_power_of_2(K)
    launch = configure(kern._quantize_rows_kernel, dict(BLOCK_K=block, FIX_ROUND=interpreting()), {},
                       num_warps=8 if block >= 4096 else 4)
    launch[(M,)](x2, q, s, K, *x2.stride(), *q.stride())
    return q, s


def quantize_fp8_weight(w: torch.Tensor, block: Optional[int] = None):
    """w: [N, K] -> (w8 [N, K] e4m3, scale fp32: [N] per channel, or [N, K/block] per 1 x block)."""
    N, K = w.shape
    if block is None:
        return quantize_fp8_rows(w)
    if K % block:
        raise ValueError(f"K={K} is not a multiple of the weight block {block}")
    q, s = quantize_fp8_rows(w.reshape(N, K // block, block))               # (N, K/block, block)
    return q.reshape(N, K), s


def dequantize_fp8_weight(w8, ws, dtype):
    """w8 [N, K] e4m3 times its scales ([N] per channel or [N, K/block]) -> [N, K] in ``dtype``."""
    if ws.dim() == 1:
        return w8.to(dtype) * ws.to(dtype)[:, None]
    N, K = w8.shape
    return (w8.to(dtype).view(N, ws.shape[1], -1) * ws.to(dtype)[..., None]).view(N, K)


def fp8_linear_ref(x8, x_scale, w8, w_scale, bias=None, *, act="none", residual=None, gate=None,
                   out_dtype=torch.bfloat16, compute_dtype=torch.float32):
    if act not in ("none", "gelu_tanh"):
        raise ValueError(f"act {act!r} not in none/gelu_tanh")
    if x_scale is None:
        x8, x_scale = quantize_fp8_rows(x8)
    x = x8.to(compute_dtype) * x_scale.to(compute_dtype)[..., None]
    y = x @ dequantize_fp8_weight(w8, w_scale, compute_dtype).T
    if bias is not None:
        y = y + bias.to(compute_dtype)
    if act == "gelu_tanh":
        y = torch.nn.functional.gelu(y, approximate="tanh")
    if residual is not None:
        g = torch.ones((), dtype=compute_dtype) if gate is None else gate.to(compute_dtype)
        y = residual.to(compute_dtype) + g * y
    return y.to(out_dtype)


def _as_bln(t, lead, N):
    """Broadcast to [*lead, N] and view as [B, L, N] (stride 0 where broadcast; no copy for <= 2 lead dims)."""
    t = t.broadcast_to(*lead, N)
    return t.unsqueeze(0) if len(lead) == 1 else (t if len(lead) == 2 else t.reshape(lead[0], -1, N))


@functools.lru_cache(maxsize=64)
def _ones(n: int, device: torch.device) -> torch.Tensor:
    """The gate of an ungated residual: [n] fp32 ones, unit stride like every real gate's last dim."""
    return torch.ones(n, dtype=torch.float32, device=device)


def _tma_ready(x2, w8) -> None:
    """TMA tiles need unit inner strides and 16-byte aligned rows and bases (raise, never fall
    back); on a GPU, device-side descriptors need Triton's scratch allocator (set once)."""
    for name, t in (("x", x2), ("w", w8)):
        if t.stride(1) != 1 or (t.stride(0) * t.element_size()) % 16 or t.data_ptr() % 16:
            raise ValueError(f"fp8_linear TMA tiles: {name} needs unit inner stride and 16-byte aligned rows, "
                             f"got strides {tuple(t.stride())} ({t.dtype})")
    from ._triton_util import tma_allocator

    tma_allocator(x2.device)


def _fp8_linear_triton(x8, x_scale, w8, w_scale, bias, act, residual, gate, out_dtype):
    import triton

    from csrc_triton import fp8_linear as kern

    from . import get_backend
    from ._launch import configure, overridden
    from ._triton_util import check_device, interpreting

    f8 = torch.float8_e4m3fn
    quant_x = x_scale is None
    if quant_x and x8.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise TypeError(f"x without scales must be bf16/fp16/fp32 (quantized in the GEMM), got {x8.dtype}")
    if (not quant_x and x8.dtype != f8) or w8.dtype != f8:
        raise TypeError(f"x8/w8 must be float8_e4m3fn, got {x8.dtype}/{w8.dtype}")
    if act not in ("none", "gelu_tanh"):
        raise ValueError(f"act {act!r} not in none/gelu_tanh")
    lead, K = tuple(x8.shape[:-1]), x8.shape[-1]
    N = w8.shape[0]
    if w8.dim() != 2 or w8.shape[1] != K or (not quant_x and (tuple(x_scale.shape) != lead
                                                             or x_scale.dtype != torch.float32)):
        raise ValueError(f"x8 {tuple(x8.shape)}, x_scale {None if quant_x else tuple(x_scale.shape)}, "
                         f"w8 {tuple(w8.shape)} disagree")
    block = w_scale.dim() == 2
    if w_scale.dtype != torch.float32 or (block and (K % WEIGHT_BLOCK or tuple(w_scale.shape) != (N, K // WEIGHT_BLOCK))) \
            or (not block and tuple(w_scale.shape) != (N,)):
        raise ValueError(f"w_scale must be [N] or [N, K/{WEIGHT_BLOCK}] fp32, got {tuple(w_scale.shape)}")
    if bias is not None and tuple(bias.shape) != (N,):
        raise ValueError(f"bias must be [N={N}]")
    check_device(x8, x_scale=x_scale, w8=w8, w_scale=w_scale, bias=bias, residual=residual, gate=gate)
    x2 = x8.reshape(-1, K)                                                   # (M, K)
    M = x2.shape[0]
    if quant_x and M and quantize_separately(N):
        # one quantization pass first instead of one per N tile inside the GEMM
        x2, x_scale = _quantize_rows_triton(x2)
        quant_x, x_scale = False, x_scale.view(lead)
    L = math.prod(lead[1:]) if len(lead) > 1 else M                         # rows of one sample
    out = torch.empty(*lead, N, dtype=out_dtype, device=x8.device)
    dummy = torch.zeros(1, 1, 1, dtype=torch.float32, device=x8.device)
    res = g = dummy
    if residual is not None:
        res, g = _as_bln(residual, lead, N), _as_bln(_ones(N, x8.device) if gate is None else gate, lead, N)
    ws2 = w_scale if block else w_scale[:, None]
    xs = dummy.view(1) if quant_x else x_scale.reshape(M)
    args = (x2, w8, xs, ws2, bias if bias is not None else dummy, res, g, out, M, N, K, L,
            *x2.stride(), *w8.stride(), *ws2.stride(), *res.stride(), *g.stride(), *out.view(M, N).stride())
    flags = dict(BLOCK_SCALE=block, HAS_BIAS=bias is not None, GELU=act == "gelu_tanh",
                 RESIDUAL=residual is not None, FIX_ROUND=interpreting(), QUANT_X=quant_x)
    if M == 0:
        return out
    if x8.is_cuda and get_backend() == "triton" and not overridden(kern._fp8_linear_kernel):
        # JIT on a GPU: tile picked by the autotuner, per (M, N, K)
        kernel = kern.autotuned_fp8_linear()
        kernel[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)](*args, **flags)
        return out
    launch = configure(kern._fp8_linear_kernel, dict(BLOCK_K=WEIGHT_BLOCK, **flags),
                       dict(BLOCK_M=min(64, max(16, triton.next_power_of_2(M))), BLOCK_N=64, GROUP_M=4,
                            FAST_ACCUM=False, TMA=False), num_warps=4)
    bm, bn = launch.constexprs["BLOCK_M"], launch.constexprs["BLOCK_N"]
    if launch.constexprs.get("TMA"):
        _tma_ready(x2, w8)
    launch[(triton.cdiv(M, bm) * triton.cdiv(N, bn),)](*args)
    return out


@torch.library.custom_op("lpm_rt::fp8_linear", mutates_args=())
def _fp8_linear_op(x8: torch.Tensor, x_scale: Optional[torch.Tensor], w8: torch.Tensor, w_scale: torch.Tensor,
                   bias: Optional[torch.Tensor], act: str, residual: Optional[torch.Tensor],
                   gate: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    return _fp8_linear_triton(x8, x_scale, w8, w_scale, bias, act, residual, gate, out_dtype)


@_fp8_linear_op.register_fake
def _(x8, x_scale, w8, w_scale, bias, act, residual, gate, out_dtype):
    return x8.new_empty(*x8.shape[:-1], w8.shape[0], dtype=out_dtype)


def fp8_linear(x8, x_scale, w8, w_scale, bias=None, *, act="none", residual=None, gate=None,
               out_dtype=torch.bfloat16):
    """Launcher: the selected backend's kernel; same contract as ``fp8_linear_ref``."""
    from . import direct, get_backend

    if get_backend() == "ref":
        return fp8_linear_ref(x8, x_scale, w8, w_scale, bias, act=act, residual=residual, gate=gate,
                              out_dtype=out_dtype)
    run = _fp8_linear_triton if direct(x8, bias, residual, gate) else torch.ops.lpm_rt.fp8_linear
    return run(x8, x_scale, w8, w_scale, bias, act, residual, gate, out_dtype)
