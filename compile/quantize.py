"""Offline weight quantization for a target, with a per-layer SQNR report.

    fp8 e4m3, per channel:   s[n] = max(amax_k |W[n, k]| / 448, 1e-12),  q = e4m3(W / s)
    fp8 e4m3, 1 x 128 block: s[n, b] over W[n, 128 b : 128 (b + 1)]   (DeepSeek-V3 style)
    int8 weight-only:        s[n] = max(amax_k |W[n, k]| / 127, 1e-12),  q = round(W / s) in [-127, 127]
    SQNR (dB) = 20 log10(|W| / |W - deq(q(W))|)                        (torchao's measure)

Only the DiT block linears (``lpm_rt.artifact.QUANTIZED_RE``) are quantized; every other tensor
(embeddings, norms, modulation tables, head, VAE) is cast to the target's activation dtype. A
block-format weight whose K is not a multiple of 128 falls back to per-channel scales (recorded).
The stored layout and :func:`lpm_rt.artifact.dequantize` are the runtime's; this file only writes it.
"""

from __future__ import annotations

import math

import torch

from lpm_rt.artifact import QSCALE_SUFFIX, QUANTIZED_RE, dequantize

from .hostmem import release_freed
from .targets import Target, WeightFormat

__all__ = ["quantize_weight", "quantize_state_dict", "sqnr_db", "FP8_MAX", "INT8_MAX", "BLOCK"]

FP8_MAX, INT8_MAX, BLOCK = 448.0, 127.0, 128
_DT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sqnr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    """20 log10(|x| / |x - y|) in dB (inf when equal)."""
    x, y = x.double(), y.double()
    err = (x - y).norm().item()
    return math.inf if err == 0 else 20.0 * math.log10(x.norm().item() / err)


def quantize_weight(w: torch.Tensor, fmt: WeightFormat):
    """w: [N, K] float -> (q, scale or None, format actually used)."""
    N, K = w.shape
    w = w.float()
    if fmt in (WeightFormat.FP32, WeightFormat.BF16, WeightFormat.FP16):
        return w.to(_DT[fmt.value]), None, fmt
    if fmt == WeightFormat.FP8_BLOCK and K % BLOCK:
        fmt = WeightFormat.FP8_CHANNEL
    if fmt == WeightFormat.FP8_BLOCK:
        blocks = w.view(N, K // BLOCK, BLOCK)                                    # (N, K/128, 128)
        s = (blocks.abs().amax(-1) / FP8_MAX).clamp_min(1e-12)                   # (N, K/128)
        q = (blocks / s[..., None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(N, K)
        return q, s, fmt
    if fmt == WeightFormat.FP8_CHANNEL:
        s = (w.abs().amax(-1) / FP8_MAX).clamp_min(1e-12)                        # (N,)
        return (w / s[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), s, fmt
    if fmt == WeightFormat.INT8_CHANNEL:
        s = (w.abs().amax(-1) / INT8_MAX).clamp_min(1e-12)
        return torch.round(w / s[:, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8), s, fmt
    raise ValueError(f"unknown weight format {fmt}")


def quantize_state_dict(sd: dict, tgt: Target, prefix: str = "") -> tuple[dict, list]:
    """-> (tensors to store, report rows {layer, shape, format, sqnr_db}) for one network.
    ``prefix`` (e.g. "backbone.") only labels the report rows."""
    act = _DT[tgt.act_dtype]
    out, rows = {}, []
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() == 2 and QUANTIZED_RE.match(k):
            q, s, used = quantize_weight(v, tgt.weights)
            out[k] = q.contiguous()
            deq = q.float() if s is None else dequantize(q, s)
            if s is not None:
                out[k + QSCALE_SUFFIX] = s.float().contiguous()
            db = sqnr_db(v, deq)
            rows.append(dict(layer=prefix + k, shape=list(v.shape), format=used.value,
                             sqnr_db=None if math.isinf(db) else round(db, 2)))   # None: lossless
            del deq
            release_freed()                   # the temporaries' pages, or they pile up (hostmem)
        else:
            out[k] = (v.to(act) if v.is_floating_point() else v).contiguous()
    return out, rows
