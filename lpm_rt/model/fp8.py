"""FP8 execution of the DiT blocks: their linears as e4m3 GEMMs with fused epilogues.

:func:`quantize_blocks_` swaps every block linear the AOT pipeline quantizes
(``lpm_rt.artifact.QUANTIZED_RE``: attention q/k/v/o of the self-, text- and audio-attention,
the FFN) for an :class:`FP8Linear` and switches the blocks to their fused form
(``Block._run_fp8``):

    norm_modulate(out_fp8)  -> q|k|v            (one GEMM; activations quantized in the norm's epilogue;
                                                 the cross-attentions' k|v one GEMM too)
    attention               -> o + gated residual   (x + gate * o(attn), one GEMM epilogue)
    norm_modulate(out_fp8)  -> ffn.0 + GELU(tanh)   -> ffn.2 + gated residual

The cross-attention LayerNorms run as ``norm_modulate`` too (:func:`norm_as_modulation`), so
their e4m3 output feeds the q GEMMs. A short text or audio stream (fewer keys than the head
dim) has the cross-attention's output projection absorbed into its values once per stream
(``Attention.stream_kv``): attention, projection and residual are then one kernel
(``ops.cross_attention_out``) and the projection's GEMM is gone. The self-attention's RMSNorms
of q and k run in the cache write (``attend(..., norm=...)``), the cross-attentions' in
``ops.cross_attention`` / ``ops.cross_attention_out``. GEMMs
whose input comes from attention or the FFN quantize it per token inside the kernel
(``fp8_linear`` with ``x_scale=None``). With the ``ref`` ops backend the GEMMs are emulated in
fp32 from the same e4m3 values (``fp8_linear_ref``), with ``triton``/``aot`` they run as FP8
tensor-core GEMMs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops

__all__ = ["FP8Linear", "quantize_blocks_", "load_fp8_blocks_", "norm_as_modulation", "FP8_LINEARS"]

# block-relative names of the quantized linears (the artifact's QUANTIZED_RE, per block)
FP8_LINEARS = tuple(f"{a}.{p}" for a in ("self_attn", "cross_attn", "audio_attn") for p in "qkvo") + ("ffn.0", "ffn.2")


class FP8Linear(nn.Module):
    """y = x @ (w8 * w_scale)^T + bias through ``ops.fp8_linear``. ``x``: a float tensor
    [..., K] (quantized per token inside the GEMM) or the (e4m3 [..., K], scales [...]) pair a producer
    such as ``norm_modulate(out_fp8=True)`` made. ``act``/``residual``/``gate``: the fused
    epilogue (GELU(tanh); ``residual + gate * y``)."""

    def __init__(self, w8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None, out_dtype: torch.dtype):
        super().__init__()
        if w8.dtype != torch.float8_e4m3fn or w8.dim() != 2:
            raise TypeError(f"w8 must be a 2-D float8_e4m3fn tensor, got {w8.dtype} {tuple(w8.shape)}")
        # codes and scales are kept as integer bit patterns: ``module.to(dtype)`` casts every
        # floating-point tensor (e4m3 included) and must leave these alone; the output dtype
        # follows the module's dtype through ``_probe``
        self.register_buffer("w8_bits", w8.contiguous().view(torch.uint8))
        self.register_buffer("w_scale_bits", w_scale.float().contiguous().view(torch.int32))
        self.register_buffer("bias", None if bias is None else bias.detach().to(out_dtype))
        self.register_buffer("_probe", torch.zeros((), dtype=out_dtype), persistent=False)
        self.out_features, self.in_features = w8.shape

    @property
    def w8(self) -> torch.Tensor:
        return self.w8_bits.view(torch.float8_e4m3fn)

    @property
    def w_scale(self) -> torch.Tensor:
        return self.w_scale_bits.view(torch.float32)

    @property
    def out_dtype(self) -> torch.dtype:
        return self._probe.dtype

    def weight_as(self, dtype: torch.dtype) -> torch.Tensor:
        """The dequantized weight w8 * w_scale, [N, K] in ``dtype``."""
        return ops.dequantize_fp8_weight(self.w8, self.w_scale, dtype)

    @classmethod
    def from_linear(cls, lin: nn.Linear, block: int | None = None) -> "FP8Linear":
        w8, ws = ops.quantize_fp8_weight(lin.weight.detach().float(), block)
        return cls(w8, ws, lin.bias, lin.weight.dtype)

    def forward(self, x, *, act: str = "none", residual=None, gate=None):
        x8, xs = x if isinstance(x, tuple) else (x, None)           # None: quantized inside the GEMM
        return ops.fp8_linear(x8, xs, self.w8, self.w_scale, self.bias, act=act, residual=residual, gate=gate,
                              out_dtype=self.out_dtype)

    def extra_repr(self) -> str:
        kind = "per-channel" if self.w_scale.dim() == 1 else f"1x{self.in_features // self.w_scale.shape[1]} block"
        return f"in={self.in_features}, out={self.out_features}, e4m3 {kind}, bias={self.bias is not None}"


def _fuse_qkv_(attn: nn.Module) -> None:
    """Self-attention q, k, v (FP8Linear, one input) -> one GEMM ``attn.qkv_fp8`` with their
    rows stacked (codes, per-row scales and biases concatenate exactly); q/k/v are dropped."""
    parts = (attn.q, attn.k, attn.v)
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
    attn.qkv_fp8 = FP8Linear(torch.cat([p.w8 for p in parts]), torch.cat([p.w_scale for p in parts]), bias,
                             parts[0].out_dtype)
    attn.q = attn.k = attn.v = None


def _fuse_kv_(attn: nn.Module) -> None:
    """Cross-attention k, v (one input: the audio or text tokens) -> one GEMM ``attn.kv_fp8``."""
    parts = (attn.k, attn.v)
    bias = None if parts[0].bias is None else torch.cat([p.bias for p in parts])
    attn.kv_fp8 = FP8Linear(torch.cat([p.w8 for p in parts]), torch.cat([p.w_scale for p in parts]), bias,
                            parts[0].out_dtype)
    attn.k = attn.v = None


def _convert_block_(blk: nn.Module, make) -> None:
    """Every linear of FP8_LINEARS in ``blk`` -> ``make(name, linear)``, q|k|v fused, the block
    switched to the fused form."""
    for name in FP8_LINEARS:
        parent_name, _, leaf = name.rpartition(".")
        parent = blk.get_submodule(parent_name)
        q = make(name, getattr(parent, leaf))
        if isinstance(parent, nn.Sequential):
            parent[int(leaf)] = q
        else:
            setattr(parent, leaf, q)
    _fuse_qkv_(blk.self_attn)
    _fuse_kv_(blk.cross_attn)
    _fuse_kv_(blk.audio_attn)
    for norm in ("norm3", "norm_audio"):
        mod = getattr(blk, norm)
        if isinstance(mod, nn.LayerNorm) and mod.elementwise_affine:
            blk.register_buffer(f"{norm}_mod_bits", norm_as_modulation(mod).view(torch.int32), persistent=False)
    blk.fp8 = True


def norm_as_modulation(norm: nn.LayerNorm) -> torch.Tensor:
    """An affine LayerNorm as ``norm_modulate``'s (shift, scale) rows [2, C] fp32:
    LN(x) * w + b = LN(x) * (1 + (w - 1)) + b, so the cross-attention norms run in the same
    kernel as adaLN and emit e4m3 for the next GEMM. Blocks keep it as int32 bits (a
    non-persistent buffer that ``module.to(dtype)`` leaves alone), from the weights it is made of."""
    return torch.stack([norm.bias.detach().float(), norm.weight.detach().float() - 1]).contiguous()


def quantize_blocks_(net: nn.Module, block: int | None = None) -> nn.Module:
    """In place: every block linear of ``net`` (an LPMDiT) -> :class:`FP8Linear` (per-channel
    weight scales, or 1 x ``block`` blocks where K allows), blocks switched to the fused form."""
    def make(name, lin):
        return FP8Linear.from_linear(lin, block if block and lin.in_features % block == 0 else None)
    for blk in net.blocks:
        if not blk.fp8:
            _convert_block_(blk, make)
    return net


def load_fp8_blocks_(net: nn.Module, stored: dict, scale_suffix: str) -> int:
    """In place: the block linears whose weights ``stored`` (an artifact's weight file: e4m3
    ``<name>.weight`` with ``<name>.weight<scale_suffix>``) holds in e4m3 become
    :class:`FP8Linear` with exactly those codes and scales (biases from ``net``, already
    loaded); a block switches to the fused form when all its linears are e4m3. Returns the
    number of blocks switched."""
    switched = 0
    for i, blk in enumerate(net.blocks):
        key = f"blocks.{i}.{{}}.weight".format
        if blk.fp8 or not all(stored.get(key(n), torch.empty(0)).dtype == torch.float8_e4m3fn for n in FP8_LINEARS):
            continue
        _convert_block_(blk, lambda name, lin: FP8Linear(stored[key(name)], stored[key(name) + scale_suffix],
                                                         lin.bias, lin.weight.dtype))
        switched += 1
    return switched
